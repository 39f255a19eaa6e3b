"""The k best of a score row: exact, deterministic on ties, without sorting the whole row."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

from r3tasks.query.fusion import as_scores


def top_k(scores: np.ndarray, ids: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
    """The `k` best ``(id, score)`` pairs, best first.

    Ties keep input order (the earlier id ranks higher). Ids in `exclude` (the
    query's source) and non-finite scores are never returned, so fewer than `k`
    pairs come back when too few items qualify.
    """
    arr = as_scores(scores, "scores")
    if len(arr) != len(ids):
        raise ValueError(f"{len(arr)} scores for {len(ids)} ids")
    if k <= 0:
        return []
    excluded = set(exclude)
    order = best_first(arr, k + len(excluded))
    out: list[tuple[str, float]] = []
    for i in order:
        s = float(arr[i])
        if not math.isfinite(s):
            # Sorted descending with NaN as -inf: +inf sits first (skipped), -inf/NaN last (stop).
            if s == math.inf:
                continue
            break
        item = ids[i]
        if item in excluded:
            continue
        out.append((item, s))
        if len(out) == k:
            break
    return out


def best_first(scores: np.ndarray, m: int) -> np.ndarray:
    """Positions of the `m` best scores and every tie of the m-th, best first, ties by position (what a
    stable descending sort of the whole array starts with); +inf and NaN rank as -inf.

    A partition, then a sort of the few survivors: O(N) rather than a full O(N log N) sort per query.
    """
    work = np.where(np.isfinite(scores), scores, -np.inf)
    candidates = best_pool(work, m)
    return candidates[np.argsort(-work[candidates], kind="stable")]


# A strided sample's m-th best is a floor for the whole row's m-th best (a subset has at most as many
# values above any line), so the exact top-m, ties included, lies among the values at or above it, about
# m x stride of them: one comparison pass instead of a partition of the whole row, which cost half as much
# again as the query-gallery product itself (benchmarks/query_batch.py).
_SAMPLE_MIN = 4096


def best_pool(scores: np.ndarray, m: int) -> np.ndarray:
    """Positions (ascending) of the `m` best of `scores` and every tie of the m-th; `scores` holds no NaN."""
    n = len(scores)
    if m >= n:
        return np.arange(n)
    stride = n // max(_SAMPLE_MIN, 32 * m)
    pool = np.arange(n)
    if stride >= 4:
        sample = scores[::stride]
        pool = np.flatnonzero(scores >= np.partition(sample, len(sample) - m)[len(sample) - m])
    sub = scores[pool]
    if len(sub) > m:
        pool = pool[sub >= sub[np.argpartition(sub, len(sub) - m)[len(sub) - m :]].min()]
    return pool
