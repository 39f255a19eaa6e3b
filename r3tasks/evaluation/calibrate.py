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

The rule reads cross-fitted probabilities: each query's comes from weights fitted without its fold (`FOLDS`
folds by a hash of the query id). Weights fitted on the very queries the 2% check counts make that check
optimistic: the thresholds a fit passes on its own examples lose more on queries it has not seen. The
shipped weights are the fit on every dev query; the table's last lines give the choice's numbers with them.
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from r3tasks.evaluation.metrics import ranked_ids
from r3tasks.evaluation.replay import flip_rates, pooled_reports, replayed, stored_depth
from r3tasks.rerank.decision import FEATURES, Calibration, decision_features, fit_logistic
from r3tasks.rerank.policy import RerankPolicy, apply_policy, rerank_policy, stored_scorer
from r3tasks.settings.tree import load_settings

# Strong fusions tried: R^3's reference min-max (None) and additive scales above the shipped one.
STRONG_SCALES: tuple[float | None, ...] = (None, 0.2, 0.1, 0.07)
THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MAX_LOST = 0.02
MIN_BREAK_EVEN = 0.92
FOLDS = 5


def fold_of(query_id: str, folds: int = FOLDS) -> int:
    """A query's cross-fitting fold: fixed by its id, whatever the reports' order or the range they cover."""
    return zlib.crc32(query_id.encode()) % folds


def _top1(scores: dict[str, float], relevant: set[str]) -> tuple[str, bool]:
    """Rank 1 as the metrics read it (ties broken as they break them), and whether it is relevant."""
    first = ranked_ids(scores)[0]
    return first, first in relevant


@dataclass(frozen=True)
class Levels:
    """One dev query under each fusion the decision can give it: whether rank 1 is right under recall's
    order, the default fusion and the strong one, and the features its decision reads."""

    recall_right: bool
    default_right: bool
    strong_right: bool
    example: bool  # the strong top-1 is not recall's and exactly one of the two is right: a training row
    features: tuple[float, ...] | None  # None: a gate kept recall's order before any decision
    pairs: int
    fold: int  # its cross-fitting fold (`fold_of`)
    ranked: bool = True  # False: the query ranked nothing (counted in R@1 as a miss, in no flip)


def levels(
    results: list[dict],
    qrels: dict[str, dict[str, int]],
    default: RerankPolicy,
    strong_scales: tuple[float | None, ...],
) -> dict[float | None, list[Levels]]:
    """Each query with a relevant item under recall, the default and each strong fusion, from stored scores.

    The outcomes and the features do not depend on the calibration, so the whole (keep_below, threshold)
    grid is read off them (`decide`) instead of replaying every policy on every query; recall's and the
    default fusion's, and the features, are the same for every strong fusion and computed once."""
    strong = {
        scale: replace(
            default,
            embedding_weight=RerankPolicy.embedding_weight,
            reranker_weight=RerankPolicy.reranker_weight,
            reranker_scale=scale,
        )
        for scale in strong_scales
    }
    out: dict[float | None, list[Levels]] = {scale: [] for scale in strong_scales}
    for result in results:
        relevant = {i for i, grade in qrels.get(result["id"], {}).items() if grade > 0}
        if not relevant:
            continue
        recalled, score, stored = stored_scorer(result["ranked"])
        fold = fold_of(result["id"])
        if not recalled:
            for queries in out.values():
                queries.append(Levels(False, False, False, False, None, 0, ranked=False, fold=fold))
            continue
        capped = replace(default, depth=min(default.depth, stored))
        by_default = apply_policy(recalled, score, capped)
        default_right = _top1({item.id: item.score for item in by_default.ranked}, relevant)[1]
        recall_top, recall_right = _top1(dict(recalled), relevant)
        features = None
        if by_default.gate is None and by_default.depth:
            # The block the decision reads: the one every fusion was given (same window and depth).
            scores = dict(score([i for i, _ in recalled[: by_default.depth]]))
            named = decision_features(recalled, scores, by_default.depth)
            features = tuple(named[name] for name in FEATURES)
        for scale, policy in strong.items():
            by_strong = apply_policy(recalled, score, replace(policy, depth=capped.depth))
            strong_top, strong_right = _top1({item.id: item.score for item in by_strong.ranked}, relevant)
            out[scale].append(
                Levels(
                    recall_right,
                    default_right,
                    strong_right,
                    features is not None and recall_top != strong_top and recall_right != strong_right,
                    features,
                    by_default.pairs,
                    fold=fold,
                )
            )
    return out


