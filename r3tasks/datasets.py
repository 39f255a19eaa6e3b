"""Benchmarks as a gallery manifest, queries and qrels.

Every loader returns a :class:`Benchmark`. Gallery items carry a video path, a
text (caption, narration) or both; composed queries name their source video by
gallery item id when the source is a gallery item, else by file path, else by
the benchmark's own id (then only `source_text` can stand for it).

A query's `gallery_group`, when set, restricts its gallery to the items of that
group (EgoCVR's local setting: the clips of the source's long video; CoVR-R:
the query's section, webvid or ss2).

Malformed files raise :class:`~r3tasks.errors.SourceError` naming the file, the
line (or entry) and the reason. Data problems a benchmark is known to have
(EgoCVR's repeated clip rows, say) are not errors: they are resolved as each
loader documents and counted in ``Benchmark.stats``.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from r3tasks.errors import SourceError
from r3tasks.queries import ComposedQuery, Query, TextQuery
from r3tasks.sources import GalleryItem

NarrationStyle = Literal["raw", "clean"]
EgoCVRSetting = Literal["global", "local"]
SourceTargets = Literal["keep", "drop"]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# The reference (Lee-zixu/R-3 data.py) stores CoVR-R ss2 videos as .webm and everything else as .mp4.
COVRR_SECTION_EXT: dict[str, str] = {"webvid": ".mp4", "ss2": ".webm"}




@dataclass
class Benchmark:
    """Gallery items, queries and graded qrels ``{query id: {item id: grade}}``; `stats` counts what loading resolved."""

    name: str
    items: list[GalleryItem]
    queries: list[ComposedQuery | TextQuery]
    qrels: dict[str, dict[str, int]]
    setting: str
    stats: dict[str, int] = field(default_factory=dict)

    def queries_from(self, skip: int) -> "Benchmark":
        """The same gallery with the first `skip` queries left out: a held-out split to tune settings on,
        disjoint from the first N queries that the reported figures use."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        kept = self.queries[skip:]
        return replace(self, queries=kept, qrels={q.id: self.qrels[q.id] for q in kept if q.id in self.qrels},
                       setting=f"{self.setting}, queries from #{skip}" if skip else self.setting)

    def gallery_for(self, query: ComposedQuery | TextQuery) -> list[GalleryItem]:
        """The items `query` is searched over: all of them, or its `gallery_group`'s."""
        group = query.gallery_group if isinstance(query, ComposedQuery) else None
        if group is None:
            return list(self.items)
        return [it for it in self.items if it.group == group]


# --------------------------------------------------------------------------- helpers


def _where(path: Path, line: int | str | None = None) -> str:
    """``file:line`` for a line number, ``file: entry 3`` for a JSON entry, ``file`` alone otherwise."""
    if line is None:
        return str(path)
    return f"{path}:{line}" if isinstance(line, int) else f"{path}: {line}"


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, each with the file line it ends on; checks columns and field counts."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise SourceError(f"{path}: empty file, expected a header with columns {', '.join(required)}")
            missing = [c for c in required if c not in header]
            if missing:
                raise SourceError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
            rows: list[tuple[int, dict[str, str]]] = []
            for row in reader:
                if None in row:
                    raise SourceError(f"{path}:{reader.line_num}: more fields than the header's {len(header)}")
                if any(v is None for v in row.values()):
                    raise SourceError(f"{path}:{reader.line_num}: fewer fields than the header's {len(header)}")
                rows.append((reader.line_num, row))
            return rows
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise SourceError(f"{path}: malformed CSV ({exc})") from exc


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{exc.lineno}: bad JSON: {exc.msg} (column {exc.colno})") from exc


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{n}: bad JSON line: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise SourceError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


def _records(path: Path, required: Sequence[str] = ()) -> list[tuple[int | str, dict[str, Any]]]:
    """Rows of a CSV, JSONL or JSON (list of objects, or ``{"items": [...]}``) file, each with its line/entry."""
    suffix = path.suffix.lower()
    rows: list[tuple[int | str, dict[str, Any]]]
    if suffix == ".csv":
        rows = list(_read_csv(path, required))
        return rows
    if suffix == ".jsonl":
        rows = list(_read_jsonl(path))
    elif suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("items"), list):
            data = data["items"]
        if not isinstance(data, list):
            raise SourceError(f"{path}: expected a JSON list of objects")
        rows = []
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise SourceError(f"{path}: entry {i}: expected a JSON object, got {type(obj).__name__}")
            rows.append((f"entry {i}", obj))
    else:
        raise SourceError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .jsonl or .json)")
    for where, obj in rows:
        missing = [c for c in required if c not in obj]
        if missing:
            raise SourceError(f"{_where(path, where)}: missing field(s) {', '.join(missing)}")
    return rows


