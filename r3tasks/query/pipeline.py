"""A query batch's steps in one call, for callers without Prefect (the warm service, `r3 serve`).

The `query-batch` flow runs the same steps as separate tasks (progress, retries and lineage per chunk);
this is their order for everyone else, so a served query and a batch query get the same answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from r3tasks.cache.stages import StageCache
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.inputs.queries import ComposedQuery, Query
from r3tasks.models.registry import LazyReranker, shared_embedder, shared_reasoner
from r3tasks.query.embedding import embed_queries
from r3tasks.query.prepare import prepare
from r3tasks.query.reasoning import run_reasoning
from r3tasks.query.recall import recall
from r3tasks.query.state import QueryState
from r3tasks.rerank.stage import rerank
from r3tasks.settings.tree import R3Settings


def answer(
    queries: Sequence[Query],
    gallery: PinnedGallery,
    settings: R3Settings,
    caches: dict[str, StageCache],
    where: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> list[QueryState]:
    """Validate -> reason -> embed -> fused recall -> rerank, against one pinned gallery version and among
    the rows filter `where` keeps (all when None; check it first with `r3tasks.gallery.filters.check_where`).

    `caches` are `r3tasks.query.output.batch_caches(settings)`. Models load on first use through the
    registry's shared ones; the reasoner only when reasoning is on and a composed query needs it, the
    reranker only when `query.rerank_k` > 0. Whatever one query raises ends only that query.
    """
    states = prepare(queries, gallery, settings)
    if settings.query.use_reasoning and any(s.ok and isinstance(s.query, ComposedQuery) for s in states):
        run_reasoning(states, shared_reasoner(settings), settings, caches["reasoning"], caches["frames"])
    embed_queries(states, shared_embedder(settings), settings, caches["query-embedding"], caches["frames"])
    recall(states, gallery, settings, where)
    reranker = LazyReranker(settings) if settings.query.rerank_k > 0 else None
    rerank(states, reranker, gallery, settings, caches["rerank"], caches["frames"], logger=logger)
    return states
