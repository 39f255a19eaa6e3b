"""Fused recall of a query batch over one pinned gallery version, on aligned numpy arrays.

With `candidate_pool = 0` (the reference: every query vector scores the whole gallery) and the gallery's
matrix in memory, a batch is scored group by group with one matrix product per chunk of query vectors
(base and reasoning vectors of many queries stacked), and each query's fusion and top-k run on its rows
of that product. Scores come out in id order, the order the per-query path below builds from its
{id: score} dicts, so both paths rank ties the same and give the same scores. The per-query path
serves a candidate pool, LanceDB searches (a gallery over the memory budget, ANN), and any query whose
vectors the batch path refuses, so one bad vector still costs only its own query.

A `where` filter is evaluated once for the batch (`PinnedGallery.row_filter`); on the batch path the rows
it drops score -inf in every product before fusion and top-k, so a query still gets K results whenever K
rows match; the per-query path hands the filter to `PinnedGallery.search`, which does the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r3tasks.errors import R3Error
from r3tasks.gallery.filters import no_match_warning, normalise_where
from r3tasks.gallery.matrix import SCORE_CHUNK_FLOATS, ExactMatrix
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.inputs.queries import ComposedQuery
from r3tasks.query.fusion import fuse, fuse_base_queries, names_the_edit, reasoning_agreement, source_restatement
from r3tasks.query.isolation import reason_of
from r3tasks.query.placement import VIDEO_UNIT_DEPTH, best_per_video
from r3tasks.query.state import QueryState
from r3tasks.query.topk import best_pool, top_k
from r3tasks.settings.tree import R3Settings


def recall(
    states: Sequence[QueryState], gallery: PinnedGallery, settings: R3Settings, where: str | None = None
) -> None:
    """Gated fusion of base and reasoning scores over the pinned gallery; source excluded; top-K among the
    rows filter `where` keeps (all when None). A filter that keeps no row leaves every query an empty
    ranking and a warning; one that cannot run raises `FilterError` (the CLI checks it before any work)."""
    where = normalise_where(where)
    todo = [s for s in states if s.ok and s.base_vectors is not None]
    if settings.query.unit == "video" and todo and gallery.segmented:
        _recall_videos(todo, gallery, settings, where)
        return
    _recall(todo, gallery, settings, where)


def _recall_videos(todo: list[QueryState], gallery: PinnedGallery, settings: R3Settings, where: str | None) -> None:
    """Recall deeper, then keep the best moment of each video: K videos, not K moments of a few."""
    k = settings.query.recall_k
    deeper = settings.query.model_copy(update={"recall_k": k * VIDEO_UNIT_DEPTH})
    _recall(todo, gallery, settings.model_copy(update={"query": deeper}), where)
    for state in todo:
        state.recalled = best_per_video(state.recalled, gallery, k)


def _recall(todo: list[QueryState], gallery: PinnedGallery, settings: R3Settings, where: str | None) -> None:
    mask = None
    if where is not None and todo:
        kept = gallery.row_filter(where)
        if kept.matches == 0:
            warning = no_match_warning(where, gallery.ref.version)
            for state in todo:
                state.recalled = []
                state.warnings.append(warning)
            return
        mask = kept.mask
    exact = gallery.exact_matrix() if settings.query.candidate_pool == 0 and todo else None
    alone: list[QueryState] = []
    by_group: dict[str | None, list[QueryState]] = {}
    for state in todo:
        if exact is None:
            alone.append(state)
            continue
        try:
            _check_vectors(state, gallery.store.dim, gallery.store.name)
        except Exception as error:  # noqa: BLE001 - one query's bad vector is its own
            state.error = f"recall failed: {reason_of(error)}"
            continue
        by_group.setdefault(state.query.gallery_group, []).append(state)
    for group, members in by_group.items():
        try:
            _recall_group(members, exact, group, settings, mask)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - the batch path failed as a whole: each query alone says why
            alone.extend(members)
    for state in alone:
        try:
            _recall_one(state, gallery, settings, where)
        except Exception as error:  # noqa: BLE001 - one query's failure is its own
            state.error = f"recall failed: {reason_of(error)}"


def _check_vectors(state: QueryState, dim: int, table: str) -> None:
    """What `PinnedGallery.search` refuses, refused here with its words (and only for this query)."""
    vectors = [np.asarray(v, dtype=np.float32) for v in state.base_vectors]  # type: ignore[union-attr]
    if state.reasoning_vector is not None:
        vectors.append(np.asarray(state.reasoning_vector, dtype=np.float32))
    for vector in vectors:
        if vector.shape != (dim,):
            raise R3Error(f"query vector for {table}: shape {vector.shape}, expected ({dim},)")
        if not np.all(np.isfinite(vector)):
            raise R3Error(f"query vectors for {table}: non-finite values")


def _unit_rows(state: QueryState) -> np.ndarray:
    """The query's vectors (base..., reasoning) as unit float32 rows; a zero vector stays zero (no cosine)."""
    rows = [np.asarray(v, dtype=np.float32) for v in state.base_vectors]  # type: ignore[union-attr]
    if state.reasoning_vector is not None:
        rows.append(np.asarray(state.reasoning_vector, dtype=np.float32))
    matrix = np.stack(rows)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return np.divide(matrix, norms[:, None], out=np.zeros_like(matrix), where=norms[:, None] > 0)