def _str_field(path: Path, where: int | str, row: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise SourceError(f"{_where(path, where)}: empty {key!r}")
        return None
    if isinstance(value, (dict, list)):
        raise SourceError(f"{_where(path, where)}: {key!r} must be a string, got {type(value).__name__}")
    return str(value).strip()


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")


def _video_key(value: Any) -> tuple[str, str | None]:
    """A benchmark's video reference -> (item id without extension, the extension it had or None)."""
    text = str(value).strip().replace("\\", "/")
    suffix = Path(text).suffix
    if suffix.lower() in VIDEO_SUFFIXES:
        return text[: -len(suffix)], suffix
    return text, None


def _find_video(video_dir: Path | None, key: str, ext: str) -> Path | None:
    """`video_dir/key.ext`, else `video_dir/basename(key).ext` (the reference's fallback), else None."""
    if video_dir is None:
        return None
    for candidate in (video_dir / f"{key}{ext}", video_dir / f"{Path(key).name}{ext}"):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- EgoCVR

_LEAD_CAMERA_WEARER = re.compile(r"^#\s*C\s*-?\s*(?:C\b)?\s*", re.IGNORECASE)
_LEAD_OTHER_TAG = re.compile(r"^#\s*[OX]\b\s*", re.IGNORECASE)
_HASH_TAG = re.compile(r"\s*#\w+")
_MID_CAMERA_WEARER = re.compile(r"(?<![\w'#-])C(?![\w-])")


def clean_narration(text: str) -> str:
    """Ego4D narration -> plain English: ``"#C C takes the sieve"`` -> ``"The camera wearer takes the sieve"``.

    Ego4D marks the camera wearer as ``#C C`` (also ``#c c``, ``#CC``, ``#C- C``)
    and another person as ``#O``; a bare ``C`` later in the sentence is the
    camera wearer too. Other tags (``#unsure``) are dropped and whitespace
    (including the one embedded newline in egocvr_data.csv) is collapsed.
    """
    s = " ".join(text.split())
    if _LEAD_CAMERA_WEARER.match(s):
        s = "The camera wearer " + _LEAD_CAMERA_WEARER.sub("", s, count=1)
    else:
        s = _LEAD_OTHER_TAG.sub("", s, count=1)
    s = _HASH_TAG.sub("", s)
    s = _MID_CAMERA_WEARER.sub("the camera wearer", s)
    s = " ".join(s.split())
    return s[:1].upper() + s[1:] if s else s


def _style(text: str, style: NarrationStyle) -> str:
    if style == "raw":
        return text
    if style == "clean":
        return clean_narration(text)
    raise ValueError(f"unknown narration_style {style!r}")


def _egocvr_video(video_dir: Path | None, clip: str, video_uid: str) -> Path | None:
    # Flat `<clip>.mp4`, or the EgoCVR release's `<video_uid>/<clip>.mp4`.
    if video_dir is None:
        return None
    for candidate in (video_dir / f"{clip}.mp4", video_dir / video_uid / f"{clip}.mp4"):
        if candidate.is_file():
            return candidate
    return None


def load_egocvr(
    folder: Path,
    setting: EgoCVRSetting = "global",
    video_dir: Path | None = None,
    limit: int | None = None,
    narration_style: NarrationStyle = "clean",
    source_targets: SourceTargets = "keep",
) -> Benchmark:
    """EgoCVR from ``egocvr_annotations.csv`` and ``egocvr_data.csv`` in `folder`.

    Gallery: one item per distinct ``clip_name`` (the data file repeats 1,390
    clips over 3,250 rows; the first row wins, and rows that disagree on the
    narration are counted in ``stats["conflicting_clip_rows"]``). Item text is
    the narration (``narration_style="clean"`` rewrites the Ego4D ``#C C``
    markup, ``"raw"`` keeps it); with `video_dir` an item's path is
    ``video_dir/<clip>.mp4`` or ``video_dir/<video_uid>/<clip>.mp4`` when it exists.

    Queries, id = the 0-based annotation row: source = the source clip's item
    id, edit = ``instruction``, source_text = the annotation's source narration.
    ``setting="local"`` sets each query's gallery_group to the source's
    video_uid. Targets absent from the gallery are dropped (and a query left
    with none), counted in stats. 17 queries list their own source as a target
    ("No change required."); 9 of them only it. Retrieval excludes the source,
    so with ``source_targets="keep"`` (default, all 2,295 queries) those 9 can
    never be hit; ``"drop"`` removes the source from the targets and drops the
    queries left with none. `limit` keeps the first N queries; the gallery is
    not cut, so scores stay comparable.
    """
    _check_limit(limit)
    folder = Path(folder)
    data_path = folder / "egocvr_data.csv"
    ann_path = folder / "egocvr_annotations.csv"
    video_dir = Path(video_dir) if video_dir is not None else None
    if setting not in ("global", "local"):
        raise ValueError(f"setting must be 'global' or 'local', got {setting!r}")
    if source_targets not in ("keep", "drop"):
        raise ValueError(f"source_targets must be 'keep' or 'drop', got {source_targets!r}")

    stats: dict[str, int] = {
        "clip_rows": 0,
        "duplicate_clip_rows": 0,
        "conflicting_clip_rows": 0,
        "items_with_video": 0,
        "annotation_rows": 0,
        "dropped_missing_source": 0,
        "missing_target_ids": 0,
        "dropped_missing_targets": 0,
        "source_is_target": 0,
        "source_is_only_target": 0,
        "dropped_source_only_target": 0,
        "targets_outside_local_gallery": 0,
        "dropped_no_local_target": 0,
    }

    items: dict[str, GalleryItem] = {}
    raw_narration: dict[str, str] = {}
    for line, row in _read_csv(data_path, ("clip_name", "narration_text", "video_uid")):
        stats["clip_rows"] += 1
        clip = row["clip_name"].strip()
        uid = row["video_uid"].strip()
        if not clip:
            raise SourceError(f"{data_path}:{line}: empty clip_name")
        if not uid:
            raise SourceError(f"{data_path}:{line}: empty video_uid for clip {clip!r}")
        if clip in items:
            stats["duplicate_clip_rows"] += 1
            if items[clip].group != uid:
                raise SourceError(f"{data_path}:{line}: clip {clip!r} repeated with another video_uid {uid!r}")
            if raw_narration[clip] != row["narration_text"]:
                stats["conflicting_clip_rows"] += 1
            continue
        raw_narration[clip] = row["narration_text"]
        path = _egocvr_video(video_dir, clip, uid)
        stats["items_with_video"] += path is not None
        items[clip] = GalleryItem(id=clip, path=path, text=_style(row["narration_text"], narration_style), group=uid)

    queries: list[ComposedQuery | TextQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    required = ("video_clip_id", "target_clip_ids", "video_clip_narration", "instruction")
    for index, (line, row) in enumerate(_read_csv(ann_path, required)):
        stats["annotation_rows"] += 1
        source = row["video_clip_id"].strip()
        edit = row["instruction"].strip()
        if not source:
            raise SourceError(f"{ann_path}:{line}: empty video_clip_id")
        if not edit:
            raise SourceError(f"{ann_path}:{line}: empty instruction")
        try:
            parsed = ast.literal_eval(row["target_clip_ids"].strip())
        except (ValueError, SyntaxError) as exc:
            raise SourceError(f"{ann_path}:{line}: target_clip_ids is not a Python list literal") from exc
        if isinstance(parsed, str):
            parsed = [parsed]
        if not isinstance(parsed, (list, tuple)) or not parsed or not all(isinstance(t, str) for t in parsed):
            raise SourceError(f"{ann_path}:{line}: target_clip_ids must be a non-empty list of clip ids")
        targets = list(dict.fromkeys(t.strip() for t in parsed))

        if source not in items:
            stats["dropped_missing_source"] += 1
            continue
        present = [t for t in targets if t in items]
        stats["missing_target_ids"] += len(targets) - len(present)
        if not present:
            stats["dropped_missing_targets"] += 1
            continue
        if source in present:
            stats["source_is_target"] += 1
            if len(present) == 1:
                stats["source_is_only_target"] += 1
            if source_targets == "drop":
                present = [t for t in present if t != source]
                if not present:
                    stats["dropped_source_only_target"] += 1
                    continue
        group = None
        if setting == "local":
            group = items[source].group
            local = [t for t in present if items[t].group == group]
            stats["targets_outside_local_gallery"] += len(present) - len(local)
            present = local
            if not present:
                stats["dropped_no_local_target"] += 1
                continue
        if limit is not None and len(queries) >= limit:
            continue  # keep counting the stats over the whole file
        qid = str(index)
        queries.append(
            ComposedQuery(
                id=qid,
                source=source,
                edit=edit,
                source_text=_style(row["video_clip_narration"], narration_style) or None,
                gallery_group=group,
            )
        )
        qrels[qid] = {t: 1 for t in present}

    stats["items"] = len(items)
    stats["queries"] = len(queries)
    name = "egocvr" if setting == "global" else "egocvr-local"
    return Benchmark(name=name, items=list(items.values()), queries=queries, qrels=qrels, setting=setting, stats=stats)


# --------------------------------------------------------------------------- WebVid-CoVR (CSV)


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
        qid = _str_field(csv_path, line, row, "id", required=False) or _str_field(
            csv_path, line, row, "index", required=False
        ) or str(index)
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


# --------------------------------------------------------------------------- CoVR-R (JSON)


def _covrr_sections(path: Path, data: Any) -> list[tuple[str | None, list[Any]]]:
    """The file's sections: ``[{"webvid": [...]}, {"ss2": [...]}]``, ``{"webvid": [...]}``, or one flat list."""
    if isinstance(data, list) and data and all(
        isinstance(s, dict) and s and all(isinstance(v, list) for v in s.values()) for s in data
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
            raise SourceError(f"{_where(json_path, where)}: video {key!r} appears in sections {existing.group!r} and {group!r}")

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


# --------------------------------------------------------------------------- generic


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _load_manifest(path: Path) -> list[GalleryItem]:
    items: list[GalleryItem] = []
    first_seen: dict[str, int | str] = {}
    for where, row in _records(path, ("id",)):
        item_id = _str_field(path, where, row, "id")
        assert item_id is not None
        if item_id in first_seen:
            raise SourceError(f"{_where(path, where)}: duplicate item id {item_id!r} (first at {first_seen[item_id]})")
        first_seen[item_id] = where
        p = _str_field(path, where, row, "path", required=False)
        text = _str_field(path, where, row, "text", required=False)
        group = _str_field(path, where, row, "group", required=False)
        if p is None and text is None:
            raise SourceError(f"{_where(path, where)}: item {item_id!r} has neither a path nor a text")
        items.append(GalleryItem(item_id, _resolve(path.parent, p) if p else None, text, group))
    return items


def _load_queries(path: Path, item_ids: set[str]) -> list[ComposedQuery | TextQuery]:
    queries: list[ComposedQuery | TextQuery] = []
    first_seen: dict[str, int | str] = {}
    for where, row in _records(path, ("id",)):
        qid = _str_field(path, where, row, "id")
        assert qid is not None
        if qid in first_seen:
            raise SourceError(f"{_where(path, where)}: duplicate query id {qid!r} (first at {first_seen[qid]})")
        first_seen[qid] = where
        edit = _str_field(path, where, row, "edit", required=False)
        if edit is not None:
            source = _str_field(path, where, row, "source")
            assert source is not None
            if source not in item_ids:
                candidate = _resolve(path.parent, source)
                source = str(candidate) if candidate.exists() else source
            queries.append(
                ComposedQuery(
                    qid,
                    source,
                    edit,
                    _str_field(path, where, row, "source_text", required=False),
                    _str_field(path, where, row, "gallery_group", required=False),
                )
            )
            continue
        text = _str_field(path, where, row, "text", required=False)
        if text is None:
            raise SourceError(f"{_where(path, where)}: query {qid!r} needs 'edit' (composed) or 'text' (text query)")
        queries.append(TextQuery(qid, text))
    return queries


def _grade(path: Path, where: int | str, value: Any) -> int:
    try:
        grade = float(value)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{_where(path, where)}: relevance grade {value!r} is not a number") from exc
    if not grade.is_integer():
        raise SourceError(f"{_where(path, where)}: relevance grade {value!r} is not an integer")
    return int(grade)


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Qrels from JSON ``{qid: {item: grade}}`` (or ``{qid: [item, ...]}``, grade 1) or TREC text.

    TREC lines are ``qid iter item grade`` (exactly four fields; a three-field
    line is ambiguous and refused); blank lines and ``#`` lines are skipped.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        if not isinstance(data, dict):
            raise SourceError(f"{path}: expected a JSON object {{query id: {{item id: grade}}}}")
        for qid, judged in data.items():
            if isinstance(judged, list):
                judged = {str(i): 1 for i in judged}
            if not isinstance(judged, dict):
                raise SourceError(f"{path}: query {qid!r}: expected {{item id: grade}} or a list of item ids")
            qrels[str(qid)] = {str(i): _grade(path, f"query {qid!r}", g) for i, g in judged.items()}
        return qrels
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) == 4:
            qid, _, item, grade = fields
        else:
            raise SourceError(f"{path}:{n}: expected 'qid iter item grade', got {len(fields)} fields")
        judged = qrels.setdefault(qid, {})
        if item in judged:
            raise SourceError(f"{path}:{n}: item {item!r} judged twice for query {qid!r}")
        judged[item] = _grade(path, n, grade)
    return qrels


def load_generic(manifest: Path, queries: Path, qrels: Path | None = None) -> Benchmark:
    """A gallery manifest (CSV/JSONL/JSON: ``id`` and ``path`` and/or ``text``, optional ``group``),
    queries (CSV/JSONL/JSON: ``id`` plus ``source`` + ``edit`` [+ ``source_text``, ``gallery_group``]
    for a composed query, or ``text`` for a text query) and optional qrels (:func:`load_qrels`).

    Relative paths are resolved against the file's folder. Qrels that name
    unknown queries or items are kept (an unknown item is a target the gallery
    lacks) and counted in stats.
    """
    manifest, queries = Path(manifest), Path(queries)
    items = _load_manifest(manifest)
    item_ids = {it.id for it in items}
    qs = _load_queries(queries, item_ids)
    judged = load_qrels(Path(qrels)) if qrels is not None else {}
    query_ids = {q.id for q in qs}
    stats = {
        "items": len(items),
        "queries": len(qs),
        "qrels_unknown_queries": sum(q not in query_ids for q in judged),
        "qrels_unknown_items": sum(i not in item_ids for g in judged.values() for i in g),
    }
    return Benchmark(manifest.stem, items, qs, judged, "global", stats)


# --------------------------------------------------------------------------- by name


def default_egocvr_dir() -> Path | None:
    """Where the EgoCVR annotations are looked for when no folder is given: ``<repo>/data/egocvr``, then
    ``<repo>/../shared/data/egocvr``."""
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo / "data" / "egocvr", repo.parent / "shared" / "data" / "egocvr"):
        if (candidate / "egocvr_annotations.csv").is_file():
            return candidate
    return None


def _first_existing(folder: Path, stem: str, suffixes: Iterable[str]) -> Path | None:
    for s in suffixes:
        if (folder / f"{stem}{s}").is_file():
            return folder / f"{stem}{s}"
    return None


def load_benchmark(name_or_path: str | Path, **kw: Any) -> Benchmark:
    """``"egocvr"``/``"egocvr-global"``, ``"egocvr-local"`` (``folder=`` or the default location), or a path:
    a folder holding EgoCVR's CSVs or ``manifest.*`` + ``queries.*`` [+ ``qrels.*``] (generic), a ``.csv``
    (WebVid-CoVR) or a ``.json`` (CoVR-R). Other keywords go to the loader."""
    name = str(name_or_path)
    if name.lower() in ("egocvr", "egocvr-global", "egocvr-local"):
        folder = kw.pop("folder", None) or default_egocvr_dir()
        if folder is None:
            raise SourceError(f"{name}: EgoCVR annotations not found; pass folder=<dir with egocvr_annotations.csv>")
        setting: EgoCVRSetting = "local" if name.lower() == "egocvr-local" else kw.pop("setting", "global")
        return load_egocvr(Path(folder), setting=setting, **kw)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "egocvr_annotations.csv").is_file():
            return load_egocvr(path, **kw)
        manifest = _first_existing(path, "manifest", (".csv", ".jsonl", ".json"))
        queries = _first_existing(path, "queries", (".jsonl", ".json", ".csv"))
        if manifest is None or queries is None:
            raise SourceError(
                f"{path}: not a benchmark folder (expected egocvr_annotations.csv, or manifest.* and queries.*)"
            )
        qrels = _first_existing(path, "qrels", (".json", ".txt", ".tsv", ".qrels"))
        return load_generic(manifest, queries, qrels)
    if not path.exists():
        raise SourceError(f"{path}: no such benchmark name or file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_webvid_covr_csv(path, **kw)
    if suffix == ".json":
        return load_covrr_json(path, **kw)
    raise SourceError(f"{path}: cannot tell the benchmark format from the suffix {path.suffix!r}")
