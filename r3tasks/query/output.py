"""A query's result as the batch results schema writes it, and CoVR-R's submission layout."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from r3tasks.cache.stages import StageCache
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.models.registry import shared_embedder, shared_reasoner, shared_reranker
from r3tasks.query.report import contact_sheets, markdown_report
from r3tasks.query.state import QueryState
from r3tasks.settings.tree import R3Settings

STAGE_CACHES = ("frames", "reasoning", "query-embedding", "rerank")


@dataclass(frozen=True)
class BatchOutput:
    """What a finished batch wrote: the payload (the results file's content), its report and its folder."""

    payload: dict
    report: str
    run_dir: Path


def batch_caches(settings: R3Settings) -> dict[str, StageCache]:
    """One stage cache per query stage, bounded by `query.stage_cache_max_bytes`; one set per batch, so its
    hits and misses add up in the lineage."""
    bound = settings.query.stage_cache_max_bytes
    return {name: StageCache(settings.cache_dir, name, bound) for name in STAGE_CACHES}


def batch_lineage(
    states: Sequence[QueryState],
    gallery: PinnedGallery,
    settings: R3Settings,
    caches: dict[str, StageCache],
    code_version: str,
    where: str | None = None,
) -> dict:
    """What every result of a batch carries: gallery version and the filter it was searched with (`where`,
    None for none), the fingerprints of the models that ran, the settings hash, the code version and the
    stage caches' hits and misses."""
    reasoned = settings.query.use_reasoning and any(s.reasoning is not None for s in states)
    reranked = settings.query.rerank_k > 0 and any(
        any(item.reranker_score is not None for item in s.ranked) for s in states
    )
    reranker = shared_reranker(settings).fingerprint if reranked else None
    decision = settings.query.rerank_decision
    return {
        "gallery": {"uri": gallery.ref.uri, "table": gallery.ref.table, "version": gallery.ref.version},
        "where": where,
        "embedder": shared_embedder(settings).fingerprint,
        "reasoner": shared_reasoner(settings).fingerprint if reasoned else None,
        "reranker": reranker,
        # The per-query rerank decision: which reranker it was calibrated on, and whether it ran for this one
        # (with another the default fusion ran, and each result's warnings say so).
        "rerank_decision": None
        if decision is None
        else {
            "calibrated_on": decision.reranker_fingerprint,
            "applied": None if reranker is None else reranker == decision.reranker_fingerprint,
        },
        "settings_hash": settings.settings_hash(),
        "code_version": code_version,
        "cache": {name: cache.counts() for name, cache in caches.items()},
    }


def write_batch(
    states: Sequence[QueryState],
    gallery: PinnedGallery,
    settings: R3Settings,
    lineage: dict,
    frame_cache: StageCache,
    stage_seconds: dict[str, float],
    out: str | Path | None,
    covrr_out: str | Path | None,
    logger: logging.Logger | logging.LoggerAdapter,
) -> BatchOutput:
    """The batch's folder under the artifacts dir (results.json, report.md, contact sheets), then `out` and
    the CoVR-R submission where asked for."""
    run_dir = settings.artifacts_dir / ("batch-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ"))
    sheets = contact_sheets(states, gallery, settings, run_dir, frame_cache, logger)
    results = [result_of(state, lineage) for state in states]
    report = markdown_report(results, sheets)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.md").write_text(report)
    payload = {"lineage": lineage, "results": results, "artifacts": str(run_dir), "stage_seconds": stage_seconds}
    serialized = json.dumps(payload, indent=2)  # once: for a large batch this is seconds
    (run_dir / "results.json").write_text(serialized)
    if out:
        write_whole(Path(out), serialized)
    if covrr_out:
        write_whole(Path(covrr_out), json.dumps(covrr_submission(states), indent=2))
    return BatchOutput(payload, report, run_dir)


def write_whole(path: Path, text: str) -> None:
    """Write `path` so that it is either whole or absent: a run interrupted mid-write (SIGTERM, a full disk)
    leaves the previous file or none, never half a JSON document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def covrr_submission(states: Sequence[QueryState]) -> dict:
    """CoVR-R's submission layout: {section: {query id: [target ids best first]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for state in states:
        section = getattr(state.query, "section", None) or "default"
        out.setdefault(section, {})[state.query.id] = [item.id for item in state.ranked]
    return out


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
