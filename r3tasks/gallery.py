"""The gallery in LanceDB: one table per gallery name and embedding-model fingerprint, upserts by item id.

A model change never mixes vectors because the table name carries the model
fingerprint; galleries in one data home never touch each other's rows because it
carries the gallery name too (`<prefix>_<gallery>_<fingerprint>`). A path is stored
twice: as text for people (`path`) and as its file-system bytes (`path_bytes`), so a
non-UTF-8 file name reopens byte for byte. Every write is one LanceDB commit (a new table version), so a
process killed between writes leaves the table at the last whole version; a
rerun of the index computes its plan from what is stored and converges.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from r3tasks.errors import R3Error
from r3tasks.exact_matrix import ExactMatrix as _ExactMatrix
from r3tasks.exact_matrix import best as _best
from r3tasks.exact_matrix import load_exact as _load_exact
from r3tasks.exact_matrix import read_vectors
from r3tasks.settings import DEFAULT_GALLERY, GallerySettings, check_gallery_name

# Columns besides the vector; the vector column is a fixed-size list of float32.
METADATA_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string()),
    pa.field("path_bytes", pa.binary()),
    pa.field("text", pa.string()),
    pa.field("group", pa.string()),
    pa.field("content_key", pa.string(), nullable=False),
    pa.field("num_frames", pa.int32()),
    pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
]


def table_name(prefix: str, embedder_fingerprint: str, gallery: str = DEFAULT_GALLERY) -> str:
    return f"{prefix}_{gallery}_{embedder_fingerprint[:16]}"


def legacy_table_name(prefix: str, embedder_fingerprint: str) -> str:
    """The one table per fingerprint of releases before named galleries (no `path_bytes`, not reused)."""
    return f"{prefix}_{embedder_fingerprint[:16]}"


def gallery_schema(dim: int, embedder_fingerprint: str, gallery: str = DEFAULT_GALLERY) -> pa.Schema:
    fields = [*METADATA_FIELDS, pa.field("vector", pa.list_(pa.float32(), dim))]
    return pa.schema(fields, metadata={b"r3.embedder": embedder_fingerprint.encode(), b"r3.gallery": gallery.encode()})


def stored_path(text: str | None, raw: bytes | None) -> str | None:
    """The path as the OS gave it (surrogate escapes for non-UTF-8 bytes), so `Path()` of it reopens the file."""
    if raw is not None:
        return os.fsdecode(raw)
    return text


def open_committed(db: Any, name: str) -> Any | None:
    """The table `name`, or None while it has no committed version.

    LanceDB lists a table as soon as its folder exists, before the first manifest is
    written; a writer killed in that window (or a reader looking in it) must see "not
    created yet", not a table that cannot be opened.
    """
    if name not in db.list_tables().tables:
        return None
    try:
        return db.open_table(name)
    except ValueError as error:
        if "was not found" in str(error):
            return None
        raise


@dataclass(frozen=True)
class GalleryRow:
    id: str
    path: str | None
    text: str | None
    group: str | None
    content_key: str
    num_frames: int | None
    vector: np.ndarray


@dataclass(frozen=True)
class GalleryRef:
    """Where a gallery lives, for summaries and lineage."""

    uri: str
    table: str
    version: int


class GalleryStore:
    """A LanceDB table of item vectors for one embedder."""

    def __init__(
        self,
        uri: str,
        prefix: str,
        embedder_fingerprint: str,
        dim: int,
        storage_options: dict[str, str] | None = None,
        settings: GallerySettings | None = None,
        gallery: str = DEFAULT_GALLERY,
    ) -> None:
        import lancedb  # heavy import kept out of module import

        self.uri = uri
        self.gallery = check_gallery_name(gallery)
        self.dim = dim
        # How pinned views search (memory budget, ANN); None takes the defaults.
        self.settings = settings if settings is not None else GallerySettings()
        self.embedder_fingerprint = embedder_fingerprint
        self.name = table_name(prefix, embedder_fingerprint, self.gallery)
        self.legacy_name = legacy_table_name(prefix, embedder_fingerprint)
        self._db = lancedb.connect(uri, storage_options=storage_options or None)
        self._table: Any = None

    # -- opening -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return open_committed(self._db, self.name) is not None

    def table(self) -> Any:
        if self._table is None:
            committed = open_committed(self._db, self.name)
            if committed is not None:
                self._table = committed
                self._check_dim()
            else:
                self._table = self._db.create_table(
                    self.name, schema=gallery_schema(self.dim, self.embedder_fingerprint, self.gallery), exist_ok=True
                )
        return self._table

    def _check_dim(self) -> None:
        stored = self._table.schema.field("vector").type.list_size
        if stored != self.dim:
            raise R3Error(
                f"table {self.name} in {self.uri} stores {stored}-d vectors but the embedder gives {self.dim}-d"
            )

    @property
    def db(self) -> Any:
        """The LanceDB connection (upkeep lists and drops the tables of retired embedders through it)."""
        return self._db

    def ref(self) -> GalleryRef:
        return GalleryRef(uri=self.uri, table=self.name, version=self.version())

    def version(self) -> int:
        return int(self.table().version)

    def count(self) -> int:
        return int(self.table().count_rows())

    # -- reading -----------------------------------------------------------------------------
    def content_keys(self) -> dict[str, str]:
        """id -> content_key of every stored row (what the indexing plan diffs against)."""
        # Two columns only: a refresh should not read every stored vector to find what changed.
        table = self.table().search().select(["id", "content_key"]).limit(None).to_arrow()
        return dict(zip(table.column("id").to_pylist(), table.column("content_key").to_pylist()))

    def pin(self, version: int | str | None = None, settings: GallerySettings | None = None) -> PinnedGallery:
        """A read-only view of one table version (the latest when None); later writes do not change it.

        `version` is a version number or a tag name (each refresh tags its version). `settings`
        overrides the store's search settings for this view.
        """
        table = self._open_existing()
        if version is not None:
            _checkout(table, version, self)
        else:
            table.checkout(int(table.version))
        return PinnedGallery(self, table, settings)

    def snapshot(self, version: int | str | None = None) -> GallerySnapshot:
        """All rows at one table version (the latest when None), for a query batch to pin."""
        table = self._open_existing()
        if version is not None:
            _checkout(table, version, self)
        data = table.to_arrow()
        read_version = int(table.version)
        vectors = read_vectors(data.column("vector"), self.dim)
        return GallerySnapshot(
            ref=GalleryRef(uri=self.uri, table=self.name, version=read_version),
            ids=data.column("id").to_pylist(),
            paths=[
                stored_path(t, b)
                for t, b in zip(data.column("path").to_pylist(), data.column("path_bytes").to_pylist())
            ],
            texts=data.column("text").to_pylist(),
            groups=data.column("group").to_pylist(),
            vectors=vectors,
        )

    def _open_existing(self) -> Any:
        # Reading a gallery that was never indexed is the user's mistake; creating an empty table would hide it.
        table = open_committed(self._db, self.name)
        if table is None:
            hint = (
                (
                    f" (table {self.legacy_name} is from before named galleries: rebuild it with "
                    f"`r3 index SOURCE --gallery {self.gallery}`)"
                )
                if self.legacy_name in self._db.list_tables().tables
                else ""
            )
            raise R3Error(
                f"gallery {self.gallery!r} has not been indexed in {self.uri} with this embedder "
                f"(no table {self.name}): run `r3 index` on its source with `--gallery {self.gallery}` first{hint}"
            )
        return table

    # -- writing -----------------------------------------------------------------------------
    def upsert(self, rows: Sequence[GalleryRow]) -> int:
        """Insert or replace rows by id in one commit; returns the new table version."""
        if not rows:
            return self.version()
        for row in rows:
            if row.vector.shape != (self.dim,):
                raise R3Error(f"item {row.id}: vector has shape {row.vector.shape}, expected ({self.dim},)")
            if not np.all(np.isfinite(row.vector)):
                raise R3Error(f"item {row.id}: vector has non-finite values")
        batch = self._to_arrow(rows)
        (self.table().merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(batch))
        return self.version()

    def delete_ids(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if ids:
            # Chunks keep the SQL predicate a reasonable size for big removals.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                self.table().delete("id IN (" + ", ".join(_sql_string(i) for i in chunk) + ")")
        return self.version()

    def _to_arrow(self, rows: Sequence[GalleryRow]) -> pa.Table:
        now = dt.datetime.now(dt.UTC)
        vectors = np.stack([row.vector.astype(np.float32) for row in rows])
        columns = {
            "id": pa.array([r.id for r in rows], pa.string()),
            "path": pa.array([_utf8(r.path) for r in rows], pa.string()),
            "path_bytes": pa.array([os.fsencode(r.path) if r.path is not None else None for r in rows], pa.binary()),
            "text": pa.array([_utf8(r.text) for r in rows], pa.string()),
            "group": pa.array([_utf8(r.group) for r in rows], pa.string()),
            "content_key": pa.array([r.content_key for r in rows], pa.string()),
            "num_frames": pa.array([r.num_frames for r in rows], pa.int32()),
            "indexed_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dim),
        }
        return pa.table(columns, schema=gallery_schema(self.dim, self.embedder_fingerprint, self.gallery))


@dataclass(frozen=True)
class ItemRecord:
    id: str
    path: str | None  # as the OS gave it: `Path(path)` reopens the file, also for a non-UTF-8 name
    text: str | None
    group: str | None
    content_key: str


SearchRoute = Literal["memory", "flat", "ann"]
_SCORE_CHUNK_FLOATS = 2**24


class PinnedGallery:
    """One table version, searched by a whole query batch so a refresh meanwhile changes nothing in it.

    Exact search runs in RAM: on the first search the version's vectors are read once into an
    L2-normalised float32 matrix (each group's rows contiguous), and a search is a matrix product
    plus a partial sort. LanceDB searches instead when that matrix would exceed
    `exact_search_max_bytes` (flat, exact), or for a top-k when the table has a cosine vector index,
    `use_ann_index` is on and it holds more than `ann_min_rows` rows: that search is approximate
    (ANN), it may miss some of the true top-k. A search of every row (limit <= 0) is always exact.
    As in LanceDB, a zero vector has no cosine: such rows are never returned and a zero query
    returns {}.
    """

    def __init__(self, store: GalleryStore, table: Any, settings: GallerySettings | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else store.settings
        self._table = table
        self.ref = GalleryRef(uri=store.uri, table=store.name, version=int(table.version))
        # Only the metadata columns: the vectors are read once, on the first in-memory search.
        meta = (
            table.search()
            .select(["id", "path", "path_bytes", "text", "group", "content_key"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        self.records: dict[str, ItemRecord] = {}
        for row in meta:
            row["path"] = stored_path(row["path"], row.pop("path_bytes"))
            self.records[row["id"]] = ItemRecord(**row)
        self._group_sizes: dict[str | None, int] = {}
        for record in self.records.values():
            self._group_sizes[record.group] = self._group_sizes.get(record.group, 0) + 1
        self._exact: _ExactMatrix | None = None
        self._ann: bool | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def matrix_bytes(self) -> int:
        """Size of the in-memory vector matrix of this version."""
        return len(self.records) * self.store.dim * 4

    def route(self, limit: int = 0) -> SearchRoute:
        """Which search a call with this limit uses: `memory` (exact), `flat` (LanceDB, exact) or `ann`."""
        if limit > 0 and self._ann_usable():
            return "ann"
        return "memory" if self.matrix_bytes <= self.settings.exact_search_max_bytes else "flat"

    def search(self, vector: np.ndarray, limit: int = 0, group: str | None = None) -> dict[str, float]:
        """Cosine similarity of the best `limit` items (all when <= 0), best first, optionally within one group."""
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.store.dim,):
            raise R3Error(f"query vector for {self.store.name}: shape {query.shape}, expected ({self.store.dim},)")
        return self.search_many(query[None, :], limit, group)[0]

    def search_many(self, vectors: np.ndarray, limit: int = 0, group: str | None = None) -> list[dict[str, float]]:
        """`search` for each row of a (queries, dim) array; in memory it is one matrix product for all."""
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.store.dim:
            raise R3Error(f"query vectors for {self.store.name}: shape {queries.shape}, expected (n, {self.store.dim})")
        if not np.all(np.isfinite(queries)):
            raise R3Error(f"query vectors for {self.store.name}: non-finite values")
        route = self.route(limit)
        if route != "memory":
            return [self._lance_search(q, limit, group, approximate=route == "ann") for q in queries]
        exact = self._matrix()
        span = (0, len(exact.ids)) if group is None else exact.spans.get(group)
        out: list[dict[str, float]] = [{} for _ in range(len(queries))]
        if span is None or span[0] == span[1] or len(queries) == 0:
            return out
        block, ids = exact.vectors[span[0] : span[1]], exact.ids[span[0] : span[1]]
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries))
        usable = np.flatnonzero(norms > 0)  # a zero query has no cosine (LanceDB returns nothing for it)
        if len(usable) == 0:
            return out
        unit = queries[usable] / norms[usable, None]
        if len(usable) == 1:  # a matrix-vector product (gemv) rather than a 1-row gemm
            out[usable[0]] = _best(block @ unit[0], ids, limit)
            return out
        # Queries in chunks, so the score matrix stays near 64 MiB however many there are.
        step = max(1, _SCORE_CHUNK_FLOATS // len(block))
        for start in range(0, len(usable), step):
            scores = unit[start : start + step] @ block.T
            for row, position in zip(scores, usable[start : start + step]):
                out[position] = _best(row, ids, limit)
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

    def _lance_search(self, query: np.ndarray, limit: int, group: str | None, approximate: bool) -> dict[str, float]:
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
            if tuning.ann_ef is not None:
                search = search.ef(tuning.ann_ef)
            if tuning.ann_refine_factor is not None:
                search = search.refine_factor(tuning.ann_refine_factor)
        if group is not None:
            search = search.where(f"`group` = {_sql_string(group)}", prefilter=True)
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


def _checkout(table: Any, version: int | str, store: GalleryStore) -> None:
    try:
        table.checkout(version)
    except (ValueError, RuntimeError, OSError) as error:
        kind = "tag" if isinstance(version, str) else "version"
        raise R3Error(f"gallery table {store.name} at {store.uri} has no {kind} {version!r} ({error})") from None


def _utf8(value: str | None) -> str | None:
    """Text Arrow can store: a non-UTF-8 file name (surrogate escapes) gets backslash escapes, as its id does.

    For display only; `path_bytes` keeps the exact name."""
    if value is None:
        return None
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
