"""The rerank stage: the recalled top-K rescored under the rerank policy, one query and one candidate at a time
when a batched call fails, then R^3's final min-max fusion. Nothing here imports Prefect."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from r3tasks.cache import keys as cachekeys
from r3tasks.cache.stages import StageCache
from r3tasks.errors import ItemError
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.media.cues import Span
from r3tasks.media.moments import moment_text
from r3tasks.models.base import RerankCandidate, Reranker, RerankQuery
from r3tasks.query.isolation import batched_or_alone, reason_of
from r3tasks.query.placement import place
from r3tasks.query.prepare import source_frames
from r3tasks.query.state import QueryState, SourceInfo
from r3tasks.rerank.final import rerank_topk
from r3tasks.rerank.policy import RerankOutcome, RerankPolicy, apply_policy, rerank_policy
from r3tasks.settings.tree import R3Settings

log = logging.getLogger(__name__)
# Seconds between two rerank progress lines (and one at the end of each call).
PROGRESS_EVERY_S = 10.0


def rerank(
    states: Sequence[QueryState],
    reranker: Reranker | None,
    gallery: PinnedGallery,
    settings: R3Settings,
    cache: StageCache,
    frame_cache: StageCache,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> None:
    """Rescore only the recalled top-K, then the final weighted min-max fusion (K = 0: recall order).

    A candidate the reranker cannot score is left unscored (it keeps its recall order after the
    scored ones, as the reference does for a missing video) and named in the query's warnings; a query
    none of whose candidates can be scored carries the error. Progress (queries done of `total`, pairs
    per second) goes to `logger` every `PROGRESS_EVERY_S` and at the end; `done_before` counts the
    queries of earlier chunks.
    """
    q = settings.query
    logger = logger or log
    total = done_before + len(states) if total is None else total
    started = last = time.monotonic()
    pairs = 0
    for n, state in enumerate(states, start=1):
        if state.ok:
            k = min(q.rerank_k, len(state.recalled))
            if reranker is None or k == 0:
                state.ranked = rerank_topk(state.recalled, {}, 0, q.final_embedding_weight, q.final_reranker_weight)
            else:
                try:
                    pairs += _rerank_one(state, reranker, gallery, settings, cache, frame_cache, k)
                except Exception as error:  # noqa: BLE001 - one query's failure is its own
                    state.error = f"rerank failed: {reason_of(error)}"
            if state.ok:
                state.ranked = place(state.ranked, gallery, q)
        now = time.monotonic()
        if reranker is not None and (now - last >= PROGRESS_EVERY_S or n == len(states)):
            elapsed = max(now - started, 1e-9)
            logger.info(
                "rerank: %d/%d queries, %d pairs scored in %.1f s (%.1f pairs/s)",
                done_before + n,
                total,
                pairs,
                elapsed,
                pairs / elapsed,
            )
            last = now


def _rerank_one(
    state: QueryState,
    reranker: Reranker,
    gallery: PinnedGallery,
    settings: R3Settings,
    cache: StageCache,
    frame_cache: StageCache,
    k: int,
) -> int:
    """Rerank one query under the rerank policy (r3tasks.rerank.policy: which of the top `k` get scored,
    and whether the scores are used) into `state.ranked`; returns the pairs the model scored."""
    policy = rerank_policy(settings.query)

    # Built when the policy first asks for a score: a query whose policy keeps recall's order needs no
    # rerank query, so no source frames and no reranker (see LazyReranker).
    def query_with(with_reasoning: bool) -> Callable[[], RerankQuery]:
        built: list[RerankQuery] = []

        def build() -> RerankQuery:
            if not built:
                try:
                    built.append(_rerank_query(state, reranker, settings, frame_cache, with_reasoning))
                except ItemError as error:
                    raise _NoRerankQuery(error.item, error.reason) from None
            return built[0]

        return build

    try:
        outcome, scores, failures, pairs = _apply_policy(
            state, query_with(True), policy, reranker, gallery, settings, cache, frame_cache
        )
    except _NoRerankQuery as error:
        state.error = error.reason
        return 0
    if not scores and failures and state.gate_used and state.reasoning is not None:
        # The reasoning is model output inside the prompt: when nothing scores with it, try the edit alone.
        retry = _apply_policy(state, query_with(False), policy, reranker, gallery, settings, cache, frame_cache)
        pairs += retry[3]
        if retry[1]:
            state.warnings.append(f"rerank without the reasoning, which failed: {next(iter(failures.values()))}")
            outcome, scores, failures = retry[0], retry[1], retry[2]
    if not scores and failures:
        raise ItemError(state.query.id, next(iter(failures.values())))
    if failures:
        named = "; ".join(f"{item_id}: {reason}" for item_id, reason in failures.items())
        state.warnings.append(f"rerank left {len(failures)} of {outcome.depth} candidates unscored ({named})")
    state.ranked = outcome.ranked
    state.rerank_decision = outcome.decision()
    if outcome.fallback:
        state.warnings.append(outcome.fallback)
    return pairs


class _NoRerankQuery(ItemError):
    """The query cannot be put to the reranker (no source video or caption): the query's error."""


