"""Indexing a gallery, as plain steps the flow wires: key, plan, embed a batch, summarise.

The plan is computed from what the table stores, so a rerun after a crash, a
change of a few files, or a removal does exactly the missing work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from r3tasks.errors import ItemError
from r3tasks.gallery.table import GalleryRow
from r3tasks.inputs.frames import read_frames, sampling_policy
from r3tasks.inputs.sources import GalleryItem, KeyedItem, content_key
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

    def to_dict(self) -> dict:
        return asdict(self)


def failure_of(item: GalleryItem, error: Exception) -> ItemFailure:
    reason = error.reason if isinstance(error, ItemError) else f"{type(error).__name__}: {error}"
    return ItemFailure(id=item.id, path=str(item.path) if item.path else None, reason=reason)


def key_items(items: Sequence[GalleryItem], settings: R3Settings) -> KeyingResult:
    """Content keys for every item; an unreadable file becomes that item's failure, not the batch's."""
    result = KeyingResult()
    for item in items:
        try:
            result.keyed.append(KeyedItem(item=item, content_key=content_key(item, settings.frames.fingerprint)))
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


def embed_inputs(
    batch: Sequence[KeyedItem], embedder: Embedder, settings: R3Settings
) -> tuple[list[KeyedItem], list[EmbedInput], list[ItemFailure]]:
    """Decode what the embedder needs for each item; a broken video fails only its item."""
    policy = sampling_policy(settings.frames, "gallery")
    kept: list[KeyedItem] = []
    inputs: list[EmbedInput] = []
    failed: list[ItemFailure] = []
    for keyed_item in batch:
        item = keyed_item.item
        try:
            frames = fps = None
            if embedder.uses_frames and item.path is not None:
                sampled = read_frames(item.path, policy, settings.frames.max_side)
                frames, fps = sampled.frames, sampled.sample_fps
            elif item.path is not None and not item.text:
                raise ItemError(
                    item.id,
                    "this preset's embedder reads text only (caption, narration or transcript) and the item has "
                    "no text: add a NAME.txt caption beside the video or a `text` column in the manifest",
                )
            inputs.append(EmbedInput(item_id=item.id, text=item.text, frames=frames, fps=fps))
            kept.append(keyed_item)
        except ItemError as error:
            failed.append(failure_of(item, error))
    return kept, inputs, failed


def embed_batch(
    batch: Sequence[KeyedItem],
    embedder: Embedder,
    settings: R3Settings,
) -> EmbeddedBatch:
    """Embed one batch of gallery items; failures are per item, the rest still get rows.

    Frames are decoded one forward pass (`models.embed_batch_size` items) at a time and dropped once
    embedded, so a task's memory does not grow with `index.batch_size`: only vectors are kept.
    """
    step = settings.models.embed_batch_size if embedder.uses_frames else max(len(batch), 1)
    rows: list[GalleryRow] = []
    failed: list[ItemFailure] = []
    for start in range(0, len(batch), step):
        part = _embed_part(batch[start : start + step], embedder, settings)
        rows.extend(part.rows)
        failed.extend(part.failed)
    return EmbeddedBatch(rows=rows, failed=failed)


def _embed_part(batch: Sequence[KeyedItem], embedder: Embedder, settings: R3Settings) -> EmbeddedBatch:
    kept, inputs, failed = embed_inputs(batch, embedder, settings)
    rows: list[GalleryRow] = []
    if inputs:
        try:
            vectors = embedder.embed_documents(inputs, settings.query.document_instruction)
        except ItemError:
            # One item poisoned the forward pass: embed one by one to name it and keep the others.
            vectors = None
        if vectors is None:
            rows, more_failed = _embed_one_by_one(kept, inputs, embedder, settings)
            failed.extend(more_failed)
        else:
            for keyed_item, embed_input, vector in zip(kept, inputs, np.asarray(vectors)):
                try:
                    rows.append(_row(keyed_item, embed_input, vector))
                except ItemError as error:
                    failed.append(failure_of(keyed_item.item, error))
    return EmbeddedBatch(rows=rows, failed=failed)


def _embed_one_by_one(
    kept: Sequence[KeyedItem], inputs: Sequence[EmbedInput], embedder: Embedder, settings: R3Settings
) -> tuple[list[GalleryRow], list[ItemFailure]]:
    rows, failed = [], []
    for keyed_item, embed_input in zip(kept, inputs):
        try:
            vector = embedder.embed_documents([embed_input], settings.query.document_instruction)[0]
            rows.append(_row(keyed_item, embed_input, vector))
        except ItemError as error:
            failed.append(failure_of(keyed_item.item, error))
    return rows, failed


def _row(keyed_item: KeyedItem, embed_input: EmbedInput, vector: np.ndarray) -> GalleryRow:
    item = keyed_item.item
    if not np.all(np.isfinite(vector)):
        raise ItemError(item.id, "the embedder returned non-finite values (NaN or inf)")
    return GalleryRow(
        id=item.id,
        path=str(item.path) if item.path is not None else None,
        text=item.text,
        group=item.group,
        content_key=keyed_item.content_key,
        num_frames=int(embed_input.frames.shape[0]) if embed_input.frames is not None else None,
        vector=np.asarray(vector, dtype=np.float32),
    )
