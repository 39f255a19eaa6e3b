"""The media stages of indexing, a batch of items at a time: find moments, read speech, read on-screen text.

Each is a plain function the flow runs as its own cached task; a video that fails a stage fails alone,
with the reason, and the batch goes on. Text-only items pass through untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from r3tasks.errors import ItemError
from r3tasks.gallery.indexing import ItemFailure, failure_of
from r3tasks.inputs.sources import KeyedItem
from r3tasks.media.moments import SpeechTrack, VideoMoments, VideoSpans, find_spans, read_screen_text
from r3tasks.media.speech import read_speech
from r3tasks.models.base import SpeechRecognizer
from r3tasks.settings.tree import R3Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class StageOutput(Generic[T]):
    """One media stage's results for a batch, per video id, with the videos it could not handle."""

    results: dict[str, T] = field(default_factory=dict)
    failed: list[ItemFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth saying, not failures ("no audio stream")
    video_s: float = 0.0
    wall_s: float = 0.0

    def speed(self) -> str:
        rate = self.video_s / self.wall_s if self.wall_s > 0 else 0.0
        return f"{self.video_s:.0f} s of video in {self.wall_s:.1f} s ({rate:.1f}x real time)"


def videos(batch: Sequence[KeyedItem]) -> list[KeyedItem]:
    """The items of a batch that are video files (the only ones the media stages read)."""
    return [keyed for keyed in batch if keyed.item.path is not None]


def _run(
    name: str,
    items: Sequence[KeyedItem],
    work: Callable[[KeyedItem], T],
    seconds: Callable[[KeyedItem], float],
) -> StageOutput[T]:
    output: StageOutput[T] = StageOutput()
    started = time.monotonic()
    for at, keyed in enumerate(items, 1):
        try:
            output.results[keyed.item.id] = work(keyed)
            output.video_s += seconds(keyed)
        except ItemError as error:
            output.failed.append(failure_of(keyed.item, error))
        output.wall_s = time.monotonic() - started
        logger.info("%s: %d/%d videos, %s", name, at, len(items), output.speed())
    return output


def find_moments_stage(batch: Sequence[KeyedItem], settings: R3Settings) -> StageOutput[VideoSpans]:
    """Where each video's moments are (probe, shots, segments)."""
    found: dict[str, float] = {}

    def work(keyed: KeyedItem) -> VideoSpans:
        spans = find_spans(keyed.item, settings.media)
        found[keyed.item.id] = spans.duration_s
        return spans

    return _run("find moments", videos(batch), work, lambda keyed: found.get(keyed.item.id, 0.0))


def speech_stage(
    batch: Sequence[KeyedItem],
    spans: StageOutput[VideoSpans],
    settings: R3Settings,
    recognizer: SpeechRecognizer | None,
) -> StageOutput[SpeechTrack]:
    """What is said in each video whose moments were found: subtitles, else speech recognition."""
    items = [keyed for keyed in videos(batch) if keyed.item.id in spans.results]
    output = _run(
        "read speech",
        items,
        lambda keyed: read_speech(keyed.item, settings, recognizer),
        lambda keyed: spans.results[keyed.item.id].duration_s,
    )
    output.notes = [f"{item_id}: {note}" for item_id, track in output.results.items() for note in track.notes]
    return output


def screen_text_stage(
    batch: Sequence[KeyedItem], spans: StageOutput[VideoSpans], settings: R3Settings, reader: object | None
) -> StageOutput[tuple[str | None, ...]]:
    """On-screen text of each moment of each video whose moments were found (nothing when OCR is off)."""
    items = [keyed for keyed in videos(batch) if keyed.item.id in spans.results]
    if reader is None:
        return StageOutput(results={keyed.item.id: () for keyed in items})
    return _run(
        "read on-screen text",
        items,
        lambda keyed: tuple(read_screen_text(keyed.item, spans.results[keyed.item.id], settings.media, reader)),
        lambda keyed: spans.results[keyed.item.id].duration_s,
    )


def join_stages(
    spans: StageOutput[VideoSpans],
    speech: StageOutput[SpeechTrack],
    screen: StageOutput[tuple[str | None, ...]],
) -> tuple[dict[str, VideoMoments], list[ItemFailure], list[str]]:
    """Every stage's output per video; a video that failed any stage is left out with its first failure."""
    failed: dict[str, ItemFailure] = {}
    for stage in (spans, speech, screen):
        for failure in stage.failed:
            failed.setdefault(failure.id, failure)
    media = {
        item_id: VideoMoments(
            spans=found,
            speech=speech.results.get(item_id, SpeechTrack()),
            screen_text=screen.results.get(item_id, ()),
        )
        for item_id, found in spans.results.items()
        if item_id not in failed
    }
    return media, list(failed.values()), [*spans.notes, *speech.notes, *screen.notes]
