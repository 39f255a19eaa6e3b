"""A content-addressed store of stage outputs (reasoning, query vectors, rerank scores) in the data home.

Prefect caches a task call as a whole; this keeps each query's result on its
own, so a batch that shares most queries with an earlier one recomputes only
the new ones. Keys are built by the caller from content fingerprints, model
fingerprints and the settings that change the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any


def stage_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class StageCache:
    def __init__(self, root: Path, stage: str) -> None:
        self.root = Path(root) / stage
        self.hits = 0
        self.misses = 0

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
        return value

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an entry.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
            temp_name = handle.name
        os.replace(temp_name, path)
