"""From a video file to its moments: where they are, what is said in them and what is written on screen.

Three stages, each a function of one video that the indexing flow runs as its own cached task, then
`assemble` joins them. A clip up to `media.whole_clip_max_s` is one moment covering it (its row keeps
the item id); a longer video is cut into segments (shots merged and split into
[segment_min_s, segment_max_s], or fixed windows).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from r3tasks.errors import VideoReadError
from r3tasks.inputs.frames import probe_video
from r3tasks.inputs.sources import GalleryItem
from r3tasks.media.clips import rates_disagree, read_frames_per_span
from r3tasks.media.cues import Cue, Span, cut_at_word
from r3tasks.media.segments import moment_id, plan_spans
from r3tasks.settings.media import MediaSettings

# Spans whose OCR frames are decoded together: memory holds only these frames, whatever the video's length.
OCR_SPANS_PER_DECODE = 16
OCR_MAX_SIDE = 960


@dataclass(frozen=True)
class VideoSpans:
    """Where the moments of one video are."""

    item_id: str
    duration_s: float
    spans: tuple[Span, ...]
    whole: bool  # one moment covering the whole clip: its row keeps the item's id


@dataclass(frozen=True)
class SpeechTrack:
    """What is said in one video, with where it was read from (subtitles, a recogniser, or nothing)."""

    cues: tuple[Cue, ...] = ()
    source: str = "none"
    notes: tuple[str, ...] = ()  # e.g. "no audio stream": said in the summary, not a failure


@dataclass(frozen=True)
class Moment:
    """One row to be: a stretch of a video (or a whole text-only item) and the text read in it."""

    id: str
    video_id: str
    span: Span | None
    transcript: str | None = None
    screen_text: str | None = None


@dataclass
class VideoMoments:
    """Every stage's output for one video, as the embedding step takes it."""

    spans: VideoSpans
    speech: SpeechTrack = field(default_factory=SpeechTrack)
    screen_text: tuple[str | None, ...] = ()


def find_spans(item: GalleryItem, settings: MediaSettings) -> VideoSpans:
    """Probe the video and cut it into moments; shot detection runs only for a video that is cut by shots."""
    assert item.path is not None
    duration = _duration_s(item.path)
    if not duration > 0:
        raise VideoReadError(item.path, "zero-length video (no duration in its header)")
    if duration <= settings.whole_clip_max_s:
        return VideoSpans(item.id, duration, (Span(0.0, round(duration, 3)),), whole=True)
    cuts = None
    if settings.segmentation == "shots":
        from r3tasks.media.shots import detect_cuts

        cuts = detect_cuts(item.path, settings.shot_threshold)
    spans = plan_spans(duration, cuts, settings)
    spans = [span for span in spans if span.duration_s > 0]
    return VideoSpans(item.id, duration, tuple(spans), whole=False)


def _duration_s(path: Path) -> float:
    """Frame count over the declared rate: a constant-rate video's length. A variable-rate file declares a rate
    its timestamps do not keep (1000 fps for 217 frames over 50 s): there the stream's own duration is the
    length, and frames are placed by the decoder's average rate."""
    from r3tasks.media.shots import probe_duration

    counted = probe_video(path).duration_s
    try:
        declared = probe_duration(path)
    except VideoReadError:
        return counted
    return declared if rates_disagree(counted, declared) else counted


def read_screen_text(item: GalleryItem, spans: VideoSpans, settings: MediaSettings, reader: object) -> list[str | None]:
    """On-screen text of each moment: OCR of `media.ocr_frames` frames inside it, de-duplicated."""
    assert item.path is not None
    texts: list[str | None] = []
    for start in range(0, len(spans.spans), OCR_SPANS_PER_DECODE):
        part = spans.spans[start : start + OCR_SPANS_PER_DECODE]
        for frames in read_frames_per_span(item.path, part, settings.ocr_frames, OCR_MAX_SIDE, spans.duration_s):
            lines = reader.read(frames) if len(frames) else []  # type: ignore[attr-defined]
            texts.append(cut_at_word(" ".join(lines), settings.max_text_chars) or None)
    return texts


def assemble(item: GalleryItem, video: VideoMoments | None, settings: MediaSettings) -> list[Moment]:
    """The moments of one item, with their text; a text-only item is one moment with no span."""
    if video is None:
        return [Moment(id=item.id, video_id=item.id, span=None)]
    from r3tasks.media.subtitles import cues_in

    moments = []
    screen = video.screen_text or (None,) * len(video.spans.spans)
    for span, on_screen in zip(video.spans.spans, screen):
        said = cues_in(video.speech.cues, span, settings.max_text_chars) if video.speech.cues else ""
        moments.append(
            Moment(
                id=moment_id(item.id, span, video.spans.whole),
                video_id=item.id,
                span=span,
                transcript=said or None,
                screen_text=on_screen,
            )
        )
    return moments


class ReadText(Protocol):
    """What was read in a moment: a `Moment` being indexed or a stored row (`ItemRecord`)."""

    transcript: str | None
    screen_text: str | None


def moment_text(caption: str | None, moments: Iterable[ReadText]) -> str | None:
    """A moment's text as the models read it: the video's caption, then what is said, then what is written."""
    parts = [caption] if caption else []
    for moment in moments:
        parts += [text for text in (moment.transcript, moment.screen_text) if text]
    return "\n".join(parts) or None


def readable_text(caption: str | None, moment: Moment, settings: MediaSettings) -> str | None:
    """What the embedder reads for a moment being indexed (`media.embed_text` off: the caption alone)."""
    return moment_text(caption, [moment] if settings.embed_text else [])
