"""Ablation over the R^3 stages: base recall, + reasoning, + reasoning + rerank, on one benchmark."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3tasks.datasets import Benchmark
from r3tasks.evaluation.metrics import evaluate
from r3tasks.inputs.queries import ComposedQuery
from r3tasks.rerank.policy import RerankPolicy


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]


# The reference rerank policy (R^3: all K at once, scores always used), for the arm that scores pairs once.
REFERENCE_POLICY = {
    "rerank_start_depth": None,
    "rerank_widen_margin": None,
    "rerank_recall_margin_gate": None,
    "rerank_recall_window": None,
    "rerank_flat_gate": None,
    # R^3's min-max final fusion too: a preset may fuse otherwise (offline: additive, on raw scores).
    "final_embedding_weight": RerankPolicy.embedding_weight,
    "final_reranker_weight": RerankPolicy.reranker_weight,
    "final_reranker_scale": None,
    # and no per-query decision: every query's scores fused alike, stored for replay.
    "rerank_decision": None,
}
ARM_NAMES = ("base", "+rerank", "+rerank (reference)", "+reasoning", "+reasoning+rerank")
DEFAULT_ARMS = ("base", "+rerank", "+reasoning", "+reasoning+rerank")


def arms(
    rerank_k: int, names: Sequence[str] | None = None, policy_is_reference: bool = True, settings_k: int | None = None
) -> list[Arm]:
    """The paper's ablation order; each arm differs from the previous one by one stage.

    Every default arm runs the settings as they are (their rerank depth and policy: the preset as shipped),
    with one stage switched on or off. `+rerank (reference)` reranks the base recall at R^3's fixed depth
    `rerank_k` (every top-K pair scored once, so the stored-score sweeps can replay any other policy from
    it); it runs only when named, and is left out when it would repeat `+rerank` (the settings' policy is
    the reference at that depth). `rerank_k` 0 leaves every rerank arm out. `names` picks arms (default:
    `DEFAULT_ARMS`). `settings_k`: the depth the settings' arms rerank at (None: the settings' own).
    """
    unknown = set(names or ()) - set(ARM_NAMES)
    if unknown:
        raise ValueError(f"unknown eval arm(s) {sorted(unknown)}; known: {', '.join(ARM_NAMES)}")
    wanted = DEFAULT_ARMS if names is None else tuple(names)
    repeats_reference = policy_is_reference and settings_k in (None, rerank_k)
    depth = {} if settings_k is None else {"rerank_k": settings_k}
    out = [
        Arm("base", {"query": {"use_reasoning": False, "rerank_k": 0}}),
        Arm("+rerank", {"query": {"use_reasoning": False, **depth}}),
        Arm("+rerank (reference)", {"query": {"use_reasoning": False, "rerank_k": rerank_k, **REFERENCE_POLICY}}),
        Arm("+reasoning", {"query": {"use_reasoning": True, "rerank_k": 0}}),
        Arm("+reasoning+rerank", {"query": {"use_reasoning": True, **depth}}),
    ]
    return [
        arm
        for arm in out
        if arm.name in wanted
        and not (rerank_k == 0 and "rerank" in arm.name)
        and not (arm.name == "+rerank (reference)" and repeats_reference and "+rerank" in wanted)
    ]


def split_record(
    dataset: str, setting: str, skip: int, limit: int | None, queries: int, dev_only: bool = False
) -> dict:
    """Which queries a report used: a run with `--skip` is a dev split, held out from the first `skip`
    queries that reported figures use; one without is the reported (test) split, unless the dataset is
    dev data throughout (`Benchmark.dev_only`)."""
    return {
        "dataset": dataset,
        "setting": setting,
        "skip": skip,
        "limit": limit,
        "queries": queries,
        "first_query": skip,
        "last_query": skip + queries - 1,
        "role": "dev" if skip or dev_only else "reported",
    }


def split_line(split: dict) -> str:
    return (
        f"split: {split['role']} -- {split['dataset']} ({split['setting']}), queries #{split['first_query']}"
        f"-#{split['last_query']} ({split['queries']}; skip {split['skip']}, limit {split['limit']})"
    )


def fusion_grid_arms() -> list[Arm]:
    """+reasoning (no rerank) under other fusion settings: the agreement gate's tau, the residual weight w,
    the copy gate (reasoning that restates the source left out), the edit gate (reasoning that names none
    of the edit's new words left out), and the rank/score fusions.

    Each costs one cached query batch; run it on a held-out split.
    """
    grid = (
        [
            (f"w={weight} tau={tau}", {"fusion": "gated_residual", "fusion_weight": weight, "gate_threshold": tau})
            for weight in (0.1, 0.25, 0.5)
            for tau in (0.5, 0.9, 0.95)
        ]
        + [
            (
                f"w={weight} copy gate {copy}",
                {
                    "fusion": "gated_residual",
                    "fusion_weight": weight,
                    "gate_threshold": 0.5,
                    "copy_gate_threshold": copy,
                },
            )
            for weight in (0.25, 0.5)
            for copy in (0.8, 0.9)
        ]
        + [
            (
                f"w={weight} edit gate, copy gate {copy}",
                {"fusion": "gated_residual", "fusion_weight": weight, "edit_gate": True, "copy_gate_threshold": copy},
            )
            for weight in (0.25, 0.5)
            for copy in (0.8, None)
        ]
        + [(mode, {"fusion": mode}) for mode in ("rrf", "max", "mean")]
    )
    return [Arm(f"+reasoning {name}", {"query": {"use_reasoning": True, "rerank_k": 0, **cfg}}) for name, cfg in grid]


def write_benchmark_files(benchmark: Benchmark, folder: Path) -> tuple[Path, Path]:
    """The benchmark as a gallery manifest and a queries file that `r3 index` / `r3 query` read."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "gallery.jsonl"
    with manifest.open("w") as handle:
        for item in benchmark.items:
            row = {"id": item.id, "text": item.text, "group": item.group}
            if item.path is not None:
                row["path"] = str(item.path)
            handle.write(json.dumps(row) + "\n")
    queries = folder / "queries.jsonl"
    with queries.open("w") as handle:
        for query in benchmark.queries:
            if isinstance(query, ComposedQuery):
                row = {
                    "id": query.id,
                    "source": query.source,
                    "edit": query.edit,
                    "source_text": query.source_text,
                    "gallery_group": query.gallery_group,
                }
            else:
                row = {"id": query.id, "text": query.text, "gallery_group": query.gallery_group}
            handle.write(json.dumps(row) + "\n")
    return manifest, queries


def run_from_results(results: Sequence[dict]) -> dict[str, dict[str, float]]:
    """{query: {item: score}} from r3 results; failed queries give an empty ranking (they count as misses)."""
    return {r["id"]: {item["id"]: item["score"] for item in r["ranked"]} for r in results}


def arm_report(name: str, payload: dict, qrels: dict[str, dict[str, int]]) -> dict:
    results = payload["results"]
    composed = [r for r in results if r["kind"] == "composed" and not r["error"]]
    gated = [r for r in composed if r["reasoning"] is not None]
    n = max(len(results), 1)
    return {
        "arm": name,
        "metrics": evaluate(run_from_results(results), qrels),
        "queries": len(results),
        "failed": sum(1 for r in results if r["error"]),
        "gate_pass_rate": (sum(r["gate"]["used"] for r in gated) / len(gated)) if gated else None,
        "seconds_per_query": {stage: seconds / n for stage, seconds in payload.get("stage_seconds", {}).items()},
        # Pairs the rerank policy asked for (what a cold cache would pay); 0 when the arm does not rerank.
        "pairs_per_query": sum((r.get("rerank") or {}).get("pairs", 0) for r in results) / n,
        "results": payload.get("artifacts"),  # the query batch's folder: results.json holds per-query scores
    }
