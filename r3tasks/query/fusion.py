"""Score fusion, recall and re-ranking maths of R^3, as plain numpy functions.

The numerics follow the reference submission code (Lee-zixu/R-3, ``validate.py``
and ``utils.py``); where we deliberately differ the docstring says so and why.

Conventions used throughout:

* Scores are "higher is better". A non-finite score (NaN, +-inf) marks an item
  that must not be retrieved: an excluded source, a missing embedding.
  :func:`top_k` never returns one.
* Ties are broken by position: among equal scores the item that comes first in
  the input keeps the better rank. (The reference uses
  ``np.argsort(s)[::-1]``, whose tie order depends on numpy's sort algorithm;
  we make it deterministic.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

FusionMode = Literal["gated_residual", "max", "mean", "rrf"]

# Reference `l2_normalize_np` guards the norm with this.
NORM_EPS = 1e-12


@dataclass(frozen=True)
class FusionResult:
    """Fused per-item scores, whether the reasoning query was used, and the agreement it was gated on."""

    scores: np.ndarray
    gate_used: bool
    agreement: float | None


def as_scores(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _clean(scores: np.ndarray) -> np.ndarray:
    """NaN -> -inf, so "missing" has one spelling (the reference's `_rank_indices` does the same)."""
    return np.where(np.isnan(scores), -np.inf, scores)


def reasoning_agreement(base_query_embeddings: np.ndarray, reasoning_embedding: np.ndarray) -> float:
    """Gate value g: the largest cosine between any base query ``(B, D)`` and the reasoning query ``(D,)``.

    The reference takes dot products of unit vectors; normalising here makes the
    result a cosine even for vectors that are not unit length. A zero vector has
    cosine 0 with everything.
    """
    base = np.asarray(base_query_embeddings, dtype=np.float64)
    if base.ndim == 1:
        base = base[None, :]
    reason = np.asarray(reasoning_embedding, dtype=np.float64).reshape(-1)
    if base.ndim != 2 or base.shape[0] == 0:
        raise ValueError(f"base_query_embeddings must be (B, D) with B >= 1, got shape {base.shape}")
    if base.shape[1] != reason.shape[0]:
        raise ValueError(f"dimension mismatch: base queries have {base.shape[1]}, reasoning has {reason.shape[0]}")
    base = base / (np.linalg.norm(base, axis=1, keepdims=True) + NORM_EPS)
    reason = reason / (np.linalg.norm(reason) + NORM_EPS)
    return float(np.max(base @ reason))


def source_restatement(reasoning: str, source_text: str) -> float:
    """How much a reasoning paragraph just restates the source's own description: the similarity of their
    word sequences (difflib ratio, lower case, punctuation dropped), 1.0 for a copy.

    A weak reasoner that copies the source caption passes R^3's agreement gate (it agrees with the base
    query, which holds the same caption) yet carries no target-side information, and it pulls recall
    towards clips like the source: the copy gate uses this to leave such reasoning out.
    """
    import difflib
    import re

    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", text.lower())

    a, b = words(reasoning), words(source_text)
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


# Words an edit is written with, not what it asks for: "change X to Y instead" names Y, not "to".
def _content_words(text: str, function_words: Collection[str]) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower())) - set(function_words)


def names_the_edit(reasoning: str, source_text: str, edit: str, function_words: Collection[str]) -> bool:
    """Whether a reasoning paragraph carries the edit into its target description: it holds at least one of
    the edit's content words that the source's text lacks ("Change knife to fork": "fork").

    A restatement of the source holds none; so does a rewrite that changes the source some other way than
    asked, which pulls recall towards clips that match neither. An edit that adds no new word (it only
    removes or reorders, "without the knife") cannot be checked this way and passes.
    """
    words = frozenset(function_words)
    asked = _content_words(edit, words) - _content_words(source_text, words)
    return not asked or bool(asked & _content_words(reasoning, words))


def gated_residual_fusion(base_scores: np.ndarray, reasoning_scores: np.ndarray, weight: float) -> np.ndarray:
    """Reference `_gated_residual_scores`: ``base + weight * (reasoning - base)`` per item.

    Where only the reasoning score is finite it is used as is; where the
    reasoning score is not finite the base score is kept unchanged (even if it
    is itself non-finite).
    """
    base = as_scores(base_scores, "base_scores")
    reason = as_scores(reasoning_scores, "reasoning_scores")
    if base.shape != reason.shape:
        raise ValueError(f"shape mismatch: base {base.shape} vs reasoning {reason.shape}")
    out = base.copy()
    both = np.isfinite(base) & np.isfinite(reason)
    out[both] = base[both] + weight * (reason[both] - base[both])
    only_reason = ~np.isfinite(base) & np.isfinite(reason)
    out[only_reason] = reason[only_reason]
    return out


