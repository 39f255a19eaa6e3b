"""R^3's final fusion over the reranked top-K: recall's embedding score and the reranker's, min-max or additive."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from r3tasks.query.fusion import as_scores
from r3tasks.query.state import RankedItem

# Reference `_minmax`: a range below this is "constant" and maps to all ones.
MINMAX_EPS = 1e-8


def minmax(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Scale to [0, 1] (reference `_minmax`): a constant vector (range < 1e-8) maps to all ones.

    Empty in, empty out. Non-finite values raise ``ValueError``: a min-max over
    infinities has no meaning, and the reference only ever applies it to
    finite top-K scores.
    """
    arr = as_scores(values, "values")
    if arr.size == 0:
        return arr
    if not np.all(np.isfinite(arr)):
        raise ValueError("minmax needs finite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < MINMAX_EPS:
        return np.ones_like(arr)
    return (arr - lo) / (hi - lo)


def final_fusion(
    embedding_scores: np.ndarray | Sequence[float],
    reranker_scores: np.ndarray | Sequence[float],
    embedding_weight: float = 0.4,
    reranker_weight: float = 0.6,
) -> np.ndarray:
    """R^3 final score over the re-ranked top-K: ``we * minmax(embedding) + wr * minmax(reranker)``.

    Computed in float64 (the reference uses float32; the difference is below
    1e-7 and only matters for near-ties).
    """
    emb = as_scores(embedding_scores, "embedding_scores")
    rr = as_scores(reranker_scores, "reranker_scores")
    if emb.shape != rr.shape:
        raise ValueError(f"shape mismatch: embedding {emb.shape} vs reranker {rr.shape}")
    return embedding_weight * minmax(emb) + reranker_weight * minmax(rr)


def rerank_topk(
    recalled: Sequence[tuple[str, float]],
    reranker_scores: Mapping[str, float] | np.ndarray | Sequence[float],
    k: int,
    embedding_weight: float = 0.4,
    reranker_weight: float = 0.6,
    reranker_scale: float | None = None,
) -> list[RankedItem]:
    """Re-rank the first `k` recalled items by :func:`final_fusion`; the rest keep their order after them.

    `reranker_scale` set: the additive fusion ``embedding + scale * reranker`` on raw scores instead of R^3's
    min-max (the weights are then unused). Min-max over the block stretches any embedding gap to the full
    weight, so a reranker overturns a clear recall lead as easily as a near-tie; on raw scores it must beat
    the lead itself, in embedding units per reranker unit (a per-reranker calibration).

    `recalled` is the recall list, best first (as :func:`top_k` returns it).
    `reranker_scores` holds raw reranker scores, either by id or as an array
    aligned with ``recalled[:k]``. An item of the first `k` with no finite
    reranker score (the reference skips candidates whose video is missing) is
    not re-ranked: like the reference it drops to the end of the block, and its
    `reranker_score` is None. The min-max of embedding scores runs over the
    re-ranked items only, as in the reference. Ties in the fused score keep
    recall order (stable sort, as the reference's ``sorted``).

    Scores of the items below the block, so that `score` never increases down
    the list: the re-ranked items carry their fused score (within
    ``[0, we + wr]``); every later item gets ``block_min - 1 - (e_0 - e_i)``,
    where ``e_i`` is its embedding score and ``e_0`` the first later item's, so
    they sit at least 1 below the block and keep their embedding-score gaps (a
    running minimum guards against an unsorted recall list). When nothing is
    re-ranked (``k == 0`` or no reranker score at all) the list is the recall
    order and `score` is the embedding score.
    """
    items = [(str(i), float(s)) for i, s in recalled]
    for item_id, s in items:
        if not math.isfinite(s):
            raise ValueError(f"recalled item {item_id!r} has a non-finite embedding score {s}")
    n = min(max(k, 0), len(items))
    head = items[:n]
    raw: list[float | None]
    if isinstance(reranker_scores, Mapping):
        raw = [reranker_scores.get(i) for i, _ in head]
    else:
        arr = np.asarray(reranker_scores, dtype=np.float64).reshape(-1)
        if len(arr) != n:
            raise ValueError(f"{len(arr)} reranker scores for the {n} items to re-rank")
        raw = [float(x) for x in arr]
    raw = [float(x) if x is not None and math.isfinite(float(x)) else None for x in raw]
    scored = [j for j in range(n) if raw[j] is not None]
    if not scored:
        return [RankedItem(i, s, s, None) for i, s in items]

    if reranker_scale is None:
        fused = final_fusion(
            [head[j][1] for j in scored],
            [raw[j] for j in scored],  # type: ignore[misc]
            embedding_weight,
            reranker_weight,
        )
    else:
        fused = np.array([head[j][1] + reranker_scale * raw[j] for j in scored], dtype=np.float64)  # type: ignore[operator]
    block_order = sorted(range(len(scored)), key=lambda m: -fused[m])  # stable: ties keep recall order
    out = [RankedItem(head[scored[m]][0], float(fused[m]), head[scored[m]][1], raw[scored[m]]) for m in block_order]
    tail = [(head[j], raw[j]) for j in range(n) if raw[j] is None] + [(it, None) for it in items[n:]]
    if tail:
        floor = float(fused.min()) - 1.0
        e0 = tail[0][0][1]
        prev = floor
        for (item_id, e), r in tail:
            s = min(prev, floor - (e0 - e))
            out.append(RankedItem(item_id, s, e, r))
            prev = s
    return out
