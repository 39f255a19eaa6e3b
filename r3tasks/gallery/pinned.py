"""One committed gallery version held in memory: its items, exact vectors and searches over them."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from r3tasks.errors import R3Error
from r3tasks.gallery.filters import RowFilter, evaluate, normalise_where, with_group
from r3tasks.gallery.matrix import SCORE_CHUNK_FLOATS as _SCORE_CHUNK_FLOATS
from r3tasks.gallery.matrix import ExactMatrix as _ExactMatrix
from r3tasks.gallery.matrix import load_exact as _load_exact
from r3tasks.gallery.matrix import read_vectors
from r3tasks.gallery.table import GalleryRef, GalleryStore, sql_string, stored_path
from r3tasks.query.topk import best_first
from r3tasks.settings.tree import GallerySettings


@dataclass(frozen=True)
class ItemRecord:
    id: str
    path: str | None  # as the OS gave it: `Path(path)` reopens the file, also for a non-UTF-8 name
    text: str | None
    group: str | None
    content_key: str
    video_id: str | None = None  # the video this moment is of (its own id for a whole clip)
    start_s: float | None = None
    end_s: float | None = None
    transcript: str | None = None
    screen_text: str | None = None

    @property
    def video(self) -> str:
        return self.video_id if self.video_id is not None else self.id


# What pinning reads besides vectors; a table version from before moments lacks the moment columns.
RECORD_COLUMNS = ["id", "path", "path_bytes", "text", "group", "content_key"]
MOMENT_RECORD_COLUMNS = ["video_id", "start_s", "end_s", "transcript", "screen_text"]


SearchRoute = Literal["memory", "flat", "ann"]

# Filters kept evaluated per pinned version: a service answering many different filters holds at most
# this many masks (one byte per row each).
MAX_FILTERS = 32


class PinnedGallery:
    """One table version, searched by a whole query batch so a refresh meanwhile changes nothing in it.

    Exact search runs in RAM: on the first search the version's vectors are read once into an
    L2-normalised float32 matrix (each group's rows contiguous), and a search is a matrix product
    plus a partial sort. LanceDB searches instead when that matrix would exceed
    `exact_search_max_bytes` (flat, exact), or for a top-k when the table has a cosine vector index,
    `use_ann_index` is on and it holds more than `ann_min_rows` rows: that search is approximate
    (ANN), it may miss some of the true top-k. A search of every row (limit <= 0) is always exact.
    As in LanceDB, a zero vector has no cosine: such rows are never returned and a zero query
    returns {}. A `where` filter (LanceDB's SQL syntax on the stored columns) applies before the top-k on
    every route, so a search returns `limit` rows whenever that many match.
    """

    def __init__(self, store: GalleryStore, table: Any, settings: GallerySettings | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else store.settings
        self._table = table
        self.ref = GalleryRef(uri=store.uri, table=store.name, version=int(table.version))
        # Only the metadata columns: the vectors are read once, on the first in-memory search.
        names = set(table.schema.names)
        columns = RECORD_COLUMNS + [c for c in MOMENT_RECORD_COLUMNS if c in names]
        meta = table.search().select(columns).limit(None).to_arrow().to_pylist()
        self.records: dict[str, ItemRecord] = {}
        for row in meta:
            row["path"] = stored_path(row["path"], row.pop("path_bytes"))
            self.records[row["id"]] = ItemRecord(**row)
        # Whether any row is a segment of a longer video (`query.unit` and source moments matter only then).
        self.segmented = any(record.id != record.video for record in self.records.values())
        self._group_sizes: dict[str | None, int] = {}
        for record in self.records.values():
            self._group_sizes[record.group] = self._group_sizes.get(record.group, 0) + 1
        self._exact: _ExactMatrix | None = None
        self._by_video: dict[str, list[ItemRecord]] | None = None
        self._ann: bool | None = None
        self._lock = threading.Lock()
        # Its own lock: evaluating a filter loads the matrix, which takes `_lock`.
        self._filters: OrderedDict[str, RowFilter] = OrderedDict()
        self._filter_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.records)

    def moments_of(self, video_id: str) -> list[ItemRecord]:
        """The rows of one video, in time order (a whole clip: its one row)."""
        if self._by_video is None:
            by_video: dict[str, list[ItemRecord]] = {}
            for record in self.records.values():
                by_video.setdefault(record.video, []).append(record)
            for rows in by_video.values():
                rows.sort(key=lambda r: (r.start_s or 0.0, r.id))
            self._by_video = by_video
        return self._by_video.get(video_id, [])

    @property
    def matrix_bytes(self) -> int:
        """Size of the in-memory vector matrix of this version."""
        return len(self.records) * self.store.dim * 4

    @property
    def lance_table(self) -> Any:
        """The LanceDB table checked out at this version (read only: a filter check runs on it)."""
        return self._table

    def row_filter(self, where: str) -> RowFilter:
        """What `where` keeps of this version: evaluated by LanceDB once per filter, then shared by every
        search and thread; its mask follows the in-memory matrix's rows. `FilterError` if it cannot run."""
        with self._filter_lock:  # one evaluation however many threads ask at once
            found = self._filters.get(where)
            if found is None:
                exact = self.exact_matrix()
                found = evaluate(self._table, where, exact.ids if exact is not None else None)
                self._filters[where] = found
                while len(self._filters) > MAX_FILTERS:
                    self._filters.popitem(last=False)
            else:
                self._filters.move_to_end(where)
            return found

    def route(self, limit: int = 0) -> SearchRoute:
        """Which search a call with this limit uses: `memory` (exact), `flat` (LanceDB, exact) or `ann`."""
        if limit > 0 and self._ann_usable():
            return "ann"
        return "memory" if self.matrix_bytes <= self.settings.exact_search_max_bytes else "flat"

    def search(
        self, vector: np.ndarray, limit: int = 0, group: str | None = None, where: str | None = None
    ) -> dict[str, float]:
        """Cosine similarity of the best `limit` items (all when <= 0), best first, optionally within one group
        and among the rows filter `where` keeps."""
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.store.dim,):
            raise R3Error(f"query vector for {self.store.name}: shape {query.shape}, expected ({self.store.dim},)")
        return self.search_many(query[None, :], limit, group, where)[0]

    def search_many(
        self, vectors: np.ndarray, limit: int = 0, group: str | None = None, where: str | None = None
    ) -> list[dict[str, float]]:
        """`search` for each row of a (queries, dim) array; in memory it is one matrix product for all."""
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.store.dim:
            raise R3Error(f"query vectors for {self.store.name}: shape {queries.shape}, expected (n, {self.store.dim})")
        if not np.all(np.isfinite(queries)):
            raise R3Error(f"query vectors for {self.store.name}: non-finite values")
        where = normalise_where(where)
        route = self.route(limit)
        if route != "memory":
            return [self._lance_search(q, limit, group, route == "ann", where) for q in queries]
        exact = self._matrix()
        span = (0, len(exact.ids)) if group is None else exact.spans.get(group)
        out: list[dict[str, float]] = [{} for _ in range(len(queries))]
        if span is None or span[0] == span[1] or len(queries) == 0:
            return out
        block, ids = exact.vectors[span[0] : span[1]], exact.ids[span[0] : span[1]]
        dropped = None
        if where is not None:
            keep = self.row_filter(where).mask[span[0] : span[1]]  # type: ignore[index]
            if not keep.any():
                return out
            dropped = np.flatnonzero(~keep)
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries))
        usable = np.flatnonzero(norms > 0)  # a zero query has no cosine (LanceDB returns nothing for it)
        if len(usable) == 0:
            return out
        unit = queries[usable] / norms[usable, None]
        if len(usable) == 1:  # a matrix-vector product (gemv) rather than a 1-row gemm
            scores = block @ unit[0]
            if dropped is not None:
                scores[dropped] = -np.inf  # before the top-k, so the rows kept fill all `limit` places
            out[usable[0]] = _best_scores(scores, ids, limit)
            return out
        # Queries in chunks, so the score matrix stays near 64 MiB however many there are.
        step = max(1, _SCORE_CHUNK_FLOATS // len(block))
        for start in range(0, len(usable), step):
            scores = unit[start : start + step] @ block.T
            if dropped is not None:
                scores[:, dropped] = -np.inf
            for row, position in zip(scores, usable[start : start + step]):
                out[position] = _best_scores(row, ids, limit)
        return out

    def exact_matrix(self) -> _ExactMatrix | None:
        """The in-memory matrix that scores every row of this version (loaded on first use), or None when
        the version is over `exact_search_max_bytes` and LanceDB searches it instead."""
        return self._matrix() if self.route(0) == "memory" else None

    # -- internals -----------------------------------------------------------------------------
    def _matrix(self) -> _ExactMatrix:
        if self._exact is None:
            with self._lock:  # threads of one batch load it once
                if self._exact is None:
                    self._exact = _load_exact(self._table, self.store.dim, len(self.records))
        return self._exact

    def _ann_usable(self) -> bool:
        s = self.settings
        if not s.use_ann_index or len(self.records) <= s.ann_min_rows:
            return False
        if self._ann is None:
            self._ann = _has_cosine_vector_index(self._table)
        return self._ann

    def _lance_search(
        self, query: np.ndarray, limit: int, group: str | None, approximate: bool, where: str | None
    ) -> dict[str, float]:
        size = self._group_sizes.get(group, 0) if group is not None else len(self.records)
        if size == 0:
            return {}
        limit = size if limit <= 0 else min(limit, size)
        search = self._table.search(query).distance_type("cosine").limit(limit)
        if not approximate:
            search = search.bypass_vector_index()
        else:
            tuning = self.settings
            if tuning.ann_nprobes is not None:
                search = search.nprobes(tuning.ann_nprobes)
            if where is not None:
                # A narrow filter leaves few rows in the probed partitions: probe on until `limit` are
                # found (with its default probes, an IVF search here returned 3 of 10 matching rows).
                search = search.maximum_nprobes(0)
            if tuning.ann_ef is not None:
                search = search.ef(tuning.ann_ef)
            if tuning.ann_refine_factor is not None:
                search = search.refine_factor(tuning.ann_refine_factor)
        clause = with_group(where, f"`group` = {sql_string(group)}" if group is not None else None)
        if clause is not None:
            search = search.where(clause, prefilter=True)
        hits = search.select(["id", "_distance"]).to_arrow()
        distances = hits.column("_distance").to_numpy(zero_copy_only=False)
        return {
            item_id: 1.0 - float(d) for item_id, d in zip(hits.column("id").to_pylist(), distances) if np.isfinite(d)
        }


def _has_cosine_vector_index(table: Any) -> bool:
    # LanceDB falls back to a flat search when the index was built for another distance.
    for index in table.list_indices():
        if "vector" in index.columns:
            metric = str((getattr(index, "index_details", None) or {}).get("metric_type", "cosine"))
            if metric.lower() == "cosine":
                return True
    return False


@dataclass(frozen=True)
class GallerySnapshot:
    """The gallery as one query batch sees it: one table version, held in memory."""

    ref: GalleryRef
    ids: list[str]
    paths: list[str | None]
    texts: list[str | None]
    groups: list[str | None]
    vectors: np.ndarray

    def index_of(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.ids)}

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.ref.uri}|{self.ref.table}|{self.ref.version}".encode()).hexdigest()[:16]


