"""The galleries of one data home: which exist, their rows and versions (`r3 galleries`).

A gallery is every table `<prefix>_<name>_<fingerprint>` that carries `r3.gallery` in its
schema metadata; one per embedder it was indexed with. Tables from before named galleries
(`<prefix>_<fingerprint>`, no such metadata) are listed as legacy: they are not read any
more, and `r3 index SOURCE --gallery default` rebuilds them (embeddings come from the cache).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r3tasks.settings.tree import R3Settings

LEGACY = "(legacy)"
REINDEX_HINT = "made before named galleries; rebuild it with `r3 index SOURCE --gallery default`"


@dataclass(frozen=True)
class GalleryInfo:
    gallery: str  # LEGACY for a table from before named galleries
    table: str
    embedder: str
    rows: int
    version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_galleries(settings: R3Settings) -> list[GalleryInfo]:
    """Every gallery table under the settings' LanceDB URI, sorted by gallery then table."""
    import lancedb  # heavy; only this command and the flows need it

    from r3tasks.gallery.table import open_committed

    db = lancedb.connect(settings.gallery_uri, storage_options=settings.gallery.storage_options or None)
    prefix = settings.gallery.table_prefix + "_"
    found: list[GalleryInfo] = []
    for name in db.list_tables().tables:
        if not name.startswith(prefix):
            continue
        table = open_committed(db, name)
        if table is None:  # a folder whose first commit never landed holds no rows to list
            continue
        meta = table.schema.metadata or {}
        gallery = meta.get(b"r3.gallery", LEGACY.encode()).decode()
        embedder = meta.get(b"r3.embedder", b"?").decode()
        found.append(GalleryInfo(gallery, name, embedder, int(table.count_rows()), int(table.version)))
    return sorted(found, key=lambda g: (g.gallery == LEGACY, g.gallery, g.table))


def local_gallery_tables(settings: R3Settings, gallery: str) -> list[str] | None:
    """Tables of `gallery` in a local LanceDB folder, found without importing LanceDB; None for a remote URI.

    Lets the CLI say "no such gallery" before any flow or server starts. The embedder fingerprint
    is not known without loading the model, so any fingerprint counts.
    """
    uri = settings.gallery_uri
    if "://" in uri and not uri.startswith("file://"):
        return None
    folder = Path(uri.removeprefix("file://"))
    if not folder.is_dir():
        return []
    stem = f"{settings.gallery.table_prefix}_{gallery}_"
    return sorted(
        p.name.removesuffix(".lance")
        for p in folder.glob(f"{stem}*.lance")
        # `default_x` is its own gallery: the rest after the stem is the fingerprint (no further `_`)
        if "_" not in p.name.removesuffix(".lance")[len(stem) :]
    )
