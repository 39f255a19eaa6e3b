"""Pieces every r3 flow shares: settings from flow parameters, result storage, retry rules."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.states import State

import r3tasks
from r3tasks.errors import TransientError
from r3tasks.settings.tree import R3Settings, load_settings

# r3tasks logs through the logging module; at INFO its lines (a model's one-time conversion, progress)
# reach the console handler Prefect puts on the root logger, in flow runs and the CLI alike.
if logging.getLogger("r3tasks").level == logging.NOTSET:
    logging.getLogger("r3tasks").setLevel(logging.INFO)


def flow_settings(
    preset: str | None, home: str | None, overrides: dict[str, Any] | None, gallery: str | None = None
) -> R3Settings:
    """Settings for one flow run: environment and r3.toml, then the run's parameters on top."""
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
