"""The gallery in LanceDB: one table per embedding-model fingerprint, upserts by item id.

A model change never mixes vectors because the table name carries the model
fingerprint. Every write is one LanceDB commit (a new table version), so a
process killed between writes leaves the table at the last whole version; a
rerun of the index computes its plan from what is stored and converges.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from r3tasks.errors import R3Error

# Columns besides the vector; the vector column is a fixed-size list of float32.
METADATA_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string()),
    pa.field("text", pa.string()),
    pa.field("group", pa.string()),
    pa.field("content_key", pa.string(), nullable=False),
    pa.field("num_frames", pa.int32()),
    pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
]


def table_name(prefix: str, embedder_fingerprint: str) -> str:
    return f"{prefix}_{embedder_fingerprint[:16]}"


def gallery_schema(dim: int, embedder_fingerprint: str) -> pa.Schema:
    fields = [*METADATA_FIELDS, pa.field("vector", pa.list_(pa.float32(), dim))]
    return pa.schema(fields, metadata={b"r3.embedder": embedder_fingerprint.encode()})


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
    ) -> None:
        import lancedb  # heavy import kept out of module import

        self.uri = uri
        self.dim = dim
        self.embedder_fingerprint = embedder_fingerprint
        self.name = table_name(prefix, embedder_fingerprint)
        self._db = lancedb.connect(uri, storage_options=storage_options or None)
        self._table: Any = None

    # -- opening -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.name in self._db.list_tables().tables

    def table(self) -> Any:
        if self._table is None:
            if self.exists():
                self._table = self._db.open_table(self.name)
                self._check_dim()
            else:
                self._table = self._db.create_table(
                    self.name, schema=gallery_schema(self.dim, self.embedder_fingerprint), exist_ok=True
                )
        return self._table

    def _check_dim(self) -> None:
        stored = self._table.schema.field("vector").type.list_size
        if stored != self.dim:
            raise R3Error(
                f"table {self.name} in {self.uri} stores {stored}-d vectors but the embedder gives {self.dim}-d"
            )

    def ref(self) -> GalleryRef:
        return GalleryRef(uri=self.uri, table=self.name, version=self.version())

    def version(self) -> int:
        return int(self.table().version)

    def count(self) -> int:
        return int(self.table().count_rows())

    # -- reading -----------------------------------------------------------------------------
    def content_keys(self) -> dict[str, str]:
        """id -> content_key of every stored row (what the indexing plan diffs against)."""
        table = self.table().to_arrow().select(["id", "content_key"])
        return dict(zip(table.column("id").to_pylist(), table.column("content_key").to_pylist()))

    def pin(self, version: int | None = None) -> "PinnedGallery":
        """A read-only view of one table version (the latest when None); later writes do not change it."""
        table = self._db.open_table(self.name) if self.exists() else self.table()
        if version is not None:
            table.checkout(version)
        else:
            table.checkout(int(table.version))
        return PinnedGallery(self, table)

    def snapshot(self, version: int | None = None) -> "GallerySnapshot":
        """All rows at one table version (the latest when None), for a query batch to pin."""
        table = self._db.open_table(self.name) if self.exists() else self.table()
        if version is not None:
            table.checkout(version)
        data = table.to_arrow()
        read_version = int(table.version)
        vectors = np.asarray(
            data.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32
        ).reshape(len(data), self.dim)
        return GallerySnapshot(
            ref=GalleryRef(uri=self.uri, table=self.name, version=read_version),
            ids=data.column("id").to_pylist(),
            paths=data.column("path").to_pylist(),
            texts=data.column("text").to_pylist(),
            groups=data.column("group").to_pylist(),
            vectors=vectors,
        )

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
        (
            self.table()
            .merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(batch)
        )
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
        now = dt.datetime.now(dt.timezone.utc)
        vectors = np.stack([row.vector.astype(np.float32) for row in rows])
        columns = {
            "id": pa.array([r.id for r in rows], pa.string()),
            "path": pa.array([_utf8(r.path) for r in rows], pa.string()),
            "text": pa.array([_utf8(r.text) for r in rows], pa.string()),
            "group": pa.array([_utf8(r.group) for r in rows], pa.string()),
            "content_key": pa.array([r.content_key for r in rows], pa.string()),
            "num_frames": pa.array([r.num_frames for r in rows], pa.int32()),
            "indexed_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dim),
        }
        return pa.table(columns, schema=gallery_schema(self.dim, self.embedder_fingerprint))


@dataclass(frozen=True)
class ItemRecord:
    id: str
    path: str | None
    text: str | None
    group: str | None
    content_key: str


class PinnedGallery:
    """One table version, searched by a whole query batch so a refresh meanwhile changes nothing in it."""

    def __init__(self, store: GalleryStore, table: Any) -> None:
        self.store = store
        self._table = table
        self.ref = GalleryRef(uri=store.uri, table=store.name, version=int(table.version))
        meta = table.to_arrow().select(["id", "path", "text", "group", "content_key"]).to_pylist()
        self.records: dict[str, ItemRecord] = {row["id"]: ItemRecord(**row) for row in meta}
        self._group_sizes: dict[str | None, int] = {}
        for record in self.records.values():
            self._group_sizes[record.group] = self._group_sizes.get(record.group, 0) + 1

    def __len__(self) -> int:
        return len(self.records)

    def search(self, vector: np.ndarray, limit: int = 0, group: str | None = None) -> dict[str, float]:
        """Cosine similarity of the best `limit` items (all when 0), optionally within one group."""
        size = self._group_sizes.get(group, 0) if group is not None else len(self.records)
        if size == 0:
            return {}
        limit = size if limit <= 0 else min(limit, size)
        query = self._table.search(np.asarray(vector, dtype=np.float32)).distance_type("cosine").limit(limit)
        if group is not None:
            query = query.where(f"`group` = {_sql_string(group)}", prefilter=True)
        hits = query.select(["id", "_distance"]).to_arrow()
        distances = hits.column("_distance").to_numpy(zero_copy_only=False)
        return {item_id: 1.0 - float(d) for item_id, d in zip(hits.column("id").to_pylist(), distances)}


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


def _utf8(value: str | None) -> str | None:
    """Text Arrow can store: a non-UTF-8 file name (surrogate escapes) gets backslash escapes, as its id does."""
    if value is None:
        return None
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
