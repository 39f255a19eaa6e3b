"""A pinned gallery version's vectors in RAM, and the column reader that fills them.

Rows are unit vectors, each group's rows contiguous and, within a group, in id order: a batch's score
row for a group is then already in the order the per-query dict path used (ids sorted), so ties rank
the same whichever path scored them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

# Floats of one query-block x gallery score matrix (64 MiB): bounds the memory of a search however large the
# batch, while each product stays large enough to run at the machine's matrix speed.
SCORE_CHUNK_FLOATS = 2**24


@dataclass(frozen=True)
class ExactMatrix:
    """A pinned version's usable vectors in RAM: unit rows, each group's rows contiguous."""

    ids: np.ndarray  # object array of item ids, in the row order of `vectors`
    vectors: np.ndarray  # (rows, dim) float32
    spans: dict[str | None, tuple[int, int]]  # group -> [start, stop) rows
    # Rows of the whole matrix in id order, when that is not the row order (several groups); else None.
    id_order: np.ndarray | None = None

    def block(self, group: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(unit rows, ids, column order) of one group (every row when None): a product with the rows,
        taken in `column order` when it is not None, gives scores in id order, as `ids` lists them."""
        if group is None:
            ids = self.ids if self.id_order is None else self.ids[self.id_order]
            return self.vectors, ids, self.id_order
        start, stop = self.spans.get(group, (0, 0))
        return self.vectors[start:stop], self.ids[start:stop], None


def load_exact(table: Any, dim: int, rows: int) -> ExactMatrix:
    """Stream the version's vectors into one matrix (no whole Arrow copy beside it), then normalise and group."""
    vectors = np.empty((rows, dim), dtype=np.float32)
    ids: list[str] = []
    names: list[str | None] = []
    at = 0
    for batch in table.search().select(["id", "group", "vector"]).limit(None).to_batches():
        if at + batch.num_rows > len(vectors):  # more rows than the pin counted; cannot happen for one version
            vectors = np.concatenate([vectors[:at], np.empty((batch.num_rows, dim), np.float32)])
        read_vectors(batch.column("vector"), dim, out=vectors[at : at + batch.num_rows])
        ids += batch.column("id").to_pylist()
        names += batch.column("group").to_pylist()
        at += batch.num_rows
    vectors = vectors[:at]
    code_of: dict[str | None, int] = {}
    codes = np.fromiter((code_of.setdefault(g, len(code_of)) for g in names), dtype=np.int64, count=len(names))
    id_array = np.array(ids, dtype=object)
    # By group, then id: a group's search is a slice, and its scores come out in id order.
    by_id = np.argsort(np.array(ids, dtype=str), kind="stable") if ids else np.zeros(0, np.int64)
    order = by_id[np.argsort(codes[by_id], kind="stable")]
    if np.any(order != np.arange(len(order))):
        vectors, id_array, codes = vectors[order], id_array[order], codes[order]  # one reordering copy
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))  # no (rows, dim) temporary
    usable = np.isfinite(norms) & (norms > 0)
    np.divide(vectors, norms[:, None], out=vectors, where=usable[:, None])
    if not usable.all():
        vectors, id_array, codes = vectors[usable], id_array[usable], codes[usable]
    spans: dict[str | None, tuple[int, int]] = {}
    for name, code in code_of.items():
        first, stop = int(np.searchsorted(codes, code, "left")), int(np.searchsorted(codes, code, "right"))
        if stop > first:
            spans[name] = (first, stop)
    id_order = None
    if len(spans) > 1:
        id_order = np.argsort(np.array(id_array.tolist(), dtype=str), kind="stable")
    return ExactMatrix(ids=id_array, vectors=vectors, spans=spans, id_order=id_order)


def read_vectors(column: pa.ChunkedArray | pa.Array, dim: int, out: np.ndarray | None = None) -> np.ndarray:
    """A fixed-size-list vector column as an (n, dim) float32 array (written into `out` when given).

    A null vector reads as zeros. Filled chunk by chunk, so the result is the only whole copy.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if out is None:
        out = np.empty((sum(len(c) for c in chunks), dim), dtype=np.float32)
    at = 0
    for chunk in chunks:
        m = len(chunk)
        if m == 0:
            continue
        # `.values` ignores the chunk's slice offset; null lists still own `dim` child slots.
        values = chunk.values.slice(chunk.offset * dim, m * dim)
        if values.null_count:
            import pyarrow.compute as pc  # only for this rare case

            values = pc.fill_null(values, 0.0)
        out[at : at + m] = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(m, dim)
        if chunk.null_count:
            out[at : at + m][chunk.is_null().to_numpy(zero_copy_only=False)] = 0.0
        at += m
    return out
