"""The query side of R^3 as plain steps: resolve sources, reason, embed (fused recall: r3tasks.recall; rerank:
r3tasks.rerank_stage).

Every model stage goes through a `StageCache` keyed by content and model
fingerprints, so a repeated query calls no model. The flow wires these steps
into Prefect tasks; nothing here imports Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from r3tasks import cachekeys
from r3tasks.errors import ItemError, R3Error
from r3tasks.frames import SampledFrames, policy_from_settings, read_frames
from r3tasks.fusion import RankedItem
from r3tasks.gallery import PinnedGallery
from r3tasks.isolation import batched_or_alone, reason_of
from r3tasks.models.base import (
    Embedder,
    EmbedInput,
    QueryTemplates,
    Reasoner,
    Reasoning,
    ReasonInput,
)
from r3tasks.models.registry import query_templates
from r3tasks.queries import ComposedQuery, Query, TextQuery, check_query, resolve_source_path
from r3tasks.recall import recall  # noqa: F401 - re-exported: the fused recall stage lives in its own module
from r3tasks.settings import R3Settings
from r3tasks.sources import file_fingerprint
from r3tasks.stagecache import StageCache, stage_key

log = logging.getLogger(__name__)
# Seconds between two rerank progress lines (and one at the end of each call).
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class SourceInfo:
    """A composed query's source as the models see it."""

    item_id: str | None  # set when the source is a gallery item (it is then excluded from results)
    path: Path | None
    text: str | None
    content_key: str


@dataclass
class QueryState:
    """Everything one query accumulates on its way through the stages."""

    query: Query
    error: str | None = None
    source: SourceInfo | None = None
    reasoning: Reasoning | None = None
    base_vectors: np.ndarray | None = None  # (B, D)
    reasoning_vector: np.ndarray | None = None  # (D,)
    agreement: float | None = None
    source_similarity: float | None = None  # reasoning text vs the source's text (1.0: a copy)
    names_edit: bool | None = None  # the reasoning holds a word the edit asks for that the source lacks
    gate_used: bool = False
    recalled: list[tuple[str, float]] = field(default_factory=list)
    ranked: list[RankedItem] = field(default_factory=list)
    # What went wrong without costing the query its answer (reasoning left out, candidates unscored).
    warnings: list[str] = field(default_factory=list)
    rerank_decision: dict | None = None  # pairs scored, depth reached, gate that kept recall order

    @property
    def ok(self) -> bool:
        return self.error is None


# -- validation and sources ----------------------------------------------------------------------
def prepare(queries: Sequence[Query], gallery: PinnedGallery, settings: R3Settings) -> list[QueryState]:
    """Check every query and resolve composed sources; a bad query carries its error, the rest go on."""
    states = []
    for query in queries:
        state = QueryState(query=query, error=check_query(query, settings.query.max_edit_chars))
        if state.ok and isinstance(query, ComposedQuery):
            try:
                state.source = resolve_source(query, gallery, settings)
            except (ValueError, ItemError) as error:
                state.error = error.reason if isinstance(error, ItemError) else str(error)
            except Exception as error:  # noqa: BLE001 - an unreadable sidecar or source costs only this query
                state.error = f"source lookup failed: {reason_of(error)}"
        states.append(state)
    return states


def resolve_source(query: ComposedQuery, gallery: PinnedGallery, settings: R3Settings) -> SourceInfo:
    record = gallery.records.get(query.source)
    if record is not None:
        path = Path(record.path) if record.path else None
        return SourceInfo(
            item_id=record.id, path=path, text=query.source_text or record.text, content_key=record.content_key
        )
    if not settings.gallery.roots:
        raise ValueError(f"unknown source id {query.source!r}: not in gallery table version {gallery.ref.version}")
    path = resolve_source_path(query.source, settings.gallery.roots)
    sidecar = path.with_suffix(".txt")
    text = query.source_text or (
        sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else None
    )
    return SourceInfo(
        item_id=None, path=path, text=text or None, content_key=file_fingerprint(path, settings.frames.fingerprint)
    )


