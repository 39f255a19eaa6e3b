"""Fit the per-query rerank decision (`r3tasks.rerank.decision`) on dev reports' stored reranker scores.

    python -m r3tasks.evaluation.calibrate dev-global.json dev-local.json dev-swap.json [--out decision.md]

For each dev query the shipped policy's block is replayed from the stored scores with a strong fusion.
Where its top-1 is not recall's and one of the two is right, the query is a training example: is the
reranker-led top-1 the right one? A logistic regression over `FEATURES` learns that probability, every
dataset weighted alike (so the largest set does not set the calibration alone). Then every (strong fusion,
keep_below, threshold) is replayed on every dev set, and the rule picks: each dev set loses at most
`MAX_LOST` of recall's right rank-1s and keeps a break-even base R@1 of at least `MIN_BREAK_EVEN`, then the
largest smallest R@1 gain, then the largest mean gain. The chosen block prints as TOML for
`[query.rerank_decision]`. Dev reports only: the reported splits are replayed after the choice.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from r3tasks.evaluation.metrics import ranked_ids
from r3tasks.evaluation.replay import pooled_reports, replayed, stored_depth
from r3tasks.rerank.decision import FEATURES, Calibration, decision_features, fit_logistic
from r3tasks.rerank.policy import RerankPolicy, apply_policy, rerank_policy, stored_scorer
from r3tasks.settings.tree import load_settings

# Strong fusions tried: R^3's reference min-max (None) and additive scales above the shipped one.
STRONG_SCALES: tuple[float | None, ...] = (None, 0.2, 0.1, 0.07)
THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MAX_LOST = 0.02
MIN_BREAK_EVEN = 0.92


def _top1(scores: dict[str, float], relevant: set[str]) -> tuple[str, bool]:
    """Rank 1 as the metrics read it (ties broken as they break them), and whether it is relevant."""
    first = ranked_ids(scores)[0]
    return first, first in relevant


def examples(
    results: list[dict], qrels: dict[str, dict[str, int]], default: RerankPolicy, strong_scale: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the queries where the strong fusion's top-1 is not recall's and one of them is right."""
    strong = replace(
        default,
        embedding_weight=RerankPolicy.embedding_weight,
        reranker_weight=RerankPolicy.reranker_weight,
        reranker_scale=strong_scale,
    )
    rows, labels = [], []
    for result in results:
        relevant = {i for i, grade in qrels.get(result["id"], {}).items() if grade > 0}
        recalled, score, stored = stored_scorer(result["ranked"])
        if not relevant or stored == 0:
            continue
        outcome = apply_policy(recalled, score, replace(strong, depth=min(strong.depth, stored)))
        if outcome.gate is not None or outcome.depth == 0:
            continue  # recall's order kept without scores: no decision to make
        recall_top, recall_right = _top1(dict(recalled), relevant)
        strong_top, strong_right = _top1({item.id: item.score for item in outcome.ranked}, relevant)
        if recall_top == strong_top or recall_right == strong_right:
            continue
        # The block the decision reads is the one the strong fusion was given: the same window and depth.
        depth = outcome.depth
        scores = dict(score([i for i, _ in recalled[:depth]]))
        features = decision_features(recalled, scores, depth)
        rows.append([features[name] for name in FEATURES])
        labels.append(1.0 if strong_right else 0.0)
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES)), np.asarray(labels)


def fit(
    pooled: list, default: RerankPolicy, strong_scale: float | None, l2: float = 1.0
) -> tuple[np.ndarray, float, dict]:
    """Logistic weights on every dev set's examples, each set weighted to the same total."""
    xs, ys, ws, counts = [], [], [], {}
    for split, results, qrels, _ in pooled:
        x, y = examples(results, qrels, default, strong_scale)
        counts[f"{split['dataset']} ({split['setting']})"] = {"examples": len(y), "strong_right": int(y.sum())}
        if len(y):
            xs.append(x)
            ys.append(y)
            ws.append(np.full(len(y), 1.0 / len(y)))
    if not xs:
        raise SystemExit("no dev query where the two fusions disagree: nothing to calibrate on")
    x, y, w = np.vstack(xs), np.concatenate(ys), np.concatenate(ws)
    # Weighted fit by replication is not needed: scale each row's log-likelihood by its weight.
    weights, bias = fit_logistic(x, y, l2=l2, sample_weight=w * len(y) / w.sum())
    return weights, bias, counts


