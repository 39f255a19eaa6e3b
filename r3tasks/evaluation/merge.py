"""Merge `r3 eval` reports of consecutive query ranges into one whole-dataset report.

A whole-dataset run with a CPU reranker takes hours, so it runs as `--skip S --limit N` chunks (each chunk's
stage caches survive a stop); every metric `r3 eval` reports is a mean over queries, so the chunks' means
weighted by their query counts are exactly the whole range's. Chunks must be of one benchmark, setting and
preset, with the same arms, and their ranges must not overlap; a gap is allowed and named in the output.

    python -m r3tasks.evaluation.merge chunk-0.json chunk-500.json ... --out whole.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from r3tasks.datasets.common import base_setting

_SAME = ("benchmark", "setting", "preset", "gallery")


def _field(report: dict, key: str) -> object:
    value = report.get(key)
    return base_setting(value) if key == "setting" and isinstance(value, str) else value


def _weighted(values: Sequence[tuple[float | None, int]]) -> float | None:
    known = [(v, n) for v, n in values if v is not None]
    total = sum(n for _, n in known)
    return sum(v * n for v, n in known) / total if total else None


def merge(reports: Sequence[dict]) -> dict:
    """One report over every chunk's queries; raises ValueError naming the chunk that does not fit."""
    if not reports:
        raise ValueError("no reports to merge")
    chunks = sorted(reports, key=lambda r: r["split"]["first_query"])
    first = chunks[0]
    arm_names = [a["arm"] for a in first["arms"]]
    for chunk in chunks[1:]:
        for key in _SAME:
            if _field(chunk, key) != _field(first, key):
                raise ValueError(f"chunk {_range(chunk)}: {key} {_field(chunk, key)!r}, not {_field(first, key)!r}")
        if [a["arm"] for a in chunk["arms"]] != arm_names:
            raise ValueError(f"chunk {_range(chunk)}: arms {[a['arm'] for a in chunk['arms']]}, not {arm_names}")
    gaps = []
    for before, after in zip(chunks, chunks[1:]):
        if after["split"]["first_query"] <= before["split"]["last_query"]:
            raise ValueError(f"chunks {_range(before)} and {_range(after)} overlap")
        if after["split"]["first_query"] > before["split"]["last_query"] + 1:
            gaps.append(f"#{before['split']['last_query'] + 1}-#{after['split']['first_query'] - 1}")
    arms = []
    for i, name in enumerate(arm_names):
        parts = [c["arms"][i] for c in chunks]
        counts = [p["queries"] for p in parts]
        stages = sorted({s for p in parts for s in p["seconds_per_query"]})
        arms.append(
            {
                "arm": name,
                "metrics": {
                    k: _weighted([(p["metrics"][k], n) for p, n in zip(parts, counts)]) for k in parts[0]["metrics"]
                },
                "queries": sum(counts),
                "failed": sum(p["failed"] for p in parts),
                "gate_pass_rate": _weighted([(p["gate_pass_rate"], n) for p, n in zip(parts, counts)]),
                "seconds_per_query": {
                    s: _weighted([(p["seconds_per_query"].get(s), n) for p, n in zip(parts, counts)]) for s in stages
                },
                "pairs_per_query": _weighted([(p["pairs_per_query"], n) for p, n in zip(parts, counts)]),
                "results": [p.get("results") for p in parts],
            }
        )
    roles = sorted({c["split"]["role"] for c in chunks})
    return {
        **{key: _field(first, key) for key in _SAME},
        "queries": sum(c["queries"] for c in chunks),
        "arms": arms,
        "split": {
            "dataset": first["split"]["dataset"],
            "setting": base_setting(first["split"]["setting"]),
            "first_query": first["split"]["first_query"],
            "last_query": chunks[-1]["split"]["last_query"],
            "queries": sum(c["split"]["queries"] for c in chunks),
            "role": "+".join(roles),
            "chunks": [_range(c) for c in chunks],
            "gaps": gaps,
        },
    }


def _range(report: dict) -> str:
    split = report["split"]
    return f"#{split['first_query']}-#{split['last_query']}"


def markdown(report: dict) -> str:
    split = report["split"]
    lines = [
        f"{report['benchmark']} ({report['setting']}, preset {report['preset']}), queries "
        f"#{split['first_query']}-#{split['last_query']} ({split['queries']}; chunks {', '.join(split['chunks'])}"
        + (f"; missing {', '.join(split['gaps'])}" if split["gaps"] else "")
        + ")",
        "",
        "| arm | R@1 | R@5 | R@10 | R@50 | MRR | nDCG@10 | gate pass | pairs/query | rerank s/query | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in report["arms"]:
        m, gate = arm["metrics"], arm["gate_pass_rate"]
        lines.append(
            f"| {arm['arm']} | {m['R@1']:.2f} | {m['R@5']:.2f} | {m['R@10']:.2f} | {m['R@50']:.2f} | {m['MRR']:.3f} | "
            f"{m['nDCG@10']:.3f} | {'-' if gate is None else f'{gate:.2f}'} | {arm['pairs_per_query']:.1f} | "
            f"{arm['seconds_per_query'].get('rerank') or 0.0:.2f} | {arm['failed']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="r3 eval report JSONs, one per query range")
    parser.add_argument("--out", type=Path, help="write the merged report (JSON; a markdown table beside it)")
    args = parser.parse_args(argv)
    try:
        merged = merge([json.loads(p.read_text()) for p in args.reports])
    except ValueError as err:
        parser.exit(2, f"merge_reports: {err}\n")
    table = markdown(merged)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(merged, indent=2))
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
