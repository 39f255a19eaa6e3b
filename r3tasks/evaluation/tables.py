"""An evaluation report as a markdown table and a recall plot."""

from __future__ import annotations

from pathlib import Path

from r3tasks.evaluation.arms import split_line
from r3tasks.evaluation.metrics import METRIC_KEYS


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
