"""Ablation over the R^3 stages: base recall, + reasoning, + reasoning + rerank, on one benchmark."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from r3tasks.datasets import Benchmark
from r3tasks.fusion import rerank_topk
from r3tasks.metrics import METRIC_KEYS, evaluate
from r3tasks.queries import ComposedQuery


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]


def arms(rerank_k: int) -> list[Arm]:
    """The paper's ablation order; each arm differs from the previous one by one stage.

    `rerank_k` is the reference K unless the caller measures another; 0 leaves the rerank arm out.
    """
    return [
        Arm("base", {"query": {"use_reasoning": False, "rerank_k": 0}}),
        Arm("+reasoning", {"query": {"use_reasoning": True, "rerank_k": 0}}),
    ] + ([Arm("+reasoning+rerank", {"query": {"use_reasoning": True, "rerank_k": rerank_k}})] if rerank_k else [])


def fusion_grid_arms() -> list[Arm]:
    """+reasoning (no rerank) under other fusion settings: the agreement gate's tau, the residual weight w,
    the copy gate (reasoning that restates the source left out), and the rank/score fusions.

    Each costs one cached query batch; run it on a held-out split.
    """
    grid = [
        (f"w={weight} tau={tau}", {"fusion": "gated_residual", "fusion_weight": weight, "gate_threshold": tau})
        for weight in (0.1, 0.25, 0.5)
        for tau in (0.5, 0.9, 0.95)
    ] + [
        (f"w={weight} copy gate {copy}", {"fusion": "gated_residual", "fusion_weight": weight, "gate_threshold": 0.5,
                                         "copy_gate_threshold": copy})
        for weight in (0.25, 0.5)
        for copy in (0.8, 0.9)
    ] + [(mode, {"fusion": mode}) for mode in ("rrf", "max", "mean")]
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
                row = {"id": query.id, "source": query.source, "edit": query.edit,
                       "source_text": query.source_text, "gallery_group": query.gallery_group}
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
    }


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
            run[result["id"]] = {item.id: item.score for item in reordered} or {
                r["id"]: r["score"] for r in ranked
            }
        sweep.append({"reranker_weight": weight, "metrics": evaluate(run, qrels)})
    return sweep


def markdown_table(report: dict) -> str:
    lines = [
        f"{report['benchmark']} ({report['setting']}, {report['queries']} queries, preset {report['preset']})",
        "",
        "| arm | " + " | ".join(METRIC_KEYS) + " | gate pass | s/query |",
        "|---|" + "---:|" * (len(METRIC_KEYS) + 2),
    ]
    for arm in report["arms"]:
        seconds = sum(arm["seconds_per_query"].values())
        lines.append(f"| {arm['arm']} | {_metric_cells(arm['metrics'])} | {_gate_cell(arm)} | {seconds:.2f} |")
    if report.get("fusion_sweep"):
        lines += ["", "+reasoning under other fusion settings (no rerank):", "",
                  "| setting | " + " | ".join(METRIC_KEYS) + " | gate pass |", "|---|" + "---:|" * (len(METRIC_KEYS) + 1)]
        for arm in report["fusion_sweep"]:
            name = arm["arm"].removeprefix("+reasoning ")
            lines.append(f"| {name} | {_metric_cells(arm['metrics'])} | {_gate_cell(arm)} |")
    sweep = report.get("reranker_weight_sweep")
    if sweep:
        lines += ["", "Rerank arm re-fused with other reranker weights (stored scores, no model run):", "",
                  "| reranker weight | " + " | ".join(METRIC_KEYS) + " |", "|---|" + "---:|" * len(METRIC_KEYS)]
        for row in sweep:
            lines.append(f"| {row['reranker_weight']:.1f} | {_metric_cells(row['metrics'])} |")
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
