"""For `benchmarks.serve` (and `serve_load`'s entry point): the command line beside the warm service, and the
standalone run that writes a result file and RESULTS.md.

The CLI: the one-shot `r3 query` on the demo gallery,
`r3 query --server` against `r3 serve` on the same data home, and a burst of 16 requests at the default
`serve.max_pending` (8).

`r3 demo --home H` builds the demo gallery once (H is kept under ``benchmarks/out/serve/cli-home``); each query
below is a fresh process with its own query text, the home's stage caches emptied first, and Prefect's home under
``benchmarks/out/serve/prefect-home`` (its database made by the demo run, as a user's would be by then).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, RESULTS_DIR, Result, machine_info, now_iso, write_json
from benchmarks.serve_common import SERVE_DIR, Client, Service, child_env, new_home, offline_settings, r3_command


def run_standalone(name: str, argv: list[str], quick: bool, measure: Callable[[], Result]) -> int:
    """`measure()` with the user's R3_* settings out of the way (as `benchmarks.run` does), its result written to
    benchmarks/results/NAME.json with the command, machine and times, RESULTS.md regenerated; 1 on a missed target."""
    from benchmarks.report import write_report

    for variable in [n for n in os.environ if n.startswith("R3_")]:
        del os.environ[variable]
    machine, started, start = machine_info(), now_iso(), time.perf_counter()
    payload = measure().to_dict()
    payload.update(
        command=" ".join([f"python -m benchmarks.{name}", *argv]),
        mode="quick" if quick else "full",
        started=started,
        duration_s=time.perf_counter() - start,
        machine=machine,
    )
    write_json(RESULTS_DIR / f"{name}.json", payload)
    for row in payload["rows"]:
        status = "" if row["passed"] is None else ("  PASS" if row["passed"] else "  MISS")
        print(f"   {row['name']}: {row['measured']} {row['unit']}{status}", flush=True)
    write_report(BENCH_DIR / "RESULTS.md")
    print(f"({payload['duration_s']:.0f} s)", flush=True)
    return 1 if any(row["passed"] is False for row in payload["rows"]) else 0


CLI_TEXTS = ["a red ball rolling across the screen", "a rabbit in a green meadow", "people riding bicycles"]
SERVER_TEXTS = ["white squares in the dark", "a man on the phone in a car", "a green triangle moving up"]


# Where a one-shot `r3 query`'s time goes, read from its log's timestamps: (phase, first line ending it).
PHASES = [
    ("start: imports, settings, preflight, model check", "Starting temporary server"),
    ("Prefect temporary server start", "Beginning flow run"),
    ("embedder load and gallery pin", "Task run 'pin-gallery-version"),
    ("the query (validate, embed, recall, rerank)", " - answered "),
    ("results, report, contact sheets, flow end", "Stopping temporary server"),
]


def _timed_cli(args: list[str], log_path: Path, timeout: float = 900) -> dict[str, Any]:
    wall, started = time.time(), time.perf_counter()
    with log_path.open("wb") as handle:
        proc = subprocess.run(
            [*r3_command(), *args], stdout=handle, stderr=subprocess.STDOUT, env=child_env(), timeout=timeout
        )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rc": proc.returncode, "log": str(log_path), "phases": _phases(log_path, wall, seconds)}


def _phases(log_path: Path, wall: float, seconds: float) -> dict[str, float]:
    """Seconds per `PHASES` entry from the log's `HH:MM:SS.mmm |` stamps (Prefect's, in local time); the rest of
    the run, after the last stamp, is the exit."""
    day = dt.datetime.fromtimestamp(wall)
    stamps = {}
    for line in log_path.read_text(errors="replace").splitlines():
        for _, marker in PHASES:
            if marker in line and marker not in stamps and line[:2].isdigit() and line[12:15] == " | ":
                clock = dt.datetime.strptime(line[:12], "%H:%M:%S.%f").time()
                stamps[marker] = dt.datetime.combine(day.date(), clock).timestamp() - wall
    out, last = {}, 0.0
    for name, marker in PHASES:
        if marker in stamps:
            out[name] = round(stamps[marker] - last, 2)
            last = stamps[marker]
    if out:
        out["exit"] = round(seconds - last, 2)
    return out


def measure_cli(quick: bool, log: Any) -> dict[str, Any]:
    from r3tasks.gallery.views import open_store

    home = new_home(SERVE_DIR / "cli-home")
    logs = SERVE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cli-", dir=SERVE_DIR))
    out: dict[str, Any] = {"home": str(home)}
    try:
        if not open_store(offline_settings(home, "demo")).exists():
            out["demo"] = _timed_cli(["demo", "--home", str(home)], logs / "cli-demo.log")
            log(f"  r3 demo (built the demo gallery): {out['demo']['seconds']:.1f} s, exit {out['demo']['rc']}")
        shutil.rmtree(home / "cache", ignore_errors=True)  # each query below is new to the stage caches
        reps = 1 if quick else 3
        out["one_shot"] = []
        for k in range(reps):
            queries = work / f"local-{k}.jsonl"
            queries.write_text(f'{{"id": "q{k}", "text": "{CLI_TEXTS[k]}"}}\n')
            args = ["query", str(queries), "--gallery", "demo", "--preset", "offline", "--home", str(home)]
            run = _timed_cli([*args, "--out", str(work / f"local-{k}.json")], logs / f"cli-query-{k}.log")
            out["one_shot"].append(run)
            log(f"  r3 query (one shot): {run['seconds']:.1f} s, exit {run['rc']}")
        service = Service(home, logs / "cli-serve.log", gallery="demo")  # the defaults: as shipped, max_pending 8
        try:
            out["serve_start_s"] = service.start_s
            client = Client(service.host, service.port)
            warm = client.query({"queries": [{"id": "w", "text": "a warm-up query"}]})
            out["serve_first_query_s"] = warm.seconds
            client.close()
            out["via_server"] = []
            for k in range(reps + 1):
                queries = work / f"served-{k}.jsonl"
                queries.write_text(f'{{"id": "s{k}", "text": "{SERVER_TEXTS[k % len(SERVER_TEXTS)]}"}}\n')
                args = ["query", str(queries), "--server", service.url, "--out", str(work / f"served-{k}.json")]
                # The last run leaves out --gallery: the service serves `demo`, but the command sends its own
                # default (`default`) as the request's gallery.
                gallery = ["--gallery", "demo"] if k < reps else []
                run = _timed_cli([*args, *gallery], logs / f"cli-server-{k}.log")
                log(f"  r3 query --server {' '.join(gallery)}: {run['seconds']:.2f} s, exit {run['rc']}")
                if gallery:
                    out["via_server"].append(run)
                else:
                    run["said"] = Path(run["log"]).read_text(errors="replace").strip()[-300:]
                    out["via_server_without_gallery"] = run
            out["burst"] = burst_at_default_limit(service)
            log(f"  burst of 16 at max_pending 8: {out['burst']['statuses']}")
        finally:
            out["serve_exit_code"] = service.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def burst_at_default_limit(service: Service, clients: int = 16) -> dict[str, Any]:
    """`clients` requests sent at the same moment to a service at the default `serve.max_pending` (8)."""
    barrier = threading.Barrier(clients)
    replies: list[Any] = [None] * clients

    def one(i: int) -> None:
        client = Client(service.host, service.port)
        client._connection().connect()
        barrier.wait()
        replies[i] = client.query({"queries": [{"id": f"b{i}", "text": f"a burst query number {i}"}]})
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = Counter(str(r.status) for r in replies)
    retry_after = sorted({r.headers.get("retry-after") for r in replies if r.status == 503})
    return {"clients": clients, "statuses": dict(statuses), "retry_after": retry_after}
