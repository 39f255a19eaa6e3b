"""Recall benchmark: `python -m benchmarks.recall --cases ...` measures some cases alone."""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.common import RESULTS_DIR, Context, now_iso
from benchmarks.recall.cases import DATA, run
from benchmarks.recall.data import NAME, K


def parse_case(spec: str) -> tuple[int, int, str]:
    """``ROWSxDIM[:random|clustered]``, rows as digits or with a k / M suffix: ``1Mx384:clustered``."""
    size, _, data = spec.strip().partition(":")
    rows, sep, dim = size.lower().partition("x")
    data = data or "random"
    scale = {"k": 1000, "m": 1_000_000}.get(rows[-1:], 1)
    try:
        n, d = int(float(rows[:-1] if scale > 1 else rows) * scale), int(dim)
    except ValueError:
        n = d = 0
    if not sep or n <= 0 or d <= 0 or data not in DATA:
        raise argparse.ArgumentTypeError(f"case {spec!r}: expected ROWSxDIM[:random|clustered], e.g. 1Mx384:clustered")
    if n <= K:
        raise argparse.ArgumentTypeError(f"case {spec!r}: needs more than {K} rows for a top-{K}")
    return n, d, data


def main(argv: list[str] | None = None) -> int:
    """Measure the given cases, merge them into benchmarks/results/recall.json and regenerate RESULTS.md."""
    for name in [n for n in os.environ if n.startswith("R3_")]:
        del os.environ[name]  # as in benchmarks.run: the user's own settings would change what is measured
    from benchmarks.common import BENCH_DIR, machine_info, write_json
    from benchmarks.report import write_report

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recall", description=main.__doc__)
    parser.add_argument(
        "--cases",
        nargs="+",
        type=parse_case,
        required=True,
        metavar="ROWSxDIM[:DATA]",
        help="e.g. 1Mx384:clustered 1Mx384:random 100kx2048 (data: random, the default, or clustered)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer queries per case (20 instead of 40)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.recall", *argv])
    ctx = Context(quick=args.quick, log=lambda msg: print(msg, flush=True))
    machine, started, start = machine_info(), now_iso(), time.perf_counter()
    try:
        result = run(ctx, cases=args.cases, command=command)
    finally:
        ctx.close()
    payload = result.to_dict()
    # The section header describes this run; each case keeps its own run in data.cases[].run.
    payload.update(
        command=command,
        mode="quick" if args.quick else "full",
        started=started,
        duration_s=time.perf_counter() - start,
        machine=machine,
    )
    write_json(RESULTS_DIR / f"{NAME}.json", payload)
    for row in payload["rows"]:
        status = "" if row["passed"] is None else ("  PASS" if row["passed"] else "  MISS")
        print(f"   {row['name']}: {row['measured']} {row['unit']}{status}", flush=True)
    write_report(BENCH_DIR / "RESULTS.md")
    return 0
