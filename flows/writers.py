"""One writer per gallery table, whoever starts it (`r3 index`, the `gallery-refresh` deployment, eval's indexing).

Every commit (upsert, delete) and the upkeep of `index_gallery` holds the table's writer slot; a second
writer waits up to `upkeep.writer_wait_seconds`, or is refused at once when that is 0, with a line
naming the table. Which lock the slot is depends on where the table lives:

- a local table: an OS file lock (flock) beside it. The kernel releases it when its holder dies,
  however it dies (kill -9 included), and every writer of a local table runs on this machine.
- a remote table (s3:// and other object stores), where no file lock exists: a Prefect global
  concurrency limit of 1 per table, which spans machines; it needs a Prefect server
  (`PREFECT_API_URL`). A writer killed with -9 loses its slot when its lease
  (`upkeep.writer_lease_seconds`) runs out and the server's repossessor frees it. The limit is not
  used for local tables because Prefect's temporary and test servers keep leases in memory and run no
  repossessor: a killed holder would block the table for good (measured: the rerun after a kill -9
  waited out its 300 s timeout).

Per commit, not per run: two concurrent runs interleave their commits; upserts by id converge either way.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from r3tasks.errors import R3Error
from r3tasks.gallery.table import GalleryStore
from r3tasks.settings.tree import R3Settings


class WriterBusy(R3Error):
    """Another writer holds the gallery table."""


def writer_limit_name(store: GalleryStore) -> str:
    """The global concurrency limit of one table: its name plus a hash of where it lives."""
    where = hashlib.sha256(store.uri.encode()).hexdigest()[:8]
    return f"r3-writer-{store.name}-{where}"


def ensure_writer_limit(name: str) -> None:
    """Create the limit (1 slot) on first use; a limit an operator created or resized is left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another writer created it first


def _server_configured() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def _local_lock_path(store: GalleryStore) -> Path | None:
    """Where a local table's lock file lives; None for a remote URI (only the Prefect limit covers it)."""
    uri = store.uri
    if "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")) / ".r3-writers" / f"{store.name}.lock"


@contextmanager
def _file_lock(path: Path, wait: float, busy: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WriterBusy(
                        f"{busy}; "
                        + (
                            f"waited {wait:g} s (upkeep.writer_wait_seconds): try again when it finishes"
                            if wait
                            else "not waiting (upkeep.writer_wait_seconds = 0)"
                        )
                    ) from None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def writer_slot(store: GalleryStore, settings: R3Settings) -> Iterator[str]:
    """Hold the table's writer slot for the block; waits, or refuses with a clear line (WriterBusy)."""
    name = writer_limit_name(store)
    wait = settings.upkeep.writer_wait_seconds
    busy = f"gallery table {store.name} at {store.uri} is being written by another run"
    with ExitStack() as held:
        lock_path = _local_lock_path(store)
        if lock_path is not None:
            held.enter_context(_file_lock(lock_path, wait, f"{busy} (lock {lock_path})"))
        elif _server_configured():
            held.enter_context(_prefect_slot(name, wait, f"{busy} (concurrency limit {name})", settings))
        else:
            logging.getLogger(__name__).warning(
                "gallery table %s at %s: no writer lock (a remote table needs a Prefect server, PREFECT_API_URL); "
                "run one writer at a time",
                store.name,
                store.uri,
            )
        yield name


@contextmanager
def _prefect_slot(name: str, wait: float, busy: str, settings: R3Settings) -> Iterator[None]:
    import httpx
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    ensure_writer_limit(name)
    held = ExitStack()
    try:
        # wait 0: no retry on the server's 423, so a busy table refuses at once.
        held.enter_context(
            concurrency(
                name,
                occupy=1,
                timeout_seconds=wait or None,
                max_retries=0 if wait == 0 else None,
                strict=True,
                lease_duration=settings.upkeep.writer_lease_seconds,
            )
        )
    except TimeoutError:
        raise WriterBusy(
            f"{busy}; waited {wait:g} s (upkeep.writer_wait_seconds): try again when it finishes"
        ) from None
    except ConcurrencySlotAcquisitionError as error:
        cause = error.__cause__
        if not (isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423):
            raise
        raise WriterBusy(f"{busy}; not waiting (upkeep.writer_wait_seconds = 0)") from None
    with held:
        yield
