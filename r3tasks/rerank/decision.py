"""The per-query rerank decision: how strongly the reranker may override recall, decided for each query.

One global fusion must be timid enough for data where recall is already right (a strong-recall set loses
rank-1 hits to any reranker that overrides it freely) and is then nearly inert where recall is weak. The
decision reads what each query already has once its block is scored (recall's margin and spread, the
reranker's own margins, how far apart the two orders are, ties) and gives a calibrated probability that
the strong fusion's top-1 is right where it and the default fusion disagree: a logistic regression of a
handful of weights, fitted on dev queries (`r3tasks.evaluation.calibrate`) and stored in the settings.
Above its threshold the query gets the strong fusion, else the default one (the policy's own).

A calibration holds for the reranker it was fitted on: its scores are in that model's units. With another
reranker the default fusion runs, and the query's lineage says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# What a query's decision reads, all from recall's scores and the reranker's raw scores over its block.
FEATURES: tuple[str, ...] = (
    "recall_margin",  # recall's top-1 minus its top-2 (embedding units)
    "recall_spread",  # recall's top-1 minus the last candidate of the block
    "reranker_lead",  # the reranker's best score minus its score for recall's top-1 (reranker units)
    "reranker_gap",  # the reranker's best minus its second best
    "choice_depth",  # recall's top-1 minus recall's score for the reranker's choice (how far it would climb)
    "rank_agreement",  # Spearman correlation of the two orders over the block
    "near_ties",  # log(1 + candidates tied with recall's top-1): clips sharing a caption
)

# Scores this close are one value (clips sharing a caption share every score, up to float noise).
TIE = 1e-6


@dataclass(frozen=True)
class Calibration:
    """A fitted decision: weights over `FEATURES`, the thresholds on the probability, and what it holds for."""

    weights: tuple[float, ...]
    bias: float
    threshold: float  # at or above: the strong fusion
    reranker_fingerprint: str
    strong_reranker_scale: float | None = None  # the strong fusion: additive at this scale, None = R^3's min-max
    keep_below: float = 0.0  # below: recall's order stands

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"a rerank decision needs {len(FEATURES)} weights ({', '.join(FEATURES)})")
        if not 0.0 <= self.keep_below <= self.threshold <= 1.0:
            raise ValueError(
                f"the rerank decision needs 0 <= keep_below <= threshold <= 1, got {self.keep_below} and {self.threshold}"
            )

    def level(self, probability: float) -> str:
        """`strong`, `default` or `recall` (recall's order kept) for a query's probability."""
        if probability >= self.threshold:
            return "strong"
        return "recall" if probability < self.keep_below else "default"

    def probability(self, features: Mapping[str, float]) -> float:
        """p for a query's features, to 6 decimals (as results record it: a replay decides as the query did)."""
        z = self.bias + sum(w * features[name] for w, name in zip(self.weights, FEATURES))
        return round(1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0, 6)


def decision_features(
    recalled: Sequence[tuple[str, float]], scores: Mapping[str, float], depth: int
) -> dict[str, float]:
    """The features of one query: `recalled` best first, `scores` the reranker's raw scores for (part of)
    its first `depth` items. Needs at least one scored item."""
    block = [(item_id, e, scores[item_id]) for item_id, e in recalled[:depth] if item_id in scores]
    if not block:
        raise ValueError("no reranker score in the block")
    top_e = recalled[0][1]
    by_reranker = sorted(block, key=lambda x: -x[2])
    choice = by_reranker[0]
    top_r = scores.get(recalled[0][0], min(r for _, _, r in block))
    return {
        "recall_margin": top_e - recalled[1][1] if len(recalled) > 1 else 0.0,
        "recall_spread": top_e - block[-1][1],
        "reranker_lead": choice[2] - top_r,
        "reranker_gap": choice[2] - by_reranker[1][2] if len(by_reranker) > 1 else 0.0,
        "choice_depth": top_e - choice[1],
        "rank_agreement": _spearman([e for _, e, _ in block], [r for _, _, r in block]),
        "near_ties": math.log1p(sum(1 for _, e in recalled[:depth] if e >= top_e - TIE) - 1),
    }


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 2:
        return 1.0
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    arr = np.asarray(values, dtype=np.float64)
    order = np.argsort(arr, kind="stable")
    ranks = np.empty(len(arr))
    ranks[order] = np.arange(len(arr), dtype=np.float64)
    for value in np.unique(arr):
        tied = arr == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, sample_weight: np.ndarray | None = None, iterations: int = 50
) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression (Newton's method) on raw features.

    Features are standardised for the fit, so `l2` weighs each alike, and the weights are returned in
    raw units, ready to store. `sample_weight` scales each row's log-likelihood (default: 1 each).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError("fit_logistic needs a non-empty (n, d) matrix and n labels")
    sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    # Standardised by the weighted rows, so a row of weight 0 changes nothing at all.
    mean = np.average(x, axis=0, weights=sw)
    std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=sw))
    std[std < 1e-9] = 1.0  # a constant feature (to float noise) carries nothing; do not blow it up
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0  # the bias is not shrunk
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        gradient = z.T @ (sw * (p - y)) + penalty * w
        hessian = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    weights = w[1:] / std
    return weights, float(w[0] - (weights * mean).sum())
