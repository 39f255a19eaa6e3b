"""A content-addressed store of stage outputs (frames, reasoning, query vectors, rerank scores) in the data home.

Prefect caches a task call as a whole; this keeps each query's result on its
own, so a batch that shares most queries with an earlier one recomputes only
the new ones. Keys come from `r3tasks.cache.keys`, built from what each backend
reads. Each stage's folder is bounded (`query.stage_cache_max_bytes`): a hit
refreshes an entry's time, and past the bound the least recently used entries go.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

# Entries are left over the bound by up to this fraction before a sweep, so puts do not each scan the folder.
_SLACK = 0.1


def stage_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class StageCache:
    def __init__(self, root: Path, stage: str, max_bytes: int | None = None) -> None:
        self.root = Path(root) / stage
        self.stage = stage
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self._size: int | None = None  # bytes on disk, counted on the first put

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pkl"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                value = pickle.load(handle)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (pickle.UnpicklingError, EOFError):
            # A half-written entry from a killed run: recompute rather than fail.
            self.misses += 1
            return None
        self.hits += 1
        if self.max_bytes is not None:
            try:
                os.utime(path)  # recently used: the last to be evicted
            except OSError:
                pass
        return value

    def put(self, key: str, value: Any) -> None:
        if self.max_bytes == 0:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an entry.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
            temp_name = handle.name
        written = os.path.getsize(temp_name)
        os.replace(temp_name, path)
        if self.max_bytes is not None:
            if self._size is None:
                self._size = sum(size for _, _, size in self._entries())
            else:
                self._size += written
            if self._size > self.max_bytes * (1 + _SLACK):
                self._evict()

    def counts(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evicted": self.evicted}

    def _entries(self) -> list[tuple[float, Path, int]]:
        out = []
        for folder in self.root.glob("??"):
            for entry in os.scandir(folder):
                if entry.name.endswith(".pkl"):
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue  # evicted by another process meanwhile
                    out.append((stat.st_mtime, Path(entry.path), stat.st_size))
        return out

    def _evict(self) -> None:
        """Delete the least recently used entries until the folder is within its bound."""
        entries = sorted(self._entries(), key=lambda e: e[0])
        size = sum(e[2] for e in entries)
        for _, path, nbytes in entries:
            if size <= (self.max_bytes or 0):
                break
            try:
                path.unlink()
                self.evicted += 1
            except FileNotFoundError:
                pass
            size -= nbytes
        self._size = size


def prune_older_than(folder: Path, seconds: float | None) -> int:
    """Delete the files under `folder` not modified for `seconds` (None: none); returns how many went."""
    if seconds is None or not Path(folder).is_dir():
        return 0
    cutoff = time.time() - seconds
    removed = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
