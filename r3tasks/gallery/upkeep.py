"""Gallery upkeep: refresh tags, compaction with version retention, the `id` index, retired tables.

A refresh is a few LanceDB commits, each a new table version and at least one new fragment; left
alone, a gallery refreshed every hour grows thousands of versions and fragments and every open
reads more manifests. The upkeep after a refresh keeps that bounded while tagged versions (the
ones a batch may pin by name) survive.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from r3tasks.errors import R3Error
from r3tasks.gallery.table import GalleryStore
from r3tasks.settings.operations import UpkeepSettings

REFRESH_TAG_PREFIX = "refresh-"
PRUNE_MARGINS = [dt.timedelta(milliseconds=ms) for ms in (20, 200, 2000, 20000)]
NEVER = dt.timedelta(days=36500)  # optimize() without a cutoff prunes at 7 days, and fails on an older tag


@dataclass(frozen=True)
class TableHealth:
    """What an open of the table has to read: versions kept and data fragments of the latest version."""

    version: int
    versions: int
    fragments: int
    small_fragments: int
    rows: int
    tags: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpkeepReport:
    before: TableHealth
    after: TableHealth
    tag: str | None
    deleted_tags: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "tag": self.tag,
            "deleted_tags": self.deleted_tags,
        }


def health(store: GalleryStore) -> TableHealth:
    table = store.table()
    stats = table.stats()
    fragments = stats["fragment_stats"]
    return TableHealth(
        version=int(table.version),
        versions=len(table.list_versions()),
        fragments=int(fragments["num_fragments"]),
        small_fragments=int(fragments["num_small_fragments"]),
        rows=int(stats["num_rows"]),
        tags=tags_of(store),
    )


def tags_of(store: GalleryStore) -> dict[str, int]:
    """tag -> version of the gallery table."""
    return {name: int(tag["version"]) for name, tag in store.table().tags.list().items()}


def refresh_tag(version: int) -> str:
    return f"{REFRESH_TAG_PREFIX}{version}"


def tag_version(store: GalleryStore, tag: str, version: int) -> None:
    """Point `tag` at `version` (moved if it exists)."""
    tags = store.table().tags
    if tag in tags.list():
        tags.update(tag, version)
    else:
        tags.create(tag, version)


def resolve_version(store: GalleryStore, ref: int | str | None) -> int | str | None:
    """A batch's `gallery_version` as the store takes it: a number (also "12" from a form or a trigger), a tag, None."""
    if ref is None or isinstance(ref, int):
        return ref
    text = str(ref).strip()
    if not text or text.lower() in {"latest", "none"}:
        return None
    if text.isdigit():
        return int(text)
    if text not in tags_of(store):
        raise R3Error(
            f"gallery table {store.name} at {store.uri} has no tag {text!r} (tags: "
            f"{', '.join(sorted(tags_of(store))) or 'none'})"
        )
    return text


def ensure_id_index(store: GalleryStore) -> bool:
    """A BTREE index on `id`, created once; returns True when it was created now."""
    from lancedb.index import BTree

    table = store.table()
    if any(list(index.columns) == ["id"] for index in table.list_indices()):
        return False
    if table.count_rows() == 0:
        return False  # nothing to index yet; the next refresh builds it
    table.create_index("id", config=BTree())
    return True


def prune_refresh_tags(store: GalleryStore, keep: int) -> list[str]:
    """Delete all but the newest `keep` refresh tags; other tags are the user's and stay."""
    refresh = sorted(
        ((v, name) for name, v in tags_of(store).items() if name.startswith(REFRESH_TAG_PREFIX)), reverse=True
    )
    doomed = [name for _, name in refresh[keep:]]
    tags = store.table().tags
    for name in doomed:
        tags.delete(name)
    return doomed


def _prune_cutoff(store: GalleryStore, keep_versions: int, margin: dt.timedelta) -> dt.timedelta | None:
    """`cleanup_older_than` keeping the newest `keep_versions` versions and every tagged one.

    LanceDB prunes by age and refuses outright when a tagged version is older than the cutoff, so the
    cutoff stops at the oldest tagged version too.
    """
    table = store.table()
    versions = sorted(table.list_versions(), key=lambda v: v["version"])
    if len(versions) <= keep_versions:
        return None
    keep_from = versions[-keep_versions]
    tagged = set(tags_of(store).values())
    for version in versions:
        if version["version"] in tagged and version["version"] < keep_from["version"]:
            keep_from = version
            break
    stamp: dt.datetime = keep_from["timestamp"]
    now = dt.datetime.now(stamp.tzinfo)  # LanceDB reports naive local times
    # LanceDB measures the age from its own clock, read a moment later: the margin keeps the boundary version
    # (and whatever was committed within the margin before it).
    return now - stamp + margin if keep_from != versions[0] else None


def _prune(store: GalleryStore, keep_versions: int) -> None:
    """Prune with nothing left to compact; a margin too small for LanceDB's later clock is widened and retried."""
    for margin in PRUNE_MARGINS:
        cutoff = _prune_cutoff(store, keep_versions, margin)
        if cutoff is None:
            return
        try:
            store.table().optimize(cleanup_older_than=cutoff)
            return
        except RuntimeError as error:
            if "tagged version" not in str(error):
                raise
    # Still racing after the widest margin (a very slow store): keep everything this time.


def upkeep(store: GalleryStore, settings: UpkeepSettings, refreshed: bool = True) -> UpkeepReport:
    """After a refresh: keep the `id` index, compact, tag the resulting version, prune. Only for the table's writer.

    The tag names the version the table is at when the upkeep is done (compaction commits versions
    of its own, with the same rows), so it is the version a query of the latest reads.
    """
    before = health(store)
    if settings.id_index:
        ensure_id_index(store)
    if settings.optimize_after_refresh:
        store.table().optimize(cleanup_older_than=NEVER)  # compaction and index update first
    tag = None
    if settings.tag_refreshes and refreshed:
        tag = refresh_tag(store.version())
        tag_version(store, tag, store.version())
    deleted = prune_refresh_tags(store, settings.keep_refresh_tags) if settings.tag_refreshes else []
    if settings.optimize_after_refresh:
        _prune(store, settings.keep_versions)  # nothing left to compact: only the pruning
    return UpkeepReport(before=before, after=health(store), tag=tag, deleted_tags=deleted)


def _family(name: str) -> str:
    # Table names end in `_<embedder fingerprint>`; what comes before names the gallery.
    return name.rsplit("_", 1)[0]


def gallery_tables(store: GalleryStore) -> list[str]:
    """Every table of this gallery (one per embedder fingerprint ever indexed), the current one included."""
    return sorted(name for name in store.db.list_tables().tables if _family(name) == _family(store.name))


def retired_tables(store: GalleryStore) -> list[str]:
    """Tables of this gallery left by embedders other than the current one (a model or preset change)."""
    return [name for name in gallery_tables(store) if name != store.name]


def drop_tables(store: GalleryStore, names: list[str]) -> list[str]:
    """Drop the named retired tables; the current embedder's table, or another gallery's, is refused."""
    if store.name in names:
        raise R3Error(f"table {store.name} is the current embedder's gallery: it is not retired, not dropping it")
    strangers = sorted(set(names) - set(retired_tables(store)))
    if strangers:
        raise R3Error(f"not retired tables of gallery {_family(store.name)}: {', '.join(strangers)}")
    for name in names:
        store.db.drop_table(name)
    return names
