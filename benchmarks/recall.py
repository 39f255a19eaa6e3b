"""3. Recall: exact and ANN top-50 search in LanceDB against a numpy matrix product, at 10k / 100k / 1M
rows of 384-d and 2048-d random unit vectors.

Per size, side by side in one run:
- numpy floor: the vectors in RAM, ``X @ q`` (or ``Q @ X.T`` for a batch) and argpartition;
- LanceDB exact: flat cosine search (``bypass_vector_index``), one query, and a batch in one call;
- `PinnedGallery.search`: the query flow's own call (candidate_pool 0 asks for every row's score,
  50 for a top-50), on a table written with the gallery schema. It reads the pinned version's
  vectors once into RAM (timed on its own: pin + first search) and then searches in memory, so it
  is compared with the numpy floor; `search_many` is timed on the same batches of 32;
- LanceDB ANN: IVF_HNSW_SQ (and IVF_PQ at the small sizes), cosine, with `nprobes` / `ef` /
  `refine_factor` tuned on a grid; recall@50 is measured against the exact top-50 from numpy;
- a clustered control (unit vectors around n/1000 random centres, cosine ~0.7 to their centre) for
  the ANN rows: random vectors in high dimensions have no neighbourhood structure for an index to use.

Tables are written once under benchmarks/out/recall and reused (same seed, same rows); the ANN
index is rebuilt in every run, so its build time is measured, and dropped afterwards.

Cases measured in a run replace the stored ones with the same rows x dim x data in
benchmarks/results/recall.json; the others are kept, each with its own run metadata (time, load
average, command, code), so some cases can be re-measured alone:
``python -m benchmarks.recall --cases 1Mx384:clustered 1Mx384:random`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    Context,
    Result,
    mem_available_bytes,
    now_iso,
    pct,
)

NAME = "recall"
TITLE = "Recall: LanceDB exact and ANN search vs a numpy floor"
K = 50
DIMS = (384, 2048)
BATCH = 32
SEED = 20261122
TABLE_VERSION = 1  # bump when the written rows change
GiB = 2**30


def unit_rows(rng: np.random.Generator, n: int, d: int, chunk: int = 50_000) -> np.ndarray:
    """`n` random unit vectors (float32), generated in chunks so no float64 copy of the whole set exists."""
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def numpy_topk(scores: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the k best scores per row, best first."""
    scores = np.atleast_2d(scores)
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


# ---------------------------------------------------------------------------------------------
# The table


def _open_or_write(ctx: Context, n: int, d: int, X: np.ndarray, data: str) -> tuple[Any, Any, float | None]:
    """A GalleryStore table holding X (ids ``r<row>``); written unless an identical one is on disk."""
    import pyarrow as pa

    from r3tasks.gallery import GalleryStore, gallery_schema

    uri = ctx.work / "recall" / f"n{n}-d{d}-{data}"
    marker = uri / "r3-bench.json"
    expected = {"n": n, "d": d, "data": data, "seed": SEED, "version": TABLE_VERSION}
    fingerprint = f"recall-{n}-{d}"
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        store = GalleryStore(str(uri), "bench", fingerprint, d)
        if store.exists() and store.count() == n:
            table = store.table()
            for index in table.list_indices():
                table.drop_index(index.name)
            return store, table, None
    shutil.rmtree(uri, ignore_errors=True)
    store = GalleryStore(str(uri), "bench", fingerprint, d)
    schema = gallery_schema(d, fingerprint)

    def chunks() -> Iterator[pa.RecordBatch]:
        step = 100_000
        for start in range(0, n, step):
            stop = min(n, start + step)
            ids = pa.array([f"r{i}" for i in range(start, stop)], pa.string())
            nulls = pa.nulls(stop - start)
            yield pa.RecordBatch.from_arrays(
                [
                    ids,
                    nulls.cast(pa.string()),
                    nulls.cast(pa.string()),
                    nulls.cast(pa.string()),
                    ids,
                    nulls.cast(pa.int32()),
                    nulls.cast(pa.timestamp("us", tz="UTC")),
                    pa.FixedSizeListArray.from_arrays(pa.array(X[start:stop].reshape(-1), pa.float32()), d),
                ],
                schema=schema,
            )

    start = time.perf_counter()
    table = store.table()
    table.add(pa.RecordBatchReader.from_batches(schema, chunks()))
    write_s = time.perf_counter() - start
    marker.write_text(json.dumps(expected))
    return store, table, write_s


