"""The reranker-weight sweep: stored rerank-arm scores re-fused without running a model."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from r3tasks.evaluation.arms import arm_report
from r3tasks.evaluation.metrics import evaluate
from r3tasks.evaluation.sweeps import policy_sweep, reranker_weight_sweep
from r3tasks.rerank.final import rerank_topk
from r3tasks.rerank.policy import RerankPolicy, apply_policy


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
    # By hand, at reranker weight wr (embedding weight 1 - wr) over the block a, b, hit, c: min-max embedding
    # a 1, b 2/3, hit 0.33 / 0.30 / 0.27 (q0, q1, q2), c 0; min-max reranker a 0.02, b 0.04, hit 1, c 0.
    # wr 0 and 0.2: a 0.80 > b 0.54 > hit 0.47 at most (3rd, MRR 1/3); wr 0.4: a 0.608 > hit 0.60 at most > b 0.42
    # (2nd, 1/2); from wr 0.6 on the hit leads (0.71 > a 0.41). The hit is always in the top 5.
    assert {w: (m["R@1"], m["R@5"], round(m["MRR"], 9)) for w, m in sweep.items()} == {
        0.0: (0.0, 100.0, round(1 / 3, 9)),
        0.2: (0.0, 100.0, round(1 / 3, 9)),
        0.4: (0.0, 100.0, 0.5),
        0.6: (100.0, 100.0, 1.0),
        0.8: (100.0, 100.0, 1.0),
        1.0: (100.0, 100.0, 1.0),
    }


def test_sweep_of_an_arm_without_reranker_scores_is_the_recall_order() -> None:
    results = [_result("q", {"a": 0.9, "hit": 0.8}, {}, k=0)]
    sweep = reranker_weight_sweep(results, {"q": {"hit": 1}}, weights=[0.0, 1.0])
    assert [row["metrics"]["R@1"] for row in sweep] == [0.0, 0.0]


RECALLED = [(f"c{i}", 1.0 - i * 0.01) for i in range(20)]
# Six queries' raw reranker scores over the 20 recalled candidates, and the one relevant candidate of each.
TABLES = [{f"c{i}": float((i * (n + 3)) % 11) for i in range(20)} for n in range(6)]
QRELS = {f"q{n}": {f"c{(n * 3) % 20}": 1} for n in range(6)}


def _live_results(policy: RerankPolicy) -> list[dict]:
    """A query batch's results with `policy` run live: the reranker scores whatever the policy asks for."""
    results = []
    for n, table in enumerate(TABLES):
        outcome = apply_policy(RECALLED, lambda ids, table=table: {i: table[i] for i in ids}, policy)
        ranked = [asdict(item) for item in outcome.ranked]
        results.append(
            {"id": f"q{n}", "kind": "composed", "error": None, "reasoning": None, "ranked": ranked}
            | {"rerank": outcome.decision()}
        )
    return results


@pytest.mark.parametrize(
    "policy",
    [
        RerankPolicy(depth=20),
        RerankPolicy(depth=5),
        RerankPolicy(depth=20, start_depth=5, widen_margin=2.0, recall_margin_gate=0.5),
        RerankPolicy(depth=20, recall_window=0.035, reranker_scale=0.04),
        RerankPolicy(depth=5, flat_gate=8.5, embedding_weight=0.7, reranker_weight=0.3),
    ],
    ids=["reference", "depth-5", "adaptive-gated", "window-additive", "flat-gate-weights"],
)
def test_replay_on_stored_scores_equals_the_live_runs_report(policy: RerankPolicy) -> None:
    # The scores a fixed-depth arm stored (every pair of the top 20), replayed: the same metrics, reranker pairs
    # and share of queries left in recall order as the report of an arm that ran the policy, exactly.
    stored = [
        {"id": f"q{n}", "ranked": [asdict(i) for i in rerank_topk(RECALLED, table, 20, 0.4, 0.6)]}
        for n, table in enumerate(TABLES)
    ]
    [replayed] = policy_sweep(stored, QRELS, [("policy", policy)])
    live = _live_results(policy)
    report = arm_report("+rerank", {"results": live}, QRELS)
    assert replayed["metrics"] == report["metrics"]
    assert replayed["pairs_per_query"] == report["pairs_per_query"]
    assert replayed["kept_recall_order"] == sum(r["rerank"]["gate"] is not None for r in live) / len(live)


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
    with pytest.raises(ValueError, match="unknown eval arm"):
        arms(50, ["rerank"])


def test_split_record_says_dev_for_a_held_out_run_and_names_the_queries() -> None:
    from r3tasks.evaluation.arms import split_line, split_record

    dev = split_record("egocvr", "global, queries from #500", 500, 200, 200)
    assert dev["role"] == "dev" and (dev["first_query"], dev["last_query"]) == (500, 699)
    assert "queries #500-#699" in split_line(dev)
    assert split_record("egocvr", "global", 0, 100, 100)["role"] == "reported"


def test_the_reference_arm_runs_r3s_rerank_under_every_preset() -> None:
    # A preset's own policy (the offline preset's window, additive fusion and per-query decision) must not
    # leak into the arm whose stored scores every other policy is replayed from.
    from r3tasks.evaluation.arms import arms
    from r3tasks.rerank.policy import rerank_policy
    from r3tasks.settings.tree import load_settings

    (reference,) = arms(20, ["+rerank (reference)"], policy_is_reference=False)
    for preset in ("offline", "qwen3vl", "tiny"):
        policy = rerank_policy(load_settings(preset=preset, **reference.overrides).query)
        assert policy.is_reference and policy.depth == 20, preset
