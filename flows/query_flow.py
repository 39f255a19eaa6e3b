"""The query-batch flow: load -> pin gallery version -> reason -> embed -> fused recall -> rerank -> results."""

from __future__ import annotations

import datetime as dt
import json
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
from r3tasks import batch_output, rerank_stage, retrieval, store, validate
from r3tasks.batch_output import covrr_submission  # noqa: F401 - re-exported for callers of the old name
from r3tasks.gallery import PinnedGallery
from r3tasks.models.registry import shared_embedder, shared_reasoner, shared_reranker
from r3tasks.queries import ComposedQuery, Query
from r3tasks.report import markdown_report
from r3tasks.retrieval import QueryState
from r3tasks.settings import R3Settings
from r3tasks.stagecache import StageCache

# The running batch's stage caches by cache folder: one set per batch, so its hits and misses add up.
_batch_caches: dict[str, dict[str, StageCache]] = {}


def _caches(settings: R3Settings) -> dict[str, StageCache]:
    root = settings.cache_dir
    if str(root) not in _batch_caches:
        bound = settings.query.stage_cache_max_bytes
        _batch_caches[str(root)] = {
            name: StageCache(root, name, bound) for name in ("frames", "reasoning", "query-embedding", "rerank")
        }
    return _batch_caches[str(root)]


def _pinned(settings: R3Settings, version: int) -> PinnedGallery:
    return store.pinned(settings, version)  # one view per batch: metadata and vectors read once


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
    from r3tasks.upkeep import resolve_version

    gallery = store.pinned(settings, resolve_version(store.open_store(settings), version))
    retrieval.ensure_gallery_not_empty(gallery)
    return gallery.ref.version


@task(name="validate-queries", cache_policy=NONE)
def prepare_task(queries: list[Query], settings: R3Settings, version: int) -> list[QueryState]:
    return retrieval.prepare(queries, _pinned(settings, version), settings)


@task(name="reasoning", cache_policy=NONE)
def reasoning_task(states: list[QueryState], settings: R3Settings, version: int) -> list[QueryState]:
    """Cached per query by (source content, edit, reasoner fingerprint, prompt) in the data home."""
    needs = [s for s in states if s.ok and isinstance(s.query, ComposedQuery)]
    if not needs or not settings.query.use_reasoning:
        return states
    caches = _caches(settings)
    reasoner = shared_reasoner(settings)
    retrieval.run_reasoning(states, reasoner, settings, caches["reasoning"], caches["frames"])
    _stage_lineage("reasoning", reasoner.fingerprint, caches["reasoning"], version, len(needs))
    return states


@task(name="query-embedding", cache_policy=NONE)
def embedding_task(states: list[QueryState], settings: R3Settings, version: int) -> list[QueryState]:
    caches = _caches(settings)
    embedder = shared_embedder(settings)
    retrieval.embed_queries(states, embedder, settings, caches["query-embedding"], caches["frames"])
    _stage_lineage("query-embedding", embedder.fingerprint, caches["query-embedding"], version, len(states))
    return states


@task(name="fused-recall", cache_policy=NONE)
def recall_task(states: list[QueryState], settings: R3Settings, version: int) -> list[QueryState]:
    retrieval.recall(states, _pinned(settings, version), settings)
    return states


@task(name="rerank", cache_policy=NONE)
def rerank_task(
    states: list[QueryState], settings: R3Settings, version: int, done_before: int = 0, total: int | None = None
) -> list[QueryState]:
    caches = _caches(settings)
    reranker = shared_reranker(settings) if settings.query.rerank_k > 0 else None
    rerank_stage.rerank(
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
    _stage_lineage("rerank", reranker.fingerprint if reranker else None, caches["rerank"], version, len(states))
    return states


@task(name="write-results", cache_policy=NONE, retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_transient)
def results_task(
    states: list[QueryState],
    settings: R3Settings,
    version: int,
    out: str | None,
    covrr_out: str | None,
    stage_seconds: dict[str, float],
) -> dict:
    gallery = _pinned(settings, version)
    lineage = {
        "gallery": {"uri": gallery.ref.uri, "table": gallery.ref.table, "version": gallery.ref.version},
        "embedder": shared_embedder(settings).fingerprint,
        "reasoner": shared_reasoner(settings).fingerprint
        if settings.query.use_reasoning and any(s.reasoning is not None for s in states)
        else None,
        "reranker": shared_reranker(settings).fingerprint
        if settings.query.rerank_k > 0 and any(s.ranked and s.ranked[0].reranker_score is not None for s in states)
        else None,
        "settings_hash": settings.settings_hash(),
        "code_version": code_version(),
        "cache": {name: cache.counts() for name, cache in _caches(settings).items()},
    }
    run_dir = settings.artifacts_dir / ("batch-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ"))
    sheets = batch_output.contact_sheets(
        states, gallery, settings, run_dir, _caches(settings)["frames"], get_run_logger()
    )
    results = [retrieval.result_of(state, lineage) for state in states]
    report = markdown_report(results, sheets)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.md").write_text(report)
    payload = {"lineage": lineage, "results": results, "artifacts": str(run_dir), "stage_seconds": stage_seconds}
    serialized = json.dumps(payload, indent=2)  # once: for a large batch this is seconds
    (run_dir / "results.json").write_text(serialized)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(serialized)
    if covrr_out:
        Path(covrr_out).write_text(json.dumps(batch_output.covrr_submission(states), indent=2))
    create_markdown_artifact(report, key="query-report", description="Each query's reasoning and top-5.")
    create_link_artifact(run_dir.as_uri(), link_text="contact sheets and results", key="query-artifacts")
    return payload


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
) -> Any:
    """Run the `query-batch` flow (`query_batch_flow`) and return its payload (or, with `return_state`, the
    flow run's final state)."""
    outcome = query_batch_flow(
        queries, out, preset, home, overrides, gallery_version, covrr_out, gallery, return_state=return_state
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
) -> quote:
    """Answer a batch of composed and text queries against one pinned version of gallery GALLERY.

    `gallery_version`: a table version number, a tag (each refresh tags its version `refresh-<n>`), or
    None for the latest. The payload comes back in `quote`: Prefect walks a flow's return value looking
    for futures, and a 1,000-query payload took seconds to walk.
    """
    settings = flow_settings(preset, home, overrides, gallery)
    _batch_caches.pop(str(settings.cache_dir), None)  # this batch's hits and misses start at zero
    loaded = validate.query_file(queries, settings)  # the CLI's check: a bad file fails the run with one line
    logger = get_run_logger()
    version = pin_task(settings, gallery_version)
    logger.info("%d queries against gallery version %d", len(loaded), version)
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
        recalled = timed("recall", recall_task, opaque(embedded), settings, version)
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
        payload = results_task(opaque(states), settings, version, out, covrr_out, stage_seconds)
        record_results(out or str(Path(payload["artifacts"]) / "results.json"), queries, payload["lineage"])
    finally:
        store.release(settings, version)  # the batch is over: its vector matrix need not stay in RAM
    failed = [r for r in payload["results"] if r["error"]]
    if failed:
        logger.warning(
            "%d of %d queries failed: %s",
            len(failed),
            len(loaded),
            "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5]),
        )
    return quote(payload)