def _apply_policy(
    state: QueryState,
    rerank_query: Callable[[], RerankQuery],
    policy: RerankPolicy,
    reranker: Reranker,
    gallery: PinnedGallery,
    settings: R3Settings,
    cache: StageCache,
    frame_cache: StageCache,
) -> tuple[RerankOutcome, dict[str, float], dict[str, str], int]:
    """(outcome, scores by id, failure reason by id, pairs the model scored) of one policy run."""
    scores: dict[str, float] = {}
    failures: dict[str, str] = {}
    pairs = 0

    def score(ids: Sequence[str]) -> dict[str, float]:
        nonlocal pairs
        got, failed, scored = _score_candidates(
            state, ids, rerank_query(), reranker, gallery, settings, cache, frame_cache
        )
        scores.update(got)
        failures.update(failed)
        pairs += scored
        return got

    outcome = apply_policy(state.recalled, score, policy, lambda: reranker.fingerprint)
    return outcome, scores, failures, pairs


def _score_candidates(
    state: QueryState,
    ids: Sequence[str],
    rerank_query: RerankQuery,
    reranker: Reranker,
    gallery: PinnedGallery,
    settings: R3Settings,
    cache: StageCache,
    frame_cache: StageCache,
) -> tuple[dict[str, float], dict[str, str], int]:
    """(scores by id, failure reason by id, pairs the model scored) for these recalled ids: cached scores
    first, the rest in one call, or one by one when that call fails.

    Candidates whose pair has the same cache key (the same content for what the reranker reads: in a
    caption gallery, clips with one narration) are one pair: the model scores it once (about 30% of
    EgoCVR's top-20 pairs).
    """
    scores: dict[str, float] = {}
    failures: dict[str, str] = {}
    missing: list[RerankCandidate] = []
    keys: dict[str, str] = {}
    sharing: dict[str, list[str]] = {}  # cache key -> the ids waiting for that one pair
    for item_id in ids:
        record = gallery.records[item_id]
        keys[item_id] = key = cachekeys.rerank_key(
            reranker, rerank_query, state.source.content_key if state.source else None, record.content_key, settings
        )
        cached = cache.get(key)
        if cached is not None:
            scores[item_id] = cached
            continue
        if key in sharing:
            sharing[key].append(item_id)
            continue
        try:
            missing.append(_candidate(record, reranker, settings, frame_cache))
            sharing[key] = [item_id]
        except Exception as error:  # noqa: BLE001 - this candidate only
            failures[item_id] = reason_of(error)
    results = batched_or_alone(
        missing, lambda batch: list(np.asarray(reranker.score(rerank_query, batch), dtype=np.float64))
    )
    for candidate, result in zip(missing, results):
        key = keys[candidate.item_id]
        for item_id in sharing[key]:
            if isinstance(result, Exception):
                failures[item_id] = reason_of(result)
            else:
                scores[item_id] = float(result)
        if not isinstance(result, Exception):
            cache.put(key, float(result))
    return scores, failures, len(missing)


def _rerank_query(
    state: QueryState, reranker: Reranker, settings: R3Settings, frame_cache: StageCache, with_reasoning: bool = True
) -> RerankQuery:
    q = settings.query
    query = state.query
    if isinstance(query, TextQuery):
        return RerankQuery(text=query.text, instruction=q.text_reranker_instruction)
    assert isinstance(query, ComposedQuery) and state.source is not None
    if with_reasoning and state.gate_used and state.reasoning is not None:
        text = q.reasoning_reranker_template.format(edit=query.edit, reasoning=state.reasoning.text.strip())
    else:
        text = query.edit
    frames = None
    if reranker.uses_frames and state.source.path is not None:
        frames = source_frames(state.source, "rerank", settings, frame_cache)
    if frames is None:
        if not state.source.text:
            raise ItemError(query.id, "the reranker needs the source's video or caption, and it has neither")
        text = f"{q.source_text_template.format(source_text=state.source.text)}\n{text}"
    return RerankQuery(
        text=text,
        instruction=q.reranker_instruction,
        frames=frames.frames if frames is not None else None,
        fps=frames.sample_fps if frames is not None else None,
        source_text=state.source.text,
        edit=query.edit,
    )


def _candidate(record, reranker: Reranker, settings: R3Settings, frame_cache: StageCache) -> RerankCandidate:
    frames = None
    text = moment_text(record.text, [record])
    if reranker.uses_frames and record.path:
        segment = record.id != record.video and record.start_s is not None and record.end_s is not None
        source = SourceInfo(
            item_id=record.id,
            path=Path(record.path),
            text=text,
            content_key=record.content_key,
            span=Span(record.start_s, record.end_s) if segment else None,
        )
        try:
            frames = source_frames(source, "rerank", settings, frame_cache)
        except (ItemError, OSError):
            frames = None  # the candidate's caption still lets it be scored; its video is reported at index time
    return RerankCandidate(
        item_id=record.id,
        text=text,
        frames=frames.frames if frames is not None else None,
        fps=frames.sample_fps if frames is not None else None,
    )
