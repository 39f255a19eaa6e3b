"""The reranker-weight sweep: stored rerank-arm scores re-fused without running a model."""

from __future__ import annotations

from dataclasses import asdict

from r3tasks.evaluation.metrics import evaluate
from r3tasks.evaluation.sweeps import reranker_weight_sweep
from r3tasks.rerank.final import rerank_topk


def _result(query_id: str, embedding: dict[str, float], reranker: dict[str, float], k: int) -> dict:
    recalled = sorted(embedding.items(), key=lambda x: -x[1])
    ranked = rerank_topk(recalled, reranker, k, 0.4, 0.6)
    return {"id": query_id, "ranked": [asdict(item) for item in ranked]}


def test_sweep_reproduces_the_arm_and_shows_what_the_reranker_adds() -> None:
    # The embedding puts the relevant item ("hit") 3rd; the reranker knows it; a 5th item was never reranked.
    results = [
        _result(
            f"q{n}",
            {"a": 0.9, "b": 0.8, "hit": 0.7 - n * 0.01, "c": 0.6, "tail": 0.5},
            {"a": 0.1, "b": 0.2, "hit": 5.0, "c": 0.0},
            k=4,
        )
        for n in range(3)
    ]
    qrels = {f"q{n}": {"hit": 1} for n in range(3)}
    sweep = {row["reranker_weight"]: row["metrics"] for row in reranker_weight_sweep(results, qrels)}

    stored = evaluate({r["id"]: {i["id"]: i["score"] for i in r["ranked"]} for r in results}, qrels)
    assert sweep[0.6] == stored  # the weights the arm ran with give the arm's own figures
    assert sweep[0.0]["R@1"] == 0.0 and sweep[0.0]["MRR"] == 1 / 3  # recall order: the hit stays 3rd
    assert sweep[1.0]["R@1"] == 100.0
    assert set(sweep) == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}


def test_sweep_of_an_arm_without_reranker_scores_is_the_recall_order() -> None:
    results = [_result("q", {"a": 0.9, "hit": 0.8}, {}, k=0)]
    sweep = reranker_weight_sweep(results, {"q": {"hit": 1}}, weights=[0.0, 1.0])
    assert [row["metrics"]["R@1"] for row in sweep] == [0.0, 0.0]


def test_arms_pick_by_name_and_leave_out_a_reference_policy_duplicate() -> None:
    from r3tasks.evaluation.arms import arms

    # Default: the settings as they are, one stage at a time; the fixed-depth reference only when named.
    assert [a.name for a in arms(50)] == ["base", "+rerank", "+reasoning", "+reasoning+rerank"]
    assert [a.name for a in arms(50, policy_is_reference=False)] == [
        "base",
        "+rerank",
        "+reasoning",
        "+reasoning+rerank",
    ]
    assert arms(50)[1].overrides["query"] == {"use_reasoning": False}  # the preset's own depth and gates
    assert [a.name for a in arms(0)] == ["base", "+reasoning"]
    chosen = arms(50, ["base", "+rerank", "+rerank (reference)"], policy_is_reference=False)
    assert [a.name for a in chosen] == ["base", "+rerank", "+rerank (reference)"]
    # The reference arm runs R^3's fixed depth whatever the settings' policy is.
    assert chosen[2].overrides["query"]["rerank_start_depth"] is None and chosen[2].overrides["query"]["rerank_k"] == 50
    assert chosen[2].overrides["query"]["rerank_recall_window"] is None
    assert (
        chosen[2].overrides["query"]["final_embedding_weight"],
        chosen[2].overrides["query"]["final_reranker_weight"],
    ) == (
        0.4,
        0.6,
    )  # R^3's fusion, whatever the preset's
    # When the settings are the reference at that depth, it would repeat +rerank: left out.
    assert [a.name for a in arms(50, ["+rerank", "+rerank (reference)"])] == ["+rerank"]
    assert arms(20, ["+rerank"], settings_k=20)[0].overrides["query"]["rerank_k"] == 20
    import pytest

    with pytest.raises(ValueError, match="unknown eval arm"):
        arms(50, ["rerank"])


def test_split_record_says_dev_for_a_held_out_run_and_names_the_queries() -> None:
    from r3tasks.evaluation.arms import split_line, split_record

    dev = split_record("egocvr", "global, queries from #500", 500, 200, 200)
    assert dev["role"] == "dev" and (dev["first_query"], dev["last_query"]) == (500, 699)
    assert "queries #500-#699" in split_line(dev)
    assert split_record("egocvr", "global", 0, 100, 100)["role"] == "reported"
