"""Checks a command's inputs before anything is orchestrated.

The CLI runs these before a flow (and Prefect's server) starts, so a bad file costs the time
Python takes to start and prints one line; each flow runs the same checks first, so a
deployment run fails with the same line. Nothing here imports Prefect, LanceDB or a model.
"""

from __future__ import annotations

from pathlib import Path

from r3tasks.errors import SourceError
from r3tasks.gallery.catalog import local_gallery_tables
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
