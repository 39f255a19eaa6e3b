"""Indexing a gallery, as plain steps the flow wires: key, plan, embed a batch, summarise.

The plan is computed from what the table stores, so a rerun after a crash, a
change of a few files, or a removal does exactly the missing work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from r3tasks.errors import ItemError
from r3tasks.gallery.table import GalleryRow
from r3tasks.inputs.frames import read_frames, sampling_policy
from r3tasks.inputs.sources import GalleryItem, KeyedItem, item_keys
from r3tasks.media.clips import read_span_frames
from r3tasks.media.moments import Moment, VideoMoments, assemble, readable_text
from r3tasks.models.base import Embedder, EmbedInput
from r3tasks.settings.tree import R3Settings


@dataclass(frozen=True)
class ItemFailure:
    id: str
    path: str | None
    reason: str


@dataclass
class KeyingResult:
    keyed: list[KeyedItem] = field(default_factory=list)
    failed: list[ItemFailure] = field(default_factory=list)


@dataclass
class IndexPlan:
    """What one index run must do, against the stored content keys."""

    to_add: list[KeyedItem] = field(default_factory=list)
    to_update: list[KeyedItem] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    to_remove: list[str] = field(default_factory=list)

    @property
    def to_embed(self) -> list[KeyedItem]:
        return self.to_add + self.to_update


@dataclass
class EmbeddedBatch:
    rows: list[GalleryRow]
    failed: list[ItemFailure]
    nothing_to_read: int = 0  # moments a text embedder had nothing to read in (left out)
    notes: list[str] = field(default_factory=list)  # worth saying, not failures ("no audio stream")


@dataclass
class IndexSummary:
    added: int
    updated: int
    unchanged: int
    removed: int
    failed: list[ItemFailure]
    table: dict[str, str]
    version: int
    embedder: str
    settings_hash: str
    code_version: str
    moments: int = 0  # rows written this run: one per whole clip, one per segment of a long video
    nothing_to_read: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def failure_of(item: GalleryItem, error: Exception) -> ItemFailure:
    reason = error.reason if isinstance(error, ItemError) else f"{type(error).__name__}: {error}"
    return ItemFailure(id=item.id, path=str(item.path) if item.path else None, reason=reason)


def media_fingerprint(settings: R3Settings) -> str:
    """What a video's moments and their text are read with: part of every video's content key."""
    models = settings.models
    asr = models.backend("asr")
    return "|".join(
        [settings.settings_hash("media"), asr, models.asr_model if asr == "whisper" else "", models.asr_language]
    )


def _companions(item: GalleryItem, settings: R3Settings) -> list[Path]:
    if item.path is None or not settings.media.subtitles:
        return []
    from r3tasks.media.subtitles import sidecar_subtitles

    sidecar = sidecar_subtitles(item.path)
    return [sidecar] if sidecar is not None else []


def key_items(items: Sequence[GalleryItem], settings: R3Settings) -> KeyingResult:
    """Content keys for every item; an unreadable file becomes that item's failure, not the batch's."""
    result = KeyingResult()
    media = media_fingerprint(settings)
    for item in items:
        try:
            key, file_key = item_keys(item, settings.frames.fingerprint, media, _companions(item, settings))
            result.keyed.append(KeyedItem(item=item, content_key=key, file_key=file_key))
        except ItemError as error:
            result.failed.append(failure_of(item, error))
    return result


def plan_index(keyed: Sequence[KeyedItem], failed_ids: Sequence[str], stored_keys: dict[str, str]) -> IndexPlan:
    """Diff the source against the table.

    Items that failed keying keep their stored row (nothing already stored is
    lost because a file is unreadable for a moment); items no longer in the
    source at all are removed.
    """
    plan = IndexPlan()
    present = {k.item.id for k in keyed} | set(failed_ids)
    for keyed_item in keyed:
        stored = stored_keys.get(keyed_item.item.id)
        if stored is None:
            plan.to_add.append(keyed_item)
        elif stored != keyed_item.content_key:
            plan.to_update.append(keyed_item)
        else:
            plan.unchanged.append(keyed_item.item.id)
    plan.to_remove = sorted(set(stored_keys) - present)
    return plan


def commit_due(pending_rows: int, seconds_since_commit: float, settings: R3Settings) -> bool:
    """Whether embedded rows waiting to be stored should be committed now (besides at the end): enough
    rows, or enough time that a crash would lose more work than `index.commit_seconds`."""
    return pending_rows >= settings.index.commit_max_rows or seconds_since_commit >= settings.index.commit_seconds


def batches(items: Sequence[KeyedItem], size: int) -> list[list[KeyedItem]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


@dataclass(frozen=True)
class MomentInput:
    """One moment ready to embed, and the row it becomes."""

    keyed: KeyedItem
    moment: Moment
    embed: EmbedInput


def embed_inputs(
    batch: Sequence[KeyedItem],
    embedder: Embedder,
    settings: R3Settings,
    media: Mapping[str, VideoMoments] | None = None,
) -> tuple[list[MomentInput], list[ItemFailure], int]:
    """Decode what the embedder needs for each moment of each item; a broken video fails only its item.

    Returns the inputs, the failures and how many moments had nothing a text embedder could read (left out).
    A video item missing from `media` failed an earlier stage and is skipped here (its failure is recorded).
    """
    policy = sampling_policy(settings.frames, "gallery")
    kept: list[MomentInput] = []
    failed: list[ItemFailure] = []
    nothing_to_read = 0
    for keyed_item in batch:
        item = keyed_item.item
        if item.path is not None and media is not None and item.id not in media:
            continue
        try:
            video = media.get(item.id) if media is not None and item.path is not None else None
            moments = assemble(item, video, settings.media) if video is not None else [_whole(item)]
            inputs: list[MomentInput] = []
            for moment in moments:
                text = readable_text(item.text, moment, settings.media)
                frames = fps = None
                if embedder.uses_frames and item.path is not None:
                    if moment.span is None or (video is not None and video.spans.whole):
                        sampled = read_frames(item.path, policy, settings.frames.max_side)
                    else:
                        sampled = read_span_frames(
                            item.path, policy, moment.span, settings.frames.max_side, video.spans.duration_s
                        )
                    frames, fps = sampled.frames, sampled.sample_fps
                elif item.path is not None and not text:
                    nothing_to_read += 1
                    continue
                inputs.append(
                    MomentInput(keyed_item, moment, EmbedInput(item_id=moment.id, text=text, frames=frames, fps=fps))
                )
            if not inputs:
                raise ItemError(
                    item.id,
                    "this preset's embedder reads text only (caption, narration or transcript) and the item has "
                    "no text: add a NAME.txt caption beside the video or a `text` column in the manifest",
                )
            kept.extend(inputs)
        except ItemError as error:
            failed.append(failure_of(item, error))
    return kept, failed, nothing_to_read


def _whole(item: GalleryItem) -> Moment:
    return Moment(id=item.id, video_id=item.id, span=None)


def embed_batch(
    batch: Sequence[KeyedItem],
    embedder: Embedder,
    settings: R3Settings,
    media: Mapping[str, VideoMoments] | None = None,
) -> EmbeddedBatch:
    """Embed one batch of gallery items; failures are per item, the rest still get rows.

    Frames are decoded one forward pass (`models.embed_batch_size` items) at a time and dropped once
    embedded, so a task's memory does not grow with `index.batch_size`: only vectors are kept.
    """
    step = settings.models.embed_batch_size if embedder.uses_frames else max(len(batch), 1)
    result = EmbeddedBatch(rows=[], failed=[])
    for start in range(0, len(batch), step):
        part = _embed_part(batch[start : start + step], embedder, settings, media)
        result.rows.extend(part.rows)
        result.failed.extend(part.failed)
        result.nothing_to_read += part.nothing_to_read
    return result


def _embed_part(
    batch: Sequence[KeyedItem], embedder: Embedder, settings: R3Settings, media: Mapping[str, VideoMoments] | None
) -> EmbeddedBatch:
    kept, failed, nothing_to_read = embed_inputs(batch, embedder, settings, media)
    rows: list[GalleryRow] = []
    if kept:
        try:
            vectors = embedder.embed_documents([m.embed for m in kept], settings.query.document_instruction)
        except ItemError:
            # One item poisoned the forward pass: embed one by one to name it and keep the others.
            vectors = None
        if vectors is None:
            rows, more_failed = _embed_one_by_one(kept, embedder, settings)
            failed.extend(more_failed)
        else:
            rows, more_failed = _rows(kept, np.asarray(vectors))
            failed.extend(more_failed)
    return EmbeddedBatch(rows=rows, failed=failed, nothing_to_read=nothing_to_read)


def _embed_one_by_one(
    kept: Sequence[MomentInput], embedder: Embedder, settings: R3Settings
) -> tuple[list[GalleryRow], list[ItemFailure]]:
    vectors: list[np.ndarray | None] = []
    errors: dict[int, ItemError] = {}
    for at, moment_input in enumerate(kept):
        try:
            vectors.append(embedder.embed_documents([moment_input.embed], settings.query.document_instruction)[0])
        except ItemError as error:
            vectors.append(None)
            errors[at] = error
    return _rows(kept, vectors, errors)


def _rows(
    kept: Sequence[MomentInput], vectors: Sequence[np.ndarray | None], errors: Mapping[int, ItemError] | None = None
) -> tuple[list[GalleryRow], list[ItemFailure]]:
    """Rows of the moments, a video at a time: a video with one bad moment fails whole (its rows are replaced
    together, so a partial set would read as the video's new content)."""
    errors = dict(errors or {})
    for at, (moment_input, vector) in enumerate(zip(kept, vectors)):
        if at not in errors and vector is not None and not np.all(np.isfinite(vector)):
            errors[at] = ItemError(moment_input.keyed.item.id, "the embedder returned non-finite values (NaN or inf)")
    bad = {kept[at].keyed.item.id: error for at, error in errors.items()}
    rows = [
        _row(moment_input, vector)
        for moment_input, vector in zip(kept, vectors)
        if moment_input.keyed.item.id not in bad and vector is not None
    ]
    failed, seen = [], set()
    for moment_input in kept:
        item = moment_input.keyed.item
        if item.id in bad and item.id not in seen:
            seen.add(item.id)
            failed.append(failure_of(item, bad[item.id]))
    return rows, failed


def _row(moment_input: MomentInput, vector: np.ndarray) -> GalleryRow:
    item, moment, embed = moment_input.keyed.item, moment_input.moment, moment_input.embed
    return GalleryRow(
        id=moment.id,
        path=str(item.path) if item.path is not None else None,
        text=item.text,
        group=item.group,
        content_key=moment_input.keyed.content_key,
        num_frames=int(embed.frames.shape[0]) if embed.frames is not None else None,
        vector=np.asarray(vector, dtype=np.float32),
        video_id=moment.video_id,
        start_s=moment.span.start_s if moment.span is not None else None,
        end_s=moment.span.end_s if moment.span is not None else None,
        transcript=moment.transcript,
        screen_text=moment.screen_text,
    )
