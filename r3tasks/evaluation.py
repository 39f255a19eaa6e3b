"""Ablation over the R^3 stages: base recall, + reasoning, + reasoning + rerank, on one benchmark."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from r3tasks.datasets import Benchmark
from r3tasks.fusion import rerank_topk
from r3tasks.metrics import METRIC_KEYS, evaluate
from r3tasks.queries import ComposedQuery
from r3tasks.rerank_policy import RerankPolicy, apply_policy, stored_scorer


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


def split_record(dataset: str, setting: str, skip: int, limit: int | None, queries: int) -> dict:
    """Which queries a report used: a run with `--skip` is a dev split, held out from the first `skip`
    queries that reported figures use; one without is the reported (test) split."""
    return {
        "dataset": dataset,
        "setting": setting,
        "skip": skip,
        "limit": limit,
        "queries": queries,
        "first_query": skip,
        "last_query": skip + queries - 1,
        "role": "dev" if skip else "reported",
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


# Cosine windows below recall's top-1 (absolute: a window is in the embedder's units, like the margin gate).
RECALL_WINDOWS = (0.02, 0.05, 0.08, 0.12, 0.16, 0.2)
RERANKER_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def reranker_weight_sweep(
    results: Sequence[dict], qrels: dict[str, dict[str, int]], weights: Sequence[float] = RERANKER_WEIGHTS
) -> list[dict]:
    """Metrics of the rerank arm's stored scores re-fused with other final weights (`wr`, `we = 1 - wr`).

    No model runs: every ranked item carries its embedding and reranker scores, so this shows what the
    reranker adds at each weight (0 is the recall order, 1 the reranker alone). Pick a weight on a
    held-out split (`r3 eval --skip`), never on the queries you report.
    """
    sweep = []
    for weight in weights:
        run: dict[str, dict[str, float]] = {}
        for result in results:
            ranked = result["ranked"]
            # Recall order is embedding-score order (the reranker only reorders its top-K block).
            recalled = sorted(((r["id"], r["embedding_score"]) for r in ranked), key=lambda x: -x[1])
            scores = {r["id"]: r["reranker_score"] for r in ranked if r["reranker_score"] is not None}
            reordered = rerank_topk(recalled, scores, len(scores), 1.0 - weight, weight) if scores else []
            run[result["id"]] = {item.id: item.score for item in reordered} or {r["id"]: r["score"] for r in ranked}
        sweep.append({"reranker_weight": weight, "metrics": evaluate(run, qrels)})
    return sweep


def policy_sweep(
    results: Sequence[dict], qrels: dict[str, dict[str, int]], policies: Sequence[tuple[str, RerankPolicy]]
) -> list[dict]:
    """Metrics and reranker pairs per query of rerank policies replayed on a fixed-depth arm's stored scores.

    No model runs: each pair's score does not depend on the others, so scores stored once at depth K
    replay any depth schedule or gate within K (deeper depths are capped at what was stored). Choose on a
    dev split (`r3 eval --skip`), never on the queries you report.
    """
    rows = []
    for name, policy in policies:
        run: dict[str, dict[str, float]] = {}
        pairs, gated = 0, 0
        for result in results:
            recalled, score, depth = stored_scorer(result["ranked"])
            if depth == 0:
                run[result["id"]] = {r["id"]: r["score"] for r in result["ranked"]}
                continue
            outcome = apply_policy(recalled, score, replace(policy, depth=min(policy.depth, depth)))
            run[result["id"]] = {item.id: item.score for item in outcome.ranked}
            pairs += outcome.pairs
            gated += outcome.gate is not None
        n = max(len(results), 1)
        rows.append(
            {
                "policy": name,
                "settings": _policy_settings(policy),
                "metrics": evaluate(run, qrels),
                "pairs_per_query": pairs / n,
                "kept_recall_order": gated / n,
            }
        )
    return rows


def _policy_settings(policy: RerankPolicy) -> dict:
    return {
        "rerank_k": policy.depth,
        "rerank_start_depth": policy.start_depth,
        "rerank_widen_margin": policy.widen_margin,
        "rerank_depth_growth": policy.growth,
        "rerank_recall_margin_gate": policy.recall_margin_gate,
        "rerank_recall_window": policy.recall_window,
        "rerank_flat_gate": policy.flat_gate,
        "final_embedding_weight": policy.embedding_weight,
        "final_reranker_weight": policy.reranker_weight,
        "final_reranker_scale": policy.reranker_scale,
    }


def policy_grid(
    results: Sequence[dict], current: RerankPolicy, depth: int | None = None
) -> list[tuple[str, RerankPolicy]]:
    """Policies worth replaying: fixed depths, adaptive depth from 5, the recall-margin and flat-score gates,
    and the settings' own policy. Margins are quantiles of this run's own scores (the reranker's units
    differ per reranker), printed as absolute values to put in the settings."""
    # The reference at the depth the scores were stored at (`depth`, default the settings' own).
    base = replace(
        current,
        depth=current.depth if depth is None else depth,
        start_depth=None,
        widen_margin=None,
        recall_margin_gate=None,
        recall_window=None,
        flat_gate=None,
        embedding_weight=RerankPolicy.embedding_weight,
        reranker_weight=RerankPolicy.reranker_weight,
        reranker_scale=None,
    )
    gaps5, recall_gaps, spreads = [], [], []
    for result in results:
        recalled, score, depth = stored_scorer(result["ranked"])
        if depth < 2:
            continue
        block = list(score([i for i, _ in recalled[: min(5, depth)]]).values())
        gaps5.append(sorted(block)[-1] - sorted(block)[-2])
        recall_gaps.append(recalled[0][1] - recalled[1][1])
        full = list(score([i for i, _ in recalled[:depth]]).values())
        spreads.append(max(full) - min(full))
    if not gaps5:
        return [("reference", base)]

    def q(values: list[float], p: float) -> float:
        return round(float(np.quantile(values, p)), 4)

    grid: list[tuple[str, RerankPolicy]] = [("reference", base)]
    grid += [(f"fixed depth {d}", replace(base, depth=d)) for d in (5, 10, 20) if d < base.depth]
    for p in (0.25, 0.5, 0.75, 0.9):
        m = q(gaps5, p)
        grid.append((f"adaptive 5, widen margin {m} (q{int(p * 100)})", replace(base, start_depth=5, widen_margin=m)))
        # Rerank the top 5; only an uncertain query pays for the full depth.
        grid.append(
            (
                f"adaptive 5 -> {base.depth}, widen margin {m} (q{int(p * 100)})",
                replace(base, start_depth=5, widen_margin=m, growth=float(base.depth)),
            )
        )
    for p in (0.5, 0.75, 0.9):
        g = q(recall_gaps, p)
        if g <= 0:
            continue  # ties at the top: a zero gate would keep every query's recall order
        grid.append((f"recall gate {g} (q{int(p * 100)})", replace(base, recall_margin_gate=g)))
        grid.append(
            (
                f"adaptive 5 (q50) + recall gate {g}",
                replace(base, start_depth=5, widen_margin=q(gaps5, 0.5), recall_margin_gate=g),
            )
        )
    for window in RECALL_WINDOWS:
        grid.append((f"recall window {window}", replace(base, recall_window=window)))
    for p in (0.1, 0.25):
        f = q(spreads, p)
        grid.append((f"flat gate {f} (q{int(p * 100)})", replace(base, flat_gate=f)))
    if not (current.is_reference and current.depth == base.depth):
        grid.append(("settings' policy", current))
    return grid


def markdown_table(report: dict) -> str:
    lines = [
        f"{report['benchmark']} ({report['setting']}, {report['queries']} queries, preset {report['preset']})",
        *([split_line(report["split"])] if report.get("split") else []),
        "",
        "| arm | " + " | ".join(METRIC_KEYS) + " | gate pass | pairs/query | s/query | rerank s/query |",
        "|---|" + "---:|" * (len(METRIC_KEYS) + 4),
    ]
    for arm in report["arms"]:
        seconds = sum(arm["seconds_per_query"].values())
        lines.append(
            f"| {arm['arm']} | {_metric_cells(arm['metrics'])} | {_gate_cell(arm)} | "
            f"{arm.get('pairs_per_query', 0.0):.1f} | {seconds:.2f} | "
            f"{arm['seconds_per_query'].get('rerank', 0.0):.2f} |"
        )
    if report.get("fusion_sweep"):
        lines += [
            "",
            "+reasoning under other fusion settings (no rerank):",
            "",
            "| setting | " + " | ".join(METRIC_KEYS) + " | gate pass |",
            "|---|" + "---:|" * (len(METRIC_KEYS) + 1),
        ]
        for arm in report["fusion_sweep"]:
            name = arm["arm"].removeprefix("+reasoning ")
            lines.append(f"| {name} | {_metric_cells(arm['metrics'])} | {_gate_cell(arm)} |")
    sweep = report.get("reranker_weight_sweep")
    if sweep:
        lines += [
            "",
            "Rerank arm re-fused with other reranker weights (stored scores, no model run):",
            "",
            "| reranker weight | " + " | ".join(METRIC_KEYS) + " |",
            "|---|" + "---:|" * len(METRIC_KEYS),
        ]
        for row in sweep:
            lines.append(f"| {row['reranker_weight']:.1f} | {_metric_cells(row['metrics'])} |")
    policies = report.get("policy_sweep")
    if policies:
        lines += [
            "",
            "Rerank policies replayed on the +rerank arm's stored scores (no model run):",
            "",
            "| policy | " + " | ".join(METRIC_KEYS) + " | pairs/query | recall order kept |",
            "|---|" + "---:|" * (len(METRIC_KEYS) + 2),
        ]
        for row in policies:
            lines.append(
                f"| {row['policy']} | {_metric_cells(row['metrics'])} | {row['pairs_per_query']:.1f} | "
                f"{row['kept_recall_order']:.2f} |"
            )
    return "\n".join(lines)


def _metric_cells(metrics: dict[str, float]) -> str:
    # Recall in percent to two decimals, MRR and nDCG as fractions to three.
    return " | ".join(f"{metrics[k]:.2f}" if k.startswith("R") else f"{metrics[k]:.3f}" for k in METRIC_KEYS)


def _gate_cell(arm: dict) -> str:
    return f"{arm['gate_pass_rate']:.2f}" if arm["gate_pass_rate"] is not None else "-"


def plot_recall(report: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [1, 5, 10, 50]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in report["arms"]:
        ax.plot(ks, [arm["metrics"][f"R@{k}"] for k in ks], marker="o", label=arm["arm"])
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("R@k (%)")
    ax.set_title(f"{report['benchmark']} {report['setting']} ({report['preset']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
