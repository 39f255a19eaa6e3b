"""Shared pieces of the benchmark suite: the run context, result rows, timing, machine facts.

Nothing here imports Prefect at module level: `benchmarks.run` sets ``PREFECT_HOME`` first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Scratch space (git-ignored): generated clips, data homes, LanceDB tables, converted models.
WORK_DIR = BENCH_DIR / "out"


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One measured figure, with its target when the issue sets one (`passed` None: informational)."""

    name: str
    measured: float | None
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Result:
    """What one benchmark module returns; `run` adds the command, machine and timing."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def row(
        self,
        name: str,
        measured: float | None,
        unit: str,
        target: str = "",
        passed: bool | None = None,
        note: str = "",
    ) -> Row:
        row = Row(name, None if measured is None else float(measured), unit, target, passed, note)
        self.rows.append(row)
        return row

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.tables.append(Table(title, list(columns), [list(r) for r in rows]))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "title": self.title,
            "rows": [asdict(r) for r in self.rows],
            "tables": [asdict(t) for t in self.tables],
            "notes": self.notes,
            "data": self.data,
        }


# ---------------------------------------------------------------------------------------------
# Context


class Context:
    """Settings of one suite run and the resources benchmarks share (scratch dirs, one Prefect server)."""

    def __init__(self, quick: bool, log: Callable[[str], None] = print) -> None:
        self.quick = quick
        self.log = log
        self.work = WORK_DIR
        self.work.mkdir(parents=True, exist_ok=True)
        # Models (tiny checkpoints, converted Gemma) are built once and shared by every data home.
        self.models_dir = self.work / "models"
        self.models_dir.mkdir(exist_ok=True)
        # Per run: two suite runs at once (e.g. --only recall and --only orchestration) must not delete
        # each other's data homes when one of them closes.
        self._homes = self.work / f"homes-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stack = contextlib.ExitStack()
        self._server_start_s: float | None = None
        self.api_url: str | None = None

    def new_home(self, label: str) -> Path:
        """A fresh, empty data home (own LanceDB, own Prefect result store) sharing the built models."""
        home = self._homes / f"{label}-{uuid.uuid4().hex[:8]}"
        home.mkdir(parents=True)
        (home / "models").symlink_to(self.models_dir, target_is_directory=True)
        return home

    def drop_home(self, home: Path) -> None:
        shutil.rmtree(home, ignore_errors=True)

    def prefect_server(self) -> float:
        """Start one temporary Prefect server (SQLite in a temp dir) for the whole run; seconds it took."""
        if self._server_start_s is None:
            from prefect.settings import PREFECT_API_URL
            from prefect.testing.utilities import prefect_test_harness

            start = time.perf_counter()
            self._stack.enter_context(prefect_test_harness(server_startup_timeout=180))
            self._server_start_s = time.perf_counter() - start
            self.api_url = PREFECT_API_URL.value()
            self.log(f"  prefect test server up in {self._server_start_s:.1f} s at {self.api_url}")
        return self._server_start_s

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self._homes, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Measuring


def pct(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def repeat(fn: Callable[[], Any], times: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `times` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(times):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


@contextlib.contextmanager
def quiet_logs(*names: str) -> Iterator[None]:
    """Silence chatty library loggers (progress lines would swamp the run log)."""
    import logging

    levels = {}
    for name in names:
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# ---------------------------------------------------------------------------------------------
# Machine facts


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    versions = {}
    for module in ("numpy", "lancedb", "pyarrow", "prefect", "torch", "transformers", "decord", "av"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            versions[module] = None
    return {
        "cpu": cpu,
        "cores": affinity,
        "ram_gib": round(mem_total / 2**30, 1),
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_state(),
        "load_average_at_start": [round(x, 2) for x in load_average()],
    }


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return None


def _git_state() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python -m benchmarks.run", *argv])


def write_wav(path: Path, pcm16: bytes, rate: int) -> Path:
    """Mono 16-bit PCM samples as a WAV file (what PyAV and the ASR backends open)."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm16)
    return path


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def python() -> str:
    return sys.executable