def source_frames(source: SourceInfo, purpose: str, settings: R3Settings, cache: StageCache) -> SampledFrames | None:
    """Sampled frames of a source video, decoded once per (content, sampling) and cached."""
    if source.path is None:
        return None
    policy = policy_from_settings(settings.frames, purpose)  # type: ignore[arg-type]
    key = stage_key("frames", source.content_key, purpose, settings.settings_hash("frames"))
    frames = cache.get(key)
    if frames is None:
        frames = read_frames(source.path, policy, settings.frames.max_side)
        cache.put(key, frames)
    return frames


# -- reasoning -------------------------------------------------------------------------------------
def reasoning_key(state: QueryState, reasoner: Reasoner, settings: R3Settings) -> str:
    query = state.query
    assert isinstance(query, ComposedQuery) and state.source is not None
    return cachekeys.reasoning_key(reasoner, state.source.text, state.source.content_key, query.edit, settings)


def run_reasoning(
    states: Sequence[QueryState], reasoner: Reasoner, settings: R3Settings, cache: StageCache, frame_cache: StageCache
) -> None:
    """Target-side reasoning for the composed queries that lack it, `query.stage_chunk` at a time (the batch
    the reasoner sees, with its source frames in memory); errors end only their query."""
    size = settings.query.stage_chunk
    for start in range(0, len(states), size):
        _reason_chunk(states[start : start + size], reasoner, settings, cache, frame_cache)


def _reason_chunk(
    states: Sequence[QueryState], reasoner: Reasoner, settings: R3Settings, cache: StageCache, frame_cache: StageCache
) -> None:
    todo: list[tuple[QueryState, str]] = []
    for state in states:
        if not (state.ok and isinstance(state.query, ComposedQuery) and settings.query.use_reasoning):
            continue
        key = reasoning_key(state, reasoner, settings)
        cached = cache.get(key)
        if cached is not None:
            state.reasoning = cached
        else:
            todo.append((state, key))
    requests, owners = [], []
    for state, key in todo:
        try:
            frames = source_frames(state.source, "reasoning", settings, frame_cache)  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - one unreadable source ends only its query
            state.error = f"source video unreadable: {reason_of(error)}"
            continue
        query = state.query
        assert isinstance(query, ComposedQuery)
        requests.append(
            ReasonInput(
                query_id=query.id,
                edit=query.edit,
                frames=frames.frames if frames is not None else None,
                fps=frames.sample_fps if frames is not None else None,
                source_text=state.source.text if state.source else None,
            )
        )
        owners.append((state, key))
    if not requests:
        return
    results = batched_or_alone(requests, reasoner.reason)
    for (state, key), result in zip(owners, results):
        if isinstance(result, Exception):
            state.error = f"reasoning failed: {reason_of(result)}"
            continue
        cache.put(key, result)
        state.reasoning = result


# -- query embeddings ----------------------------------------------------------------------------
def _base_texts(state: QueryState, settings: R3Settings, text_only: bool, templates: QueryTemplates) -> list[str]:
    query = state.query
    if isinstance(query, TextQuery):
        return [query.text]
    assert isinstance(query, ComposedQuery)
    base = templates.base_template.format(edit=query.edit)
    if text_only or (state.source is not None and state.source.path is None):
        # No pixels reach a text embedder: the source's caption stands in for the reference video.
        if not (state.source and state.source.text):
            raise ItemError(
                query.id,
                "this preset embeds text and the source has no caption/narration: give the query a "
                "`source_text` or caption the source item",
            )
        return [f"{templates.source_text_template.format(source_text=state.source.text)}\n{base}"]
    return [base]


