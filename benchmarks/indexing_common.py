"""Indexing the same gallery two ways: through the Prefect flow, and as the plain library calls it wires."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from r3tasks.gallery.indexing import batches, commit_due, embed_batch, key_items, plan_index
from r3tasks.gallery.views import open_store
from r3tasks.inputs.sources import discover
from r3tasks.models.registry import shared_embedder
from r3tasks.settings.tree import R3Settings, load_settings


def settings_for(home: Path, overrides: dict[str, Any]) -> R3Settings:
    """Exactly the settings the flow builds from the same parameters (so the loaded model is shared)."""
    return load_settings(preset=None, home=home, **overrides)


def preload(home: Path, overrides: dict[str, Any]) -> Any:
    """Load the embedder the flow will use, outside any timed region; returns it (a CountingEmbedder)."""
    return shared_embedder(settings_for(home, overrides))


def index_with_flow(source: Path, home: Path, overrides: dict[str, Any]) -> dict:
    from flows.index_flow import index_gallery

    return index_gallery(source=str(source), home=str(home), overrides=overrides)


def index_plain(source: Path, home: Path, overrides: dict[str, Any]) -> dict:
    """The flow's work without Prefect: discover, key, plan against the table, embed per batch, commit, remove."""
    settings = settings_for(home, overrides)
    embedder = shared_embedder(settings)
    items = discover(source, settings.index.video_extensions)
    keying = key_items(items, settings)
    store = open_store(settings)
    stored = store.content_keys() if store.exists() else {}
    plan = plan_index(keying.keyed, [f.id for f in keying.failed], stored)
    written = failed = 0
    # The flow's commit policy, so both arms write alike.
    pending: list = []
    last_commit = time.monotonic()
    to_embed = batches(plan.to_embed, settings.index.batch_size)
    for number, batch in enumerate(to_embed, start=1):
        embedded = embed_batch(batch, embedder, settings)
        pending.extend(embedded.rows)
        failed += len(embedded.failed)
        if number == len(to_embed) or commit_due(len(pending), time.monotonic() - last_commit, settings):
            if pending:
                store.upsert(pending)
            written += len(pending)
            pending = []
            last_commit = time.monotonic()
    version = store.delete_ids(plan.to_remove)
    return {
        "added": len(plan.to_add),
        "updated": len(plan.to_update),
        "unchanged": len(plan.unchanged),
        "removed": len(plan.to_remove),
        "written": written,
        "failed": failed + len(keying.failed),
        "version": version,
    }


def phase_times(source: Path, home: Path, overrides: dict[str, Any]) -> dict[str, float]:
    """Seconds of the fixed steps every refresh repeats, called plainly against the current table."""
    settings = settings_for(home, overrides)
    shared_embedder(settings)  # loaded before any clock starts: open_store below reuses it
    out: dict[str, float] = {}
    start = time.perf_counter()
    items = discover(source, settings.index.video_extensions)
    out["discover"] = time.perf_counter() - start
    start = time.perf_counter()
    keying = key_items(items, settings)
    out["content keys (hash)"] = time.perf_counter() - start
    start = time.perf_counter()
    store = open_store(settings)
    stored = store.content_keys()
    out["read stored keys (GalleryStore.content_keys)"] = time.perf_counter() - start
    start = time.perf_counter()
    plan_index(keying.keyed, [f.id for f in keying.failed], stored)
    out["plan (diff)"] = time.perf_counter() - start
    return out


def table_shape(home: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Rows, versions and fragments of the gallery table (many small commits make many fragments)."""
    settings = settings_for(home, overrides)
    store = open_store(settings)
    table = store.table()
    info: dict[str, Any] = {"rows": table.count_rows(), "version": int(table.version)}
    try:
        stats = table.stats()
        frag = stats.get("fragment_stats", {}) if isinstance(stats, dict) else getattr(stats, "fragment_stats", {})
        info["fragments"] = (
            frag.get("num_fragments") if isinstance(frag, dict) else getattr(frag, "num_fragments", None)
        )
    except Exception as exc:  # noqa: BLE001 - stats are diagnostics only
        info["fragments"] = f"unknown ({type(exc).__name__})"
    return info