# ---------------------------------------------------------------------------------------------
# Measuring


def _latencies(fn: Any, queries: np.ndarray) -> tuple[list[float], list[Any]]:
    fn(queries[0])  # warm-up (first read of the file, thread pools)
    times, outs = [], []
    for q in queries:
        start = time.perf_counter()
        outs.append(fn(q))
        times.append(time.perf_counter() - start)
    return times, outs


def _ids_to_rows(ids: list[str]) -> list[int]:
    return [int(i[1:]) for i in ids]


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = [len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _configure(query: Any, exact: bool, nprobes: int | None, refine: int | None, ef: int | None) -> Any:
    if exact:
        return query.bypass_vector_index()
    query = query.nprobes(nprobes)
    if refine:
        query = query.refine_factor(refine)
    if ef:
        query = query.ef(ef)
    return query


def _lance_single(table: Any, exact: bool, nprobes: int | None = None, refine: int | None = None,
                  ef: int | None = None, metric: str = "cosine") -> Any:
    def search(q: np.ndarray) -> list[int]:
        query = _configure(table.search(q).distance_type(metric).limit(K), exact, nprobes, refine, ef)
        hits = query.select(["id", "_distance"]).to_arrow()
        return _ids_to_rows(hits.column("id").to_pylist())

    return search


def _lance_batch(table: Any, exact: bool, nprobes: int | None = None, refine: int | None = None,
                 ef: int | None = None) -> Any:
    def search(batch: np.ndarray) -> list[list[int]]:
        query = _configure(table.search(list(batch)).distance_type("cosine").limit(K), exact, nprobes, refine, ef)
        hits = query.select(["id", "_distance"]).to_arrow()
        rows: list[list[int]] = [[] for _ in range(len(batch))]
        for qi, item in zip(hits.column("query_index").to_pylist(), hits.column("id").to_pylist()):
            rows[qi].append(int(item[1:]))
        return rows

    return search


ANN_KINDS = ("IVF_HNSW_SQ", "IVF_PQ")
# An ANN build whose projected time (from the 100k build, scaled by rows) exceeds this is skipped, with the reason.
MAX_BUILD_S = 1200.0


def _ann_config(kind: str, n: int, d: int) -> tuple[Any, str, int]:
    from lancedb.index import IvfHnswSq, IvfPq

    if kind == "IVF_HNSW_SQ":
        partitions = max(4, n // 3000)  # ~3k vectors per partition graph
        return (IvfHnswSq(distance_type="cosine", num_partitions=partitions),
                f"IVF_HNSW_SQ cosine, {partitions} partitions, m 20, ef_construction 300", partitions)
    partitions = max(16, int(round(np.sqrt(n))))
    sub_vectors = d // 8 if d <= 512 else d // 16
    return (IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors),
            f"IVF_PQ cosine, {partitions} partitions, {sub_vectors} sub-vectors x 8 bits", partitions)


def _ann_grid(kind: str, partitions: int) -> list[tuple[int, int | None, int | None]]:
    """(nprobes, refine_factor, ef) settings to try."""
    # The small fractions matter at 1M rows (333 partitions), where clustered data needs 1 to 3 probes.
    probes = sorted({max(1, int(round(partitions * f))) for f in (0.003, 0.01, 0.03, 0.1, 0.25, 0.5, 1.0)})
    if kind == "IVF_HNSW_SQ":
        return [(p, None, ef) for p in probes for ef in (None, 200)]
    return [(p, r, None) for p in probes for r in (None, 10, 50)]


def _ann_kinds(n: int, d: int, quick: bool) -> list[str]:
    # IVF_PQ builds 3-10x slower here and reached lower recall on this data: compared at the small sizes only.
    return ["IVF_HNSW_SQ", "IVF_PQ"] if n <= 10_000 or (n <= 100_000 and d <= 384 and not quick) else ["IVF_HNSW_SQ"]


Builds = dict[tuple[str, int, str], float]  # (index kind, dim, data) -> build seconds at 100k rows


def _projected_skip(kind: str, n: int, d: int, data: str, builds: Builds) -> str | None:
    """Why an ANN build at `n` rows is not attempted (its time projected from the 100k build), or None."""
    if n <= 100_000:
        return None
    base = builds.get((kind, d, data), builds.get((kind, d, "random")))
    if base is None:
        return None
    projected = base * n / 100_000
    if projected <= MAX_BUILD_S:
        return None
    return (f"{kind} build skipped: projected {projected / 60:.0f} min from the 100k x {d} build "
            f"({base:.0f} s) x {n // 100_000}, over the {MAX_BUILD_S / 60:.0f} min limit "
            f"set for this shared 2-core machine (benchmarks/recall.py MAX_BUILD_S)")


def _measure_ann(ctx: Context, store: Any, table: Any, kind: str, n: int, d: int, data: str, singles: np.ndarray,
                 batches: list[np.ndarray], truth_single: np.ndarray, truth_batch: np.ndarray,
                 label: str, builds: Builds) -> dict[str, Any]:
    config, description, partitions = _ann_config(kind, n, d)
    reason = _projected_skip(kind, n, d, data, builds)
    if reason:
        ctx.log(f"  {label}: {reason}")
        return {"index": description, "skipped": reason}
    start = time.perf_counter()
    table.create_index("vector", config=config)
    build_s = time.perf_counter() - start
    if n == 100_000:
        builds[(kind, d, data)] = build_s
    ctx.log(f"  {label}: {description} built in {build_s:.0f} s")
    tuning = []
    for nprobes, refine, ef in _ann_grid(kind, partitions):
        lat, found = _latencies(_lance_single(table, exact=False, nprobes=nprobes, refine=refine, ef=ef), singles)
        tuning.append({"nprobes": nprobes, "refine_factor": refine, "ef": ef, "p50": pct(lat, 50),
                       "p95": pct(lat, 95), "recall": _recall(found, truth_single)})
        ctx.log(f"    {_setting(tuning[-1])}: p50 {1000 * tuning[-1]['p50']:.1f} ms, recall {tuning[-1]['recall']:.3f}")
    good = [t for t in tuning if t["recall"] >= 0.95]
    best = min(good, key=lambda t: t["p50"]) if good else max(tuning, key=lambda t: (t["recall"], -t["p50"]))
    batch_fn = _lance_batch(table, exact=False, nprobes=best["nprobes"], refine=best["refine_factor"], ef=best["ef"])
    batch_lat, batch_found = _latencies(batch_fn, np.stack(batches))
    out = {"index": description, "partitions": partitions, "build_s": build_s, "tuning": tuning, "best": best,
           "batch": batch_lat, "batch_recall": _recall([r for b in batch_found for r in b], truth_batch)}
    out["r3"] = _pinned_ann(store, singles, truth_single)
    for index in table.list_indices():
        table.drop_index(index.name)
    ctx.log(f"  {label}: {kind} best {_setting(best)}: p50 {1000 * best['p50']:.1f} ms, recall {best['recall']:.3f}")
    if "p50" in out["r3"]:
        ctx.log(f"  {label}: PinnedGallery.search(50) on the indexed table ({out['r3']['route']}): "
                f"p50 {1000 * out['r3']['p50']:.1f} ms, recall {out['r3']['recall']:.3f}")
    return out


def _pinned_ann(store: Any, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """What the query flow gets on the indexed table: `PinnedGallery.search` with the default settings."""
    pinned = store.pin()
    route = pinned.route(K)
    if route != "ann":  # at or under gallery.ann_min_rows the exact in-memory search is used instead
        return {"route": route}
    lat, found = _latencies(lambda q: _ids_to_rows(list(pinned.search(q, K))), queries)
    return {"route": route, "p50": pct(lat, 50), "p95": pct(lat, 95), "recall": _recall(found, truth)}


def _setting(t: dict[str, Any]) -> str:
    parts = [f"nprobes {t['nprobes']}"]
    if t.get("refine_factor"):
        parts.append(f"refine {t['refine_factor']}")
    if t.get("ef"):
        parts.append(f"ef {t['ef']}")
    return ", ".join(parts)


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
        "" if data == "random" else f" ({data})")


def case(ctx: Context, n: int, d: int, builds: Builds, data: str = "random") -> dict[str, Any]:
    """All measurements for one (rows, dim, distribution); returns the raw data."""
    label = case_label(n, d, data)
    need = n * d * 4
    # X in RAM, the file in the page cache while writing/reading, the index, and headroom.
    available = mem_available_bytes()
    if 1.6 * need + 1.5 * GiB > available:
        reason = (f"skipped: needs ~{(1.6 * need + 1.5 * GiB) / GiB:.1f} GiB (vectors {need / GiB:.1f} GiB) and "
                  f"{available / GiB:.1f} GiB is available now")
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
    out: dict[str, Any] = {"label": label, "n": n, "d": d, "data": data, "queries": nq,
                           "load_average": os.getloadavg()[0]}

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
        out["lance_exact"] = {"single": ex_single, "batch": ex_batch,
                              "agreement_with_numpy": _recall(ex_found, truth_single[:nq_exact])}
        for metric in ("dot", "l2"):
            lat, _ = _latencies(_lance_single(table, exact=True, metric=metric), singles[: min(nq_exact, 5)])
            out["lance_exact"][metric] = lat
        scan, _ = _latencies(lambda _q: table.search().select(["vector"]).limit(n).to_arrow(), singles[:3])
        out["lance_exact"]["scan"] = scan
        ctx.log(f"  {label}: LanceDB exact p50 {1000 * pct(ex_single, 50):.0f} ms/query, "
                f"{1000 * pct(ex_batch, 50):.0f} ms/batch; agreement {out['lance_exact']['agreement_with_numpy']:.3f}; "
                f"reading the vectors once {1000 * pct(scan, 50):.0f} ms")
        # The query flow's call on the same table (no index on it, so exact).
        out["pinned"] = _pinned(ctx, store, singles[: 3 if big else 10], batches[: 1 if big else 2], n, d)
    out["ann"] = {
        kind: _measure_ann(ctx, store, table, kind, n, d, data, singles, batches, truth_single, truth_batch, label,
                           builds)
        for kind in _ann_kinds(n, d, ctx.quick)
    }
    del store, table
    gc.collect()
    return out


def _pinned(ctx: Context, store: Any, queries: np.ndarray, batches: list[np.ndarray], n: int,
            d: int) -> dict[str, Any]:
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
        snapshot = store.snapshot()
        out["snapshot_s"] = time.perf_counter() - start
        del snapshot
        gc.collect()
    else:
        out["snapshot_s"] = None  # skipped: not enough memory for it
    start = time.perf_counter()
    pinned = store.pin()
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
    ctx.log(f"  PinnedGallery ({out['route']['top']}): pin {pin_s:.2f} s + first search {out['first_search_s']:.2f} s; "
            f"search(all) p50 {1000 * pct(out['limit0'], 50):.1f} ms; search(50) p50 {1000 * pct(out['limit50'], 50):.1f} ms; "
            f"search_many(32 x 50) p50 {1000 * pct(out['batch'], 50):.0f} ms; content_keys {out['content_keys_s']:.2f} s "
            f"vs projected {out['projected_keys_s']:.2f} s; snapshot {out['snapshot_s'] if out['snapshot_s'] is None else round(out['snapshot_s'], 1)} s")
    del pinned
    return out


# ---------------------------------------------------------------------------------------------


QUICK_PLAN = [(10_000, 384, "random"), (10_000, 2048, "random"), (100_000, 384, "random"),
              (100_000, 2048, "random"), (100_000, 384, "clustered")]
# Largest last.
FULL_PLAN = QUICK_PLAN + [(1_000_000, 384, "random"), (1_000_000, 384, "clustered"), (1_000_000, 2048, "random")]
DATA = ("random", "clustered")


def run(ctx: Context, cases: list[tuple[int, int, str]] | None = None, command: str | None = None) -> Result:
    """Measure `cases` (the quick or full plan when None) and merge them into the stored results."""
    result = Result(NAME, TITLE)
    plan = cases if cases is not None else (QUICK_PLAN if ctx.quick else FULL_PLAN)
    stored = stored_cases()
    builds = _stored_builds(stored)
    command = command or _command_line()
    done = []
    for n, d, data in plan:
        started, load, start = now_iso(), os.getloadavg(), time.perf_counter()
        measured = case(ctx, n, d, builds, data)
        measured["run"] = {"started": started, "duration_s": time.perf_counter() - start,
                           "load_average_start": [round(x, 2) for x in load],
                           "load_average_end": [round(x, 2) for x in os.getloadavg()],
                           "mode": "quick" if ctx.quick else "full", "command": command, "git": _git()}
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
        c.setdefault("run", {"started": payload.get("started"), "duration_s": None,
                             "load_average_start": [c["load_average"]] if "load_average" in c
                             else machine.get("load_average_at_start"),
                             "load_average_end": None, "mode": payload.get("mode"),
                             "command": payload.get("command"), "git": machine.get("git")})
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


def summarise(result: Result, data: dict[str, Any], quick: bool) -> None:
    """Rows, tables and notes from the measurements in `data` (also used to re-render stored results)."""
    _rows(result, data["cases"], quick)
    runs = {(c.get("run") or {}).get("command") for c in data["cases"]}
    if len(runs) > 1:
        result.note(f"The cases above come from {len(runs)} runs; the command and load average at the top of this "
                    "section are the latest run's; the table 'When each case was measured' gives each case's own.")


def _write_partial(ctx: Context, cases: list[dict[str, Any]]) -> None:
    # A 1M case takes long: keep what is done so far if the run is stopped.
    path = ctx.work / "recall-partial.json"
    path.write_text(json.dumps(cases, default=float))


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}" if x < 1 else f"{1000 * x:,.0f}"


