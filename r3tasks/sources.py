"""Gallery sources: a folder of videos (with optional ``NAME.txt`` captions) or a manifest file.

Discovery only lists items; it never decodes video. A malformed manifest as a
whole raises `SourceError`; a single bad item is found later, when it is
fingerprinted or decoded, and recorded as that item's failure.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from r3tasks.errors import SourceError, VideoReadError
from r3tasks.settings import FingerprintMode

ID_MAX_CHARS = 512


@dataclass(frozen=True)
class GalleryItem:
    """One gallery entry: a video (with an optional caption) or a text-only item."""

    id: str
    path: Path | None = None
    text: str | None = None
    group: str | None = None  # e.g. EgoCVR's video_uid, for galleries restricted per query


@dataclass(frozen=True)
class KeyedItem:
    """A gallery item with the content key that decides whether it must be re-embedded."""

    item: GalleryItem
    content_key: str


def discover(source: str | Path, video_extensions: Sequence[str]) -> list[GalleryItem]:
    """List the items of a folder (recursively) or a CSV/JSONL/JSON manifest."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: gallery source not found")
    if source.is_dir():
        items = _discover_folder(source, {ext.lower() for ext in video_extensions})
    elif source.suffix.lower() == ".csv":
        items = _manifest_items(_read_csv_rows(source), source)
    elif source.suffix.lower() in {".jsonl", ".ndjson"}:
        items = _manifest_items(_read_jsonl_rows(source), source)
    elif source.suffix.lower() == ".json":
        items = _manifest_items(_read_json_rows(source), source)
    else:
        raise SourceError(f"{source}: a gallery source is a folder or a .csv/.jsonl/.json manifest")
    _check_unique_ids(items, source)
    return items


def _discover_folder(folder: Path, extensions: set[str]) -> list[GalleryItem]:
    items = []
    # Sorted so ids, batches and therefore cache keys do not depend on directory order.
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in extensions:
            continue
        relative = path.relative_to(folder)
        item_id = _folder_item_id(relative)
        sidecar = path.with_suffix(".txt")
        text = _read_caption(sidecar) if sidecar.is_file() else None
        # A directory named like a video is kept so that it is reported, not silently skipped.
        items.append(GalleryItem(id=item_id, path=path, text=text))
    return items


def _folder_item_id(relative: Path) -> str:
    stem = relative.with_suffix("").as_posix()
    # Non-UTF-8 file names arrive as surrogate escapes; an id must be valid text for LanceDB.
    return stem.encode("utf-8", "backslashreplace").decode("utf-8")


def _read_caption(sidecar: Path) -> str | None:
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def _read_csv_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "id" not in reader.fieldnames:
                raise SourceError(f"{path}: a manifest needs an `id` column (found {reader.fieldnames})")
            return [(line, row) for line, row in enumerate(reader, start=2)]
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _read_jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            rows.append((line_no, row))
    return rows


def _read_json_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list):
        raise SourceError(f"{path}: a JSON manifest is a list of items (or {{'items': [...]}})")
    return [(index, row) for index, row in enumerate(data)]


def _manifest_items(rows: Iterable[tuple[int, dict]], manifest: Path) -> list[GalleryItem]:
    items = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise SourceError(f"{manifest}:{where}: an item must be an object with `id`")
        item_id = str(row.get("id") or "").strip()
        if not item_id:
            raise SourceError(f"{manifest}:{where}: item has no `id`")
        if not _is_valid_text(item_id):
            raise SourceError(f"{manifest}:{where}: id {item_id!r} is not valid Unicode text")
        if len(item_id) > ID_MAX_CHARS:
            raise SourceError(f"{manifest}:{where}: id longer than {ID_MAX_CHARS} characters")
        raw_path = (row.get("path") or "").strip() if isinstance(row.get("path"), str) else row.get("path")
        text = row.get("text")
        text = str(text).strip() if text not in (None, "") else None
        if not raw_path and not text:
            raise SourceError(f"{manifest}:{where}: item {item_id!r} has neither `path` nor `text`")
        path = None
        if raw_path:
            path = Path(raw_path)
            if not path.is_absolute():
                # Relative paths are relative to the manifest, so a gallery folder can move as a whole.
                path = manifest.parent / path
        group = row.get("group")
        items.append(GalleryItem(id=item_id, path=path, text=text, group=str(group) if group else None))
    return items


def _is_valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. a JSON "\udce9" escape
        return False
    return True


def _check_unique_ids(items: Sequence[GalleryItem], source: Path) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise SourceError(f"{source}: duplicate item id {item.id!r}")
        seen.add(item.id)


def file_fingerprint(path: Path, mode: FingerprintMode = "content") -> str:
    """Content key of a file: sha256 of its bytes, or size + mtime + path in `stat` mode.

    Raises `VideoReadError` for a missing, empty, unreadable or non-regular file, so the
    indexing plan records the reason before any decoder is involved.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise VideoReadError(path, "file not found") from None
    except PermissionError:
        raise VideoReadError(path, "permission denied") from None
    if path.is_dir():
        raise VideoReadError(path, "is a directory, not a video file")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file (a pipe, socket or device)")
    if stat.st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    if mode == "stat":
        return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except PermissionError:
        raise VideoReadError(path, "permission denied") from None
    except OSError as exc:
        raise VideoReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def content_key(item: GalleryItem, mode: FingerprintMode = "content") -> str:
    """What an item's embedding depends on besides model and settings: its video bytes and its text."""
    # The id stays out: two items with the same bytes and text share one embedding.
    parts = [file_fingerprint(item.path, mode) if item.path is not None else "-"]
    parts.append(hashlib.sha256((item.text or "").encode()).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