def _reasoning_text(state: QueryState, text_only: bool, templates: QueryTemplates) -> str | None:
    query = state.query
    if not isinstance(query, ComposedQuery) or state.reasoning is None or not state.reasoning.text.strip():
        return None
    text = templates.reasoning_template.format(edit=query.edit, reasoning=state.reasoning.text.strip())
    if text_only or (state.source is not None and state.source.path is None):
        text = f"{templates.source_text_template.format(source_text=state.source.text)}\n{text}"  # type: ignore[union-attr]
    return text


def embed_queries(
    states: Sequence[QueryState], embedder: Embedder, settings: R3Settings, cache: StageCache, frame_cache: StageCache
) -> None:
    """Base and reasoning query vectors, one query at a time; whatever one query raises ends only it."""
    text_only = not embedder.uses_frames
    templates = query_templates(settings, embedder)
    for state in states:
        if state.ok:
            try:
                _embed_query(state, embedder, settings, cache, frame_cache, text_only, templates)
            except Exception as error:  # noqa: BLE001 - one query's failure is its own
                state.error = f"query embedding failed: {reason_of(error)}"


def _embed_query(
    state: QueryState,
    embedder: Embedder,
    settings: R3Settings,
    cache: StageCache,
    frame_cache: StageCache,
    text_only: bool,
    templates: QueryTemplates,
) -> None:
    query = state.query
    try:
        frames = None
        if isinstance(query, ComposedQuery) and not text_only:
            frames = source_frames(state.source, "gallery", settings, frame_cache)  # type: ignore[arg-type]
        texts = _base_texts(state, settings, text_only, templates)
        reasoning_text = _reasoning_text(state, text_only, templates)
    except ItemError as error:
        state.error = error.reason
        return
    instruction = (
        settings.query.query_instruction if isinstance(query, ComposedQuery) else settings.query.text_query_instruction
    )

    def embed(all_texts: list[str]) -> np.ndarray:
        key = cachekeys.embedding_key(
            embedder, all_texts, instruction, state.source.content_key if state.source else None, settings
        )
        vectors = cache.get(key)
        if vectors is None:
            inputs = [
                EmbedInput(
                    item_id=query.id,
                    text=text,
                    frames=frames.frames if frames is not None else None,
                    fps=frames.sample_fps if frames is not None else None,
                )
                for text in all_texts
            ]
            vectors = np.asarray(embedder.embed_queries(inputs, instruction), dtype=np.float32)
            if vectors.shape[0] != len(all_texts):
                raise ValueError(f"the embedder returned {vectors.shape[0]} vectors for {len(all_texts)} texts")
            cache.put(key, vectors)
        return vectors

    if reasoning_text is None:
        vectors = embed(texts)
    else:
        try:
            vectors = embed(texts + [reasoning_text])
        except Exception as error:  # noqa: BLE001 - the reasoning is model output: it must not cost the query
            vectors = embed(texts)
            reasoning_text = None
            state.warnings.append(f"reasoning left out of the query embedding: {reason_of(error)}")
    state.base_vectors = vectors[: len(texts)]
    state.reasoning_vector = vectors[len(texts)] if reasoning_text else None


# -- results ---------------------------------------------------------------------------------------
def result_of(state: QueryState, lineage: dict) -> dict:
    query = state.query
    return {
        "id": query.id,
        "kind": query.kind,
        "ranked": [asdict(item) for item in state.ranked] if state.ok else [],
        "reasoning": state.reasoning.text if state.reasoning is not None else None,
        "reasoning_raw": state.reasoning.raw if state.reasoning is not None else None,
        "gate": {
            "agreement": state.agreement,
            "source_similarity": state.source_similarity,
            "names_edit": state.names_edit,
            "used": state.gate_used,
        },
        "rerank": state.rerank_decision,
        "error": state.error,
        "warnings": list(state.warnings),
        "lineage": lineage,
    }


def ensure_gallery_not_empty(gallery: PinnedGallery) -> None:
    if len(gallery) == 0:
        raise R3Error(
            f"gallery table {gallery.ref.table} at {gallery.ref.uri} is empty: run `r3 index` with this preset first"
        )
