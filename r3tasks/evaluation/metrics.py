"""Retrieval metrics: R@k as composed-retrieval papers report it, MRR and nDCG@10 as trec_eval does.

A run maps query id -> {item id: score}; qrels map query id -> {item id: grade}.
An item is relevant when its grade is >= 1 (trec_eval's default relevance level).

Ranking: items are sorted by score, highest first; equal scores are broken by
item id in *descending* string order, exactly as trec_eval (and so
pytrec_eval) does. To evaluate a ranked list whose order must be kept, turn it
into scores with :func:`ranking_to_run`.

Definitions (per query, then averaged):

* ``R@k`` (k = 1, 5, 10, 50): 100 if any relevant item is among the top k,
  else 0 -- a "hit rate", as CoVR, EgoCVR and R^3 report it. This is
  trec_eval's ``success_k``. trec_eval's ``recall_k`` is instead the fraction of
  the relevant items found in the top k; the two coincide when a query has
  exactly one relevant item (the usual composed-retrieval case) and differ
  otherwise (R@k >= recall_k).
* ``R_mean``: the mean of R@1, R@5 and R@10 (the CoVR-R challenge's number).
* ``MRR``: 1 / rank of the first relevant item over the whole run list, 0 if
  none is retrieved; trec_eval's ``recip_rank``, reported as a fraction (0-1).
* ``nDCG@10``: trec_eval's ``ndcg_cut_10``, a fraction (0-1): gain = the grade
  (linear, not 2^g - 1), discount log2(rank + 1), ideal DCG from the qrels.

R@k and R_mean are percentages (0-100), MRR and nDCG@10 fractions, each as
the convention of its community prints it.

Averaging: over the queries of the qrels that have at least one relevant item.
Such a query absent from the run counts as zero on every metric (trec_eval
would silently skip it, which flatters a run that drops hard queries). Queries
of the run without qrels are ignored; qrels queries with no relevant item are
ignored too (nothing can be found for them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

METRIC_KEYS: tuple[str, ...] = ("R@1", "R@5", "R@10", "R@50", "R_mean", "MRR", "nDCG@10")
RECALL_CUTOFFS: tuple[int, ...] = (1, 5, 10, 50)
NDCG_CUTOFF = 10


def ranked_ids(scores: Mapping[str, float]) -> list[str]:
    """Item ids in trec_eval order: score descending, then id descending. NaN scores raise ``ValueError``."""
    for item, s in scores.items():
        if math.isnan(float(s)):
            raise ValueError(f"item {item!r} has a NaN score")
    # Two stable sorts: id descending first, then score descending.
    by_id = sorted(scores, reverse=True)
    return sorted(by_id, key=lambda i: float(scores[i]), reverse=True)


def ranking_to_run(ranking: Sequence[str]) -> dict[str, float]:
    """Scores that reproduce `ranking` under trec_eval's ordering (strictly decreasing, no ties)."""
    n = len(ranking)
    if len(set(ranking)) != n:
        raise ValueError("ranking contains duplicate ids")
    return {item: float(n - i) for i, item in enumerate(ranking)}


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(r + 2) for r, g in enumerate(gains) if g > 0)


def _query_metrics(scores: Mapping[str, float] | None, grades: Mapping[str, int]) -> dict[str, float]:
    relevant = {item for item, g in grades.items() if g >= 1}
    order = ranked_ids(scores) if scores else []
    first_hit = next((r for r, item in enumerate(order) if item in relevant), None)
    out: dict[str, float] = {}
    for k in RECALL_CUTOFFS:
        out[f"R@{k}"] = 100.0 if first_hit is not None and first_hit < k else 0.0
    out["R_mean"] = (out["R@1"] + out["R@5"] + out["R@10"]) / 3.0
    out["MRR"] = 1.0 / (first_hit + 1) if first_hit is not None else 0.0
    gains = [float(max(grades.get(item, 0), 0)) for item in order[:NDCG_CUTOFF]]
    ideal = sorted((float(g) for g in grades.values() if g > 0), reverse=True)[:NDCG_CUTOFF]
    idcg = _dcg(ideal)
    out["nDCG@10"] = _dcg(gains) / idcg if idcg > 0 else 0.0
    return out


def per_query(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, float]]:
    """Metrics of each evaluated query (the qrels' queries with a relevant item), same keys and scales."""
    return {
        qid: _query_metrics(run.get(qid), grades)
        for qid, grades in qrels.items()
        if any(g >= 1 for g in grades.values())
    }


def evaluate(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean metrics over the evaluated queries; keys ``R@1 R@5 R@10 R@50 R_mean MRR nDCG@10``.

    Returns zeros for every key when no query can be evaluated.
    """
    rows = per_query(run, qrels)
    if not rows:
        return {key: 0.0 for key in METRIC_KEYS}
    return {key: sum(r[key] for r in rows.values()) / len(rows) for key in METRIC_KEYS}