def _recall_group(
    members: list[QueryState], exact: ExactMatrix, group: str | None, settings: R3Settings, mask: np.ndarray | None
) -> None:
    block, ids, column_order = exact.block(group)
    dropped = None
    if mask is not None:
        keep = _columns(mask, exact, group)
        dropped = np.flatnonzero(~keep)
        if not keep.any():
            block, ids = block[:0], ids[:0]  # the filter keeps nothing of this group: as an empty group
    if len(block) == 0:
        for state in members:  # an empty group: what the per-query path gives for it
            empty = np.zeros(0) if state.reasoning_vector is not None else None
            _fuse_into(state, np.zeros((len(state.base_vectors), 0)), empty, ids, settings)  # type: ignore[arg-type]
        return
    per_chunk = max(1, SCORE_CHUNK_FLOATS // len(block))
    start = 0
    while start < len(members):
        chunk, vectors = [], 0
        while start < len(members) and (not chunk or vectors + _width(members[start]) <= per_chunk):
            chunk.append(members[start])
            vectors += _width(members[start])
            start += 1
        units = [_unit_rows(state) for state in chunk]
        scores = np.concatenate(units) @ block.T
        if column_order is not None:
            scores = scores[:, column_order]
        if dropped is not None:
            scores[:, dropped] = -np.inf  # before fusion and top-k: the kept rows fill all K places
        zero = np.concatenate([np.einsum("ij,ij->i", u, u) == 0 for u in units])
        scores[zero] = -np.inf  # a zero vector returns nothing, as in a LanceDB search
        at = 0
        for state, unit in zip(chunk, units):
            rows = scores[at : at + len(unit)]
            at += len(unit)
            nb = len(state.base_vectors)  # type: ignore[arg-type]
            if state.reasoning_vector is None:
                _base_only(state, rows, ids, settings)
            else:
                rows = rows.astype(np.float64)  # fusion arithmetic in float64, as on the per-query path
                _fuse_into(state, rows[:nb], rows[nb], ids, settings)


def _columns(mask: np.ndarray, exact: ExactMatrix, group: str | None) -> np.ndarray:
    """A mask over the matrix's rows as the columns of `exact.block(group)`'s scores."""
    if group is None:
        return mask if exact.id_order is None else mask[exact.id_order]
    start, stop = exact.spans.get(group, (0, 0))
    return mask[start:stop]


def _base_only(state: QueryState, rows: np.ndarray, ids: np.ndarray, settings: R3Settings) -> None:
    """No reasoning vector: the fused scores are the base scores (max over base rows), so the top-K is taken
    on the float32 product itself; widening to float64 changes neither the order nor any value."""
    scores = rows[0] if len(rows) == 1 else rows.max(axis=0)
    exclude = state.source.excluded if state.source is not None else set()
    state.agreement, state.gate_used = None, False
    state.recalled = _top(scores, ids, settings.query.recall_k, exclude)


def _top(scores: np.ndarray, ids: np.ndarray, k: int, exclude: set[str]) -> list[tuple[str, float]]:
    """`fusion.top_k` for scores that hold no NaN and no +inf (products of finite unit vectors, -inf for a
    zero query): the same pairs, without its pass that cleans non-finite values."""
    candidates = best_pool(scores, k + len(exclude))  # every tie of the m-th best
    out: list[tuple[str, float]] = []
    for i in candidates[np.argsort(-scores[candidates], kind="stable")]:
        score = float(scores[i])
        if score == -np.inf:
            break
        if ids[i] in exclude:
            continue
        out.append((ids[i], score))
        if len(out) == k:
            break
    return out


def _width(state: QueryState) -> int:
    return len(state.base_vectors) + (state.reasoning_vector is not None)  # type: ignore[arg-type]


def _fuse_into(
    state: QueryState, base_matrix: np.ndarray, reasoning_scores: np.ndarray | None, ids, settings: R3Settings
) -> None:
    """Gate, fuse and take the top-K of one query's score rows (aligned with `ids`) into `state`."""
    q = settings.query
    base_scores = fuse_base_queries(base_matrix) if len(ids) else np.zeros(0)
    agreement = None
    if state.reasoning_vector is not None:
        agreement = reasoning_agreement(state.base_vectors, state.reasoning_vector)  # type: ignore[arg-type]
        if state.reasoning is not None and state.source is not None and state.source.text:
            state.source_similarity = source_restatement(state.reasoning.text, state.source.text)
        if q.copy_gate_threshold is not None and (state.source_similarity or 0.0) >= q.copy_gate_threshold:
            reasoning_scores = None  # a restatement of the source: recall as if the gate had failed
        if state.reasoning is not None and isinstance(state.query, ComposedQuery):
            state.names_edit = names_the_edit(
                state.reasoning.text,
                state.source.text if state.source is not None else "",
                state.query.edit,
                q.edit_gate_function_words,
            )
            if q.edit_gate and not state.names_edit:
                reasoning_scores = None  # it leaves out what the edit asks for: recall as if the gate had failed
    else:
        reasoning_scores = None
    result = fuse(
        base_scores,
        reasoning_scores,
        mode=q.fusion,
        weight=q.fusion_weight,
        rrf_k=q.rrf_k,
        agreement=agreement,
        gate_threshold=q.gate_threshold,
    )
    state.agreement = result.agreement
    state.gate_used = result.gate_used
    exclude = sorted(state.source.excluded) if state.source is not None else []
    state.recalled = top_k(result.scores, ids, q.recall_k, exclude=exclude)


def _recall_one(state: QueryState, gallery: PinnedGallery, settings: R3Settings, where: str | None = None) -> None:
    """One query through `PinnedGallery.search`: a candidate pool, LanceDB routes, or a lone retry."""
    q = settings.query
    group = state.query.gallery_group
    pool = q.candidate_pool
    base_hits = [gallery.search(v, pool, group, where) for v in state.base_vectors]  # type: ignore[union-attr]
    reason_hits = (
        gallery.search(state.reasoning_vector, pool, group, where) if state.reasoning_vector is not None else {}
    )
    ids = sorted(set().union(*base_hits, reason_hits))
    base_matrix = np.array([[hits.get(i, -np.inf) for i in ids] for hits in base_hits], dtype=np.float64)
    reasoning_scores = None
    if state.reasoning_vector is not None:
        reasoning_scores = np.array([reason_hits.get(i, -np.inf) for i in ids], dtype=np.float64)
    _fuse_into(state, base_matrix, reasoning_scores, ids, settings)
