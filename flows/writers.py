"""One writer per gallery table, whoever starts it: a Prefect global concurrency limit of 1 per table.

`r3 index`, the `gallery-refresh` deployment and eval's indexing all run `index_gallery`, whose
every commit (upsert, delete) and upkeep holds this slot: a second writer waits up to
`upkeep.writer_wait_seconds`, or is refused at once when that is 0, with a line naming the table.

Per commit, not per run: Prefect's temporary and test servers run no lease repossessor, so a
writer killed with -9 while holding the slot blocks the table until a real server's repossessor
frees it; held per commit, that window is a commit (under a second), not a whole run of embedding.
Two concurrent runs therefore interleave their commits; upserts by id converge either way.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack, contextmanager
from typing import Iterator

from r3tasks.errors import R3Error
from r3tasks.gallery import GalleryStore
from r3tasks.settings import R3Settings


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


@contextmanager
def writer_slot(store: GalleryStore, settings: R3Settings) -> Iterator[str]:
    """Hold the table's writer slot for the block; waits, or refuses with a clear line (WriterBusy)."""
    import httpx
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    name = writer_limit_name(store)
    ensure_writer_limit(name)
    wait = settings.upkeep.writer_wait_seconds
    busy = (f"gallery table {store.name} at {store.uri} is being written by another run (concurrency limit "
            f"{name})")
    held = ExitStack()
    try:
        # wait 0: no retry on the server's 423, so a busy table refuses at once.
        held.enter_context(concurrency(name, occupy=1, timeout_seconds=wait or None,
                                       max_retries=0 if wait == 0 else None, strict=True,
                                       lease_duration=settings.upkeep.writer_lease_seconds))
    except TimeoutError:
        raise WriterBusy(f"{busy}; waited {wait:g} s (upkeep.writer_wait_seconds): try again when it finishes") from None
    except ConcurrencySlotAcquisitionError as error:
        cause = error.__cause__
        if not (isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423):
            raise
        raise WriterBusy(f"{busy}; not waiting (upkeep.writer_wait_seconds = 0)") from None
    with held:
        yield name
