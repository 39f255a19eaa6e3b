"""The galleries a service answers from: each one's pinned latest version, followed as refreshes commit.

A refresh (an index run, `r3 watch`, the gallery-refresh deployment) commits a new table version from
another process. The service notices it by reading the table's latest version number (one manifest
read, at most every `serve.version_check_seconds`), pins it, and swaps the view new requests get; a
request already running keeps the view it started with, because it holds its own reference.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

from r3tasks.errors import R3Error
from r3tasks.gallery.pinned import ItemRecord, PinnedGallery, pin
from r3tasks.gallery.table import open_committed, sql_string
from r3tasks.gallery.upkeep import resolve_version, tags_of
from r3tasks.gallery.views import open_store
from r3tasks.inputs.frames import probe_video
from r3tasks.query.prepare import ensure_gallery_not_empty
from r3tasks.settings.tree import R3Settings, check_gallery_name

# Versions asked for by number or tag, besides the latest: each holds its vector matrix in RAM once searched.
MAX_OLDER_VIEWS = 2


class NotFound(R3Error):
    """A gallery, version, tag or item the request names does not exist (HTTP 404)."""


def gallery_settings(settings: R3Settings, name: str) -> R3Settings:
    """The service's settings with `gallery.name` set to `name`; `NotFound` for a name no gallery can have."""
    try:
        check_gallery_name(name)
    except ValueError as error:
        raise NotFound(str(error)) from None
    if name == settings.gallery.name:
        return settings
    return settings.model_copy(update={"gallery": settings.gallery.model_copy(update={"name": name})})


class GalleryFollower:
    """One gallery of the data home as the service serves it: its latest version pinned, older ones on request."""

    def __init__(self, settings: R3Settings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        # A handle of its own, used only to read the latest version number (a pinned view's handle is checked
        # out at its version and would never see a newer one).
        self._probe: Any = open_committed(self.store.db, self.store.name)
        if self._probe is None:
            raise NotFound(
                f"gallery {settings.gallery.name!r} has not been indexed in {settings.gallery_uri} with this "
                f"embedder: `r3 galleries` lists what exists"
            )
        self._lock = threading.Lock()
        self._current = pin(self.store, self.latest_version())
        ensure_gallery_not_empty(self._current)
        self._checked_at = time.monotonic()
        self._older: OrderedDict[int, PinnedGallery] = OrderedDict()

    @property
    def name(self) -> str:
        return self.settings.gallery.name

    def latest_version(self) -> int:
        """The table's latest committed version (one manifest read)."""
        with self._lock:
            self._probe.checkout_latest()
            return int(self._probe.version)

    def current(self) -> PinnedGallery:
        """The latest committed version, pinned; checked for a newer one at most every
        `serve.version_check_seconds` (0: on every call)."""
        interval = self.settings.serve.version_check_seconds
        if interval > 0 and time.monotonic() - self._checked_at < interval:
            return self._current
        latest = self.latest_version()
        self._checked_at = time.monotonic()
        if latest != self._current.ref.version:
            fresh = pin(self.store, latest)  # outside the lock: reading a big version's metadata takes a while
            with self._lock:
                if fresh.ref.version > self._current.ref.version:
                    self._keep_older(self._current)
                    self._current = fresh  # one assignment: a request sees the old view or the new, never half
        return self._current

    def at(self, version: int | str | None) -> PinnedGallery:
        """The view of `version` (a number, a tag, "latest" or None); `NotFound` when the table has no such one."""
        try:
            resolved = resolve_version(self.store, version)
        except R3Error as error:
            raise NotFound(str(error)) from None
        if resolved is None:
            return self.current()
        number = resolved if isinstance(resolved, int) else tags_of(self.store)[resolved]
        current = self.current()
        if number == current.ref.version:
            return current
        with self._lock:
            view = self._older.get(number)
            if view is not None:
                self._older.move_to_end(number)
                return view
        try:
            view = pin(self.store, number)
        except R3Error as error:
            raise NotFound(str(error)) from None
        with self._lock:
            self._keep_older(view)
        return view

    def item(self, view: PinnedGallery, item_id: str) -> ItemRecord:
        record = view.records.get(item_id)
        if record is None:
            raise NotFound(f"no item {item_id!r} in gallery {self.name!r} version {view.ref.version}")
        return record

    def item_details(self, view: PinnedGallery, item_id: str) -> dict:
        """What the service tells about one stored item: id, path, text, group and when it was indexed."""
        record = self.item(view, item_id)
        stored = (
            view.lance_table.search()
            .where(f"id = {sql_string(item_id)}")
            .select(["num_frames", "indexed_at"])
            .limit(1)
            .to_arrow()
            .to_pylist()
        )
        row = stored[0] if stored else {}
        indexed_at = row.get("indexed_at")
        return {
            "id": record.id,
            # A non-UTF-8 file name (stored byte for byte) shows with backslash escapes, as the `path` column.
            "path": os.fsencode(record.path).decode("utf-8", "backslashreplace") if record.path else None,
            "text": record.text,
            "group": record.group,
            "kind": "video" if record.path else "text",
            "num_frames": row.get("num_frames"),
            "times": {
                "indexed_at": indexed_at.isoformat() if indexed_at is not None else None,
                "duration_s": _duration_s(record.path),
            },
            "video_id": record.video,
            "start_s": record.start_s,
            "end_s": record.end_s,
            "transcript": record.transcript,
            "screen_text": record.screen_text,
            "gallery": {"name": self.name, "table": view.ref.table, "version": view.ref.version},
        }

    def _keep_older(self, view: PinnedGallery) -> None:
        self._older[view.ref.version] = view
        self._older.move_to_end(view.ref.version)
        while len(self._older) > MAX_OLDER_VIEWS:
            self._older.popitem(last=False)


def _duration_s(path: str | None) -> float | None:
    """The video's length from its container header, or None (a text item, a file gone or broken since)."""
    if not path:
        return None
    try:
        return round(probe_video(path).duration_s, 3)
    except (R3Error, OSError, ValueError):
        return None
