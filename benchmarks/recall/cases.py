"""Recall benchmark: one case (rows x dim x data) measured side by side, and the stored cases."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, Context, Result, mem_available_bytes, now_iso, pct
from benchmarks.recall.data import BATCH, NAME, SEED, TITLE, GiB, K, _open_or_write, numpy_topk, unit_rows
from benchmarks.recall.search import (
    Builds,
    _ann_kinds,
    _lance_batch,
    _lance_single,
    _latencies,
    _measure_ann,
    _projected_skip,
    _recall,
)
from r3tasks.gallery.pinned import pin, snapshot


def clustered_rows(rng: np.random.Generator, centres: np.ndarray, n: int, chunk: int = 50_000) -> np.ndarray:
    """Unit vectors around random centres (cosine ~0.7 to their centre): a control with neighbourhood structure."""
    d = centres.shape[1]
    sigma = np.float32(np.sqrt(1.04 / d))
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(0, len(centres), m)] + sigma * rng.standard_normal((m, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def case_label(n: int, d: int, data: str) -> str:
    return (f"{n // 1000:,}k x {d}" if n < 1_000_000 else f"{n // 1_000_000}M x {d}") + (
        "" if data == "random" else f" ({data})"
    )


def case(ctx: Context, n: int, d: int, builds: Builds, data: str = "random") -> dict[str, Any]:
    """All measurements for one (rows, dim, distribution); returns the raw data."""
    label = case_label(n, d, data)
    need = n * d * 4
    # X in RAM, the file in the page cache while writing/reading, the index, and headroom.
    available = mem_available_bytes()
    if 1.6 * need + 1.5 * GiB > available:
        reason = (
            f"skipped: needs ~{(1.6 * need + 1.5 * GiB) / GiB:.1f} GiB (vectors {need / GiB:.1f} GiB) and "
            f"{available / GiB:.1f} GiB is available now"
        )
        ctx.log(f"  {label}: {reason}")
        return {"label": label, "n": n, "d": d, "data": data, "skipped": reason}
    if data != "random":  # only ANN is measured on this data: no point writing the table if no index gets built
        reasons = [_projected_skip(kind, n, d, data, builds) for kind in _ann_kinds(n, d, ctx.quick)]
        if all(reasons):
            ctx.log(f"  {label}: {'; '.join(reasons)}")  # type: ignore[arg-type]
            return {"label": label, "n": n, "d": d, "data": data, "skipped": "; ".join(reasons)}  # type: ignore[arg-type]
    big = n >= 1_000_000
    nq = 20 if ctx.quick else 40
    nq_exact = 5 if big else min(nq, 20)
    ctx.log(f"  {label}: generating vectors (load average {os.getloadavg()[0]:.1f})")
    rng = np.random.default_rng([SEED, n, d, 0 if data == "random" else 7])
    if data == "random":
        X = unit_rows(rng, n, d)
        queries = unit_rows(np.random.default_rng([SEED, n, d, 1]), nq + 2 * BATCH, d)
    else:
        centres = unit_rows(rng, max(10, n // 1000), d)
        X = clustered_rows(rng, centres, n)
        queries = clustered_rows(np.random.default_rng([SEED, n, d, 8]), centres, nq + 2 * BATCH)
    singles, batches = queries[:nq], [queries[nq : nq + BATCH], queries[nq + BATCH :]]
    out: dict[str, Any] = {
        "label": label,
        "n": n,
        "d": d,
        "data": data,
        "queries": nq,
        "load_average": os.getloadavg()[0],
    }

    # numpy floor (and the exact ground truth)
    np_single, truth_single = _latencies(lambda q: numpy_topk(X @ q)[0], singles)
    np_batch, truth_batch = _latencies(lambda b: numpy_topk(b @ X.T), np.stack(batches))
    truth_single = np.stack(truth_single)
    truth_batch = np.concatenate(truth_batch)
    out["numpy"] = {"single": np_single, "batch": np_batch}
    ctx.log(f"  {label}: numpy p50 {1000 * pct(np_single, 50):.1f} ms/query, {1000 * pct(np_batch, 50):.0f} ms/batch")

    store, table, write_s = _open_or_write(ctx, n, d, X, data)
    out["write_s"] = write_s
    del X
    gc.collect()
    if data == "random":
        # LanceDB exact, with the distance the gallery uses and, as a diagnosis, the two that rank unit
        # vectors the same way; and the bare cost of reading the vector column once.
        ex_single, ex_found = _latencies(_lance_single(table, exact=True), singles[:nq_exact])
        ex_batch, _ = _latencies(_lance_batch(table, exact=True), np.stack(batches[: 1 if big else 2]))
        out["lance_exact"] = {
            "single": ex_single,
            "batch": ex_batch,
            "agreement_with_numpy": _recall(ex_found, truth_single[:nq_exact]),
        }
        for metric in ("dot", "l2"):
            lat, _ = _latencies(_lance_single(table, exact=True, metric=metric), singles[: min(nq_exact, 5)])
            out["lance_exact"][metric] = lat
        scan, _ = _latencies(lambda _q: table.search().select(["vector"]).limit(n).to_arrow(), singles[:3])
        out["lance_exact"]["scan"] = scan
        ctx.log(
            f"  {label}: LanceDB exact p50 {1000 * pct(ex_single, 50):.0f} ms/query, "
            f"{1000 * pct(ex_batch, 50):.0f} ms/batch; agreement {out['lance_exact']['agreement_with_numpy']:.3f}; "
            f"reading the vectors once {1000 * pct(scan, 50):.0f} ms"
        )
        # The query flow's call on the same table (no index on it, so exact).
        out["pinned"] = _pinned(ctx, store, singles[: 3 if big else 10], batches[: 1 if big else 2], n, d)
    out["ann"] = {
        kind: _measure_ann(
            ctx, store, table, kind, n, d, data, singles, batches, truth_single, truth_batch, label, builds
        )
        for kind in _ann_kinds(n, d, ctx.quick)
    }
    del store, table
    gc.collect()
    return out


def _pinned(ctx: Context, store: Any, queries: np.ndarray, batches: list[np.ndarray], n: int, d: int) -> dict[str, Any]:
    # Per-row records, and the vector matrix next to the Arrow column it is read from while loading.
    if n * 600 + n * d * 4 * 2.2 + GiB > mem_available_bytes():
        return {"skipped": "not enough memory for the pinned view's records and vector matrix"}
    out: dict[str, Any] = {}
    # What every index refresh reads to plan (GalleryStore.content_keys), against reading only the two
    # columns it needs; and loading the whole table into RAM (GallerySnapshot), the other way to search.
    start = time.perf_counter()
    store.content_keys()
    out["content_keys_s"] = time.perf_counter() - start
    start = time.perf_counter()
    store.table().search().select(["id", "content_key"]).limit(None).to_arrow()
    out["projected_keys_s"] = time.perf_counter() - start
    if 2.5 * n * d * 4 + GiB < mem_available_bytes():  # the Arrow table and the numpy copy coexist
        start = time.perf_counter()
        rows = snapshot(store)
        out["snapshot_s"] = time.perf_counter() - start
        del rows
        gc.collect()
    else:
        out["snapshot_s"] = None  # skipped: not enough memory for it
    start = time.perf_counter()
    pinned = pin(store)
    pin_s = time.perf_counter() - start
    out["pin_s"] = pin_s
    out["route"] = {"top": pinned.route(K), "all": pinned.route(0)}
    # The one-off cost: the first search reads the version's vectors into RAM (in-memory route).
    start = time.perf_counter()
    pinned.search(queries[0], K)
    out["first_search_s"] = time.perf_counter() - start
    out["load_s"] = pin_s + out["first_search_s"]
    if out["route"]["top"] != "memory":  # over exact_search_max_bytes: LanceDB answers, slowly
        queries, batches = queries[:3], batches[:1]
    for limit in (0, K):
        lat, _ = _latencies(lambda q: pinned.search(q, limit), queries)
        out[f"limit{limit}"] = lat
    out["batch"], _ = _latencies(lambda b: pinned.search_many(b, K), np.stack(batches))
    ctx.log(
        f"  PinnedGallery ({out['route']['top']}): pin {pin_s:.2f} s + first search {out['first_search_s']:.2f} s; "
        f"search(all) p50 {1000 * pct(out['limit0'], 50):.1f} ms; search(50) p50 {1000 * pct(out['limit50'], 50):.1f} ms; "
        f"search_many(32 x 50) p50 {1000 * pct(out['batch'], 50):.0f} ms; content_keys {out['content_keys_s']:.2f} s "
        f"vs projected {out['projected_keys_s']:.2f} s; snapshot {out['snapshot_s'] if out['snapshot_s'] is None else round(out['snapshot_s'], 1)} s"
    )
    del pinned
    return out


# ---------------------------------------------------------------------------------------------


QUICK_PLAN = [
    (10_000, 384, "random"),
    (10_000, 2048, "random"),
    (100_000, 384, "random"),
    (100_000, 2048, "random"),
    (100_000, 384, "clustered"),
]
# Largest last.
FULL_PLAN = QUICK_PLAN + [(1_000_000, 384, "random"), (1_000_000, 384, "clustered"), (1_000_000, 2048, "random")]
DATA = ("random", "clustered")


def run(ctx: Context, cases: list[tuple[int, int, str]] | None = None, command: str | None = None) -> Result:
    """Measure `cases` (the quick or full plan when None) and merge them into the stored results."""
    from benchmarks.recall.summary import _write_partial, summarise  # the summary reads this module's cases

    result = Result(NAME, TITLE)
    plan = cases if cases is not None else (QUICK_PLAN if ctx.quick else FULL_PLAN)
    stored = stored_cases()
    builds = _stored_builds(stored)
    command = command or _command_line()
    done = []
    for n, d, data in plan:
        started, load, start = now_iso(), os.getloadavg(), time.perf_counter()
        measured = case(ctx, n, d, builds, data)
        measured["run"] = {
            "started": started,
            "duration_s": time.perf_counter() - start,
            "load_average_start": [round(x, 2) for x in load],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "mode": "quick" if ctx.quick else "full",
            "command": command,
            "git": _git(),
        }
        done.append(measured)
        _write_partial(ctx, done)
    result.data["cases"] = merge_cases(stored, done)
    summarise(result, result.data, ctx.quick)
    return result


def _key(c: dict[str, Any]) -> tuple[int, int, str]:
    if "n" in c:
        return int(c["n"]), int(c["d"]), str(c.get("data", "random"))
    # A skipped case from before skipped cases carried their size: read it back from the label.
    size, _, rest = c["label"].partition(" x ")
    n = int(float(size[:-1].replace(",", "")) * (1_000_000 if size.endswith("M") else 1000))
    return n, int(rest.split()[0]), "clustered" if "clustered" in rest else "random"


def merge_cases(stored: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored cases with those measured now replacing the same rows x dim x data, smallest first."""
    merged = {_key(c): c for c in stored}
    merged.update({_key(c): c for c in new})
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], DATA.index(k[2]) if k[2] in DATA else 9, k[1]))]


