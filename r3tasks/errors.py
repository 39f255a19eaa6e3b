"""Typed errors. Each names the item it is about and why, so a summary can list it."""

from __future__ import annotations

from pathlib import Path


class R3Error(Exception):
    """Base of every error r3 raises on purpose."""


class ItemError(R3Error):
    """Something is wrong with one gallery item or query; the batch goes on without it."""

    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"{item}: {reason}")


class VideoReadError(ItemError):
    """A video file cannot be used: missing, empty, truncated, not a video, frameless, unreadable."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(str(path), reason)


class MissingTextError(ItemError):
    """A text-only embedder was given an item or query without text."""


class SourceError(R3Error):
    """A gallery source (folder or manifest) or a queries file is malformed as a whole."""


class ModelNotAvailableError(R3Error):
    """A model's weights cannot be found locally and cannot be downloaded."""

    def __init__(self, model: str, how_to_supply: str) -> None:
        self.model = model
        super().__init__(f"model {model!r} is not available: {how_to_supply}")


class TransientError(R3Error):
    """A failure worth retrying (I/O, storage, a flaky model server)."""


class FilterError(R3Error):
    """A gallery filter (SQL WHERE over the stored columns) that cannot run; `str()` is one line naming
    where the filter came from (`label`: `--where` on the command line), `reason` is LanceDB's."""

    def __init__(self, reason: str, where: str, label: str = "--where") -> None:
        self.reason = reason
        self.where = where
        self.label = label
        super().__init__(f"{label}: {reason}")
