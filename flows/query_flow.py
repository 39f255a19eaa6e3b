"""The query-batch flow: load -> pin gallery version -> reason -> embed -> fused recall -> rerank -> results."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from flows.common import code_version, flow_settings, retry_on_transient
from r3tasks import retrieval, store, validate
from r3tasks.gallery import PinnedGallery
from r3tasks.models.registry import shared_embedder, shared_reasoner, shared_reranker
from r3tasks.queries import ComposedQuery, Query
from r3tasks.report import contact_sheet, markdown_report
from r3tasks.retrieval import QueryState
from r3tasks.settings import R3Settings
from r3tasks.stagecache import StageCache

CHUNK = 16  # queries per stage task: small enough for visible progress, large enough for batching


def _caches(settings: R3Settings) -> dict[str, StageCache]:
    root = settings.cache_dir
    return {name: StageCache(root, name) for name in ("frames", "reasoning", "query-embedding", "rerank")}


def _pinned(settings: R3Settings, version: int) -> PinnedGallery:
    return store.pinned(settings, version)  # one view per batch: metadata and vectors read once


def _stage_lineage(stage: str, fingerprint: str | None, cache: StageCache | None, version: int, n: int) -> None:
    create_table_artifact(
        [
            {
                "stage": stage,
                "queries": n,
                "model fingerprint": fingerprint or "-",
                "cache hits": cache.hits if cache else 0,
                "cache misses": cache.misses if cache else 0,
                "gallery version": version,
            }
        ],
        key=f"lineage-{stage}",
        description=f"Lineage of the {stage} stage for one chunk of queries.",
    )


@task(name="pin-gallery-version", cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_transient)
def pin_task(settings: R3Settings, version: int | None) -> int:
    gallery = store.pinned(settings, version)
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
    retrieval.rerank(states, reranker, _pinned(settings, version), settings, caches["rerank"], caches["frames"],
                     logger=get_run_logger(), done_before=done_before, total=total)
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
        "reasoner": shared_reasoner(settings).fingerprint if settings.query.use_reasoning and any(
            s.reasoning is not None for s in states) else None,
        "reranker": shared_reranker(settings).fingerprint if settings.query.rerank_k > 0 and any(
            s.ranked and s.ranked[0].reranker_score is not None for s in states) else None,
        "settings_hash": settings.settings_hash(),
        "code_version": code_version(),
    }
    run_dir = settings.artifacts_dir / ("batch-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"))
    sheets = _contact_sheets(states, gallery, settings, run_dir)
    results = [retrieval.result_of(state, lineage) for state in states]
    report = markdown_report(results, sheets)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.md").write_text(report)
    payload = {"lineage": lineage, "results": results, "artifacts": str(run_dir), "stage_seconds": stage_seconds}
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(payload, indent=2))
    if covrr_out:
        Path(covrr_out).write_text(json.dumps(covrr_submission(states), indent=2))
    create_markdown_artifact(report, key="query-report", description="Each query's reasoning and top-5.")
    create_link_artifact(run_dir.as_uri(), link_text="contact sheets and results", key="query-artifacts")
    return payload


def _contact_sheets(states: Sequence[QueryState], gallery: PinnedGallery, settings: R3Settings, run_dir: Path) -> dict:
    sheets = {}
    frame_cache = _caches(settings)["frames"]
    for state in states:
        if not state.ok:
            continue
        try:
            sheets[state.query.id] = _contact_sheet(state, gallery, settings, run_dir, frame_cache)
        except Exception as error:  # noqa: BLE001 - a picture must never cost the batch its results
            state.warnings.append(f"no contact sheet: {retrieval.reason_of(error)}")
            get_run_logger().warning("%s: no contact sheet: %s", state.query.id, retrieval.reason_of(error))
    return sheets


def _contact_sheet(state: QueryState, gallery: PinnedGallery, settings: R3Settings, run_dir: Path,
                   frame_cache: StageCache) -> Path:
    source_frames: list = []
    source_label, source_caption = state.query.id, getattr(state.query, "text", None)
    if state.source is not None:
        source_caption = state.source.text
        if state.source.path is not None:
            sampled = retrieval.source_frames(state.source, "rerank", settings, frame_cache)
            if sampled is not None:
                step = max(1, len(sampled.frames) // 4)
                source_frames = list(sampled.frames[::step][:4])
    candidates = []
    for item in state.ranked[:5]:
        record = gallery.records[item.id]
        candidates.append((item.id, record.path, record.text, item.score))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in state.query.id)[:80]
    return contact_sheet(run_dir / f"{safe}.png", source_frames, source_label, source_caption, candidates)


def covrr_submission(states: Sequence[QueryState]) -> dict:
    """CoVR-R's submission layout: {section: {query id: [target ids best first]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for state in states:
        section = getattr(state.query, "section", None) or "default"
        out.setdefault(section, {})[state.query.id] = [item.id for item in state.ranked]
    return out


@flow(name="query-batch", log_prints=True)
def query_batch(
    queries: str,
    out: str | None = None,
    preset: str | None = None,
    home: str | None = None,
    overrides: dict[str, Any] | None = None,
    gallery_version: int | None = None,
    covrr_out: str | None = None,
    gallery: str = "default",
) -> dict:
    """Answer a batch of composed and text queries against one pinned version of gallery GALLERY."""
    settings = flow_settings(preset, home, overrides, gallery)
    loaded = validate.query_file(queries, settings)  # the CLI's check: a bad file fails the run with one line
    logger = get_run_logger()
    version = pin_task(settings, gallery_version)
    logger.info("%d queries against gallery version %d", len(loaded), version)
    chunks = [loaded[i : i + CHUNK] for i in range(0, len(loaded), CHUNK)]
    progress = create_progress_artifact(0.0, key="query-progress", description="Queries answered")
    states: list[QueryState] = []
    stages = [("validate", prepare_task), ("reasoning", reasoning_task), ("embedding", embedding_task),
              ("recall", recall_task), ("rerank", rerank_task)]
    stage_seconds = {name: 0.0 for name, _ in stages}
    for number, chunk in enumerate(chunks, start=1):
        chunk_states: Any = chunk
        for name, stage in stages:
            started = time.perf_counter()
            if name == "rerank":  # its progress line counts the whole batch
                chunk_states = stage(chunk_states, settings, version, len(states), len(loaded))
            else:
                chunk_states = stage(chunk_states, settings, version)
            stage_seconds[name] += time.perf_counter() - started
        states.extend(chunk_states)
        update_progress_artifact(progress, 100.0 * number / len(chunks))
        logger.info("answered %d/%d queries", len(states), len(loaded))
    try:
        payload = results_task(states, settings, version, out, covrr_out, stage_seconds)
    finally:
        store.release(settings, version)  # the batch is answered: its vector matrix need not stay in RAM
    failed = [r for r in payload["results"] if r["error"]]
    if failed:
        logger.warning("%d of %d queries failed: %s", len(failed), len(loaded),
                       "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5]))
    return payload
