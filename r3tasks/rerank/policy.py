"""The protected rerank stage: which recalled candidates the reranker scores, and whether its scores are used.

R^3 reranks a fixed top-K (K = 50) and always fuses the reranker's scores in. A reranker that is weak
on some data then costs rank-1 hits there (-11.7 R@1 on a held-out set where recall was already
strong). Three guards, each off by default (the reference), each a setting in the query section:

- **recall-margin gate** (`rerank_recall_margin_gate`): when the recall's top-1 leads its top-2 by at
  least this much embedding score, recall is confident; the reranker is not asked (as CoVRAGE skips
  refinement when the retrieval margin is wide).
- **recall window** (`rerank_recall_window`): only candidates whose embedding score is within this much
  of recall's top-1 are reranked; the rest keep their recall order below them. Where recall separates
  the target clearly (short web captions, a near-copy of the source edited), the window holds one or two
  candidates and the reranker cannot pull a far one up; where recall cannot tell candidates apart
  (clips sharing a narration, an edit recall ignores), the window is wide and the reranker decides. The
  recall-margin gate is the window's special case "top-2 outside".
- **flat-score gate** (`rerank_flat_gate`): when the reranker's own scores over the block it scored
  span less than this, it cannot tell the candidates apart; the recall order stays.
- **additive fusion** (`final_reranker_scale`): ``embedding + scale * reranker`` on raw scores in place of
  R^3's min-max, so the reranker must outweigh recall's actual lead, not its rank in the block.
- **adaptive depth** (`rerank_start_depth`, `rerank_widen_margin`, `rerank_depth_growth`): score the
  top `start` first and widen (x growth, up to `rerank_k`) only while the reranker is uncertain, i.e.
  its best two raw scores in the block are closer than `rerank_widen_margin`.
- **per-query decision** (`rerank_decision`, `r3tasks.rerank.decision`): a calibrated probability, per
  query, that the reranker is right where it disagrees with recall; from its threshold the query gets the
  strong fusion, below `keep_below` recall's order, in between the fusion above.

Pure logic: the caller hands a `score` callback (live: the model with its stage cache; replay: stored
scores), so the evaluation can replay any policy on scores stored once at the largest depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from r3tasks.query.state import RankedItem
from r3tasks.rerank.decision import FEATURES, Calibration, decision_features
from r3tasks.rerank.final import rerank_topk

ScoreFn = Callable[[Sequence[str]], Mapping[str, float]]


@dataclass(frozen=True)
class RerankPolicy:
    """How deep to rerank and when to keep the recall order. The defaults are R^3's fixed depth."""

    depth: int = 50
    start_depth: int | None = None
    widen_margin: float | None = None
    growth: float = 2.0
    recall_margin_gate: float | None = None
    recall_window: float | None = None
    flat_gate: float | None = None
    embedding_weight: float = 0.4
    reranker_weight: float = 0.6
    reranker_scale: float | None = None  # additive fusion on raw scores in place of min-max (see rerank_topk)
    decision: Calibration | None = None  # per query: the calibration's strong fusion where it is confident

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ValueError(f"rerank depth must be >= 0, got {self.depth}")
        if self.start_depth is not None and self.start_depth < 1:
            raise ValueError(f"rerank start depth must be >= 1, got {self.start_depth}")
        if self.growth <= 1.0:
            raise ValueError(f"rerank depth growth must be > 1, got {self.growth}")

    @property
    def is_reference(self) -> bool:
        return (
            self.start_depth is None
            and self.recall_margin_gate is None
            and self.recall_window is None
            and self.flat_gate is None
            and self.reranker_scale is None
            and self.decision is None
            and (self.embedding_weight, self.reranker_weight)
            == (RerankPolicy.embedding_weight, RerankPolicy.reranker_weight)
        )

    def depths(self, available: int) -> list[int]:
        """The depths tried in turn for a list of `available` recalled items, ending at min(depth, available)."""
        last = min(self.depth, available)
        if last <= 0:
            return []
        if self.start_depth is None:
            return [last]
        out, d = [], min(self.start_depth, last)
        while d < last:
            out.append(d)
            d = min(last, max(d + 1, int(math.ceil(d * self.growth))))
        return out + [last]


def rerank_policy(query_settings: Any) -> RerankPolicy:
    """The policy the query section describes (`r3tasks.settings.QuerySettings`)."""
    q = query_settings
    return RerankPolicy(
        depth=q.rerank_k,
        start_depth=q.rerank_start_depth,
        widen_margin=q.rerank_widen_margin,
        growth=q.rerank_depth_growth,
        recall_margin_gate=q.rerank_recall_margin_gate,
        recall_window=q.rerank_recall_window,
        flat_gate=q.rerank_flat_gate,
        embedding_weight=q.final_embedding_weight,
        reranker_weight=q.final_reranker_weight,
        reranker_scale=q.final_reranker_scale,
        decision=calibration(q.rerank_decision),
    )


def calibration(decision_settings: Any) -> Calibration | None:
    """The `Calibration` of a `query.rerank_decision` settings block (None: no per-query decision)."""
    if decision_settings is None:
        return None
    return Calibration(
        weights=tuple(float(decision_settings.weights[name]) for name in FEATURES),
        bias=decision_settings.bias,
        threshold=decision_settings.threshold,
        reranker_fingerprint=decision_settings.reranker_fingerprint,
        strong_reranker_scale=decision_settings.strong_reranker_scale,
        keep_below=decision_settings.keep_below,
    )


