"""Metrics against pytrec_eval (trec_eval) on random runs full of ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from r3tasks.evaluation.metrics import METRIC_KEYS, evaluate, per_query, ranked_ids, ranking_to_run

pytrec_eval = pytest.importorskip("pytrec_eval")

TREC_MEASURES = {"recall.1,5,10,50", "success.1,5,10,50", "recip_rank", "ndcg_cut.10"}


def _random_case(
    seed: int, n_queries: int = 40, n_docs: int = 80, max_rel: int = 1, graded: bool = False
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    rng = np.random.default_rng(seed)
    docs = [f"d{j:02d}" for j in range(n_docs)]
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(n_queries):
        qid = f"q{q}"
        retrieved = rng.choice(n_docs, size=int(rng.integers(1, 70)), replace=False)
        # Only a few distinct score values: ties everywhere, so the tie-break decides the ranks.
        run[qid] = {docs[j]: float(rng.integers(0, 4)) / 4 for j in retrieved}
        n_rel = int(rng.integers(1, max_rel + 1))
        rel = rng.choice(n_docs, size=n_rel, replace=False)
        qrels[qid] = {docs[j]: (int(rng.integers(1, 4)) if graded else 1) for j in rel}
        for j in rng.choice(n_docs, size=3, replace=False):  # judged non-relevant
            qrels[qid].setdefault(docs[j], 0)
    return run, qrels


def _trec(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    return pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_relevant_matches_trec_recall_success_rr_and_ndcg(seed: int) -> None:
    run, qrels = _random_case(seed)
    ours, trec = per_query(run, qrels), _trec(run, qrels)
    assert ours.keys() == trec.keys()
    for qid, t in trec.items():
        for k in (1, 5, 10, 50):
            assert ours[qid][f"R@{k}"] == pytest.approx(100 * t[f"recall_{k}"]), (qid, k)
            assert ours[qid][f"R@{k}"] == pytest.approx(100 * t[f"success_{k}"]), (qid, k)
        assert ours[qid]["MRR"] == pytest.approx(t["recip_rank"])
        assert ours[qid]["nDCG@10"] == pytest.approx(t["ndcg_cut_10"])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_multi_relevant_graded_matches_trec_success_rr_and_ndcg(seed: int) -> None:
    run, qrels = _random_case(seed, max_rel=5, graded=True)
    ours, trec = per_query(run, qrels), _trec(run, qrels)
    means = evaluate(run, qrels)
    for qid, t in trec.items():
        for k in (1, 5, 10, 50):
            assert ours[qid][f"R@{k}"] == pytest.approx(100 * t[f"success_{k}"]), (qid, k)
            assert ours[qid][f"R@{k}"] >= 100 * t[f"recall_{k}"] - 1e-9
        assert ours[qid]["MRR"] == pytest.approx(t["recip_rank"])
        assert ours[qid]["nDCG@10"] == pytest.approx(t["ndcg_cut_10"])
    n = len(trec)
    assert means["MRR"] == pytest.approx(sum(t["recip_rank"] for t in trec.values()) / n)
    assert means["nDCG@10"] == pytest.approx(sum(t["ndcg_cut_10"] for t in trec.values()) / n)
    assert means["R@10"] == pytest.approx(100 * sum(t["success_10"] for t in trec.values()) / n)


def test_hit_rate_and_trec_recall_differ_with_several_relevant_items() -> None:
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"q": {"a": 1, "c": 1}}
    trec = _trec(run, qrels)["q"]
    assert trec["recall_1"] == pytest.approx(0.5)
    assert evaluate(run, qrels)["R@1"] == 100.0


def test_ties_break_by_item_id_descending_like_trec_eval() -> None:
    assert ranked_ids({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5, "y": 2.0}) == ["y", "c", "b", "a", "z"]
    run = {"q": {"a": 1.0, "b": 1.0}}
    assert evaluate(run, {"q": {"a": 1}})["R@1"] == 0.0  # b outranks a on the tie
    assert evaluate(run, {"q": {"b": 1}})["R@1"] == 100.0


def test_ranking_to_run_keeps_a_list_order_under_trec_sorting() -> None:
    ranking = ["a", "b", "c"]  # trec's tie-break alone would put c first
    assert ranked_ids(ranking_to_run(ranking)) == ranking
    assert evaluate({"q": ranking_to_run(ranking)}, {"q": {"a": 1}})["MRR"] == 1.0
    with pytest.raises(ValueError):
        ranking_to_run(["a", "a"])


def test_keys_scales_and_r_mean() -> None:
    run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.1}, "q2": {"x": 0.5, "y": 0.4}}
    qrels = {"q1": {"b": 1}, "q2": {"z": 1}}
    m = evaluate(run, qrels)
    assert tuple(m) == METRIC_KEYS
    assert m["R@1"] == 0.0 and m["R@5"] == 50.0 and m["R@10"] == 50.0 and m["R@50"] == 50.0
    assert m["R_mean"] == pytest.approx((0 + 50 + 50) / 3)
    assert m["MRR"] == pytest.approx(0.25)  # (1/2 + 0) / 2, a fraction
    assert m["nDCG@10"] == pytest.approx((1 / math.log2(3)) / 2)


def test_missing_queries_count_zero_and_unjudged_queries_are_ignored() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": {"a": 1.0}, "q9": {"zz": 1.0}}  # q2 missing from the run, q9 has no qrels
    m = evaluate(run, qrels)
    assert m["R@1"] == 50.0 and m["MRR"] == 0.5
    assert set(per_query(run, qrels)) == {"q1", "q2"}  # q3 has no relevant item
    assert evaluate({}, {})["R@1"] == 0.0


def test_nan_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="'b'"):
        evaluate({"q": {"a": 1.0, "b": float("nan")}}, {"q": {"a": 1}})
