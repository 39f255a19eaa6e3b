"""What a finished refresh does while it still holds the writer slot: upkeep, lineage, the refreshed event.

The `r3.gallery.refreshed` event (only when the refresh changed something) is what the
`standing-queries` deployment's trigger listens for (deployments/prefect.yaml).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from flows.assets import record_gallery
from r3tasks.gallery.table import GalleryStore
from r3tasks.gallery.upkeep import UpkeepReport, upkeep
from r3tasks.settings.tree import R3Settings

REFRESHED_EVENT = "r3.gallery.refreshed"


def gallery_resource_id(gallery: str) -> str:
    return f"r3.gallery.{gallery}"


def changed(summary: dict[str, Any]) -> bool:
    return bool(summary["added"] or summary["updated"] or summary["removed"])


@task(name="gallery-upkeep", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def upkeep_task(store: GalleryStore, settings: R3Settings) -> dict[str, Any]:
    report: UpkeepReport = upkeep(store, settings.upkeep)
    before, after = report.before, report.after
    create_table_artifact(
        [
            {"when": "before", "version": before.version, "versions": before.versions, "fragments": before.fragments},
            {"when": "after", "version": after.version, "versions": after.versions, "fragments": after.fragments},
        ],
        key="gallery-upkeep",
        description=f"Tag {report.tag or '-'}; versions and fragments before and after optimize().",
    )
    return report.to_dict()


def after_refresh(
    summary: dict[str, Any],
    store: GalleryStore,
    settings: R3Settings,
    source: str,
    gallery: str,
    previous_version: int | None,
) -> dict[str, Any]:
    """Upkeep, the gallery asset and the refreshed event; adds `tag` and `upkeep` to the summary."""
    if not changed(summary):
        summary.update(tag=None, upkeep=None)
        return summary
    report = upkeep_task(store, settings)
    # The version after upkeep holds the same rows as the refresh's last commit; it is the one tagged.
    summary.update(version=report["after"]["version"], tag=report["tag"], upkeep=report)
    record_gallery(summary, source, report["tag"])
    emit_event(
        event=REFRESHED_EVENT,
        resource={
            "prefect.resource.id": gallery_resource_id(gallery),
            "prefect.resource.name": gallery,
            "r3.table": store.name,
            "r3.uri": store.uri,
        },
        payload={
            "gallery": gallery,
            "version": summary["version"],
            "tag": report["tag"],
            "previous_version": previous_version,
            "added": summary["added"],
            "updated": summary["updated"],
            "removed": summary["removed"],
        },
    )
    get_run_logger().info(
        "gallery %s refreshed to version %s (tag %s): %s emitted",
        gallery,
        summary["version"],
        report["tag"],
        REFRESHED_EVENT,
    )
    return summary