def fuse_base_queries(scores: np.ndarray) -> np.ndarray:
    """Several base queries' scores ``(B, N)`` -> ``(N,)`` by max (reference ``query_fusion: max``).

    NaN counts as -inf, so one query's missing score does not hide another's.
    A 1-D input is returned as is (one base query).
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 1:
        return arr.copy()
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"scores must be (B, N) with B >= 1, got shape {arr.shape}")
    return _clean(arr).max(axis=0)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of each finite score (best = 0, ties by position); -1 for non-finite scores."""
    order = np.argsort(-_clean(scores), kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(scores))
    ranks[~np.isfinite(scores)] = -1
    return ranks


def rrf_fusion(base_scores: np.ndarray, reasoning_scores: np.ndarray, weight: float, k: int) -> np.ndarray:
    """Reciprocal-rank fusion as the reference's ``expand_pool`` mode scores it.

    ``1/(k + r_base) + weight/(k + r_reason)`` with 1-based ranks ``r`` (the
    reference writes ``1/(k + rank0 + 1)``; ``k`` is clamped to >= 1 as there).
    Deliberate difference: the reference ranks every item including excluded
    (-inf) ones; here an item with a non-finite score in one list gets no
    contribution from that list, and -inf if it has no finite score at all.
    """
    base = as_scores(base_scores, "base_scores")
    reason = as_scores(reasoning_scores, "reasoning_scores")
    if base.shape != reason.shape:
        raise ValueError(f"shape mismatch: base {base.shape} vs reasoning {reason.shape}")
    offset = max(float(k), 1.0)
    out = np.zeros(len(base), dtype=np.float64)
    for arr, w in ((base, 1.0), (reason, weight)):
        r = _ranks(arr)
        ok = r >= 0
        out[ok] += w / (offset + r[ok] + 1.0)
    out[~np.isfinite(base) & ~np.isfinite(reason)] = -np.inf
    return out


def fuse(
    base_scores: np.ndarray,
    reasoning_scores: np.ndarray | None,
    *,
    mode: FusionMode = "gated_residual",
    weight: float = 0.5,
    rrf_k: int = 60,
    agreement: float | None = None,
    gate_threshold: float = 0.5,
) -> FusionResult:
    """Combine base and reasoning scores behind the agreement gate (R^3 recall).

    `base_scores` is ``(N,)`` or ``(B, N)`` (several base queries, fused by max).
    The reasoning scores are used only when given and ``agreement >=
    gate_threshold``; otherwise the base scores come back unchanged. Pass
    ``gate_threshold=-inf`` to use reasoning without measuring agreement.

    Modes: ``gated_residual`` (reference default), ``max`` (elementwise max,
    non-finite treated as -inf), ``mean`` (the residual rule at weight 0.5: the
    reference's ``mean`` quietly uses the configured weight instead, which only
    equals a mean at w = 0.5), ``rrf`` (:func:`rrf_fusion`).

    Source exclusion is not done here: :func:`top_k` drops excluded ids after
    fusion, which is what the reference's second exclusion pass achieves.
    """
    base = fuse_base_queries(base_scores)
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    if reasoning_scores is None:
        return FusionResult(base, False, agreement)
    reason = as_scores(reasoning_scores, "reasoning_scores")
    if reason.shape != base.shape:
        raise ValueError(f"shape mismatch: base {base.shape} vs reasoning {reason.shape}")
    if agreement is None:
        if gate_threshold != -math.inf:
            raise ValueError("agreement is required to gate reasoning scores (or pass gate_threshold=-inf)")
        passed = True
    else:
        passed = agreement >= gate_threshold
    if not passed:
        return FusionResult(base, False, agreement)
    if mode == "gated_residual":
        fused = gated_residual_fusion(base, reason, weight)
    elif mode == "mean":
        fused = gated_residual_fusion(base, reason, 0.5)
    elif mode == "max":
        fused = np.maximum(_clean(base), _clean(reason))
    elif mode == "rrf":
        fused = rrf_fusion(base, reason, weight, rrf_k)
    else:
        raise ValueError(f"unknown fusion mode {mode!r}")
    return FusionResult(fused, True, agreement)
