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
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from r3tasks.errors import R3Error
from r3tasks.settings.tree import DEFAULT_GALLERY, GallerySettings, check_gallery_name

logger = logging.getLogger(__name__)

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
    # Moments: a row is one stretch of one video (a whole clip keeps `id == video_id`); times are seconds.
    pa.field("video_id", pa.string()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("transcript", pa.string()),
    pa.field("screen_text", pa.string()),
]

# Columns added after tables were first written, with what an older row holds: it is a whole clip.
MOMENT_COLUMNS = {
    "video_id": "id",
    "start_s": "CAST(NULL AS DOUBLE)",
    "end_s": "CAST(NULL AS DOUBLE)",
    "transcript": "CAST(NULL AS STRING)",
    "screen_text": "CAST(NULL AS STRING)",
}


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
    video_id: str | None = None  # None: the row is the whole item (`id`)
    start_s: float | None = None
    end_s: float | None = None
    transcript: str | None = None
    screen_text: str | None = None


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
                self._add_moment_columns()
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

    def _add_moment_columns(self) -> None:
        """Bring a table written before moments up to the current schema, in place: its rows are whole clips,
        their vectors stay (nothing is re-embedded). Only the writer's path (`table()`) does this."""
        missing = {name: sql for name, sql in MOMENT_COLUMNS.items() if name not in self._table.schema.names}
        if missing:
            logger.warning(
                "gallery %r: table %s predates moments; adding columns %s (its rows stay, as whole clips)",
                self.gallery,
                self.name,
                ", ".join(missing),
            )
            self._table.add_columns(missing)

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

    def video_keys(self) -> dict[str, str]:
        """video id -> content key of every stored video (what the indexing plan diffs against).

        A video whose rows disagree (a run killed between its segments' commit and the old ones' removal)
        maps to "" so the next run redoes it."""
        table = self.table().search().select(["id", "video_id", "content_key"]).limit(None).to_arrow()
        keys: dict[str, str] = {}
        for row_id, video_id, key in zip(
            table.column("id").to_pylist(),
            table.column("video_id").to_pylist(),
            table.column("content_key").to_pylist(),
        ):
            video = video_id if video_id is not None else row_id
            keys[video] = key if keys.get(video, key) == key else ""
        return keys

    def open_version(self, version: int | str | None = None) -> Any:
        """The LanceDB table checked out at one version or tag (the latest when None); later writes do not
        change what it reads."""
        table = self._open_existing()
        if version is not None:
            _checkout(table, version, self)
        else:
            table.checkout(int(table.version))
        return table

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
        merge = self.table().merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        # A video's rows come whole in one call: its old moments not among them go in the same commit, so a
        # re-cut video never keeps stale segments and a crash leaves either the old set or the new one.
        videos = sorted({row.video_id if row.video_id is not None else row.id for row in rows})
        merge = merge.when_not_matched_by_source_delete(_in_list("video_id", videos))
        merge.execute(batch)
        return self.version()

    def delete_videos(self, video_ids: Iterable[str]) -> int:
        """Remove every row (moment) of these videos; returns the new table version."""
        video_ids = list(video_ids)
        for start in range(0, len(video_ids), 500):
            self.table().delete(_in_list("video_id", video_ids[start : start + 500]))
        return self.version()

    def delete_ids(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if ids:
            # Chunks keep the SQL predicate a reasonable size for big removals.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                self.table().delete(_in_list("id", chunk))
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
            "video_id": pa.array([r.video_id if r.video_id is not None else r.id for r in rows], pa.string()),
            "start_s": pa.array([r.start_s for r in rows], pa.float64()),
            "end_s": pa.array([r.end_s for r in rows], pa.float64()),
            "transcript": pa.array([_utf8(r.transcript) for r in rows], pa.string()),
            "screen_text": pa.array([_utf8(r.screen_text) for r in rows], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dim),
        }
        return pa.table(columns, schema=gallery_schema(self.dim, self.embedder_fingerprint, self.gallery))


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


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN (" + ", ".join(sql_string(v) for v in values) + ")"