def choose(
    pooled: list,
    default: RerankPolicy,
    fingerprint: str,
    strong_scales: tuple[float | None, ...] = STRONG_SCALES,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> tuple[list[dict], dict | None]:
    """Every (strong fusion, keep_below, threshold) replayed on every dev set; the rule's choice (None: none
    passes)."""
    rows = []
    depths = [stored_depth(results) for _, results, _, _ in pooled]
    for strong_scale in strong_scales:
        weights, bias, counts = fit(pooled, default, strong_scale)
        for keep_below, threshold in ((k, t) for k in thresholds for t in thresholds if k <= t and t > 0):
            decision = Calibration(
                tuple(float(w) for w in weights), bias, threshold, fingerprint, strong_scale, keep_below
            )
            policy = replace(default, decision=decision)
            per_set = []
            for (split, results, qrels, base), depth in zip(pooled, depths):
                capped = replace(policy, depth=min(policy.depth, depth))
                (row,) = replayed(results, qrels, [("decision", capped)])
                per_set.append(
                    {
                        "dataset": f"{split['dataset']} ({split['setting']})",
                        "R@1": row["metrics"]["R@1"],
                        "delta_R@1": row["metrics"]["R@1"] - base["R@1"],
                        "lost": row["lost"],
                        "fixed": row["fixed"],
                        "break_even_base": row["break_even_base"],
                        "pairs_per_query": row["pairs_per_query"],
                    }
                )
            rows.append(
                {
                    "strong_reranker_scale": strong_scale,
                    "keep_below": keep_below,
                    "threshold": threshold,
                    "weights": dict(zip(FEATURES, (float(w) for w in weights))),
                    "bias": bias,
                    "examples": counts,
                    "sets": per_set,
                    "passes": all(s["lost"] <= MAX_LOST and s["break_even_base"] >= MIN_BREAK_EVEN for s in per_set),
                }
            )
    passing = [r for r in rows if r["passes"]]
    best = max(
        passing,
        key=lambda r: (min(s["delta_R@1"] for s in r["sets"]), float(np.mean([s["delta_R@1"] for s in r["sets"]]))),
        default=None,
    )
    return rows, best


def as_toml(choice: dict, fingerprint: str) -> str:
    lines = [
        "[query.rerank_decision]",
        f"bias = {choice['bias']:.6g}",
        f"threshold = {choice['threshold']}",
        f"keep_below = {choice['keep_below']}",
        f'reranker_fingerprint = "{fingerprint}"',
    ]
    if choice["strong_reranker_scale"] is not None:
        lines.append(f"strong_reranker_scale = {choice['strong_reranker_scale']}")
    lines.append("[query.rerank_decision.weights]")
    lines += [f"{name} = {choice['weights'][name]:.6g}" for name in FEATURES]
    return "\n".join(lines)


def markdown(rows: list[dict], best: dict | None, pooled: list) -> str:
    names = [f"{split['dataset']} ({split['setting']}, {split['queries']})" for split, *_ in pooled]
    lines = [
        f"Rule: every dev set loses at most {MAX_LOST:.0%} of recall's right rank-1s and keeps break-even base R@1 "
        f">= {100 * MIN_BREAK_EVEN:.0f}; then the largest smallest ΔR@1, then the largest mean.",
        "",
        "| strong fusion | keep below | strong from | "
        + " | ".join(f"{n}: ΔR@1 / lost / fixed / break-even / pairs" for n in names)
        + " | passes |",
        "|---|---:|---:|" + "---|" * len(names) + "---|",
    ]
    for row in rows:
        strong = (
            "min-max 0.4 / 0.6" if row["strong_reranker_scale"] is None else f"additive {row['strong_reranker_scale']}"
        )
        cells = [
            f"{s['delta_R@1']:+.1f} / {s['lost']:.1%} / {s['fixed']:.1%} / {100 * s['break_even_base']:.1f} / "
            f"{s['pairs_per_query']:.1f}"
            for s in row["sets"]
        ]
        mark = "**chosen**" if row is best else ("yes" if row["passes"] else "")
        lines.append(f"| {strong} | {row['keep_below']} | {row['threshold']} | " + " | ".join(cells) + f" | {mark} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="dev r3 eval reports with a '+rerank (reference)' arm")
    parser.add_argument("--out", type=Path, help="write the table (markdown) and the rows (JSON beside it)")
    args = parser.parse_args(argv)
    pooled = pooled_reports(args.reports)
    roles = {split.get("role") for split, *_ in pooled}
    if roles != {"dev"}:
        raise SystemExit(f"calibrate on dev splits only (got roles {sorted(map(str, roles))})")
    fingerprints = {fp for split, *_ in pooled for fp in split.get("reranker_fingerprints", [])}
    if len(fingerprints) != 1:
        raise SystemExit(
            f"the reports' scores come from {len(fingerprints)} rerankers ({sorted(fingerprints)}); need one"
        )
    fingerprint = fingerprints.pop()
    default = replace(rerank_policy(load_settings(models={"preset": "offline"}).query), decision=None)
    rows, best = choose(pooled, default, fingerprint)
    table = markdown(rows, best, pooled)
    print(table)
    print()
    print(
        as_toml(best, fingerprint) if best else "no (strong fusion, threshold) passes the rule: keep the default fusion"
    )
    if args.out:
        args.out.write_text(table + "\n\n" + (as_toml(best, fingerprint) if best else "no choice") + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "chosen": best}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