def examples(queries: list[Levels]) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels): the queries whose strong top-1 is not recall's and one of them is right; the label
    says the strong fusion's is."""
    rows = [q for q in queries if q.example]
    x = np.asarray([q.features for q in rows], dtype=np.float64).reshape(-1, len(FEATURES))
    return x, np.asarray([1.0 if q.strong_right else 0.0 for q in rows])


def fit(per_set: list[tuple[str, list[Levels]]], l2: float = 1.0) -> tuple[np.ndarray, float, dict]:
    """Logistic weights on every dev set's examples, each set weighted to the same total."""
    xs, ys, ws, counts = [], [], [], {}
    for name, queries in per_set:
        x, y = examples(queries)
        counts[name] = {"examples": len(y), "strong_right": int(y.sum())}
        if len(y):
            xs.append(x)
            ys.append(y)
            ws.append(np.full(len(y), 1.0 / len(y)))
    if not xs:
        raise SystemExit("no dev query where the two fusions disagree: nothing to calibrate on")
    x, y, w = np.vstack(xs), np.concatenate(ys), np.concatenate(ws)
    weights, bias = fit_logistic(x, y, l2=l2, sample_weight=w * len(y) / w.sum())
    return weights, bias, counts


def probabilities_of(queries: list[Levels], probe: Calibration) -> list[float | None]:
    """Each query's p under `probe` (None: a gate kept recall's order before any decision)."""
    return [None if q.features is None else probe.probability(dict(zip(FEATURES, q.features))) for q in queries]


def held_out_probabilities(
    per_set: list[tuple[str, list[Levels]]], probe: Calibration, folds: int = FOLDS
) -> list[list[float | None]]:
    """Each query's p from weights fitted on the other folds of every set (`probe` gives the rest)."""
    out: list[list[float | None]] = [[None] * len(queries) for _, queries in per_set]
    for k in range(folds):
        weights, bias, _ = fit([(name, [q for q in queries if q.fold != k]) for name, queries in per_set])
        without = replace(probe, weights=tuple(float(w) for w in weights), bias=bias)
        for held, (_, queries) in zip(out, per_set):
            for j, (q, p) in enumerate(zip(queries, probabilities_of(queries, without))):
                if q.fold == k:
                    held[j] = p
    return out


def decide(queries: list[Levels], probabilities: list[float | None], decision: Calibration, base_r1: float) -> dict:
    """R@1, its gain, rank-1 flips and pairs of one dev set under `decision` (as `replay.replayed` reads them)."""
    right = wrong = lost = fixed = hits = pairs = 0
    for q, p in zip(queries, probabilities):
        if p is None:
            after = q.default_right
        else:
            after = {"strong": q.strong_right, "default": q.default_right, "recall": q.recall_right}[decision.level(p)]
        hits += after
        pairs += q.pairs
        if q.ranked:
            right += q.recall_right
            wrong += not q.recall_right
            lost += q.recall_right and not after
            fixed += (not q.recall_right) and after
    r1 = 100.0 * hits / max(len(queries), 1)
    return {
        "R@1": r1,
        "delta_R@1": r1 - base_r1,
        **flip_rates(right, wrong, lost, fixed),
        "pairs_per_query": pairs / max(len(queries), 1),
    }


def _per_set(
    per_set: list[tuple[str, list[Levels]]], ps: list[list[float | None]], decision: Calibration, pooled: list
) -> list[dict]:
    """`decide` on every dev set, each with its own queries' probabilities."""
    return [
        {"dataset": name, **decide(queries, p, decision, base["R@1"])}
        for (name, queries), p, (_, _, _, base) in zip(per_set, ps, pooled)
    ]


