"""Target-side reasoning for composed queries (R^3's first step), cached by content and model."""

from __future__ import annotations

from collections.abc import Sequence

from r3tasks.cache import keys as cachekeys
from r3tasks.cache.stages import StageCache
from r3tasks.inputs.queries import ComposedQuery
from r3tasks.models.base import (
    Reasoner,
    ReasonInput,
)
from r3tasks.query.isolation import batched_or_alone, reason_of
from r3tasks.query.prepare import source_frames
from r3tasks.query.state import QueryState
from r3tasks.settings.tree import R3Settings


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
