"""EgoCVR: ``egocvr_annotations.csv`` + ``egocvr_data.csv`` (Ego4D narrations as item text)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from r3tasks.datasets.common import Benchmark, EgoCVRSetting, NarrationStyle, SourceTargets, _check_limit, _read_csv
from r3tasks.errors import SourceError
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.inputs.sources import GalleryItem

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


def default_egocvr_dir() -> Path | None:
    """Where the EgoCVR annotations are looked for when no folder is given: ``<repo>/data/egocvr``, then
    ``<repo>/../shared/data/egocvr``."""
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "data" / "egocvr", repo.parent / "shared" / "data" / "egocvr"):
        if (candidate / "egocvr_annotations.csv").is_file():
            return candidate
    return None
