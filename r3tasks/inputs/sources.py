"""Gallery sources: a folder of videos (with optional ``NAME.txt`` captions) or a manifest file.

Discovery only lists items; it never decodes video. A malformed manifest as a
whole raises `SourceError`; a single bad item is found later, when it is
fingerprinted or decoded, and recorded as that item's failure.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from r3tasks.errors import SourceError, VideoReadError
from r3tasks.inputs.rows import ID_MAX_CHARS, ManifestRow, parse_row, read_records, where
from r3tasks.settings.tree import FingerprintMode

__all__ = ["ID_MAX_CHARS", "GalleryItem", "KeyedItem", "content_key", "discover", "file_fingerprint", "item_keys"]


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
    file_key: str | None = None  # the video file's own fingerprint: what finding its moments depends on


def discover(source: str | Path, video_extensions: Sequence[str]) -> list[GalleryItem]:
    """List the items of a folder (recursively) or a CSV/JSONL/JSON manifest."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: gallery source not found")
    if source.is_dir():
        items = _discover_folder(source, {ext.lower() for ext in video_extensions})
    elif source.suffix.lower() in {".csv", ".jsonl", ".ndjson", ".json"}:
        items = _manifest_items(source)
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
    # An id must be valid text for LanceDB: a non-UTF-8 byte of the name is written `\xe9` (the file's
    # path itself is stored byte for byte beside it).
    return os.fsencode(stem).decode("utf-8", "backslashreplace")


def _read_caption(sidecar: Path) -> str | None:
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def _manifest_items(manifest: Path) -> list[GalleryItem]:
    items = []
    for at, raw in read_records(manifest, required=("id",)):
        row = parse_row(ManifestRow, manifest, at, raw)
        if not row.id:
            raise SourceError(f"{where(manifest, at)}: item has no `id`")
        if not row.path and not row.text:
            raise SourceError(f"{where(manifest, at)}: item {row.id!r} has neither `path` nor `text`")
        path = None
        if row.path:
            path = Path(row.path).expanduser()
            if not path.is_absolute():
                # Relative paths are relative to the manifest, so a gallery folder can move as a whole.
                path = manifest.parent / path
        items.append(GalleryItem(id=row.id, path=path, text=row.text, group=row.group))
    return items


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


def content_key(item: GalleryItem, mode: FingerprintMode = "content", media: str = "") -> str:
    """What an item's embedding depends on besides model and settings: its video bytes and its text, and for a
    video what its moments are read with (`media`, a fingerprint of those settings)."""
    return item_keys(item, mode, media)[0]


def item_keys(
    item: GalleryItem, mode: FingerprintMode = "content", media: str = "", companions: Sequence[Path] = ()
) -> tuple[str, str | None]:
    """(content key, file key). The file key covers the video's bytes and its `companions` (sidecar subtitles):
    what its moments are read from. None for a text-only item."""
    # The id stays out: two items with the same bytes and text share one embedding.
    file_key = file_fingerprint(item.path, mode) if item.path is not None else None
    if file_key is not None and companions:
        prints = [file_key, *(file_fingerprint(path, mode) for path in companions)]
        file_key = hashlib.sha256("|".join(prints).encode()).hexdigest()
    parts = [file_key or "-", hashlib.sha256((item.text or "").encode()).hexdigest()]
    if file_key is not None and media:
        parts.append(media)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32], file_key