def choose(
    pooled: list,
    default: RerankPolicy,
    fingerprint: str,
    strong_scales: tuple[float | None, ...] = STRONG_SCALES,
    thresholds: tuple[float, ...] = THRESHOLDS,
    folds: int = FOLDS,
) -> tuple[list[dict], dict | None]:
    """Every (strong fusion, keep_below, threshold) on every dev set; the rule's choice (None: none passes).

    A row's `sets` are read with cross-fitted probabilities (the rule's), its `fitted` with the weights fitted
    on every query (the ones shipped). The choice is replayed through the policy itself (`replay.replayed`)
    and must give the same R@1 and flips as its `fitted` read them; its full metrics are kept as `replayed`."""
    rows: list[dict] = []
    decisions: list[Calibration] = []  # each row's, for replaying the choice
    names = [f"{split['dataset']} ({split['setting']})" for split, *_ in pooled]
    depths = [stored_depth(results) for _, results, _, _ in pooled]
    by_set = [levels(results, qrels, default, strong_scales) for _, results, qrels, _ in pooled]
    for strong_scale in strong_scales:
        per_set = [(name, queries[strong_scale]) for name, queries in zip(names, by_set)]
        weights, bias, counts = fit(per_set)
        probe = Calibration(tuple(float(w) for w in weights), bias, 1.0, fingerprint, strong_scale)
        fitted_ps = [probabilities_of(queries, probe) for _, queries in per_set]
        held_ps = held_out_probabilities(per_set, probe, folds)
        for keep_below, threshold in ((k, t) for k in thresholds for t in thresholds if k <= t and t > 0):
            decision = replace(probe, threshold=threshold, keep_below=keep_below)
            decisions.append(decision)
            sets = _per_set(per_set, held_ps, decision, pooled)
            rows.append(
                {
                    "strong_reranker_scale": strong_scale,
                    "keep_below": keep_below,
                    "threshold": threshold,
                    "weights": dict(zip(FEATURES, (float(w) for w in weights))),
                    "bias": bias,
                    "examples": counts,
                    "sets": sets,
                    "fitted": _per_set(per_set, fitted_ps, decision, pooled),
                    "passes": all(s["lost"] <= MAX_LOST and s["break_even_base"] >= MIN_BREAK_EVEN for s in sets),
                }
            )
    passing = [i for i, r in enumerate(rows) if r["passes"]]
    chosen = max(
        passing,
        key=lambda i: (
            min(s["delta_R@1"] for s in rows[i]["sets"]),
            float(np.mean([s["delta_R@1"] for s in rows[i]["sets"]])),
        ),
        default=None,
    )
    best = None if chosen is None else rows[chosen]
    if best is not None:
        policy = replace(default, decision=decisions[chosen])
        best["replayed"] = []
        for (_, results, qrels, _), depth, fast in zip(pooled, depths, best["fitted"]):
            (row,) = replayed(results, qrels, [("decision", replace(policy, depth=min(policy.depth, depth)))])
            if abs(row["metrics"]["R@1"] - fast["R@1"]) > 1e-9 or (row["lost"], row["fixed"]) != (
                fast["lost"],
                fast["fixed"],
            ):
                raise RuntimeError(f"{fast['dataset']}: the grid and the policy's replay disagree on the choice")
            best["replayed"].append(row)
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
        f">= {100 * MIN_BREAK_EVEN:.0f}; then the largest smallest ΔR@1, then the largest mean. Every cell is read "
        f"with cross-fitted probabilities ({FOLDS} folds: each query's from weights fitted without it).",
        "",
        "| strong fusion | keep below | strong from | "
        + " | ".join(f"{n}: ΔR@1 / lost / fixed / break-even / pairs" for n in names)
        + " | passes |",
        "|---|---:|---:|" + "---|" * len(names) + "---|",
    ]
    for row in rows:
        mark = "**chosen**" if row is best else ("yes" if row["passes"] else "")
        lines.append(_row(row, row["sets"], mark))
    if best is not None:
        lines += [
            "",
            "The choice with the weights shipped (fitted on every dev query, so these read queries the fit saw):",
            "",
            lines[2],
            lines[3],
            _row(best, best["fitted"], "shipped"),
        ]
    return "\n".join(lines)


def _row(row: dict, sets: list[dict], mark: str) -> str:
    strong = "min-max 0.4 / 0.6" if row["strong_reranker_scale"] is None else f"additive {row['strong_reranker_scale']}"
    cells = [
        f"{s['delta_R@1']:+.1f} / {s['lost']:.1%} / {s['fixed']:.1%} / {100 * s['break_even_base']:.1f} / "
        f"{s['pairs_per_query']:.1f}"
        for s in sets
    ]
    return f"| {strong} | {row['keep_below']} | {row['threshold']} | " + " | ".join(cells) + f" | {mark} |"


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
