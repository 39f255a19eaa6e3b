"""Replay rerank policies on the stored scores of `r3 eval` reports, with no model run.

An `r3 eval ... --arms "base,+rerank (reference)"` report keeps, per query, every recalled candidate's embedding score
and (for the top K) its reranker score. Each pair's score does not depend on the others, so any policy
whose depth stays within K (gates, windows, adaptive depth, fusion weights) replays exactly; choosing a
policy costs one model pass per dataset. Reports from several datasets are replayed side by side, because a
policy is chosen on dev splits of more than one dataset.

    python -m r3tasks.evaluation.replay dev-global.json dev-local.json dev-swap.json [--out table.md]

Reports of disjoint query ranges of one dataset are pooled into one set.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from r3tasks.datasets import load_benchmark
from r3tasks.datasets.common import Benchmark, base_setting
from r3tasks.evaluation.metrics import ranked_ids
from r3tasks.evaluation.sweeps import policy_grid, policy_sweep
from r3tasks.rerank.policy import RerankPolicy, apply_policy, rerank_policy, stored_scorer
from r3tasks.settings.tree import load_settings

WINDOWS = (None, 0.04, 0.08, 0.12, 0.16, 0.2)
GATES = (0.03, 0.06, 0.1)
WEIGHTS = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8)
SCALES = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.1)


def _stored(report_path: Path, benchmarks: dict[str, Benchmark]) -> tuple[dict, list[dict], dict[str, dict[str, int]]]:
    """A report, its rerank arm's stored results and their qrels; `benchmarks` holds each dataset loaded once
    (several reports of one dataset's ranges share it)."""
    report = json.loads(report_path.read_text())
    # `+rerank (reference)` scores every top-K pair; reports from before it was named call it `+rerank`.
    arm = next((a for a in report["arms"] if a["arm"] == "+rerank (reference)"), None) or next(
        (a for a in report["arms"] if a["arm"] == "+rerank"), None
    )
    if arm is None:
        raise SystemExit(
            f"{report_path}: no fixed-depth rerank arm (run r3 eval with --arms 'base,+rerank (reference)')"
        )
    results = json.loads((Path(arm["results"]) / "results.json").read_text())["results"]
    split = report["split"]
    if split["dataset"] not in benchmarks:
        benchmarks[split["dataset"]] = load_benchmark(split["dataset"])
    benchmark = benchmarks[split["dataset"]]
    if split["skip"]:
        benchmark = benchmark.queries_from(split["skip"])
    wanted = {r["id"] for r in results}
    qrels = {qid: rel for qid, rel in benchmark.qrels.items() if qid in wanted}
    return report, results, qrels


def pooled_reports(report_paths: list[Path]) -> list[tuple[dict, list[dict], dict[str, dict[str, int]], dict]]:
    """(split, results, qrels, base metrics) per dataset and setting: reports of disjoint query ranges of one
    dataset (dev passes run at different times) are pooled into one set, their base metrics query-weighted.
    The split's `reranker_fingerprints` name the rerankers whose scores its results hold (from their lineage)."""
    groups: dict[tuple[str, str], list[tuple[dict, list[dict], dict[str, dict[str, int]]]]] = {}
    benchmarks: dict[str, Benchmark] = {}
    for path in report_paths:
        report, results, qrels = _stored(path, benchmarks)
        groups.setdefault((report["split"]["dataset"], base_setting(report["setting"])), []).append(
            (report, results, qrels)
        )
    pooled = []
    for parts in groups.values():
        seen: set[str] = set()
        for report, results, _ in parts:
            ids = {r["id"] for r in results}
            if ids & seen:
                raise SystemExit(f"{report['split']['dataset']}: two reports share queries; pool disjoint ranges only")
            seen |= ids
        bases = [next(a for a in report["arms"] if a["arm"] == "base") for report, _, _ in parts]
        total = sum(b["queries"] for b in bases)
        base = {k: sum(b["metrics"][k] * b["queries"] for b in bases) / total for k in bases[0]["metrics"]}
        splits = sorted((report["split"] for report, _, _ in parts), key=lambda sp: sp["first_query"])
        split = dict(splits[0])
        if len(splits) > 1:
            split.update(
                setting=base_setting(parts[0][0]["setting"]),
                last_query=splits[-1]["last_query"],
                queries=sum(sp["queries"] for sp in splits),
                ranges=[f"#{sp['first_query']}-#{sp['last_query']}" for sp in splits],
            )
            if len({sp.get("role") for sp in splits}) > 1:
                split["role"] = "reported and dev"  # a whole dataset: never a calibration's input
        results = [r for _, rs, _ in parts for r in rs]
        qrels = {qid: rel for _, _, qr in parts for qid, rel in qr.items()}
        split["reranker_fingerprints"] = sorted(
            {r["lineage"]["reranker"] for r in results if (r.get("lineage") or {}).get("reranker")}
        )
        pooled.append((split, results, qrels, base))
    return pooled


def replay(report_paths: list[Path], shipped_only: bool = False) -> list[dict]:
    """Every policy of the grid on each pooled set; `shipped_only`: R^3's reference, the offline preset as
    shipped, and the same without its per-query decision."""
    shipped = rerank_policy(load_settings(models={"preset": "offline"}).query)
    rows = []
    for split, results, qrels, base_metrics in pooled_reports(report_paths):
        depth = stored_depth(results)
        reference = RerankPolicy(depth=depth)
        capped = replace(shipped, depth=min(shipped.depth, depth))
        if shipped_only:
            # R^3's reference needs every query's top-K scored; a preset's own arm stored its window's only.
            fixed_depth = all(
                stored == min(depth, len(recalled))
                for recalled, _, stored in (stored_scorer(result["ranked"]) for result in results)
            )
            grid = [
                (
                    "reference" if fixed_depth else "R^3's min-max over the stored windows (no fixed-depth scores)",
                    reference,
                ),
                ("offline preset without its rerank decision", replace(capped, decision=None)),
                ("offline preset as shipped", capped),
            ]
        else:
            grid = full_grid(results, reference, depth) + [("offline preset as shipped", capped)]
        rows.append({"split": split, "base": base_metrics, "policies": replayed(results, qrels, grid)})
    return rows


def full_grid(results: list[dict], reference: RerankPolicy, depth: int) -> list[tuple[str, RerankPolicy]]:
    """The sweeps' grid, then windows and gates under other final fusions (R^3's is 0.4 embedding / 0.6
    reranker) and additive fusion on raw scores (`final_reranker_scale`, in the reranker's own units)."""
    grid = policy_grid(results, reference, depth=depth)
    guards = [("no window", {})] + [(f"recall window {w}", {"recall_window": w}) for w in WINDOWS if w]
    guards += [(f"recall gate {g}", {"recall_margin_gate": g}) for g in GATES]
    for label, guard in guards:
        for weight in WEIGHTS:
            weights = {"embedding_weight": round(1 - weight, 4), "reranker_weight": weight}
            grid.append((f"{label}, reranker weight {weight}", replace(reference, **guard, **weights)))
        for scale in SCALES:
            grid.append((f"{label}, additive scale {scale}", replace(reference, **guard, reranker_scale=scale)))
    return grid


def stored_depth(results: list[dict]) -> int:
    """The deepest block of stored reranker scores in these results: the depth policies replay within."""
    return max(len([c for c in r["ranked"] if c.get("reranker_score") is not None]) for r in results)


def replayed(results: list[dict], qrels: dict[str, dict[str, int]], grid: list[tuple[str, RerankPolicy]]) -> list[dict]:
    """Each policy's metrics and pairs (`policy_sweep`) with what it does to rank 1 (`flips`)."""
    rows = policy_sweep(results, qrels, grid)
    for row, (_, policy) in zip(rows, grid):
        row.update(flips(results, qrels, policy))
    return rows


def flips(results: list[dict], qrels: dict[str, dict[str, int]], policy: RerankPolicy) -> dict:
    """What the policy does to rank 1, split by whether recall had it right.

    `lost`: of the queries whose recall top-1 is relevant, the share the policy moves off it; `fixed`: of
    the others, the share it puts a relevant item first. On a dataset where recall is right for a share b
    of queries, the policy changes R@1 by about ``(1 - b) * fixed - b * lost``: it helps only below the
    break-even ``b* = fixed / (fixed + lost)``. A strong-recall dataset (R@1 85-90) needs b* above that,
    whatever the policy gains on a weak-recall one.
    """
    right = wrong = lost = fixed = 0
    for result in results:
        relevant = {i for i, grade in qrels.get(result["id"], {}).items() if grade > 0}
        recalled, score, depth = stored_scorer(result["ranked"])
        if not recalled or not relevant:
            continue
        outcome = apply_policy(recalled, score, replace(policy, depth=min(policy.depth, depth)))
        # Rank 1 as R@1 reads it: ties (clips sharing a caption share every score) broken as the metrics do.
        before = ranked_ids(dict(recalled))[0] in relevant
        after = bool(outcome.ranked) and ranked_ids({i.id: i.score for i in outcome.ranked})[0] in relevant
        right += before
        wrong += not before
        lost += before and not after
        fixed += (not before) and after
    return flip_rates(right, wrong, lost, fixed)


def flip_rates(right: int, wrong: int, lost: int, fixed: int) -> dict:
    """`lost`, `fixed` and the break-even base R@1 (see `flips`) from counts of queries: recall right / wrong,
    and of those, moved off / put right."""
    lost_rate, fixed_rate = lost / max(right, 1), fixed / max(wrong, 1)
    return {
        "lost": lost_rate,
        "fixed": fixed_rate,
        "break_even_base": fixed_rate / (fixed_rate + lost_rate) if lost_rate + fixed_rate else 1.0,
    }


def markdown(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        split = row["split"]
        lines += [
            f"### {split['dataset']} ({split['setting']}), {split['role']} queries #{split['first_query']}-"
            f"#{split['last_query']} ({split['queries']}"
            + (f"; pooled {', '.join(split['ranges'])}" if split.get("ranges") else "")
            + ")",
            "",
            f"base (rerank off): R@1 {row['base']['R@1']:.2f}, R@5 {row['base']['R@5']:.2f}",
            "",
            "| policy | R@1 | R@5 | R@10 | ΔR@1 vs base | pairs/query | kept recall order | lost | fixed | "
            "break-even base R@1 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in row["policies"]:
            m = p["metrics"]
            lines.append(
                f"| {p['policy']} | {m['R@1']:.2f} | {m['R@5']:.2f} | {m['R@10']:.2f} | "
                f"{m['R@1'] - row['base']['R@1']:+.2f} | {p['pairs_per_query']:.1f} | {p['kept_recall_order']:.2f} | "
                f"{p['lost']:.3f} | {p['fixed']:.3f} | {100 * p['break_even_base']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="r3 eval report JSONs with a +rerank arm")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) and rows (JSON beside it)")
    parser.add_argument(
        "--shipped-only",
        action="store_true",
        help="only R^3's reference and the offline preset with and without its decision",
    )
    args = parser.parse_args(argv)
    rows = replay(args.reports, shipped_only=args.shipped_only)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
