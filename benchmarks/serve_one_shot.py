"""For `benchmarks.serve`: the one-shot `r3 query` of one text query on the demo gallery, a fresh process each,
with Prefect's temporary server and with PREFECT_API_URL naming a server started by scripts/prefect-server.sh
(docs/usage.md: the documented fast path), and where each run's time goes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT, Result
from benchmarks.serve_common import SERVE_DIR, child_env, r3_command
from benchmarks.serve_extras import CLI_TEXTS

# Phases of a one-shot `r3 query`, from its log's `HH:MM:SS.mmm |` stamps: (phase, pattern of the line ending it).
# With PREFECT_API_URL naming a running server no temporary one starts: the start runs to the flow run's first line.
ONE_SHOT_START = {
    "temporary": [
        ("start: imports, settings, preflight, model check", "Starting temporary server"),
        ("Prefect temporary server start", "Beginning flow run"),
    ],
    "server": [("start: imports, settings, preflight, model check, flow run created", "Beginning flow run")],
}
ONE_SHOT_PHASES = [
    ("gallery pin (LanceDB, embedder fingerprint: no model)", "Task run 'pin-gallery-version"),
    ("the query (validate, embedder load, embed, recall, rerank)", " - answered "),
    ("results, report, contact sheets, flow end", "Flow run '.*' - Finished in state"),
]
ONE_SHOT_MODES = {"server": "PREFECT_API_URL set (a running Prefect server)", "temporary": "Prefect's temporary server"}


def one_shot(args: list[str], log_path: Path, env: dict[str, str], phases: list[tuple[str, str]]) -> dict[str, Any]:
    load = os.getloadavg()[0]  # the machine is shared: what else was running shows here
    wall, started = time.time(), time.perf_counter()
    with log_path.open("wb") as handle:
        rc = subprocess.run([*r3_command(), *args], stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=900)
    seconds, day, stamps = time.perf_counter() - started, dt.datetime.fromtimestamp(wall).date(), {}
    for line in log_path.read_text(errors="replace").splitlines():
        for name, pattern in phases:
            if name not in stamps and line[:2].isdigit() and line[12:15] == " | " and re.search(pattern, line):
                clock = dt.datetime.strptime(line[:12], "%H:%M:%S.%f").time()
                stamps[name] = dt.datetime.combine(day, clock).timestamp() - wall
    out, last = {}, 0.0
    for name, _ in phases:
        if name in stamps:
            out[name], last = round(stamps[name] - last, 2), stamps[name]
    out["exit: table printed, process end"] = round(seconds - last, 2)
    return {"seconds": seconds, "rc": rc.returncode, "log": str(log_path), "phases": out, "load": load}


def prefect_server(action: str) -> str:
    """`scripts/prefect-server.sh ACTION` (start, stop) with its state and database under benchmarks/out/serve;
    the URL it prints last."""
    env = {**os.environ, "R3_SERVER_DIR": str(SERVE_DIR / "prefect-server")}
    env["PREFECT_HOME"] = str(SERVE_DIR / "prefect-server-home")
    script = REPO_ROOT / "scripts" / "prefect-server.sh"
    done = subprocess.run(["bash", str(script), action], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"prefect-server.sh {action} failed: {done.stderr.strip()[-500:]}")
    return (done.stdout.strip().splitlines() or [""])[-1]


def measure_one_shot(quick: bool, log: Any) -> dict[str, list[dict[str, Any]]]:
    """The one-shot `r3 query` on the demo gallery (`measure_cli` builds it), a fresh process each, stage caches
    emptied first: with Prefect's temporary server and with PREFECT_API_URL set, taking turns."""
    home, work = SERVE_DIR / "cli-home", Path(tempfile.mkdtemp(prefix="one-shot-", dir=SERVE_DIR))
    out: dict[str, list[dict[str, Any]]] = {mode: [] for mode in ONE_SHOT_MODES}
    api = {"PREFECT_API_URL": prefect_server("start") + "/api"}
    try:
        for k in range(1 if quick else 3):
            for mode in ("temporary", "server"):
                shutil.rmtree(home / "cache", ignore_errors=True)
                queries = work / f"{mode}-{k}.jsonl"
                queries.write_text(json.dumps({"id": f"q{k}", "text": CLI_TEXTS[k]}) + "\n")
                args = ["query", str(queries), "--gallery", "demo", "--preset", "offline", "--home", str(home)]
                args += ["--out", str(work / f"{mode}-{k}.json")]
                log_path = SERVE_DIR / "logs" / f"cli-one-shot-{mode}-{k}.log"
                env = child_env(api if mode == "server" else None)
                run = one_shot(args, log_path, env, ONE_SHOT_START[mode] + ONE_SHOT_PHASES)
                out[mode].append(run)
                log(f"  r3 query (one shot, {ONE_SHOT_MODES[mode]}): {run['seconds']:.1f} s, exit {run['rc']}")
    finally:
        prefect_server("stop")
        shutil.rmtree(work, ignore_errors=True)
    return out


def summarise_one_shot(result: Result, cli: dict[str, Any], target_s: float) -> None:
    """A row per mode (the target judged on the documented fast path, a running server) and its phase table."""
    for mode, label in ONE_SHOT_MODES.items():  # the target is the documented fast path's, a running server
        runs = (cli.get("one_shot_modes") or {}).get(mode) or []
        times = [r["seconds"] for r in runs]
        median = float(np.median(times)) if times else None
        judged = mode == "server" and median is not None
        result.row(
            f"one-shot `r3 query Q --gallery demo --preset offline` (one text query, fresh process), {label}, median",
            median,
            "s",
            f"≤ {target_s:.0f} s (was 25-27 s)" if mode == "server" else "",
            median <= target_s if judged else None,
            note=f"runs {', '.join(f'{t:.1f}' for t in times)} s; exit codes {[r['rc'] for r in runs]}",
        )
        names = list(dict.fromkeys(n for r in runs for n in r["phases"]))
        result.table(
            f"Where a one-shot `r3 query` spends its time, {label} (seconds, from the log's timestamps)",
            ["run", "load average (1 min) at start", *names, "total"],
            [
                [
                    i + 1,
                    f"{r['load']:.2f}" if "load" in r else "—",
                    *(f"{r['phases'].get(n, float('nan')):.2f}" for n in names),
                    f"{r['seconds']:.2f}",
                ]
                for i, r in enumerate(runs)
            ],
        )
    result.note(
        "One-shot `r3 query`: the target is judged on the documented fast path, PREFECT_API_URL naming a running "
        "server (docs/usage.md). Until 2026-12-06 the row measured Prefect's temporary server instead (13.1 s "
        "median at load 0.44, when pinning the gallery still loaded the embedder and the exit took 1.9 s)."
    )
