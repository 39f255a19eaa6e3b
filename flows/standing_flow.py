"""Standing queries: re-run a queries file against a refreshed gallery and show what changed in each top-k.

Started by the `standing-queries` deployment's trigger on `r3.gallery.refreshed` (emitted by a
refresh that changed something; deployments/prefect.yaml), or by hand.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.query_flow import query_batch
from r3tasks.query.standing import topk_changes


def _blank(value: int | str | None) -> int | str | None:
    # A trigger renders a missing payload field as "None" or "".
    return None if value is None or str(value).strip() in {"", "None", "null"} else value


@flow(name="standing-queries", log_prints=True)
def standing_queries(
    queries: str,
    gallery: str = "default",
    preset: str | None = None,
    home: str | None = None,
    overrides: dict[str, Any] | None = None,
    gallery_version: int | str | None = None,
    previous_version: int | str | None = None,
    out: str | None = None,
    top_k: int = 10,
) -> dict:
    """Answer QUERIES at `gallery_version` (default latest) and at `previous_version`; artifact of the top-k changes."""
    common = {"queries": queries, "gallery": gallery, "preset": preset, "home": home, "overrides": overrides}
    after = query_batch(**common, out=out, gallery_version=_blank(gallery_version))
    previous = _blank(previous_version)
    before = query_batch(**common, gallery_version=previous) if previous is not None else {"results": []}
    rows = topk_changes(before["results"], after["results"], top_k)
    create_table_artifact(
        rows,
        key="standing-changes",
        description=f"Top-{top_k} changes between gallery versions {previous} and "
        f"{after['lineage']['gallery']['version']}.",
    )
    changed = [r for r in rows if r["changed"]]
    create_markdown_artifact(
        f"# Standing queries\n\n{len(changed)} of {len(rows)} queries changed their top-{top_k} "
        f"(gallery version {previous} -> {after['lineage']['gallery']['version']}).\n",
        key="standing-summary",
    )
    get_run_logger().info("%d of %d standing queries changed their top-%d", len(changed), len(rows), top_k)
    return {
        "changes": rows,
        "version": after["lineage"]["gallery"]["version"],
        "previous_version": previous,
        "out": out,
    }
