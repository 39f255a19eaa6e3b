"""How long the user waits where the tests check behaviour, not time: the wall-clock figures the tests no longer assert.

- A missing Qwen3-VL model refused (tests/test_qwen3vl_models.py checks no network call / one short connect):
  a local path that is not there, a hub id with `local_files_only`, a hub id with the hub check on this machine's
  network. Target: under 5 s, 10 s for the hub check (what the tests asserted before).
- The fault-matrix gallery indexed (tests/test_reliability.py checks that no bad file reaches a decoder twice or a
  pipe at all): target under 60 s.
- An 8-caption gallery indexed on a local Dask cluster of two process workers (tests/test_scaleout.py checks which
  worker embedded what): target under 90 s, cluster start included.

Run on demand, never in CI (it needs the machine to itself to mean anything):

    python -m benchmarks.timed_checks   # writes benchmarks/results/timed_checks.json
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports Prefect: its home, telemetry and logging stay out of the user's.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="r3-bench-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _name in [n for n in os.environ if n.startswith("R3_")]:
    del os.environ[_name]  # the user's own R3_* settings would change what is measured

import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from benchmarks.common import (  # noqa: E402
    REPO_ROOT,
    RESULTS_DIR,
    Context,
    Result,
    command_line,
    machine_info,
    now_iso,
    write_json,
)

NAME = "timed_checks"
TITLE = "Waits the tests check as behaviour: refusing a missing model, a gallery of bad files, a Dask cluster"
REPEATS = 3


def _seconds_to_refuse(load: Callable[[], object]) -> float:
    from r3tasks.errors import ModelNotAvailableError

    start = time.perf_counter()
    try:
        load()
    except ModelNotAvailableError:
        return time.perf_counter() - start
    raise AssertionError("the model was found: nothing refused to time")


def missing_models(result: Result, work: Path) -> None:
    from r3tasks.models import qwen3vl
    from r3tasks.settings.tree import load_settings

    cases = {
        "missing local path": (
            lambda: qwen3vl.load_embedder(
                load_settings(home=work, models={"preset": "qwen3vl", "embedding_model": str(work / "no-such-model")})
            ),
            5.0,
        ),
        "missing hub id, local_files_only": (
            lambda: qwen3vl.load_reranker(
                load_settings(
                    home=work,
                    models={
                        "preset": "qwen3vl",
                        "reranker_model": "r3-tests/no-such-reranker",
                        "local_files_only": True,
                    },
                )
            ),
            5.0,
        ),
        "missing hub id, hub check on this network": (
            lambda: qwen3vl.load_reranker(
                load_settings(
                    home=work,
                    models={
                        "preset": "qwen3vl",
                        "reranker_model": "r3-tests/no-such-reranker",
                        "local_files_only": False,
                    },
                )
            ),
            10.0,
        ),
    }
    for label, (load, target) in cases.items():
        times = [_seconds_to_refuse(load) for _ in range(REPEATS)]
        worst = max(times)
        result.row(
            f"refuse a missing model: {label} (worst of {REPEATS})",
            worst,
            "s",
            target=f"< {target:g} s",
            passed=worst < target,
            note=f"median {statistics.median(times):.3f} s",
        )
        result.data[label] = times


def fault_matrix(result: Result, ctx: Context, work: Path) -> None:
    import pytest

    from flows.index_flow import index_gallery
    from tests.test_reliability import build_fault_gallery  # registers the `recording` embedder too

    home = work / "fault-home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        failing, indexed = build_fault_gallery(work / "fault-gallery", patch)
        start = time.perf_counter()
        summary = index_gallery(
            source=str(work / "fault-gallery"),
            home=str(home),
            overrides={"models": {"embedder": "recording"}, "index": {"batch_size": 3}},
        )
        seconds = time.perf_counter() - start
    ok = summary["added"] == len(indexed) and len(summary["failed"]) == len(failing)
    result.row(
        "index the fault-matrix gallery (bad files included)",
        seconds,
        "s",
        target="< 60 s",
        passed=seconds < 60 and ok,
        note=f"{len(indexed)} indexed, {len(failing)} refused" + ("" if ok else "; UNEXPECTED SUMMARY"),
    )
    result.data["fault_matrix_s"] = seconds


def dask_cluster(result: Result, ctx: Context, work: Path) -> None:
    import dask
    import distributed  # noqa: F401 - its config defaults must exist before config.set

    from flows.index_flow import index_gallery
    from tests.test_scaleout import CAPTIONS, WORKER_PRELOAD, write_gallery

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    manifest = write_gallery(work / "dask-gallery")
    home = work / "dask-home"
    home.mkdir()
    with dask.config.set({"distributed.worker.preload": [WORKER_PRELOAD]}):
        start = time.perf_counter()
        summary = index_gallery(
            source=str(manifest),
            home=str(home),
            overrides={
                "models": {"embedder": "fake-text"},
                "index": {"batch_size": 2, "task_runner": "dask", "dask_workers": 2},
            },
        )
        seconds = time.perf_counter() - start
    ok = summary["added"] == len(CAPTIONS)
    result.row(
        "index 8 captions on a local Dask cluster of 2 process workers (cluster start included)",
        seconds,
        "s",
        target="< 90 s",
        passed=seconds < 90 and ok,
        note="" if ok else "UNEXPECTED SUMMARY",
    )
    result.data["dask_s"] = seconds


def run(ctx: Context) -> Result:
    from r3tasks.models.registry import register_backend

    register_backend("embedder", "fake-text", "tests.fakes:load_fake_text_embedder")
    result = Result(NAME, TITLE)
    work = Path(tempfile.mkdtemp(prefix="r3-bench-timed-"))
    try:
        missing_models(result, work)
        result.row("Prefect test server start", ctx.prefect_server(), "s")
        fault_matrix(result, ctx, work)
        dask_cluster(result, ctx, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> int:
    ctx = Context(quick=False)
    machine, started, start = machine_info(), now_iso(), time.perf_counter()
    try:
        payload = run(ctx).to_dict()
    finally:
        ctx.close()
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
    payload.update(
        command=command_line([]).replace("benchmarks.run", "benchmarks.timed_checks"),
        mode="full",
        started=started,
        duration_s=time.perf_counter() - start,
        machine=machine,
    )
    write_json(RESULTS_DIR / f"{NAME}.json", payload)
    for row in payload["rows"]:
        status = "" if row["passed"] is None else ("  PASS" if row["passed"] else "  MISS")
        print(f"{row['name']}: {row['measured']:.3f} {row['unit']}{status}", flush=True)
    return 0 if all(row["passed"] is not False for row in payload["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