def pin(
    store: GalleryStore, version: int | str | None = None, settings: GallerySettings | None = None
) -> PinnedGallery:
    """A read-only view of one table version (the latest when None); later writes do not change it.

    `version` is a version number or a tag name (each refresh tags its version). `settings`
    overrides the store's search settings for this view.
    """
    return PinnedGallery(store, store.open_version(version), settings)


def snapshot(store: GalleryStore, version: int | str | None = None) -> GallerySnapshot:
    """All rows at one table version (the latest when None), for a query batch to pin."""
    table = store.open_version(version)
    data = table.to_arrow()
    vectors = read_vectors(data.column("vector"), store.dim)
    return GallerySnapshot(
        ref=GalleryRef(uri=store.uri, table=store.name, version=int(table.version)),
        ids=data.column("id").to_pylist(),
        paths=[
            stored_path(t, b) for t, b in zip(data.column("path").to_pylist(), data.column("path_bytes").to_pylist())
        ],
        texts=data.column("text").to_pylist(),
        groups=data.column("group").to_pylist(),
        vectors=vectors,
    )


def _best_scores(scores: np.ndarray, ids: np.ndarray, limit: int) -> dict[str, float]:
    """{id: score} of the `limit` best scores (all when <= 0), best first, ties by position; -inf (a row a
    filter dropped) is never returned."""
    k = len(scores) if limit <= 0 else min(limit, len(scores))
    order = best_first(scores, k)[:k]
    order = order[scores[order] > -np.inf]
    return dict(zip(ids[order].tolist(), scores[order].tolist()))
