"""Query files: composed (source + edit) and text queries, validated one by one.

A malformed file as a whole raises `SourceError` (the CLI exits 2); a single
query that cannot run (unknown source id, unreadable source video, empty edit)
is kept with its error so the rest of the batch completes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from r3tasks.errors import SourceError
from r3tasks.inputs.rows import QueryRow, Where, parse_row, read_json, read_records, where


@dataclass(frozen=True)
class ComposedQuery:
    """Find the target: `source` (a gallery item id or a video path) changed as `edit` says."""

    id: str
    source: str
    edit: str
    source_text: str | None = None
    gallery_group: str | None = None  # restricts the gallery (EgoCVR's local setting)
    section: str | None = None  # CoVR-R dataset section, kept for its submission layout
    start_s: float | None = None  # the source is the moment start_s..end_s of the source video
    end_s: float | None = None

    kind = "composed"


@dataclass(frozen=True)
class TextQuery:
    id: str
    text: str
    gallery_group: str | None = None

    kind = "text"


Query = ComposedQuery | TextQuery


@dataclass(frozen=True)
class QueryProblem:
    """A query that cannot run, with the reason; it is reported, never dropped silently."""

    id: str
    reason: str


def load_queries(path: str | Path) -> list[Query]:
    """Read a JSONL, JSON or CSV queries file (or CoVR-R's JSON layout) into typed queries."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: queries file not found")
    suffix = path.suffix.lower()
    rows: list[Row]
    if suffix == ".json":
        rows = _json_rows(path)
    elif suffix in {".jsonl", ".ndjson", ".csv"}:
        rows = [(at, row, None) for at, row in read_records(path)]
    else:
        raise SourceError(f"{path}: queries are .jsonl, .json or .csv")
    queries = [query_from_row(path, at, row, section) for at, row, section in rows]
    seen: set[str] = set()
    for query in queries:
        if query.id in seen:
            raise SourceError(f"{path}: duplicate query id {query.id!r}")
        seen.add(query.id)
    if not queries:
        raise SourceError(f"{path}: no queries in the file")
    return queries


Row = tuple[Where, object, str | None]


def _json_rows(path: Path) -> list[Row]:
    data = read_json(path)
    if isinstance(data, list):
        return [(f"entry {i}", row, None) for i, row in enumerate(data)]
    if isinstance(data, dict):
        if isinstance(data.get("queries"), list):
            return [(f"entry {i}", row, None) for i, row in enumerate(data["queries"])]
        # CoVR-R: {section (dataset name): [queries...]}.
        rows: list[Row] = []
        for section, entries in data.items():
            if not isinstance(entries, list):
                raise SourceError(f"{path}: section {section!r} is not a list of queries")
            rows.extend((f"{section}[{i}]", row, section) for i, row in enumerate(entries))
        return rows
    raise SourceError(f"{path}: expected a list of queries or an object of sections")


def query_from_row(path: Path, at: Where, raw: object, section: str | None = None) -> Query:
    """One row of a queries file (or of a service request, `path` naming it) as a typed query; `SourceError`
    naming `path`, `at` and the reason when the row is malformed."""
    row = parse_row(QueryRow, path, at, raw)
    query_id = row.query_key
    if not query_id:
        raise SourceError(f"{where(path, at)}: query has no `id`")
    # A row is composed when it has a source or an edit; a CSV mixing both kinds leaves the other blank.
    source, edit = row.source_ref, row.edit_text
    if source is not None or edit is not None:
        return ComposedQuery(
            id=query_id,
            source=source or "",
            edit=edit or "",
            source_text=row.source_text,
            gallery_group=row.gallery_group,
            section=section or row.section,
            start_s=row.start_s,
            end_s=row.end_s,
        )
    if row.text is not None or "text" in raw:  # type: ignore[operator]
        return TextQuery(id=query_id, text=row.text or "", gallery_group=row.gallery_group)
    raise SourceError(f"{where(path, at)}: query {query_id!r} has neither `source`+`edit` nor `text`")


def check_query(query: Query, max_edit_chars: int) -> str | None:
    """Why this query cannot run, or None."""
    if isinstance(query, TextQuery):
        if not query.text.strip():
            return "empty text query"
        if len(query.text) > max_edit_chars:
            return f"text query is {len(query.text)} characters; the limit is {max_edit_chars} (query.max_edit_chars)"
        return None
    if not query.source:
        return "composed query has no source"
    if (query.start_s is None) != (query.end_s is None):
        return "a source moment needs both start_s and end_s"
    if query.start_s is not None and not (0 <= query.start_s < query.end_s):  # type: ignore[operator]
        return f"source moment {query.start_s}..{query.end_s} s is not a stretch of time (0 <= start_s < end_s)"
    if not query.edit.strip():
        return "empty edit instruction"
    if len(query.edit) > max_edit_chars:
        return f"edit instruction is {len(query.edit)} characters; the limit is {max_edit_chars} (query.max_edit_chars)"
    return None


def resolve_source_path(source: str, roots: Sequence[Path]) -> Path:
    """A source given as a path must resolve (symlinks followed) inside one of the allowed roots.

    Raises `ValueError` with the reason otherwise; `..` tricks and symlinks pointing out are refused.
    """
    if not roots:
        raise ValueError(
            f"source {source!r} is not a gallery item id, and no source roots are configured (gallery.roots)"
        )
    candidate = Path(source)
    if not candidate.is_absolute():
        candidate = Path(roots[0]) / candidate
    resolved = Path(os.path.realpath(candidate))
    for root in roots:
        root_resolved = Path(os.path.realpath(root))
        if resolved == root_resolved or root_resolved in resolved.parents:
            if not resolved.is_file():
                raise ValueError(f"source video {source!r} not found")
            return resolved
    raise ValueError(f"source path {source!r} is outside the allowed roots ({', '.join(map(str, roots))})")


def queries_by_kind(queries: Iterable[Query]) -> tuple[list[ComposedQuery], list[TextQuery]]:
    composed = [q for q in queries if isinstance(q, ComposedQuery)]
    text = [q for q in queries if isinstance(q, TextQuery)]
    return composed, text
