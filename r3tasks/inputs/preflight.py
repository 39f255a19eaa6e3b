"""Checks a command's inputs before anything is orchestrated.

The CLI runs these before a flow (and Prefect's server) starts, so a bad file costs the time
Python takes to start and prints one line; each flow runs the same checks first, so a
deployment run fails with the same line. Nothing here imports Prefect or a model; LanceDB only to
check a gallery filter, by running it on the gallery's table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r3tasks.errors import SourceError
from r3tasks.gallery.catalog import local_gallery_tables
from r3tasks.gallery.filters import check_where, normalise_where
from r3tasks.inputs.queries import Query, load_queries
from r3tasks.inputs.sources import GalleryItem, discover
from r3tasks.settings.tree import R3Settings


def gallery_source(source: str | Path, settings: R3Settings) -> list[GalleryItem]:
    """The items of a gallery folder or manifest; `SourceError` (file:line: reason) if it is malformed."""
    return discover(source, settings.index.video_extensions)


def query_file(queries: str | Path, settings: R3Settings) -> list[Query]:
    """The queries of a file, after checking that the gallery they are asked of has been indexed."""
    loaded = load_queries(queries)
    gallery_indexed(settings)
    return loaded


def gallery_indexed(settings: R3Settings) -> None:
    """`SourceError` when the settings' gallery has no table in a local data home (remote URIs: checked later)."""
    tables = local_gallery_tables(settings, settings.gallery.name)
    if tables is not None and not tables:
        raise SourceError(
            f"gallery {settings.gallery.name!r} has not been indexed in {settings.gallery_uri}: "
            f"run `r3 index` on its source with `--gallery {settings.gallery.name}` first (`r3 galleries` lists what exists)"
        )


def where_filter(where: str | None, settings: R3Settings) -> str | None:
    """The batch's gallery filter (None for none or a blank one); `FilterError` (`--where: reason`, one line)
    when LanceDB cannot run it on the settings' gallery: unknown column, syntax error, not a boolean."""
    sql = normalise_where(where)
    if sql is None:
        return None
    table = _gallery_table(settings)
    if table is not None:  # no table yet: pinning the gallery reports that, in its own words
        check_where(table, sql)
    return sql


def _gallery_table(settings: R3Settings) -> Any | None:
    """A table of the settings' gallery, whichever embedder made it: every one has the same stored columns,
    and picking by fingerprint would mean loading the embedder before the check."""
    import lancedb  # only when a filter is given

    from r3tasks.gallery.table import open_committed

    names = local_gallery_tables(settings, settings.gallery.name)
    if names == []:
        return None
    db = lancedb.connect(settings.gallery_uri, storage_options=settings.gallery.storage_options or None)
    if names is None:
        stem = f"{settings.gallery.table_prefix}_{settings.gallery.name}_"
        names = sorted(n for n in db.list_tables().tables if n.startswith(stem) and "_" not in n[len(stem) :])
    for name in names:
        table = open_committed(db, name)
        if table is not None:
            return table
    return None
