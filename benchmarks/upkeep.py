"""Gallery upkeep: table versions and fragments after 100 refreshes, without and with the upkeep.

Each refresh is what `index_gallery` commits for 1 % of a 2,000-row gallery changed: one
merge-insert of 20 rows and one delete of 2 rows (re-added by the next refresh). Arm `none` never
runs upkeep (main before this change); arm `upkeep` runs `r3tasks.gallery.upkeep.upkeep` after each refresh
with the default settings (keep 20 versions, 10 refresh tags). Also: time to pin the latest version
(median of 5 opens) and bytes on disk.

    PYTHONPATH=. python -m benchmarks.upkeep   # writes benchmarks/results/upkeep.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from r3tasks.gallery.pinned import pin
from r3tasks.gallery.table import GalleryRow, GalleryStore
from r3tasks.gallery.upkeep import health, upkeep
from r3tasks.settings.operations import UpkeepSettings

ROWS, DIM, REFRESHES, CHANGED, REMOVED = 2000, 64, 100, 20, 2
OUT = Path(__file__).parent / "results" / "upkeep.json"
BENCH_GALLERY = "default"  # the table names earlier runs of this benchmark made


def _rows(ids: range | list[int], rng: np.random.Generator, round_: int) -> list[GalleryRow]:
    return [
        GalleryRow(
            id=f"item-{i}",
            path=None,
            text=f"caption {i}",
            group=None,
            content_key=f"{i}-{round_}",
            num_frames=1,
            vector=rng.standard_normal(DIM).astype(np.float32),
        )
        for i in ids
    ]


def _pin_seconds(uri: str) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        pin(GalleryStore(uri, "gallery", "bench-embedder-0001", DIM, gallery=BENCH_GALLERY))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_arm(root: Path, with_upkeep: bool) -> dict:
    uri = str(root / ("upkeep" if with_upkeep else "none"))
    store = GalleryStore(uri, "gallery", "bench-embedder-0001", DIM, gallery=BENCH_GALLERY)
    rng = np.random.default_rng(0)
    store.upsert(_rows(range(ROWS), rng, 0))
    settings = UpkeepSettings()
    started = time.perf_counter()
    upkeep_seconds = 0.0
    for round_ in range(1, REFRESHES + 1):
        changed = rng.choice(ROWS, CHANGED, replace=False).tolist()
        store.upsert(_rows(changed, rng, round_))
        store.delete_ids([f"item-{i}" for i in rng.choice(ROWS, REMOVED, replace=False).tolist()])
        if with_upkeep:
            t = time.perf_counter()
            upkeep(store, settings)
            upkeep_seconds += time.perf_counter() - t
    final = health(store)
    return {
        "arm": "upkeep" if with_upkeep else "none",
        "refreshes": REFRESHES,
        "versions": final.versions,
        "fragments": final.fragments,
        "small_fragments": final.small_fragments,
        "rows": final.rows,
        "tags": len(final.tags),
        "pin_latest_s": round(_pin_seconds(uri), 4),
        "disk_mb": round(_bytes(Path(uri)) / 2**20, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "upkeep_s_per_refresh": round(upkeep_seconds / REFRESHES, 4) if with_upkeep else None,
    }


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="r3-bench-upkeep-"))
    try:
        arms = [run_arm(root, False), run_arm(root, True)]
        # The same 100 refreshes, then one upkeep on the arm that never had it: what a first run on an old table does.
        store = GalleryStore(str(root / "none"), "gallery", "bench-embedder-0001", DIM, gallery=BENCH_GALLERY)
        upkeep(store, UpkeepSettings())
        late = health(store)
        arms.append(
            {
                "arm": "none, then one upkeep",
                "versions": late.versions,
                "fragments": late.fragments,
                "pin_latest_s": round(_pin_seconds(str(root / "none")), 4),
                "disk_mb": round(_bytes(root / "none") / 2**20, 2),
            }
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"rows": ROWS, "dim": DIM, "changed_per_refresh": CHANGED, "arms": arms}, indent=2))
    for arm in arms:
        print(arm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