def stored_cases(path: Path | None = None) -> list[dict[str, Any]]:
    """The cases in the stored result file, each with its run metadata (taken from the file's run if missing)."""
    path = path or RESULTS_DIR / f"{NAME}.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    cases = (payload.get("data") or {}).get("cases") or []
    machine = payload.get("machine") or {}
    for c in cases:
        # Cases measured before per-case metadata: the whole run's, with the 1-minute load at the case's start.
        c.setdefault(
            "run",
            {
                "started": payload.get("started"),
                "duration_s": None,
                "load_average_start": [c["load_average"]]
                if "load_average" in c
                else machine.get("load_average_at_start"),
                "load_average_end": None,
                "mode": payload.get("mode"),
                "command": payload.get("command"),
                "git": machine.get("git"),
            },
        )
    return cases


def _stored_builds(cases: list[dict[str, Any]]) -> Builds:
    """100k build times from stored cases, so a run of only 1M cases can project its build time."""
    builds: Builds = {}
    for c in cases:
        if c.get("n") == 100_000:
            for kind, a in c.get("ann", {}).items():
                if "build_s" in a:
                    builds[(kind, c["d"], c.get("data", "random"))] = a["build_s"]
    return builds


def _command_line() -> str:
    # `python -m benchmarks.run ...` or `python -m benchmarks.recall ...`: argv[0] is the module's file.
    module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "run"
    return " ".join([f"python -m benchmarks.{module}", *sys.argv[1:]])


def _git() -> str:
    from benchmarks.common import _git_state

    return _git_state()
