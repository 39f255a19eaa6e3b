"""Per-item isolation for model calls: one bad query or candidate never costs the others their answer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from r3tasks.errors import ItemError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def reason_of(error: BaseException) -> str:
    """The words a query's `error` carries for an exception: an ItemError's reason, else type and message
    (a processor's ValueError, a tokenizer error, an out-of-memory)."""
    if isinstance(error, ItemError):
        return error.reason
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def batched_or_alone(items: Sequence[T], call: Callable[[list[T]], Sequence[R]]) -> list[R | Exception]:
    """`call` on the whole batch (several times faster than one by one); when the batch raises, every
    item alone, so only the items that fail by themselves carry an error and the others get exactly
    what they would get alone. Any Exception counts (MemoryError and torch's OutOfMemoryError too);
    KeyboardInterrupt and SystemExit still end the run."""
    items = list(items)
    if not items:
        return []
    try:
        out = list(call(items))
        if len(out) != len(items):
            raise ValueError(f"{len(out)} results for {len(items)} inputs")
        return out
    except Exception as error:  # noqa: BLE001 - isolated below, item by item
        if len(items) == 1:
            return [error]
        log.warning("a batch of %d failed (%s): calling the model for each alone", len(items), reason_of(error))
    results: list[R | Exception] = []
    for item in items:
        try:
            results.append(list(call([item]))[0])
        except Exception as error:  # noqa: BLE001 - this item's own failure
            results.append(error)
    return results
