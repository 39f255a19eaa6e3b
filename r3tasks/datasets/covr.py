"""WebVid-CoVR annotation CSVs and CoVR-R query JSON files (the R^3 reference's layouts)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r3tasks.datasets.common import (
    COVRR_SECTION_EXT,
    Benchmark,
    _check_limit,
    _find_video,
    _read_csv,
    _read_json,
    _str_field,
    _video_key,
    _where,
)
from r3tasks.errors import SourceError
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.inputs.sources import GalleryItem


def load_webvid_covr_csv(
    csv_path: Path,
    video_dir: Path | None = None,
    limit: int | None = None,
    include_sources: bool = False,
) -> Benchmark:
    """A WebVid-CoVR annotation CSV (columns ``pth1, pth2, edit``; ``txt1, txt2`` captions optional).

    ``pth*`` are video paths relative to `video_dir` without extension
    (``"07/1018331956"``); an item id is that path. The gallery is the distinct
    targets (``pth2``), as CoVR evaluates; ``include_sources`` adds the sources.
    With `video_dir`, a path is ``video_dir/<pth>.mp4`` or, as the R^3 reference
    looks, ``video_dir/<basename>.mp4``, when it exists. Query ids come from an
    ``id`` or ``index`` column, else the 0-based row. `limit` keeps the first N
    queries; the gallery is built from every row.
    """
    _check_limit(limit)
    csv_path = Path(csv_path)
    video_dir = Path(video_dir) if video_dir is not None else None
    rows = _read_csv(csv_path, ("pth1", "pth2", "edit"))
    items: dict[str, GalleryItem] = {}
    sources: dict[str, tuple[Path | None, str | None]] = {}
    parsed: list[tuple[int, str, str, str, str, str | None]] = []
    seen_ids: dict[str, int] = {}
    for index, (line, row) in enumerate(rows):
        src_key, src_ext = _video_key(_str_field(csv_path, line, row, "pth1"))
        tgt_key, tgt_ext = _video_key(_str_field(csv_path, line, row, "pth2"))
        edit = _str_field(csv_path, line, row, "edit")
        assert edit is not None
        qid = (
            _str_field(csv_path, line, row, "id", required=False)
            or _str_field(csv_path, line, row, "index", required=False)
            or str(index)
        )
        if qid in seen_ids:
            raise SourceError(f"{csv_path}:{line}: duplicate query id {qid!r} (first on line {seen_ids[qid]})")
        seen_ids[qid] = line
        txt1 = _str_field(csv_path, line, row, "txt1", required=False)
        txt2 = _str_field(csv_path, line, row, "txt2", required=False)
        if tgt_key not in items:
            items[tgt_key] = GalleryItem(tgt_key, _find_video(video_dir, tgt_key, tgt_ext or ".mp4"), txt2)
        if src_key not in sources:
            sources[src_key] = (_find_video(video_dir, src_key, src_ext or ".mp4"), txt1)
        parsed.append((line, qid, src_key, tgt_key, edit, txt1))
    if include_sources:
        for key, (path, text) in sources.items():
            items.setdefault(key, GalleryItem(key, path, text))

    queries: list[ComposedQuery | TextQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    for _line, qid, src_key, tgt_key, edit, txt1 in parsed[: limit if limit is not None else None]:
        src_path = sources[src_key][0]
        source = src_key if src_key in items else (str(src_path) if src_path is not None else src_key)
        queries.append(ComposedQuery(id=qid, source=source, edit=edit, source_text=txt1))
        qrels[qid] = {tgt_key: 1}
    stats = {
        "rows": len(rows),
        "items": len(items),
        "queries": len(queries),
        "items_with_video": sum(it.path is not None for it in items.values()),
        "sources_with_video": sum(p is not None for p, _ in sources.values()),
    }
    return Benchmark(csv_path.stem, list(items.values()), queries, qrels, "global", stats)


def _covrr_sections(path: Path, data: Any) -> list[tuple[str | None, list[Any]]]:
    """The file's sections: ``[{"webvid": [...]}, {"ss2": [...]}]``, ``{"webvid": [...]}``, or one flat list."""
    if (
        isinstance(data, list)
        and data
        and all(isinstance(s, dict) and s and all(isinstance(v, list) for v in s.values()) for s in data)
    ):
        return [(name, rows) for s in data for name, rows in s.items()]
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return list(data.items())
    if isinstance(data, dict):  # rows keyed by id, as the reference also accepts
        return [(None, list(data.values()))]
    if isinstance(data, list):
        return [(None, data)]
    raise SourceError(f"{path}: expected a list of queries or of sections, got {type(data).__name__}")


def _scan_videos(video_dir: Path, ext: str) -> dict[str, Path]:
    """Every `ext` file under `video_dir`, keyed by its relative path without extension (the reference's ids)."""
    found: dict[str, Path] = {}
    for p in sorted(video_dir.rglob(f"*{ext}")):
        if p.is_file() and p.suffix.lower() == ext.lower():
            found[p.relative_to(video_dir).with_suffix("").as_posix()] = p
    return found


