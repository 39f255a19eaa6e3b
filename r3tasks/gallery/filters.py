"""Filters on a gallery's stored columns, in LanceDB's filter syntax (an SQL WHERE expression).

A filter is checked before a batch starts (`check_where`, by running it on the table) and evaluated once
per pinned version (`evaluate`): the in-memory search masks its matrix rows with the result, so rows the
filter drops score -inf before any top-k and never take a place another row would have had. LanceDB's
own searches get the expression itself, as a prefilter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r3tasks.errors import FilterError


@dataclass(frozen=True)
class RowFilter:
    """What one filter keeps of one pinned version."""

    where: str
    matches: int  # rows of the version the filter keeps (vectors or not)
    # Per row of the version's in-memory matrix, in its row order; None when LanceDB searches the version.
    mask: np.ndarray | None


def normalise_where(where: str | None) -> str | None:
    """The filter to apply, or None for none: a blank filter (an empty web form field) filters nothing."""
    if where is None or not where.strip():
        return None
    return where.strip()


def check_where(gallery_or_table: Any, where: str | None, label: str = "--where") -> None:
    """Refuse a filter that cannot run on this gallery, before any work: `FilterError` with LanceDB's reason
    (unknown column, syntax error, not a boolean) in one line. `gallery_or_table`: a `PinnedGallery` or a
    LanceDB table; a blank or None filter passes."""
    sql = normalise_where(where)
    if sql is None:
        return
    table = getattr(gallery_or_table, "lance_table", gallery_or_table)
    cut = _statement_end(sql)
    if cut is not None and sql[cut + 1 :].strip():
        # LanceDB silently drops what follows a `;`: a filter that means less than it says.
        raise FilterError(f"one expression only: {sql[cut:]!r} would be ignored", sql, label)
    try:
        # Executed, not only planned: some errors (a failed cast) surface only when rows are read.
        table.search().where(sql).select(["id"]).limit(1).to_arrow()
    except (ValueError, RuntimeError) as error:
        if not _refused(error):
            raise
        raise FilterError(lance_reason(error), sql, label) from None


def evaluate(table: Any, where: str, row_ids: np.ndarray | None) -> RowFilter:
    """Run `where` once on `table` (a pinned version); with `row_ids` (the in-memory matrix's ids, in row
    order) also the mask of the rows it keeps."""
    try:
        if row_ids is None:
            return RowFilter(where, int(table.count_rows(filter=where)), None)
        kept = table.search().where(where).select(["id"]).limit(None).to_arrow().column("id")
    except (ValueError, RuntimeError) as error:
        if not _refused(error):
            raise
        raise FilterError(lance_reason(error), where) from None
    # A hash join in Arrow: no Python set of every kept id, however large the gallery.
    mask = pc.is_in(pa.array(row_ids.tolist(), pa.string()), value_set=kept.combine_chunks()).to_numpy(
        zero_copy_only=False
    )
    mask = np.asarray(mask, dtype=bool)
    mask.setflags(write=False)  # shared by every search and thread of the pinned version
    return RowFilter(where, len(kept), mask)


def with_group(where: str | None, group_clause: str | None) -> str | None:
    """One LanceDB filter for a group and a user filter; the user's on its own line, so a trailing `--`
    comment in it cannot swallow the closing parenthesis."""
    if where is None:
        return group_clause
    wrapped = f"({where}\n)"
    return wrapped if group_clause is None else f"{group_clause} AND {wrapped}"


def no_match_warning(where: str, version: int) -> str:
    return f"the filter {where!r} matched no gallery row (version {version})"


def _refused(error: Exception) -> bool:
    """Whether LanceDB refused the filter itself: invalid input when planned (ValueError), or a value it
    could not evaluate when run (a failed cast); a storage failure is no fault of the filter's."""
    return isinstance(error, ValueError) or "Error applying filter expression" in str(error)


def lance_reason(error: Exception) -> str:
    """LanceDB's message as one line, without its `Invalid input` / `lance error` prefixes or Rust source
    location."""
    text = " ".join(str(error).split())
    text = re.sub(r"^(Invalid input,|lance error:)\s*", "", text)
    return re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", text)


def _statement_end(sql: str) -> int | None:
    """Position of the first `;` outside quotes and comments, or None."""
    i, quote = 0, ""
    while i < len(sql):
        c = sql[i]
        if quote:
            if c == quote:
                if sql.startswith(quote * 2, i):  # a doubled quote is the quote itself
                    i += 2
                    continue
                quote = ""
        elif c in "'\"`":
            quote = c
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            if end < 0:
                return None
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                return None
            i = end + 1
        elif c == ";":
            return i
        i += 1
    return None