@dataclass(frozen=True)
class RerankOutcome:
    """The final ranking and what the policy did: pairs it asked the reranker for, the depth it stopped at,
    and which gate (if any) kept the recall order."""

    ranked: list[RankedItem]
    pairs: int
    depth: int
    gate: str | None  # "recall_margin", "recall_window", "flat", "decision" or None (the reranker's scores were used)
    probability: float | None = None  # the per-query decision's, when one ran
    fusion: str | None = None  # what that decision gave the query: "strong", "default" or "recall" (order kept)
    fallback: str | None = None  # why a configured decision did not run (calibrated on another reranker)

    def decision(self) -> dict:
        """What the result's `rerank` records; the per-query decision's fields only where one is configured."""
        out = {k: v for k, v in asdict(self).items() if k != "ranked"}
        for key in ("probability", "fusion", "fallback"):
            if out[key] is None:
                del out[key]
        return out


def within_window(recalled: Sequence[tuple[str, float]], window: float | None) -> int:
    """How many of `recalled` (best first) lie within `window` embedding score of the top-1 (all when None)."""
    if window is None or not recalled:
        return len(recalled)
    floor = recalled[0][1] - window
    return sum(1 for _, value in recalled if value >= floor)


def _top_two_gap(values: Sequence[float]) -> float:
    ordered = sorted(values, reverse=True)
    return ordered[0] - ordered[1] if len(ordered) > 1 else math.inf


def apply_policy(
    recalled: Sequence[tuple[str, float]],
    score: ScoreFn,
    policy: RerankPolicy,
    reranker_fingerprint: Callable[[], str] | None = None,
) -> RerankOutcome:
    """Rerank `recalled` (best first) under `policy`, calling `score` only for ids not scored yet.

    A per-query decision runs only for the reranker it was calibrated on: `reranker_fingerprint` (asked only
    when the decision is about to run, so a query that scores nothing loads no model) names the one that
    scored; None trusts the scores to be that reranker's (a replay of its own stored scores).

    `score(ids)` returns raw reranker scores by id; an id it leaves out (or gives a non-finite score) is
    treated as the reference treats a candidate it could not score (end of the block). Errors from
    `score` propagate: the caller decides what a failed query reports.
    """
    recall_order = rerank_topk(recalled, {}, 0)
    if not policy.depths(len(recalled)):
        return RerankOutcome(recall_order, 0, 0, None)
    if policy.recall_margin_gate is not None and len(recalled) > 1:
        if recalled[0][1] - recalled[1][1] >= policy.recall_margin_gate:
            return RerankOutcome(recall_order, 0, 0, "recall_margin")
    inside = within_window(recalled, policy.recall_window)
    depths = policy.depths(inside)
    if policy.recall_window is not None and inside == 1 < min(policy.depth, len(recalled)):
        return RerankOutcome(recall_order, 0, 0, "recall_window")  # one candidate in the window: nothing to reorder
    scores: dict[str, float] = {}
    asked = 0
    for step, depth in enumerate(depths):
        todo = [item_id for item_id, _ in recalled[:depth] if item_id not in scores]
        asked += len(todo)
        for item_id, value in score(todo).items():
            if value is not None and math.isfinite(float(value)):
                scores[str(item_id)] = float(value)
        if step == len(depths) - 1 or policy.widen_margin is None:
            continue  # no widening rule: the last depth (fixed depth, paid in steps)
        block = [scores[i] for i, _ in recalled[:depth] if i in scores]
        if block and _top_two_gap(block) >= policy.widen_margin:
            break  # the reranker singles one candidate out: confident enough to stop here
    block = [scores[i] for i, _ in recalled[:depth] if i in scores]
    if policy.flat_gate is not None and block and max(block) - min(block) < policy.flat_gate:
        return RerankOutcome(recall_order, asked, depth, "flat")
    fusion = (policy.embedding_weight, policy.reranker_weight, policy.reranker_scale)
    probability = level = fallback = None
    decision = policy.decision
    if decision is not None and block and reranker_fingerprint is not None:
        running = reranker_fingerprint()
        if running != decision.reranker_fingerprint:
            fallback = (
                f"rerank_decision was calibrated on reranker {decision.reranker_fingerprint}, not this one "
                f"({running}): the default fusion ran"
            )
            decision = None
    if decision is not None and block:
        probability = decision.probability(decision_features(recalled, scores, depth))
        level = decision.level(probability)
        if level == "recall":
            # Recall's order, carrying the scores the reranker gave (the result shows what it would have chosen).
            kept = [RankedItem(item.id, item.score, item.embedding_score, scores.get(item.id)) for item in recall_order]
            return RerankOutcome(kept, asked, depth, "decision", probability, level)
        if level == "strong":  # additive at the calibration's own scale, or (None) R^3's reference min-max weights
            fusion = (RerankPolicy.embedding_weight, RerankPolicy.reranker_weight, decision.strong_reranker_scale)
    ranked = rerank_topk(recalled, scores, depth, *fusion)
    return RerankOutcome(ranked, asked, depth, None, probability, level, fallback)


def stored_scorer(ranked: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, float]], ScoreFn, int]:
    """(recall order, a score callback over stored raw scores, depth stored) from one result's `ranked` list.

    The reference reranks the top-K in recall order and each pair's score does not depend on the others,
    so scores stored at depth K replay any policy whose depths stay within K.
    """
    recalled = sorted(((str(r["id"]), float(r["embedding_score"])) for r in ranked), key=lambda x: -x[1])
    stored = {str(r["id"]): float(r["reranker_score"]) for r in ranked if r.get("reranker_score") is not None}
    depth = 0
    for item_id, _ in recalled:
        if item_id not in stored:
            break
        depth += 1

    def score(ids: Sequence[str]) -> Mapping[str, float]:
        return {i: stored[i] for i in ids if i in stored}

    return recalled, score, depth
