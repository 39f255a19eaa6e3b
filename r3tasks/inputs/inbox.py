"""Which files in an inbox folder are complete and new: a pure function of successive listings.

A file counts as landed once its size and mtime stayed the same for `stable_polls` listings in a
row (a writer appending pieces keeps changing them); it is reported once per (size, mtime), so a
file rewritten later is reported again.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

Signature = tuple[int, int]  # size, mtime in ns


@dataclass
class InboxState:
    seen: dict[str, tuple[Signature, int]] = field(default_factory=dict)  # name -> (signature, polls unchanged)
    reported: dict[str, Signature] = field(default_factory=dict)


def list_inbox(folder: Path, patterns: list[str]) -> dict[str, Signature]:
    """name -> (size, mtime) of the files in `folder` (not below it) matching a pattern; hidden files skipped."""
    out: dict[str, Signature] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in patterns):
            stat = entry.stat()
            out[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return out


def landed(state: InboxState, listing: dict[str, Signature], stable_polls: int) -> list[str]:
    """Update `state` with one listing; the names that are complete and not yet reported, in name order."""
    ready: list[str] = []
    for name in list(state.seen):
        if name not in listing:
            del state.seen[name]
            state.reported.pop(name, None)
    for name, signature in sorted(listing.items()):
        previous = state.seen.get(name)
        polls = previous[1] + 1 if previous and previous[0] == signature else 0
        state.seen[name] = (signature, polls)
        if signature[0] > 0 and polls >= stable_polls and state.reported.get(name) != signature:
            state.reported[name] = signature
            ready.append(name)
    return ready
