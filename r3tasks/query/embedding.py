"""Base and reasoning query vectors (R^3's query templates), cached by content and model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r3tasks.cache import keys as cachekeys
from r3tasks.cache.stages import StageCache
from r3tasks.errors import ItemError
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.models.base import (
    Embedder,
    EmbedInput,
    QueryTemplates,
)
from r3tasks.models.registry import query_templates
from r3tasks.query.isolation import reason_of
from r3tasks.query.prepare import source_frames
from r3tasks.query.state import QueryState
from r3tasks.settings.tree import R3Settings


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
    templates = query_templates(settings)
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
