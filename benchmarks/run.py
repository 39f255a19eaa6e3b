"""Run the benchmark suite: ``python -m benchmarks.run [--only NAME ...] [--quick]``.

Writes ``benchmarks/results/<name>.json`` per benchmark and regenerates
``benchmarks/RESULTS.md`` from every result file present (so ``--only`` refreshes
some sections and keeps the others). Benchmarks run in a fixed order with the
largest (recall at 1M rows) last.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports Prefect: its home, telemetry and logging stay out of the user's.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="r3-bench-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in [n for n in os.environ if n.startswith("R3_")]:
    # The user's own R3_* settings would change what is measured.
    del os.environ[_name]

import argparse  # noqa: E402
import importlib  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

from benchmarks.common import (  # noqa: E402
    BENCH_DIR,
    RESULTS_DIR,
    Context,
    command_line,
    machine_info,
    now_iso,
    write_json,
)
from benchmarks.report import write_report  # noqa: E402

# name -> module; the order is the run order (cheap first, the big recall sizes last).
BENCHMARKS = {
    "frames": "benchmarks.frame_sampling",
    "orchestration": "benchmarks.orchestration",
    "index_refresh": "benchmarks.index_refresh",
    "memory": "benchmarks.memory",
    "rerank": "benchmarks.rerank",
    "recall": "benchmarks.recall",
    "rerank_depth": "benchmarks.rerank_depth",
    "query_batch": "benchmarks.query_batch",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (1k galleries, recall up to 100k rows)")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rebuild rows and notes from the stored measurements, and RESULTS.md",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        return render_only(args.only or list(BENCHMARKS))

    from benchmarks.fakes import register

    register()
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    ctx = Context(quick=args.quick, log=lambda msg: print(msg, flush=True))
    failures = 0
    try:
        for name in names:
            print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
            machine = machine_info()
            started, start = now_iso(), time.perf_counter()
            payload: dict = {}
            try:
                module = importlib.import_module(BENCHMARKS[name])
                result = module.run(ctx)
                payload = result.to_dict()
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the others' results
                failures += 1
                traceback.print_exc()
                payload = {
                    "benchmark": name,
                    "title": name,
                    "rows": [],
                    "tables": [],
                    "notes": [],
                    "data": {},
                    "error": f"{type(exc).__name__}: {exc}",
                }
            payload.update(
                command=command_line(argv),
                mode="quick" if args.quick else "full",
                started=started,
                duration_s=time.perf_counter() - start,
                machine=machine,
            )
            write_json(RESULTS_DIR / f"{name}.json", payload)
            for row in payload["rows"]:
                status = "" if row["passed"] is None else ("  PASS" if row["passed"] else "  MISS")
                print(f"   {row['name']}: {row['measured']} {row['unit']}{status}", flush=True)
            print(f"   ({payload['duration_s']:.0f} s)", flush=True)
            write_report(BENCH_DIR / "RESULTS.md")
    finally:
        ctx.close()
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
    print(f"wrote {BENCH_DIR / 'RESULTS.md'}", flush=True)
    return 1 if failures else 0


def render_only(names: list[str]) -> int:
    """Re-derive each stored result's rows, tables and notes from its `data` (for modules that can)."""
    import json

    from benchmarks.common import Result

    for name in names:
        path = RESULTS_DIR / f"{name}.json"
        module = importlib.import_module(BENCHMARKS[name])
        if not path.is_file() or not hasattr(module, "summarise"):
            continue
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("error"):
            continue
        result = Result(name, module.TITLE, data=payload["data"])
        module.summarise(result, result.data, payload.get("mode") == "quick")
        payload.update({k: v for k, v in result.to_dict().items() if k in ("title", "rows", "tables", "notes")})
        write_json(path, payload)
        print(f"re-rendered {name} from its stored measurements", flush=True)
    write_report(BENCH_DIR / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
