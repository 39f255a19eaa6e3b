"""Standing queries: what changed in each query's top-k between two gallery versions."""

from __future__ import annotations

from typing import Any


def topk_changes(before: list[dict[str, Any]], after: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """One row per query of `after`: items that entered or left its top-k, and its top-1 before and after.

    `before` and `after` are query-batch results (`{"id", "ranked": [{"id", ...}], "error"}`); a query
    missing from `before` (new in the file) has everything entered.
    """
    old = {r["id"]: r for r in before}
    rows = []
    for result in after:
        now = [item["id"] for item in result.get("ranked", [])[:k]]
        was_result = old.get(result["id"])
        was = [item["id"] for item in was_result.get("ranked", [])[:k]] if was_result else []
        entered = [i for i in now if i not in was]
        left = [i for i in was if i not in now]
        moved = [i for i in now if i in was and now.index(i) != was.index(i)]
        rows.append(
            {
                "query": result["id"],
                "changed": bool(entered or left or moved),
                "entered": ", ".join(entered) or "-",
                "left": ", ".join(left) or "-",
                "moved": ", ".join(moved) or "-",
                "top-1 before": was[0] if was else "-",
                "top-1 after": now[0] if now else "-",
                "error": result.get("error") or "-",
            }
        )
    return rows
