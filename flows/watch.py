"""`r3 watch INBOX`: emit `r3.inbox.file-landed` for each queries file that lands complete in INBOX.

Only the signal is ours; the run is Prefect's: the `query-batch-inbox` deployment's trigger
(deployments/prefect.yaml) starts a batch per event, once per file within its window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from r3tasks.errors import R3Error
from r3tasks.inputs.inbox import InboxState, landed, list_inbox
from r3tasks.settings.operations import WatchSettings

LANDED_EVENT = "r3.inbox.file-landed"


def results_path(inbox: Path, name: str, out_dir: Path | None) -> Path:
    return (out_dir or inbox / "results") / f"{Path(name).stem}.results.json"


def emit_landed(path: Path, out: Path) -> None:
    from prefect.events import emit_event

    event = emit_event(
        event=LANDED_EVENT,
        resource={"prefect.resource.id": f"r3.inbox.{path}", "prefect.resource.name": path.name},
        payload={"path": str(path), "out": str(out), "size": path.stat().st_size},
    )
    if event is None:
        raise R3Error("r3 watch: Prefect is not sending events (no server): set PREFECT_API_URL to your server's API")


def watch(
    inbox: Path,
    settings: WatchSettings,
    out_dir: Path | None = None,
    polls: int | None = None,
    on_landed: Callable[[Path, Path], None] = emit_landed,
) -> int:
    """Poll INBOX (`polls` times, forever when None); returns how many files were reported."""
    if not inbox.is_dir():
        raise R3Error(f"inbox {inbox}: not a folder")
    state = InboxState()
    reported = 0
    done = 0
    while polls is None or done < polls:
        for name in landed(state, list_inbox(inbox, settings.patterns), settings.stable_polls):
            on_landed((inbox / name).resolve(), results_path(inbox, name, out_dir).resolve())
            print(f"landed: {inbox / name}", flush=True)
            reported += 1
        done += 1
        if polls is None or done < polls:
            time.sleep(settings.poll_seconds)
    return reported


def drain_events() -> None:
    """Send what is queued before the process exits."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
