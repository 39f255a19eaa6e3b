"""Lineage as Prefect Assets: the UI's asset graph shows what each result was read from.

Assets: the gallery table (`lancedb://...`, its version and tag in the materialization's
metadata), each batch's results file and each eval report (`file://...`). Upstreams: the source
folder or manifest, the embedder (`r3://embedder/<fingerprint>`) and, for results, the queries
file. The per-stage table artifacts stay; these add the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NONE

MAX_KEY = 500  # Prefect's asset keys are at most 512 characters


def _key(scheme: str, path: str) -> str:
    # Spaces, '#', '?' and the like are not allowed in a key: percent-encode the path.
    return f"{scheme}://{quote(path.lstrip('/'), safe='/._-~+=:@')}"[:MAX_KEY]


def file_asset(path: str | Path, name: str | None = None) -> Asset:
    resolved = str(path) if "://" in str(path) else str(Path(path).resolve())
    key = resolved if "://" in resolved else _key("file", resolved)
    return Asset(key=key, properties=AssetProperties(name=name or Path(resolved).name))


def gallery_asset(uri: str, table: str) -> Asset:
    scheme, _, rest = uri.partition("://") if "://" in uri else ("lancedb", "", str(Path(uri).resolve()))
    if scheme in ("lancedb", "file"):
        key = _key("lancedb", f"{rest.rstrip('/')}/{table}")
    else:
        # An object store: the table's own location (Prefect keys take a plain scheme, not `lancedb+s3`).
        key = _key(scheme.lower(), f"{rest.rstrip('/')}/{table}.lance")
    return Asset(
        key=key, properties=AssetProperties(name=f"gallery {table}", description=f"LanceDB table {table} at {uri}")
    )


def embedder_asset(fingerprint: str) -> Asset:
    return Asset(
        key=_key("r3", f"embedder/{fingerprint}"), properties=AssetProperties(name=f"embedder {fingerprint[:16]}")
    )


@materialize("r3://placeholder", name="materialize-asset", cache_policy=NONE)
def _record(key: str, metadata: dict[str, Any]) -> str:
    add_asset_metadata(key, metadata)
    return key


def record_asset(asset: Asset, upstream: list[Asset], metadata: dict[str, Any]) -> None:
    """One materialization of `asset` read from `upstream`, with `metadata` (version, tag, counts) on it."""
    _record.with_options(assets=[asset], asset_deps=upstream)(asset.key, metadata)


def record_gallery(summary: dict[str, Any], source: str, tag: str | None) -> None:
    gallery = gallery_asset(summary["table"]["uri"], summary["table"]["name"])
    record_asset(
        gallery,
        [file_asset(source), embedder_asset(summary["embedder"])],
        {
            "version": summary["version"],
            "tag": tag,
            "added": summary["added"],
            "updated": summary["updated"],
            "removed": summary["removed"],
        },
    )


def record_results(out: str, queries: str, lineage: dict[str, Any]) -> None:
    ref = lineage["gallery"]
    record_asset(
        file_asset(out),
        [gallery_asset(ref["uri"], ref["table"]), file_asset(queries)],
        {"gallery version": ref["version"], "embedder": lineage["embedder"], "settings hash": lineage["settings_hash"]},
    )


def record_report(out: str, gallery: dict[str, Any], dataset: str) -> None:
    record_asset(
        file_asset(out),
        [gallery_asset(gallery["uri"], gallery["table"])],
        {"gallery version": gallery.get("version"), "dataset": dataset},
    )
