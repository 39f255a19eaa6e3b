"""Grids of settings run as evaluation arms: reranker weights, rerank policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from r3tasks.evaluation.metrics import evaluate
from r3tasks.rerank.final import rerank_topk
from r3tasks.rerank.policy import RerankPolicy, apply_policy, stored_scorer

# Cosine windows below recall's top-1 (absolute: a window is in the embedder's units, like the margin gate).
RECALL_WINDOWS = (0.02, 0.05, 0.08, 0.12, 0.16, 0.2)


RERANKER_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def reranker_weight_sweep(
    results: Sequence[dict], qrels: dict[str, dict[str, int]], weights: Sequence[float] = RERANKER_WEIGHTS
) -> list[dict]:
    """Metrics of the rerank arm's stored scores re-fused with other final weights (`wr`, `we = 1 - wr`).

    No model runs: every ranked item carries its embedding and reranker scores, so this shows what the
    reranker adds at each weight (0 is the recall order, 1 the reranker alone). Pick a weight on a
    held-out split (`r3 eval --skip`), never on the queries you report.
    """
    sweep = []
    for weight in weights:
        run: dict[str, dict[str, float]] = {}
        for result in results:
            ranked = result["ranked"]
            # Recall order is embedding-score order (the reranker only reorders its top-K block).
            recalled = sorted(((r["id"], r["embedding_score"]) for r in ranked), key=lambda x: -x[1])
            scores = {r["id"]: r["reranker_score"] for r in ranked if r["reranker_score"] is not None}
            reordered = rerank_topk(recalled, scores, len(scores), 1.0 - weight, weight) if scores else []
            run[result["id"]] = {item.id: item.score for item in reordered} or {r["id"]: r["score"] for r in ranked}
        sweep.append({"reranker_weight": weight, "metrics": evaluate(run, qrels)})
    return sweep


def policy_sweep(
    results: Sequence[dict], qrels: dict[str, dict[str, int]], policies: Sequence[tuple[str, RerankPolicy]]
) -> list[dict]:
    """Metrics and reranker pairs per query of rerank policies replayed on a fixed-depth arm's stored scores.

    No model runs: each pair's score does not depend on the others, so scores stored once at depth K
    replay any depth schedule or gate within K (deeper depths are capped at what was stored). Choose on a
    dev split (`r3 eval --skip`), never on the queries you report.
    """
    rows = []
    for name, policy in policies:
        run: dict[str, dict[str, float]] = {}
        pairs, gated = 0, 0
        for result in results:
            recalled, score, depth = stored_scorer(result["ranked"])
            if depth == 0:
                run[result["id"]] = {r["id"]: r["score"] for r in result["ranked"]}
                continue
            outcome = apply_policy(recalled, score, replace(policy, depth=min(policy.depth, depth)))
            run[result["id"]] = {item.id: item.score for item in outcome.ranked}
            pairs += outcome.pairs
            gated += outcome.gate is not None
        n = max(len(results), 1)
        rows.append(
            {
                "policy": name,
                "settings": _policy_settings(policy),
                "metrics": evaluate(run, qrels),
                "pairs_per_query": pairs / n,
                "kept_recall_order": gated / n,
            }
        )
    return rows


def _policy_settings(policy: RerankPolicy) -> dict:
    return {
        "rerank_k": policy.depth,
        "rerank_start_depth": policy.start_depth,
        "rerank_widen_margin": policy.widen_margin,
        "rerank_depth_growth": policy.growth,
        "rerank_recall_margin_gate": policy.recall_margin_gate,
        "rerank_recall_window": policy.recall_window,
        "rerank_flat_gate": policy.flat_gate,
        "final_embedding_weight": policy.embedding_weight,
        "final_reranker_weight": policy.reranker_weight,
        "final_reranker_scale": policy.reranker_scale,
    }


def policy_grid(
    results: Sequence[dict], current: RerankPolicy, depth: int | None = None
) -> list[tuple[str, RerankPolicy]]:
    """Policies worth replaying: fixed depths, adaptive depth from 5, the recall-margin and flat-score gates,
    and the settings' own policy. Margins are quantiles of this run's own scores (the reranker's units
    differ per reranker), printed as absolute values to put in the settings."""
    # The reference at the depth the scores were stored at (`depth`, default the settings' own).
    base = replace(
        current,
        depth=current.depth if depth is None else depth,
        start_depth=None,
        widen_margin=None,
        recall_margin_gate=None,
        recall_window=None,
        flat_gate=None,
        embedding_weight=RerankPolicy.embedding_weight,
        reranker_weight=RerankPolicy.reranker_weight,
        reranker_scale=None,
    )
    gaps5, recall_gaps, spreads = [], [], []
    for result in results:
        recalled, score, depth = stored_scorer(result["ranked"])
        if depth < 2:
            continue
        block = list(score([i for i, _ in recalled[: min(5, depth)]]).values())
        gaps5.append(sorted(block)[-1] - sorted(block)[-2])
        recall_gaps.append(recalled[0][1] - recalled[1][1])
        full = list(score([i for i, _ in recalled[:depth]]).values())
        spreads.append(max(full) - min(full))
    if not gaps5:
        return [("reference", base)]

    def q(values: list[float], p: float) -> float:
        return round(float(np.quantile(values, p)), 4)

    grid: list[tuple[str, RerankPolicy]] = [("reference", base)]
    grid += [(f"fixed depth {d}", replace(base, depth=d)) for d in (5, 10, 20) if d < base.depth]
    for p in (0.25, 0.5, 0.75, 0.9):
        m = q(gaps5, p)
        grid.append((f"adaptive 5, widen margin {m} (q{int(p * 100)})", replace(base, start_depth=5, widen_margin=m)))
        # Rerank the top 5; only an uncertain query pays for the full depth.
        grid.append(
            (
                f"adaptive 5 -> {base.depth}, widen margin {m} (q{int(p * 100)})",
                replace(base, start_depth=5, widen_margin=m, growth=float(base.depth)),
            )
        )
    for p in (0.5, 0.75, 0.9):
        g = q(recall_gaps, p)
        if g <= 0:
            continue  # ties at the top: a zero gate would keep every query's recall order
        grid.append((f"recall gate {g} (q{int(p * 100)})", replace(base, recall_margin_gate=g)))
        grid.append(
            (
                f"adaptive 5 (q50) + recall gate {g}",
                replace(base, start_depth=5, widen_margin=q(gaps5, 0.5), recall_margin_gate=g),
            )
        )
    for window in RECALL_WINDOWS:
        grid.append((f"recall window {window}", replace(base, recall_window=window)))
    for p in (0.1, 0.25):
        f = q(spreads, p)
        grid.append((f"flat gate {f} (q{int(p * 100)})", replace(base, flat_gate=f)))
    if not (current.is_reference and current.depth == base.depth):
        grid.append(("settings' policy", current))
    return grid
