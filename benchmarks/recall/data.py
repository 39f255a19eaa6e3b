"""Recall benchmark: constants, the vectors it writes and their tables, and the numpy floor."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks.common import Context

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

    from r3tasks.gallery.table import GalleryStore, gallery_schema
    from r3tasks.settings.tree import DEFAULT_GALLERY

    uri = ctx.work / "recall" / f"n{n}-d{d}-{data}"
    marker = uri / "r3-bench.json"
    expected = {"n": n, "d": d, "data": data, "seed": SEED, "version": TABLE_VERSION}
    fingerprint = f"recall-{n}-{d}"
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        store = GalleryStore(str(uri), "bench", fingerprint, d, gallery=DEFAULT_GALLERY)
        if store.exists() and store.count() == n:
            table = store.table()
            for index in table.list_indices():
                table.drop_index(index.name)
            return store, table, None
    shutil.rmtree(uri, ignore_errors=True)
    store = GalleryStore(str(uri), "bench", fingerprint, d, gallery=DEFAULT_GALLERY)
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
