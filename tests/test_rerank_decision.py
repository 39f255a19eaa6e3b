"""The per-query rerank decision: its features, its fit, and the fusion it picks per query."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from r3tasks.rerank.decision import FEATURES, Calibration, decision_features, fit_logistic
from r3tasks.rerank.final import rerank_topk
from r3tasks.rerank.policy import RerankPolicy, apply_policy, rerank_policy
from r3tasks.settings.tree import load_settings

# Recall: c0 leads c1 by 0.03; c2 and c3 share one caption (a tie); c5 is far below.
RECALLED = [("c0", 0.80), ("c1", 0.77), ("c2", 0.75), ("c3", 0.75), ("c4", 0.72), ("c5", 0.60)]
# The reranker prefers c2 (and its caption twin c3) by a wide margin over recall's top-1.
SCORES = {"c0": -1.0, "c1": -2.5, "c2": -0.5, "c3": -0.5, "c4": -3.0, "c5": -1.0}
DEFAULT = RerankPolicy(depth=6, reranker_scale=0.04)


def scorer(ids):
    return {i: SCORES[i] for i in ids}


def confident(threshold: float, bias: float = 0.0) -> Calibration:
    # Only the reranker's lead counts: 0.5 nats of lead x 10 = z of 5, p ~ 0.993.
    weights = tuple(10.0 if name == "reranker_lead" else 0.0 for name in FEATURES)
    return Calibration(weights, bias, threshold, reranker_fingerprint="rr-1")


def test_features_read_both_orders() -> None:
    f = decision_features(RECALLED, SCORES, 6)
    assert set(f) == set(FEATURES)
    assert f["recall_margin"] == pytest.approx(0.03)
    assert f["recall_spread"] == pytest.approx(0.20)
    assert f["reranker_lead"] == pytest.approx(0.5)  # -0.5 (c2) against -1.0 (c0)
    assert f["reranker_gap"] == pytest.approx(0.0)  # c2 and c3 tie at the reranker's top
    assert f["choice_depth"] == pytest.approx(0.05)  # c2 sits 0.05 below recall's top-1
    assert f["near_ties"] == pytest.approx(0.0)  # nothing ties with c0
    assert -1.0 <= f["rank_agreement"] < 0.5


def test_ties_with_the_top_one_are_counted() -> None:
    tied = [("a", 0.9), ("b", 0.9), ("c", 0.9), ("d", 0.5)]
    f = decision_features(tied, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}, 4)
    assert f["near_ties"] == pytest.approx(math.log(3))
    assert f["rank_agreement"] == 0.0  # the reranker's scores are flat: no order to agree with


def test_a_confident_query_gets_the_strong_fusion_and_an_unsure_one_the_default() -> None:
    default_ranked = apply_policy(RECALLED, scorer, DEFAULT).ranked
    assert default_ranked[0].id == "c0"  # additive 0.04: 0.5 nats x 0.04 = 0.02 does not beat a 0.05 lead
    strong = apply_policy(RECALLED, scorer, RerankPolicy(depth=6, reranker_scale=0.04, decision=confident(0.5)))
    assert strong.fusion == "strong" and strong.probability > 0.99
    assert strong.ranked == rerank_topk(RECALLED, SCORES, 6, 0.4, 0.6)  # R^3's min-max: the reranker's choice first
    assert strong.ranked[0].id in {"c2", "c3"}
    unsure = apply_policy(RECALLED, scorer, RerankPolicy(depth=6, reranker_scale=0.04, decision=confident(0.999)))
    assert unsure.fusion == "default"
    assert unsure.ranked == default_ranked
    assert unsure.decision()["probability"] == unsure.probability
    # Below keep_below the reranker is not trusted at all: recall's order, the block still scored.
    doubt = replace(confident(0.9999), keep_below=0.9995)
    kept = apply_policy(RECALLED, scorer, RerankPolicy(depth=6, reranker_scale=0.04, decision=doubt))
    assert kept.fusion == "recall" and kept.gate == "decision" and kept.pairs == 6
    assert [item.id for item in kept.ranked] == [item_id for item_id, _ in RECALLED]
    assert [item.reranker_score for item in kept.ranked] == [SCORES[item_id] for item_id, _ in RECALLED]


def test_a_calibration_for_another_reranker_falls_back_to_the_default_and_says_so() -> None:
    policy = RerankPolicy(depth=6, reranker_scale=0.04, decision=confident(0.5))
    outcome = apply_policy(RECALLED, scorer, policy, lambda: "rr-2")
    assert outcome.fusion is None and outcome.probability is None
    assert outcome.ranked == apply_policy(RECALLED, scorer, DEFAULT).ranked
    assert "rr-1" in outcome.fallback and "rr-2" in outcome.fallback and "default fusion" in outcome.fallback
    same = apply_policy(RECALLED, scorer, policy, lambda: "rr-1")
    assert same.fusion == "strong" and same.fallback is None


def test_a_query_that_scores_nothing_never_asks_for_the_reranker() -> None:
    # Only one candidate within the window: recall's order stands, no pair is scored, no fingerprint asked.
    asked = []
    policy = RerankPolicy(depth=6, recall_window=0.01, reranker_scale=0.04, decision=confident(0.5))
    outcome = apply_policy(RECALLED, scorer, policy, lambda: asked.append(1) or "rr-1")
    assert outcome.gate == "recall_window" and outcome.pairs == 0 and not asked


def test_logistic_fit_separates_and_respects_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)) * [1.0, 100.0]  # the second feature in other units
    y = (x[:, 0] + x[:, 1] / 100.0 > 0).astype(float)
    weights, bias = fit_logistic(x, y, l2=0.1)
    predicted = (x @ weights + bias) > 0
    assert (predicted == (y > 0)).mean() > 0.95
    assert weights[0] > 0 and weights[1] > 0 and weights[1] < weights[0]  # raw units: 100x smaller weight
    # Rows weighted zero do not count: flipping their labels changes nothing.
    flipped = y.copy()
    flipped[:100] = 1 - flipped[:100]
    sample = np.ones(400)
    sample[:100] = 0.0
    again, again_bias = fit_logistic(x, flipped, l2=0.1, sample_weight=sample)
    alone, alone_bias = fit_logistic(x[100:], y[100:], l2=0.1)
    np.testing.assert_allclose(again, alone, rtol=1e-6)
    assert again_bias == pytest.approx(alone_bias)


def test_settings_block_becomes_the_policy_decision() -> None:
    block = {
        "weights": {name: 0.5 for name in FEATURES},
        "bias": -1.0,
        "threshold": 0.7,
        "reranker_fingerprint": "abc",
        "strong_reranker_scale": 0.1,
    }
    policy = rerank_policy(load_settings(preset="offline", query={"rerank_decision": block}).query)
    assert policy.decision == Calibration((0.5,) * len(FEATURES), -1.0, 0.7, "abc", 0.1, keep_below=0.0)
    assert policy.reranker_scale == 0.04  # the default fusion stays the preset's
    assert not policy.is_reference


def test_settings_refuse_a_decision_with_missing_or_unknown_features() -> None:
    block = {"weights": {"recall_margin": 1.0, "typo": 2.0}, "bias": 0.0, "threshold": 0.5, "reranker_fingerprint": "x"}
    with pytest.raises(ValidationError) as info:
        load_settings(query={"rerank_decision": block})
    message = str(info.value)
    assert "rerank_decision.weights" in message and "unknown ['typo']" in message and "reranker_gap" in message


def _synthetic_set(name: str, n: int, recall_right: float, seed: int) -> tuple:
    """Queries of 5 candidates in a 0.12 window, recall's top-1 at least 0.04 ahead. Where recall is wrong, the
    reranker prefers the target by 0.8 (too little for additive 0.04 to overturn the lead, enough for
    min-max); where recall is right, it prefers another candidate by a narrow 0.3."""
    rng = np.random.default_rng(seed)
    results, qrels = [], {}
    for q in range(n):
        ids = [f"{name}{q}-{k}" for k in range(5)]
        embedding = [0.80, 0.76, 0.75, 0.74, 0.73]
        reranker = list(rng.normal(-2.0, 0.05, size=5))
        if rng.random() < recall_right:
            target = ids[0]
            reranker[int(rng.integers(1, 5))] = reranker[0] + 0.3  # a narrow, wrong preference
        else:
            k = int(rng.integers(1, 5))
            target = ids[k]
            reranker[k] = reranker[0] + 0.8  # a wide, right one
        ranked = [
            {"id": i, "embedding_score": e, "reranker_score": float(r), "score": e}
            for i, e, r in zip(ids, embedding, reranker)
        ]
        results.append({"id": f"{name}{q}", "ranked": ranked})
        qrels[f"{name}{q}"] = {target: 1}
    base = {"R@1": 100.0 * sum(qrels[r["id"]] == {r["ranked"][0]["id"]: 1} for r in results) / n}
    split = {"dataset": name, "setting": "global", "queries": n}
    return split, results, qrels, base


def test_calibration_on_dev_sets_learns_when_to_trust_the_reranker() -> None:
    from r3tasks.evaluation.calibrate import choose

    pooled = [_synthetic_set("weak", 100, 0.3, 1), _synthetic_set("strong", 100, 0.9, 2)]
    default = RerankPolicy(depth=20, recall_window=0.12, reranker_scale=0.04)
    rows, best = choose(pooled, default, "rr-1", strong_scales=(None, 0.2), thresholds=(0.0, 0.3, 0.6, 0.9))
    assert best is not None and best["passes"]
    weak, strong = best["sets"]
    assert weak["delta_R@1"] > 50  # most of the weak set's wrong rank-1s fixed
    assert strong["lost"] <= 0.02 and strong["delta_R@1"] > 0
    assert best["weights"]["reranker_lead"] > 0  # a wider lead of the reranker means trust it
    # The grid reads outcomes precomputed per query; the choice with its shipped weights, replayed through the
    # policy, agrees.
    assert [row["metrics"]["R@1"] for row in best["replayed"]] == [s["R@1"] for s in best["fitted"]]
    # R^3's fixed min-max, for contrast, would move the strong set's right rank-1s off.
    from r3tasks.evaluation.replay import flips

    reference = flips(pooled[1][1], pooled[1][2], RerankPolicy(depth=20))
    assert reference["lost"] > 0.5


def test_the_rule_reads_each_query_with_weights_fitted_without_it() -> None:
    from r3tasks.evaluation.calibrate import fit, fold_of, held_out_probabilities, levels, probabilities_of
    from r3tasks.rerank.decision import Calibration

    default = RerankPolicy(depth=20, recall_window=0.12, reranker_scale=0.04)
    per_set = [
        (split["dataset"], levels(results, qrels, default, (0.2,))[0.2])
        for split, results, qrels, _ in (_synthetic_set("weak", 60, 0.3, 3), _synthetic_set("strong", 60, 0.9, 4))
    ]
    assert {q.fold for _, queries in per_set for q in queries} == {0, 1, 2, 3, 4}
    assert fold_of("weak7") == fold_of("weak7") and fold_of("weak7", 2) in (0, 1)
    probe = Calibration((0.0,) * 7, 0.0, 0.5, "rr-1", 0.2)
    held = held_out_probabilities(per_set, probe)
    # A query of fold 2 gets exactly what a fit on the other folds says of it, not what the fit on all says.
    weights, bias, _ = fit([(name, [q for q in queries if q.fold != 2]) for name, queries in per_set])
    without_fold_2 = probabilities_of(per_set[0][1], Calibration(tuple(map(float, weights)), bias, 0.5, "rr-1", 0.2))
    everything = fit(per_set)
    with_all = probabilities_of(
        per_set[0][1], Calibration(tuple(map(float, everything[0])), everything[1], 0.5, "rr-1")
    )
    in_fold_2 = [j for j, q in enumerate(per_set[0][1]) if q.fold == 2]
    assert in_fold_2 and all(held[0][j] == without_fold_2[j] for j in in_fold_2)
    assert any(held[0][j] != with_all[j] for j in in_fold_2)