def _p(xs: list[float]) -> str:
    return f"{_ms(pct(xs, 50))} / {_ms(pct(xs, 95))}"


def _best_ann(c: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest setting reaching recall 0.95 over the index kinds measured, else the best recall."""
    done = [(kind, a) for kind, a in c.get("ann", {}).items() if "best" in a]
    if not done:
        return None
    good = [(k, a) for k, a in done if a["best"]["recall"] >= 0.95]
    kind, ann = (min(good, key=lambda ka: ka[1]["best"]["p50"]) if good
                 else max(done, key=lambda ka: ka[1]["best"]["recall"]))
    return {"kind": kind, **ann}


def _pinned_rows(result: Result, c: dict[str, Any], d: int) -> None:
    """The target rows for r3's own exact recall (PinnedGallery in memory) at 100k x d, and its load time."""
    name = f"r3 exact recall (PinnedGallery, in memory) / numpy, 100k x {d}, p50 per query"
    pinned, nps = c.get("pinned", {}), c["numpy"]
    if "limit50" not in pinned or "load_s" not in pinned:
        why = pinned.get("skipped") or "not measured (a result from before the in-memory search)"
        result.row(name, None, "x", target="≤ 2x", note=why)
        return
    top, everything = pct(pinned["limit50"], 50), pct(pinned["limit0"], 50)
    ratio = top / pct(nps["single"], 50)
    result.row(name, ratio, "x", target="≤ 2x", passed=ratio <= 2.0 and pinned["route"]["top"] == "memory",
               note=f"top-50: {_ms(top)} ms vs numpy {_ms(pct(nps['single'], 50))} ms ({pinned['route']['top']}); "
                    f"every row's score (candidate_pool 0): {_ms(everything)} ms")
    bratio = pct(pinned["batch"], 50) / pct(nps["batch"], 50)
    result.row(f"r3 exact recall (PinnedGallery.search_many) / numpy, 100k x {d}, p50 per batch of {BATCH}",
               bratio, "x", target="≤ 2x", passed=bratio <= 2.0 and pinned["route"]["top"] == "memory",
               note=f"{_ms(pct(pinned['batch'], 50))} ms vs {_ms(pct(nps['batch'], 50))} ms")
    result.row(f"r3 exact recall: one-off vector load (pin + first search), 100k x {d}", pinned["load_s"], "s",
               note=f"pin (metadata) {pinned['pin_s']:.2f} s + first search (reads the vectors into RAM) "
                    f"{pinned['first_search_s']:.2f} s; once per pinned view")


def _rows(result: Result, cases: list[dict[str, Any]], quick: bool) -> None:
    exact_rows, ann_rows, tuning_rows, store_rows = [], [], [], []
    for c in cases:
        if "skipped" in c:
            exact_rows.append([c["label"], c["skipped"]] + [""] * 13)
            continue
        np_s, np_b = c["numpy"]["single"], c["numpy"]["batch"]
        if "lance_exact" in c:
            ex = c["lance_exact"]
            pinned = c.get("pinned", {})
            exact_rows.append([
                c["label"], _p(np_s), f"{_ms(pct(np_b, 50))} ({_ms(pct(np_b, 50) / BATCH)}/q)",
                _p(ex["single"]), f"{_ms(pct(ex['batch'], 50))} ({_ms(pct(ex['batch'], 50) / BATCH)}/q)",
                f"{pct(ex['single'], 50) / pct(np_s, 50):.1f}x", f"{pct(ex['batch'], 50) / pct(np_b, 50):.1f}x",
                _ms(pct(ex["dot"], 50)), _ms(pct(ex["l2"], 50)), _ms(pct(ex["scan"], 50)),
                _ms(pct(pinned["limit0"], 50)) if "limit0" in pinned else pinned.get("skipped", ""),
                _ms(pct(pinned["limit50"], 50)) if "limit50" in pinned else "",
                f"{_ms(pct(pinned['batch'], 50))} ({_ms(pct(pinned['batch'], 50) / BATCH)}/q)" if "batch" in pinned else "",
                f"{pinned['load_s']:.2f}" if "load_s" in pinned else "",
                pinned.get("route", {}).get("top", ""),
            ])
            if "content_keys_s" in pinned:
                store_rows.append([c["label"], f"{pinned['content_keys_s']:.2f}", f"{pinned['projected_keys_s']:.3f}",
                                   f"{pinned['content_keys_s'] / max(pinned['projected_keys_s'], 1e-6):.0f}x",
                                   f"{pinned['pin_s']:.2f}",
                                   "skipped (memory)" if pinned["snapshot_s"] is None or pinned["snapshot_s"] != pinned["snapshot_s"]
                                   else f"{pinned['snapshot_s']:.2f}"])
        for kind, a in c.get("ann", {}).items():
            if "skipped" in a:
                ann_rows.append([c["label"], a["index"], "", a["skipped"], "", "", "", "", ""])
                continue
            b = a["best"]
            r3 = a.get("r3", {})
            ann_rows.append([c["label"], a["index"], f"{a['build_s']:.0f}", _setting(b),
                             f"{_ms(b['p50'])} / {_ms(b['p95'])}", f"{b['recall']:.3f}",
                             f"{_ms(pct(a['batch'], 50))} ({_ms(pct(a['batch'], 50) / BATCH)}/q)",
                             f"{a['batch_recall']:.3f}",
                             f"{_ms(r3['p50'])} ms, recall {r3['recall']:.3f}" if "p50" in r3
                             else (f"route {r3['route']} (exact)" if "route" in r3 else "not measured")])
            for t in a["tuning"]:
                tuning_rows.append([c["label"], kind, t["nprobes"], t["refine_factor"] or "", t["ef"] or "",
                                    _ms(t["p50"]), _ms(t["p95"]), f"{t['recall']:.3f}"])
    result.table(
        "Exact top-50, random unit vectors: latency in ms (p50 / p95 per single query; p50 per batch of 32 "
        "queries, with the amortised cost per query)",
        ["rows x dim", "numpy single", "numpy batch", "LanceDB exact (cosine) single", "LanceDB exact batch",
         "exact/numpy single", "exact/numpy batch", "LanceDB exact, dot p50", "LanceDB exact, l2 p50",
         "LanceDB: read the vector column once", "PinnedGallery.search all rows p50",
         "PinnedGallery.search top-50 p50", "PinnedGallery.search_many batch p50",
         "PinnedGallery load s (pin + first search)", "PinnedGallery route"],
        exact_rows,
    )
    result.table(
        "ANN top-50 (best setting per index: the fastest with recall@50 >= 0.95, else the highest recall)",
        ["rows x dim", "index", "build s", "setting", "single p50 / p95 ms", "recall@50", "batch of 32 p50 ms",
         "batch recall@50", "PinnedGallery.search(50) on the indexed table, default settings: p50, recall@50"],
        ann_rows,
    )
    result.table(
        "Whole-table reads (s): GalleryStore.content_keys (every refresh's plan), the same two columns read "
        "alone, GalleryStore.pin (metadata of every row), GalleryStore.snapshot (every row, vectors included)",
        ["rows x dim", "content_keys()", "id + content_key only", "ratio", "pin()", "snapshot()"],
        store_rows,
    )
    result.table("ANN tuning grid: latency per single query and recall@50 against the exact top-50",
                 ["rows x dim", "index", "nprobes", "refine_factor", "ef", "p50 ms", "p95 ms", "recall@50"],
                 tuning_rows)
    result.table(
        "When each case was measured (cases are merged from several runs: each keeps its own)",
        ["rows x dim", "started (UTC)", "duration s", "load average at start (1 / 5 / 15 min)", "mode", "command",
         "code"],
        [[c["label"], c.get("run", {}).get("started") or "", _secs(c.get("run", {}).get("duration_s")),
          " / ".join(f"{x:.1f}" for x in c.get("run", {}).get("load_average_start") or []),
          c.get("run", {}).get("mode") or "", c.get("run", {}).get("command") or "", c.get("run", {}).get("git") or ""]
         for c in cases],
    )

    by = {_key(c): c for c in cases}
    for d in DIMS:
        c = by.get((100_000, d, "random"))
        if c is None or "lance_exact" not in c:
            result.row(f"LanceDB exact / numpy, 100k x {d}, p50 per query", None, "x", target="≤ 2x",
                       note="not measured")
            result.row(f"r3 exact recall (PinnedGallery, in memory) / numpy, 100k x {d}, p50 per query", None, "x",
                       target="≤ 2x", note="not measured")
            continue
        ex, nps = c["lance_exact"], c["numpy"]
        # Why LanceDB's own exact search misses: every query re-reads and decodes the whole vector column.
        cause = (f"cause: LanceDB flat search re-reads and decodes the vector column each query (for scale, reading "
                 f"that column out to Arrow takes {_ms(pct(ex['scan'], 50))} ms)")
        ratio = pct(ex["single"], 50) / pct(nps["single"], 50)
        result.row(f"LanceDB exact / numpy, 100k x {d}, p50 per query", ratio, "x", target="≤ 2x",
                   passed=ratio <= 2.0,
                   note=f"{_ms(pct(ex['single'], 50))} ms vs {_ms(pct(nps['single'], 50))} ms; {cause}")
        bratio = pct(ex["batch"], 50) / pct(nps["batch"], 50)
        result.row(f"LanceDB exact / numpy, 100k x {d}, p50 per batch of {BATCH}", bratio, "x", target="≤ 2x",
                   passed=bratio <= 2.0,
                   note=f"{_ms(pct(ex['batch'], 50))} ms vs {_ms(pct(nps['batch'], 50))} ms; {cause}")
        _pinned_rows(result, c, d)
    for d in DIMS:
        for data in DATA:
            _ann_target_row(result, cases, by.get((1_000_000, d, data)), d, data, quick)
    for c in cases:
        if "skipped" in c or c["n"] == 1_000_000:
            continue
        best = _best_ann(c)
        if best is None:
            continue
        b = best["best"]
        result.row(f"ANN at {c['label']}: p50 per query, recall@50 {b['recall']:.3f}", 1000 * b["p50"], "ms",
                   note=f"{best['kind']}, {_setting(b)}")


def _secs(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


ANN_TARGET_S = 0.020


def _ann_target_row(result: Result, cases: list[dict[str, Any]], c: dict[str, Any] | None, d: int, data: str,
                    quick: bool) -> None:
    """The issue's ANN target at 1M x d, with the recall/latency trade-off measured on the grid as its note."""
    name = f"ANN p50 per query at 1M x {d} ({data} vectors), recall@50 ≥ 0.95"
    target = "≤ 20 ms with recall@50 ≥ 0.95"
    best = _best_ann(c) if c else None
    if c is None or best is None:
        result.row(name, None, "ms", target=target, note=_missing_reason(cases, c, d, data, quick))
        return
    b = best["best"]
    passed = b["p50"] <= ANN_TARGET_S and b["recall"] >= 0.95
    tuning = best["tuning"]
    partitions = best.get("partitions") or max(t["nprobes"] for t in tuning)
    parts = [(f"{best['kind']}, {_setting(b)}: recall@50 {b['recall']:.3f}, p95 {_ms(b['p95'])} ms, "
              f"build {best['build_s']:.0f} s")]
    if b["recall"] < 0.95:
        parts.append(f"no setting in the grid reached recall 0.95 (this is the highest; {len(tuning)} settings)")
    if not passed:
        fast = [t for t in tuning if t["p50"] <= ANN_TARGET_S]
        within = (f"within 20 ms the best recall is {max(fast, key=lambda t: t['recall'])['recall']:.3f} "
                  f"({_setting(max(fast, key=lambda t: t['recall']))})" if fast
                  else f"no setting ran within 20 ms (fastest {_ms(min(t['p50'] for t in tuning))} ms)")
        if b["recall"] >= 0.95:
            parts.append(f"trade-off on the grid: recall ≥ 0.95 needs nprobes {b['nprobes']} of {partitions} "
                         f"partitions; {within}")
        else:
            parts.append(within)
        parts.append(f"numpy exact top-50 over the same rows: {_ms(pct(c['numpy']['single'], 50))} ms per query")
        if "limit50" in c.get("pinned", {}):
            parts.append(f"r3 exact in memory (PinnedGallery): {_ms(pct(c['pinned']['limit50'], 50))} ms")
    r3 = best.get("r3", {})
    if "p50" in r3:
        parts.append(f"PinnedGallery.search(50) on this index with default nprobes/ef: {_ms(r3['p50'])} ms, "
                     f"recall@50 {r3['recall']:.3f}")
    result.row(name, 1000 * b["p50"], "ms", target=target, passed=passed, note="; ".join(parts))


def _missing_reason(cases: list[dict[str, Any]], c: dict[str, Any] | None, d: int, data: str, quick: bool) -> str:
    if c is not None:
        if "skipped" in c:
            return c["skipped"]
        skipped = "; ".join(a["skipped"] for a in c.get("ann", {}).values() if "skipped" in a)
        return skipped or "no ANN index measured"
    if quick and not any(x.get("n") == 1_000_000 for x in cases):
        return "not run (--quick stops at 100k rows)"
    why = f"not measured: no run has included 1M x {d} ({data}); its table is {1_000_000 * d * 4 / GiB:.1f} GiB"
    builds = _stored_builds(cases)
    base = builds.get(("IVF_HNSW_SQ", d, data), builds.get(("IVF_HNSW_SQ", d, "random")))
    if base is not None:
        why += f" and its IVF_HNSW_SQ build projects to ~{10 * base / 60:.0f} min (100k x {d} build {base:.0f} s x 10"
        why += f", over the {MAX_BUILD_S / 60:.0f} min limit, MAX_BUILD_S)" if 10 * base > MAX_BUILD_S else ")"
    return why + f"; measure it with `python -m benchmarks.recall --cases 1Mx{d}:{data}`"


# ---------------------------------------------------------------------------------------------
# Measuring some cases alone: python -m benchmarks.recall --cases 1Mx384:clustered ...


def parse_case(spec: str) -> tuple[int, int, str]:
    """``ROWSxDIM[:random|clustered]``, rows as digits or with a k / M suffix: ``1Mx384:clustered``."""
    size, _, data = spec.strip().partition(":")
    rows, sep, dim = size.lower().partition("x")
    data = data or "random"
    scale = {"k": 1000, "m": 1_000_000}.get(rows[-1:], 1)
    try:
        n, d = int(float(rows[:-1] if scale > 1 else rows) * scale), int(dim)
    except ValueError:
        n = d = 0
    if not sep or n <= 0 or d <= 0 or data not in DATA:
        raise argparse.ArgumentTypeError(f"case {spec!r}: expected ROWSxDIM[:random|clustered], e.g. 1Mx384:clustered")
    if n <= K:
        raise argparse.ArgumentTypeError(f"case {spec!r}: needs more than {K} rows for a top-{K}")
    return n, d, data


def main(argv: list[str] | None = None) -> int:
    """Measure the given cases, merge them into benchmarks/results/recall.json and regenerate RESULTS.md."""
    for name in [n for n in os.environ if n.startswith("R3_")]:
        del os.environ[name]  # as in benchmarks.run: the user's own settings would change what is measured
    from benchmarks.common import BENCH_DIR, machine_info, write_json
    from benchmarks.report import write_report

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recall", description=main.__doc__)
    parser.add_argument("--cases", nargs="+", type=parse_case, required=True, metavar="ROWSxDIM[:DATA]",
                        help="e.g. 1Mx384:clustered 1Mx384:random 100kx2048 (data: random, the default, or clustered)")
    parser.add_argument("--quick", action="store_true", help="fewer queries per case (20 instead of 40)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.recall", *argv])
    ctx = Context(quick=args.quick, log=lambda msg: print(msg, flush=True))
    machine, started, start = machine_info(), now_iso(), time.perf_counter()
    try:
        result = run(ctx, cases=args.cases, command=command)
    finally:
        ctx.close()
    payload = result.to_dict()
    # The section header describes this run; each case keeps its own run in data.cases[].run.
    payload.update(command=command, mode="quick" if args.quick else "full", started=started,
                   duration_s=time.perf_counter() - start, machine=machine)
    write_json(RESULTS_DIR / f"{NAME}.json", payload)
    for row in payload["rows"]:
        status = "" if row["passed"] is None else ("  PASS" if row["passed"] else "  MISS")
        print(f"   {row['name']}: {row['measured']} {row['unit']}{status}", flush=True)
    write_report(BENCH_DIR / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
