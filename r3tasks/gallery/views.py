"""Opening the settings' gallery store, and the pinned versions a query batch shares.

A query batch's stages (validation, recall, rerank, results) all read the same pinned version; pinning
reads every row's metadata and the first search loads the whole vector matrix, so one `PinnedGallery`
per (table, version, search settings) is kept here and handed to every stage of the batch, and
released when the batch ends. At most `MAX_PINNED` stay held, so two galleries queried one after the
other in a process do not keep two matrices in RAM.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from r3tasks.gallery.pinned import PinnedGallery, pin
from r3tasks.gallery.table import GalleryStore
from r3tasks.models.registry import embedder_dim, embedder_fingerprint
from r3tasks.settings.tree import R3Settings

MAX_PINNED = 2
_pinned: OrderedDict[tuple, PinnedGallery] = OrderedDict()
_lock = threading.Lock()


def open_store(settings: R3Settings) -> GalleryStore:
    """The LanceDB table of the settings' gallery for the settings' embedder (named by its fingerprint, which is
    computed without loading the embedder: pinning a gallery loads no model)."""
    return GalleryStore(
        settings.gallery_uri,
        settings.gallery.table_prefix,
        embedder_fingerprint(settings),
        embedder_dim(settings),
        storage_options=settings.gallery.storage_options,
        settings=settings.gallery,
        gallery=settings.gallery.name,
    )


def _key(settings: R3Settings, version: int) -> tuple:
    return (
        settings.gallery_uri,
        settings.gallery.name,
        embedder_fingerprint(settings),
        version,
        settings.settings_hash("gallery"),
    )


def pinned(settings: R3Settings, version: int | str | None) -> PinnedGallery:
    """The shared pinned view of `version` (a number, a tag, or the latest when None), pinned and loaded
    once however many stages ask."""
    if isinstance(version, int):
        with _lock:
            view = _pinned.get(_key(settings, version))
            if view is not None:
                _pinned.move_to_end(_key(settings, version))
                return view
    view = pin(open_store(settings), version)
    key = _key(settings, view.ref.version)
    with _lock:
        view = _pinned.setdefault(key, view)
        _pinned.move_to_end(key)
        while len(_pinned) > MAX_PINNED:
            _pinned.popitem(last=False)
    return view


def release(settings: R3Settings, version: int) -> None:
    """Drop the shared view of `version` (its vector matrix goes with it) once its batch is done."""
    with _lock:
        _pinned.pop(_key(settings, version), None)
