"""Generated galleries for the benchmarks: text-only manifests and manifests of small synthetic clips."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from r3tasks.datasets.synthetic import all_specs, clip_seed, write_clip

_SPECS = all_specs()


def caption(i: int, revision: int = 0) -> str:
    """A unique caption per item (the synthetic attribute captions plus a shot number)."""
    spec = _SPECS[i % len(_SPECS)]
    text = f"{spec.caption()} Shot {i} of the gallery, camera {i % 7}, take {i % 13}."
    return text if revision == 0 else f"{text} Edited version {revision}."


def item_id(i: int) -> str:
    return f"item{i:06d}"


def write_text_manifest(path: Path, n: int, revisions: dict[int, int] | None = None) -> Path:
    """JSONL manifest of `n` caption-only items; `revisions` maps item index -> caption revision."""
    revisions = revisions or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": item_id(i), "text": caption(i, revisions.get(i, 0))}) + "\n")
    return path


def changed_set(n: int, fraction: float, offset: int = 0) -> list[int]:
    """`fraction` of the items, spread evenly over the gallery, starting at `offset`."""
    count = round(n * fraction)
    if count == 0:
        return []
    step = n / count
    return sorted({(offset + int(k * step)) % n for k in range(count)})


def ensure_clips(folder: Path, n: int, log: Callable[[str], None] = print) -> tuple[list[Path], float]:
    """`n` distinct synthetic clips (96x128, 2 s, 8 fps) under `folder`, reused between runs.

    Returns the paths and the seconds spent writing the missing ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:06d}.mp4" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.is_file() or p.stat().st_size == 0]
    start = time.perf_counter()
    for done, i in enumerate(missing):
        spec = _SPECS[i % len(_SPECS)]
        # The seed makes every clip's bytes (and so its content key) distinct.
        write_clip(paths[i], spec, seed=clip_seed(f"{spec.clip_id()}-{i}"))
        if done and done % 2000 == 0:
            log(f"    wrote {done}/{len(missing)} clips")
    return paths, time.perf_counter() - start


def write_video_manifest(path: Path, clips: Iterable[Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i, clip in enumerate(clips):
            handle.write(json.dumps({"id": item_id(i), "path": str(clip), "text": caption(i)}) + "\n")
    return path
