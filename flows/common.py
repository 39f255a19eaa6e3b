"""Pieces every r3 flow shares: settings from flow parameters, result storage, retry rules."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.states import State

import r3tasks
from r3tasks.errors import TransientError
from r3tasks.settings.tree import R3Settings, load_settings

LIBRARY_LOGGER = "r3tasks"
_EXTRA_LOGGERS = "PREFECT_LOGGING_EXTRA_LOGGERS"

# r3tasks logs through the logging module; at INFO its lines (a model's one-time conversion, progress)
# reach the console handler Prefect puts on the root logger, in flow runs and the CLI alike.
if logging.getLogger(LIBRARY_LOGGER).level == logging.NOTSET:
    logging.getLogger(LIBRARY_LOGGER).setLevel(logging.INFO)


def _in_a_run(record: logging.LogRecord) -> bool:
    # Outside a flow or task run (the CLI before or after its flow) a line has no run to belong to: Prefect's
    # handler would warn about each one.
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _RunLogHandler(logging.Handler):
    """Prefect's API log handler, for the lines logged inside a flow or task run only."""

    def __init__(self) -> None:
        from prefect.logging.handlers import APILogHandler

        super().__init__()
        self.api = APILogHandler()
        self.addFilter(_in_a_run)

    def emit(self, record: logging.LogRecord) -> None:
        self.api.handle(record)


def route_library_logs() -> None:
    """Send what r3tasks logs inside a run to that run's logs in the Prefect UI, as
    `PREFECT_LOGGING_EXTRA_LOGGERS=r3tasks` would, without anyone setting it: Prefect reads that setting once,
    when it sets up logging, which in a deployment run happens before r3 is imported. A value the user set is
    extended, not replaced, and child processes (workers, Dask) inherit it."""
    names = [name.strip() for name in os.environ.get(_EXTRA_LOGGERS, "").split(",") if name.strip()]
    if LIBRARY_LOGGER not in names:
        os.environ[_EXTRA_LOGGERS] = ",".join([*names, LIBRARY_LOGGER])
    library = logging.getLogger(LIBRARY_LOGGER)
    # Prefect's own set-up may already have put its API handler there (the setting was set in time).
    if not any(isinstance(h, _RunLogHandler) or type(h).__name__ == "APILogHandler" for h in library.handlers):
        library.addHandler(_RunLogHandler())


def flow_settings(
    preset: str | None, home: str | None, overrides: dict[str, Any] | None, gallery: str | None = None
) -> R3Settings:
    """Settings for one flow run: environment and r3.toml, then the run's parameters on top. Also routes the
    library's log lines to the run's logs (`route_library_logs`)."""
    route_library_logs()
    merged = dict(overrides or {})
    if gallery is not None:
        merged["gallery"] = {**merged.get("gallery", {}), "name": gallery}
    return load_settings(preset=preset, home=Path(home) if home else None, **merged)


def result_storage(settings: R3Settings) -> Path:
    # A plain Path: Prefect reads a string as a block name, and an unsaved block raises.
    path = settings.home / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    return path


# What a retry may cure: I/O, storage and model-server hiccups. Anything else is deterministic.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientError, OSError, TimeoutError, ConnectionError)


def retry_on_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry I/O and storage hiccups; a deterministic error (bad file, bad model) fails at once."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


def stable_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{r3tasks.__version__}+{commit}" if commit else r3tasks.__version__
