"""What every benchmark loader shares: the `Benchmark` it returns and field helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from r3tasks.errors import SourceError
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.inputs.rows import read_csv as _read_csv
from r3tasks.inputs.rows import read_json as _read_json
from r3tasks.inputs.rows import read_records as _records
from r3tasks.inputs.rows import where as _where
from r3tasks.inputs.sources import GalleryItem
from r3tasks.settings.tree import VIDEO_SUFFIXES

__all__ = [
    "Benchmark",
    "COVRR_SECTION_EXT",
    "EgoCVRSetting",
    "NarrationStyle",
    "SourceTargets",
    "_check_limit",
    "_find_video",
    "_read_csv",
    "_read_json",
    "_records",
    "_str_field",
    "_video_key",
    "_where",
]

NarrationStyle = Literal["raw", "clean"]
EgoCVRSetting = Literal["global", "local"]
SourceTargets = Literal["keep", "drop"]

# The reference (Lee-zixu/R-3 data.py) stores CoVR-R ss2 videos as .webm and everything else as .mp4.
COVRR_SECTION_EXT: dict[str, str] = {"webvid": ".mp4", "ss2": ".webm"}


# A `queries_from` split names its range in the setting ("local, queries from #500").
_FROM = ", queries from #"


def base_setting(setting: str) -> str:
    """The setting a `queries_from` split was taken from: reports of two ranges of one benchmark share it."""
    return setting.split(_FROM)[0]


@dataclass
class Benchmark:
    """Gallery items, queries and graded qrels ``{query id: {item id: grade}}``; `stats` counts what loading resolved."""

    name: str
    items: list[GalleryItem]
    queries: list[ComposedQuery | TextQuery]
    qrels: dict[str, dict[str, int]]
    setting: str
    stats: dict[str, int] = field(default_factory=dict)
    dev_only: bool = False  # every query is dev data: its first queries are no reported split

    def queries_from(self, skip: int) -> Benchmark:
        """The same gallery with the first `skip` queries left out: a held-out split to tune settings on,
        disjoint from the first N queries that the reported figures use."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        kept = self.queries[skip:]
        return replace(
            self,
            queries=kept,
            qrels={q.id: self.qrels[q.id] for q in kept if q.id in self.qrels},
            setting=f"{self.setting}{_FROM}{skip}" if skip else self.setting,
        )

    def first_queries(self, limit: int | None) -> Benchmark:
        """The same gallery with the first `limit` queries only (None: all)."""
        _check_limit(limit)
        if limit is None:
            return self
        kept = self.queries[:limit]
        return replace(self, queries=kept, qrels={q.id: self.qrels[q.id] for q in kept if q.id in self.qrels})

    def gallery_for(self, query: ComposedQuery | TextQuery) -> list[GalleryItem]:
        """The items `query` is searched over: all of them, or its `gallery_group`'s."""
        group = query.gallery_group if isinstance(query, ComposedQuery) else None
        if group is None:
            return list(self.items)
        return [it for it in self.items if it.group == group]


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
