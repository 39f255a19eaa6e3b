"""The one way tests (and benchmarks) open a gallery table by hand: always with its gallery name.

A table is `<prefix>_<gallery>_<embedder fingerprint>`: a store built without the gallery name silently
opens the default gallery's table. Where a test means "the table the settings point at" it uses
`r3tasks.gallery.views.open_store(settings)` instead, as the flows do.
"""

from __future__ import annotations

from collections.abc import Sequence

from r3tasks.gallery.table import GalleryRow, GalleryStore
from r3tasks.settings.tree import DEFAULT_GALLERY, GallerySettings

DEFAULT_PREFIX = GallerySettings.model_fields["table_prefix"].default


def gallery_store(
    uri: str,
    fingerprint: str,
    dim: int,
    *commits: Sequence[GalleryRow],
    gallery: str = DEFAULT_GALLERY,
    prefix: str = DEFAULT_PREFIX,
    settings: GallerySettings | None = None,
    storage_options: dict[str, str] | None = None,
) -> GalleryStore:
    """The table of gallery `gallery` for embedder `fingerprint` (vectors of `dim`) at `uri`, after writing
    each of `commits` as one upsert (one table version each); none: nothing is written or created."""
    store = GalleryStore(
        uri, prefix, fingerprint, dim, storage_options=storage_options, settings=settings, gallery=gallery
    )
    for rows in commits:
        store.upsert(rows)
    return store
