"""The query-batch flow: load -> pin gallery version -> reason -> embed -> fused recall -> rerank -> results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.utilities.annotations import opaque, quote

from flows.assets import record_results
from flows.common import code_version, flow_settings, retry_on_transient
from r3tasks.cache.stages import StageCache
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.gallery.upkeep import resolve_version
from r3tasks.gallery.views import open_store, pinned, release
from r3tasks.inputs.preflight import query_file, where_filter
from r3tasks.inputs.queries import ComposedQuery, Query
from r3tasks.models.registry import LazyReranker, shared_embedder, shared_reasoner
from r3tasks.query.embedding import embed_queries
from r3tasks.query.output import batch_caches, batch_lineage, write_batch
from r3tasks.query.prepare import ensure_gallery_not_empty, prepare
from r3tasks.query.reasoning import run_reasoning
from r3tasks.query.recall import recall
from r3tasks.query.state import QueryState
from r3tasks.rerank.stage import rerank
from r3tasks.settings.tree import R3Settings

# The running batch's stage caches by cache folder: one set per batch, so its hits and misses add up.
_batch_caches: dict[str, dict[str, StageCache]] = {}


def _caches(settings: R3Settings) -> dict[str, StageCache]:
    key = str(settings.cache_dir)
    if key not in _batch_caches:
        _batch_caches[key] = batch_caches(settings)
    return _batch_caches[key]


def _pinned(settings: R3Settings, version: int) -> PinnedGallery:
    return pinned(settings, version)  # one view per batch: metadata and vectors read once


def _stage_lineage(stage: str, fingerprint: str | None, cache: StageCache | None, version: int, n: int) -> None:
    create_table_artifact(
        [
            {
                "stage": stage,
                "queries": n,
                "model fingerprint": fingerprint or "-",
                "cache hits (batch so far)": cache.hits if cache else 0,
                "cache misses (batch so far)": cache.misses if cache else 0,
                "gallery version": version,
            }
        ],
        key=f"lineage-{stage}",
        description=f"Lineage of the {stage} stage for one chunk of queries.",
    )


@task(
    name="pin-gallery-version",
    cache_policy=NONE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient,
)
def pin_task(settings: R3Settings, version: int | str | None) -> int:
    gallery = pinned(settings, resolve_version(open_store(settings), version))
    ensure_gallery_not_empty(gallery)
    return gallery.ref.version


@task(name="validate-queries", cache_policy=NONE)
def prepare_task(queries: list[Query], settings: R3Settings, version: int) -> list[QueryState]:
    return prepare(queries, _pinned(settings, version), settings)


@task(name="reasoning", cache_policy=NONE)
def reasoning_task(states: list[QueryState], settings: R3Settings, version: int) -> list[QueryState]:
    """Cached per query by (source content, edit, reasoner fingerprint, prompt) in the data home."""
    needs = [s for s in states if s.ok and isinstance(s.query, ComposedQuery)]
    if not needs or not settings.query.use_reasoning:
        return states
    caches = _caches(settings)
    reasoner = shared_reasoner(settings)
    run_reasoning(states, reasoner, settings, caches["reasoning"], caches["frames"])
    _stage_lineage("reasoning", reasoner.fingerprint, caches["reasoning"], version, len(needs))
    return states


@task(name="query-embedding", cache_policy=NONE)
def embedding_task(states: list[QueryState], settings: R3Settings, version: int) -> list[QueryState]:
    caches = _caches(settings)
    embedder = shared_embedder(settings)
    embed_queries(states, embedder, settings, caches["query-embedding"], caches["frames"])
    _stage_lineage("query-embedding", embedder.fingerprint, caches["query-embedding"], version, len(states))
    return states


@task(name="fused-recall", cache_policy=NONE)
def recall_task(
    states: list[QueryState], settings: R3Settings, version: int, where: str | None = None
) -> list[QueryState]:
    recall(states, _pinned(settings, version), settings, where)
    return states


@task(name="rerank", cache_policy=NONE)
def rerank_task(
    states: list[QueryState], settings: R3Settings, version: int, done_before: int = 0, total: int | None = None
) -> list[QueryState]:
    caches = _caches(settings)
    reranker = LazyReranker(settings) if settings.query.rerank_k > 0 else None
    rerank(
        states,
        reranker,
        _pinned(settings, version),
        settings,
        caches["rerank"],
        caches["frames"],
        logger=get_run_logger(),
        done_before=done_before,
        total=total,
    )
    _stage_lineage(
        "rerank", reranker.fingerprint if reranker and reranker.loaded else None, caches["rerank"], version, len(states)
    )
    return states


@task(name="write-results", cache_policy=NONE, retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_transient)
def results_task(
    states: list[QueryState],
    settings: R3Settings,
    version: int,
    out: str | None,
    covrr_out: str | None,
    stage_seconds: dict[str, float],
    where: str | None = None,
) -> dict:
    gallery = _pinned(settings, version)
    caches = _caches(settings)
    lineage = batch_lineage(states, gallery, settings, caches, code_version(), where)
    written = write_batch(
        states, gallery, settings, lineage, caches["frames"], stage_seconds, out, covrr_out, get_run_logger()
    )
    create_markdown_artifact(written.report, key="query-report", description="Each query's reasoning and top-5.")
    create_link_artifact(written.run_dir.as_uri(), link_text="contact sheets and results", key="query-artifacts")
    return written.payload


def query_batch(
    queries: str,
    out: str | None = None,
    preset: str | None = None,
    home: str | None = None,
    overrides: dict[str, Any] | None = None,
    gallery_version: int | str | None = None,
    covrr_out: str | None = None,
    gallery: str = "default",
    return_state: bool = False,
    where: str | None = None,
) -> Any:
    """Run the `query-batch` flow (`query_batch_flow`) and return its payload (or, with `return_state`, the
    flow run's final state)."""
    outcome = query_batch_flow(
        queries, out, preset, home, overrides, gallery_version, covrr_out, gallery, where, return_state=return_state
    )
    return outcome if return_state else outcome.unquote()


@flow(name="query-batch", log_prints=True)
def query_batch_flow(
    queries: str,
    out: str | None = None,
    preset: str | None = None,
    home: str | None = None,
    overrides: dict[str, Any] | None = None,
    gallery_version: int | str | None = None,
    covrr_out: str | None = None,
    gallery: str = "default",
    where: str | None = None,
) -> quote:
    """Answer a batch of composed and text queries against one pinned version of gallery GALLERY.

    `gallery_version`: a table version number, a tag (each refresh tags its version `refresh-<n>`), or
    None for the latest. `where`: a filter on the gallery's stored columns in LanceDB's SQL syntax (e.g.
    `` `group` = 'holiday' ``), applied before each query's top-K; None searches every row. The payload
    comes back in `quote`: Prefect walks a flow's return value looking for futures, and a 1,000-query
    payload took seconds to walk.
    """
    settings = flow_settings(preset, home, overrides, gallery)
    _batch_caches.pop(str(settings.cache_dir), None)  # this batch's hits and misses start at zero
    loaded = query_file(queries, settings)  # the CLI's check: a bad file fails the run with one line
    where = where_filter(where, settings)  # and a filter LanceDB cannot run, before any model is loaded
    logger = get_run_logger()
    version = pin_task(settings, gallery_version)
    logger.info("%d queries against gallery version %d%s", len(loaded), version, f" where {where}" if where else "")
    size = settings.query.task_queries
    chunks = [loaded[i : i + size] for i in range(0, len(loaded), size)]
    progress = create_progress_artifact(0.0, key="query-progress", description="Queries answered")
    stage_seconds = {name: 0.0 for name in ("validate", "reasoning", "embedding", "recall", "rerank")}

    def timed(name: str, stage: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return stage(*args)
        finally:
            stage_seconds[name] += time.perf_counter() - started

    # Stage inputs go in `opaque`: Prefect keeps the task-to-task lineage but does not walk every query's
    # vectors and candidate lists looking for futures (that walk took most of a 1,000-query batch).
    try:
        embedded: list[QueryState] = []
        model_step = settings.query.stage_chunk
        for chunk in chunks:  # a task per chunk: visible progress, retries and lineage per chunk
            chunk_states = timed("validate", prepare_task, opaque(chunk), settings, version)
            if settings.query.use_reasoning and any(isinstance(q, ComposedQuery) for q in chunk):
                # Model-bound: seconds per query, so smaller tasks cost nothing and show progress.
                chunk_states = [
                    state
                    for start in range(0, len(chunk_states), model_step)
                    for state in timed(
                        "reasoning", reasoning_task, opaque(chunk_states[start : start + model_step]), settings, version
                    )
                ]
            embedded.extend(timed("embedding", embedding_task, opaque(chunk_states), settings, version))
            update_progress_artifact(progress, 50.0 * len(embedded) / max(1, len(loaded)))
        # One recall for the batch: a product per chunk of query vectors with the matrix loaded once.
        recalled = timed("recall", recall_task, opaque(embedded), settings, version, where)
        step = model_step if settings.query.rerank_k > 0 else max(1, len(recalled))
        states: list[QueryState] = []
        for start in range(0, len(recalled), step):  # its progress line counts the whole batch
            states.extend(
                timed(
                    "rerank",
                    rerank_task,
                    opaque(recalled[start : start + step]),
                    settings,
                    version,
                    len(states),
                    len(loaded),
                )
            )
            update_progress_artifact(progress, 50.0 + 50.0 * len(states) / max(1, len(loaded)))
            logger.info("answered %d/%d queries", len(states), len(loaded))
        payload = results_task(opaque(states), settings, version, out, covrr_out, stage_seconds, where)
        record_results(out or str(Path(payload["artifacts"]) / "results.json"), queries, payload["lineage"])
    finally:
        release(settings, version)  # the batch is over: its vector matrix need not stay in RAM
    failed = [r for r in payload["results"] if r["error"]]
    if failed:
        logger.warning(
            "%d of %d queries failed: %s",
            len(failed),
            len(loaded),
            "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5]),
        )
    return quote(payload)
