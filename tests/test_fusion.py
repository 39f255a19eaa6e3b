"""Fusion, recall and re-ranking maths (numerics of the R^3 reference, Lee-zixu/R-3 validate.py)."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

from r3tasks.query.fusion import fuse, fuse_base_queries, gated_residual_fusion, reasoning_agreement, rrf_fusion
from r3tasks.query.state import RankedItem
from r3tasks.query.topk import top_k
from r3tasks.rerank.final import final_fusion, minmax, rerank_topk

INF = math.inf
NAN = math.nan


def test_agreement_is_the_max_cosine_over_base_queries() -> None:
    base = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])  # second row not unit length on purpose
    reason = np.array([0.0, 2.0, 2.0])  # cos with row 0: 0; with row 1: 1/sqrt(2)
    assert reasoning_agreement(base, reason) == pytest.approx(1 / math.sqrt(2))
    assert reasoning_agreement(base[0], reason) == pytest.approx(0.0)
    assert reasoning_agreement(base, np.zeros(3)) == 0.0
    with pytest.raises(ValueError):
        reasoning_agreement(base, np.ones(4))


def test_gated_residual_follows_the_reference_finite_rules() -> None:
    base = np.array([0.2, -INF, 0.4, NAN, -INF, 0.9])
    reason = np.array([0.6, 0.7, NAN, 0.1, -INF, INF])
    out = gated_residual_fusion(base, reason, 0.5)
    assert out[0] == pytest.approx(0.4)  # both finite: base + w (reason - base)
    assert out[1] == pytest.approx(0.7)  # only reasoning finite: reasoning
    assert out[2] == pytest.approx(0.4)  # reasoning missing: base unchanged
    assert out[3] == pytest.approx(0.1)  # NaN base counts as missing
    assert out[4] == -INF  # neither: base (still excluded)
    assert out[5] == pytest.approx(0.9)  # +inf reasoning is not finite: base kept
    assert gated_residual_fusion(base[:1], reason[:1], 0.0)[0] == pytest.approx(0.2)
    assert gated_residual_fusion(base[:1], reason[:1], 1.0)[0] == pytest.approx(0.6)


def test_several_base_queries_fuse_by_max_and_nan_does_not_hide_a_score() -> None:
    scores = np.array([[0.1, 0.5, NAN], [0.3, 0.2, 0.4]])
    np.testing.assert_allclose(fuse_base_queries(scores), [0.3, 0.5, 0.4])
    np.testing.assert_allclose(fuse_base_queries(np.array([0.1, 0.2])), [0.1, 0.2])


def test_gate_failure_returns_base_scores_unchanged() -> None:
    base = np.array([0.9, 0.1, 0.5])
    reason = np.array([0.0, 1.0, 0.5])
    failed = fuse(base, reason, mode="gated_residual", weight=0.5, rrf_k=60, agreement=0.49, gate_threshold=0.5)
    assert not failed.gate_used
    assert failed.agreement == 0.49
    np.testing.assert_array_equal(failed.scores, base)
    passed = fuse(base, reason, mode="gated_residual", weight=0.5, rrf_k=60, agreement=0.5, gate_threshold=0.5)
    assert passed.gate_used  # the gate is >=, not >
    np.testing.assert_allclose(passed.scores, [0.45, 0.55, 0.5])
    none = fuse(base, None, mode="gated_residual", weight=0.5, rrf_k=60, agreement=None, gate_threshold=0.5)
    assert not none.gate_used
    np.testing.assert_array_equal(none.scores, base)


def test_gate_needs_an_agreement_unless_turned_off() -> None:
    base, reason = np.array([0.2, 0.4]), np.array([0.6, 0.0])
    with pytest.raises(ValueError, match="agreement"):
        fuse(base, reason, mode="max", weight=0.5, rrf_k=60, agreement=None, gate_threshold=0.5)
    off = fuse(base, reason, mode="max", weight=0.5, rrf_k=60, agreement=None, gate_threshold=-INF)
    assert off.gate_used
    np.testing.assert_allclose(off.scores, [0.6, 0.4])


def test_fuse_takes_several_base_queries() -> None:
    base = np.array([[0.1, 0.8], [0.6, 0.2]])
    res = fuse(
        base, np.array([0.0, 0.0]), mode="gated_residual", weight=0.5, rrf_k=60, agreement=0.9, gate_threshold=0.5
    )
    np.testing.assert_allclose(res.scores, [0.3, 0.4])


def test_max_and_mean_modes() -> None:
    base = np.array([0.2, NAN, 0.8])
    reason = np.array([0.6, 0.3, -INF])

    def run(mode: str) -> np.ndarray:
        return fuse(base, reason, mode=mode, weight=0.1, rrf_k=60, agreement=1.0, gate_threshold=0.5).scores  # type: ignore[arg-type]

    np.testing.assert_allclose(run("max"), [0.6, 0.3, 0.8])
    np.testing.assert_allclose(run("mean"), [0.4, 0.3, 0.8])  # the mean, whatever the configured weight
    with pytest.raises(ValueError):
        run("nope")


def test_rrf_uses_one_based_ranks_and_the_weight() -> None:
    base = np.array([0.9, 0.5, 0.1, -INF])
    reason = np.array([0.1, 0.9, 0.5, 0.7])
    out = rrf_fusion(base, reason, 0.5, 60)
    # base ranks 1,2,3,-; reasoning ranks 4,1,3,2
    expected = [1 / 61 + 0.5 / 64, 1 / 62 + 0.5 / 61, 1 / 63 + 0.5 / 63, 0.5 / 62]
    np.testing.assert_allclose(out, expected)
    both_missing = rrf_fusion(np.array([NAN, 1.0]), np.array([-INF, 1.0]), 0.5, 60)
    assert both_missing[0] == -INF
    via_fuse = fuse(base, reason, mode="rrf", weight=0.5, rrf_k=60, agreement=0.7, gate_threshold=0.5)
    np.testing.assert_allclose(via_fuse.scores, expected)
    # ties take ranks in input order, so the earlier item wins
    tied = rrf_fusion(np.array([0.5, 0.5]), np.array([NAN, NAN]), 1.0, 60)
    assert tied[0] > tied[1]


def test_top_k_excludes_the_source_and_non_finite_scores_and_breaks_ties_by_position() -> None:
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    scores = np.array([0.5, 0.9, 0.5, NAN, INF, -INF, 0.7])
    assert top_k(scores, ids, 10) == [("b", 0.9), ("g", 0.7), ("a", 0.5), ("c", 0.5)]
    assert top_k(scores, ids, 2, exclude={"b"}) == [("g", 0.7), ("a", 0.5)]
    assert top_k(scores, ids, 0) == []
    with pytest.raises(ValueError):
        top_k(scores, ids[:3], 2)


def test_fused_source_is_still_excluded() -> None:
    # The reference re-excludes after fusion because a reasoning-only score would revive the source.
    ids = ["src", "x", "y"]
    base = np.array([-INF, 0.2, 0.1])
    reason = np.array([0.99, 0.3, 0.1])
    fused = fuse(base, reason, mode="gated_residual", weight=0.5, rrf_k=60, agreement=0.9, gate_threshold=0.5)
    assert fused.scores[0] == pytest.approx(0.99)
    assert [i for i, _ in top_k(fused.scores, ids, 3, exclude={"src"})] == ["x", "y"]


def test_top_k_matches_a_full_sort_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, size=500).astype(float)  # many ties
    ids = [f"i{j:03d}" for j in range(500)]
    got = top_k(scores, ids, 50)
    expected = sorted(range(500), key=lambda j: (-scores[j], j))[:50]
    assert [i for i, _ in got] == [ids[j] for j in expected]


def test_minmax_reference_behaviour() -> None:
    np.testing.assert_allclose(minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(minmax([0.3, 0.3, 0.3]), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(minmax([0.3, 0.3 + 5e-9]), [1.0, 1.0])  # below 1e-8 counts as constant
    assert minmax([]).size == 0
    with pytest.raises(ValueError):
        minmax([0.1, -INF])


def test_final_fusion_weights_min_max_scores() -> None:
    out = final_fusion([0.9, 0.8, 0.7], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(out, [0.4, 0.2 + 0.6, 0.3])
    np.testing.assert_allclose(final_fusion([0.5, 0.5], [0.1, 0.3], 0.5, 0.5), [0.5, 1.0])


def test_rerank_only_touches_the_top_k_and_the_rest_follow_in_recall_order() -> None:
    recalled = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5)]
    ranked = rerank_topk(recalled, {"a": 0.1, "b": 0.2, "c": 0.9, "d": 5.0, "e": 9.0}, k=3)
    # fused: a 0.4*1 + 0.6*0 = 0.4, b 0.4*0.5 + 0.6*0.125 = 0.275, c 0 + 0.6 = 0.6
    assert [r.id for r in ranked] == ["c", "a", "b", "d", "e"]
    assert [r.score for r in ranked[:3]] == pytest.approx([0.6, 0.4, 0.275])
    assert ranked[0] == RankedItem("c", pytest.approx(0.6), 0.7, 0.9)
    assert ranked[3].reranker_score is None and ranked[4].reranker_score is None  # not reranked
    scores = [r.score for r in ranked]
    assert all(x >= y for x, y in pairwise(scores))
    assert ranked[3].score < min(r.score for r in ranked[:3])


def test_rerank_with_k_zero_or_no_scores_keeps_the_recall_order() -> None:
    recalled = [("a", 0.9), ("b", 0.8)]
    for ranked in (rerank_topk(recalled, {}, k=0), rerank_topk(recalled, {"z": 1.0}, k=2)):
        assert [(r.id, r.score, r.reranker_score) for r in ranked] == [("a", 0.9, None), ("b", 0.8, None)]


def test_rerank_candidate_without_a_score_drops_to_the_end_of_the_block() -> None:
    recalled = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]
    ranked = rerank_topk(recalled, np.array([0.1, NAN, 0.9]), k=3)
    assert [r.id for r in ranked] == ["c", "a", "b", "d"]
    assert ranked[2].reranker_score is None
    scores = [r.score for r in ranked]
    assert all(x > y for x, y in pairwise(scores))
    with pytest.raises(ValueError):
        rerank_topk(recalled, np.array([0.1, 0.2]), k=3)


def test_rerank_random_lists_are_monotone_and_block_order_is_the_fused_order() -> None:
    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(1, 30))
        k = int(rng.integers(0, n + 2))
        emb = np.sort(rng.integers(0, 6, size=n).astype(float) / 10)[::-1]
        recalled = [(f"v{j}", float(emb[j])) for j in range(n)]
        rr = {f"v{j}": float(rng.integers(0, 4)) for j in range(n) if rng.random() > 0.2}
        ranked = rerank_topk(recalled, rr, k=k)
        assert sorted(r.id for r in ranked) == sorted(i for i, _ in recalled)
        scores = [r.score for r in ranked]
        assert all(x >= y for x, y in pairwise(scores)), trial
        m = min(k, n)
        block = [j for j in range(m) if f"v{j}" in rr]
        if block:
            e = np.array([emb[j] for j in block])
            r = np.array([rr[f"v{j}"] for j in block])
            en = (e - e.min()) / (e.max() - e.min()) if e.max() - e.min() >= 1e-8 else np.ones_like(e)
            rn = (r - r.min()) / (r.max() - r.min()) if r.max() - r.min() >= 1e-8 else np.ones_like(r)
            fused = 0.4 * en + 0.6 * rn
            want = [f"v{block[i]}" for i in sorted(range(len(block)), key=lambda i: (-fused[i], i))]
            assert [x.id for x in ranked[: len(block)]] == want
        rest = [x.id for x in ranked[len(block) :]]
        assert rest == [f"v{j}" for j in range(n) if j >= m or f"v{j}" not in rr or not block]


def test_rerank_rejects_non_finite_recall_scores() -> None:
    with pytest.raises(ValueError, match="'a'"):
        rerank_topk([("a", -INF)], {"a": 1.0}, k=1)


def test_source_restatement_scores_copies_high_and_rewrites_low() -> None:
    from r3tasks.query.fusion import source_restatement

    source = "The camera wearer takes the sieve"
    assert source_restatement("The camera wearer takes the sieve.", source) == 1.0
    assert source_restatement("the CAMERA wearer, takes the sieve", source) == 1.0
    assert source_restatement("The camera wearer shakes the sieve over the sink", source) < 0.8
    assert source_restatement("A dog runs across a snowy field", source) < 0.2
    assert source_restatement("", source) == 0.0


def test_names_the_edit_needs_a_word_the_edit_asks_for_and_the_source_lacks() -> None:
    from r3tasks.query.fusion import names_the_edit
    from r3tasks.settings.query import QuerySettings

    words = QuerySettings().edit_gate_function_words

    def names(reasoning: str, source: str, edit: str) -> bool:
        return names_the_edit(reasoning, source, edit, words)

    source = "#C C takes the knife"
    assert names("#C C takes the fork", source, "Change knife to fork")
    assert not names("#C C takes the knife", source, "Change knife to fork")  # a copy
    assert not names("#C C washes the knife", source, "Change knife to fork")  # another change
    assert not names("#C C takes it to the table", source, "Change it to a fork")  # "to", "it" are not asked for
    assert names("The same street AT NIGHT.", "a busy street by day", "make it night")
    assert names("#C C takes", source, "Without the knife")  # nothing new to name: not checked
    # The word list is a setting: with "fork" counted as a function word, the edit asks for nothing new.
    assert names_the_edit("#C C takes the knife", source, "Change knife to fork", [*words, "fork"])