def load_covrr_json(
    json_path: Path,
    video_dir: Path | Mapping[str, Path] | None = None,
    limit: int | None = None,
) -> Benchmark:
    """A CoVR-R query file (the R^3 reference's ``val-set_no-labels.json`` layout).

    Layout: a list of sections ``[{"webvid": [rows]}, {"ss2": [rows]}]`` (or one
    flat list of rows); a row has ``id``, ``video_source``,
    ``modification_text`` and, in labelled files, ``video_target`` (one id or a
    list). Query ids are ``"<section>/<id>"`` in sectioned files (ids restart
    per section), else ``"<id>"``; each query's gallery_group is its section.

    Gallery: with `video_dir` (one folder, or one per section name) every video
    under it with the section's extension (``.webm`` for ss2, else ``.mp4``, a
    row's ``video_extension`` wins), id = relative path without extension, as
    the reference's gallery; plus any source or target named in the file but
    not found (path None). Without `video_dir`, only the named videos, with no
    path or text. Sources are gallery items (the reference excludes them per
    query). `limit` keeps the first N queries.
    """
    _check_limit(limit)
    json_path = Path(json_path)
    sections = _covrr_sections(json_path, _read_json(json_path))
    sectioned = any(name is not None for name, _ in sections)
    items: dict[str, GalleryItem] = {}
    queries: list[ComposedQuery | TextQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    stats = {"rows": 0, "labelled_rows": 0, "scanned_videos": 0}
    seen_ids: dict[str, str] = {}

    def add_item(key: str, group: str | None, path: Path | None, where: str) -> None:
        existing = items.get(key)
        if existing is None:
            items[key] = GalleryItem(key, path, None, group)
        elif existing.group != group:
            raise SourceError(
                f"{_where(json_path, where)}: video {key!r} appears in sections {existing.group!r} and {group!r}"
            )

    for name, rows in sections:
        default_ext = COVRR_SECTION_EXT.get(name or "", ".mp4")
        if isinstance(video_dir, Mapping):
            vdir = Path(video_dir[name]) if name is not None and name in video_dir else None
        else:
            vdir = Path(video_dir) if video_dir is not None else None
        if vdir is not None:
            for key, p in _scan_videos(vdir, default_ext).items():
                add_item(key, name, p, f"video_dir {vdir}")
                stats["scanned_videos"] += 1
        for i, row in enumerate(rows):
            where = f"section {name!r} entry {i}" if name is not None else f"entry {i}"
            if not isinstance(row, dict):
                raise SourceError(f"{_where(json_path, where)}: expected a JSON object, got {type(row).__name__}")
            stats["rows"] += 1
            raw_id = row.get("id", row.get("index", i))
            if isinstance(raw_id, (dict, list)) or raw_id is None:
                raise SourceError(f"{_where(json_path, where)}: bad id {raw_id!r}")
            qid = f"{name}/{raw_id}" if sectioned and name is not None else str(raw_id)
            if qid in seen_ids:
                raise SourceError(f"{_where(json_path, where)}: duplicate query id {qid!r} (first at {seen_ids[qid]})")
            seen_ids[qid] = where
            src_val = _str_field(json_path, where, row, "video_source")
            edit = _str_field(json_path, where, row, "modification_text")
            assert src_val is not None and edit is not None
            ext = str(row.get("video_extension") or default_ext)
            ext = ext if ext.startswith(".") else f".{ext}"
            src_key, src_ext = _video_key(src_val)
            if src_key not in items:
                add_item(src_key, name, _find_video(vdir, src_key, src_ext or ext), where)
            else:
                add_item(src_key, name, None, where)  # checks the section
            targets_raw = row.get("video_target")
            targets: list[str] = []
            if targets_raw is not None and targets_raw != "" and targets_raw != []:
                listed = targets_raw if isinstance(targets_raw, list) else [targets_raw]
                for t in listed:
                    if isinstance(t, (dict, list)) or t is None or not str(t).strip():
                        raise SourceError(f"{_where(json_path, where)}: bad video_target {t!r}")
                    t_key, t_ext = _video_key(t)
                    if t_key not in items:
                        add_item(t_key, name, _find_video(vdir, t_key, t_ext or ext), where)
                    else:
                        add_item(t_key, name, None, where)
                    targets.append(t_key)
            if limit is not None and len(queries) >= limit:
                continue
            queries.append(ComposedQuery(qid, src_key, edit, None, name))
            if targets:  # unlabelled queries get no qrels entry: metrics skip them
                stats["labelled_rows"] += 1
                qrels[qid] = {t: 1 for t in targets}
    stats["items"] = len(items)
    stats["queries"] = len(queries)
    stats["items_with_video"] = sum(it.path is not None for it in items.values())
    return Benchmark(json_path.stem, list(items.values()), queries, qrels, "global", stats)
