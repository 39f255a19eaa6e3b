"""The protected rerank stage: gates, adaptive depth, and replay of stored scores."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from r3tasks.evaluation.metrics import evaluate
from r3tasks.evaluation.sweeps import policy_grid, policy_sweep
from r3tasks.models.registry import query_templates
from r3tasks.rerank.final import rerank_topk
from r3tasks.rerank.policy import RerankPolicy, apply_policy, rerank_policy, stored_scorer
from r3tasks.settings.tree import load_settings

RECALLED = [(f"c{i}", 1.0 - i * 0.01) for i in range(20)]


class CountingScorer:
    """Raw reranker scores from a table; remembers which ids it was asked for."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, ids):
        self.asked += list(ids)
        return {i: self.table[i] for i in ids if i in self.table}


def test_reference_policy_is_r3_fixed_depth() -> None:
    table = {f"c{i}": float(i % 7) for i in range(20)}
    scorer = CountingScorer(table)
    outcome = apply_policy(RECALLED, scorer, RerankPolicy(depth=10))
    assert outcome.pairs == 10 and outcome.depth == 10 and outcome.gate is None
    assert sorted(scorer.asked) == sorted(f"c{i}" for i in range(10))
    assert outcome.ranked == rerank_topk(RECALLED, table, 10, 0.4, 0.6)


def test_adaptive_depth_stops_when_the_reranker_singles_one_out() -> None:
    # c2 is far ahead of the others inside the top 5: no need to look deeper.
    table = {f"c{i}": 0.0 for i in range(20)} | {"c2": 3.0}
    scorer = CountingScorer(table)
    outcome = apply_policy(RECALLED, scorer, RerankPolicy(depth=20, start_depth=5, widen_margin=1.0))
    assert outcome.pairs == 5 and outcome.depth == 5
    assert outcome.ranked[0].id == "c2"


def test_adaptive_depth_widens_while_uncertain_and_finds_a_deep_target() -> None:
    # Flat scores in the top 10; the one the reranker knows sits at recall rank 15.
    table = {f"c{i}": 0.0 for i in range(20)} | {"c15": 5.0}
    scorer = CountingScorer(table)
    outcome = apply_policy(RECALLED, scorer, RerankPolicy(depth=20, start_depth=5, widen_margin=1.0))
    assert outcome.depth == 20 and outcome.pairs == 20  # 5 -> 10 -> 20, each id asked once
    assert len(scorer.asked) == len(set(scorer.asked)) == 20
    assert outcome.ranked[0].id == "c15"


def test_recall_window_lets_the_reranker_reorder_only_near_ties_of_the_top_one() -> None:
    # Recall: a clear top-1, two near-ties behind it, then a candidate far below that the reranker loves.
    recalled = [("top", 0.90), ("tie-a", 0.86), ("tie-b", 0.85), ("far", 0.60), ("farther", 0.50)]
    table = {"top": 0.0, "tie-a": 1.0, "tie-b": 4.0, "far": 9.0, "farther": 9.5}
    scorer = CountingScorer(table)
    outcome = apply_policy(recalled, scorer, RerankPolicy(depth=5, recall_window=0.08))
    assert sorted(scorer.asked) == ["tie-a", "tie-b", "top"] and outcome.depth == 3 and outcome.gate is None
    assert [item.id for item in outcome.ranked] == ["tie-b", "top", "tie-a", "far", "farther"]  # R^3 fusion inside
    # The reference reranks all five and lets one recall put far below win.
    assert apply_policy(recalled, CountingScorer(table), RerankPolicy(depth=5)).ranked[0].id == "far"
    # A window holding only the top-1: nothing to reorder, the reranker is not asked.
    alone = CountingScorer(table)
    kept = apply_policy(recalled, alone, RerankPolicy(depth=5, recall_window=0.02))
    assert kept.gate == "recall_window" and kept.pairs == 0 and alone.asked == []
    assert [item.id for item in kept.ranked] == [i for i, _ in recalled]


def test_additive_fusion_lets_the_reranker_beat_a_near_tie_but_not_a_clear_recall_lead() -> None:
    # Raw log-likelihood-like scores: "lead" is recall's top-1, "near" a near-tie, "far" 0.12 below.
    recalled = [("lead", 0.90), ("near", 0.89), ("far", 0.78), ("rest", 0.55)]
    table = {"lead": -3.0, "near": -2.0, "far": -1.0, "rest": -4.0}
    additive = apply_policy(recalled, CountingScorer(table), RerankPolicy(depth=4, reranker_scale=0.05))
    # near: 0.89 + 0.05 x -2 = 0.79 beats lead's 0.75; far's 2 nats over lead are worth 0.1, not its 0.12 gap.
    assert [item.id for item in additive.ranked] == ["near", "lead", "far", "rest"]
    assert additive.ranked[0].score == pytest.approx(0.89 - 0.1) and additive.ranked[0].reranker_score == -2.0
    # R^3's min-max stretches the same gaps to the full weights: the reranker's favourite wins from far below.
    assert apply_policy(recalled, CountingScorer(table), RerankPolicy(depth=4)).ranked[0].id == "far"
    assert not RerankPolicy(reranker_scale=0.05).is_reference
    below_block = rerank_topk(recalled, table, 2, reranker_scale=0.05)[2:]
    assert [item.id for item in below_block] == ["far", "rest"]  # in recall order, below every reranked item
    assert max(item.score for item in below_block) < 0.89 - 0.1


def test_recall_margin_gate_keeps_a_confident_recall_without_asking_the_reranker() -> None:
    recalled = [("sure", 0.9), ("b", 0.5), ("c", 0.45)]
    scorer = CountingScorer({"sure": 0.0, "b": 9.0, "c": 0.0})
    outcome = apply_policy(recalled, scorer, RerankPolicy(depth=3, recall_margin_gate=0.2))
    assert outcome.gate == "recall_margin" and outcome.pairs == 0 and scorer.asked == []
    assert [item.id for item in outcome.ranked] == ["sure", "b", "c"]
    # A narrow margin: the reranker decides.
    close = [("sure", 0.9), ("b", 0.85), ("c", 0.45)]
    assert apply_policy(close, scorer, RerankPolicy(depth=3, recall_margin_gate=0.2)).ranked[0].id == "b"


def test_flat_gate_keeps_recall_order_when_reranker_cannot_tell_candidates_apart() -> None:
    table = {f"c{i}": 0.001 * (i % 2) for i in range(20)}
    outcome = apply_policy(RECALLED, CountingScorer(table), RerankPolicy(depth=10, flat_gate=0.01))
    assert outcome.gate == "flat" and outcome.pairs == 10
    assert [item.id for item in outcome.ranked] == [i for i, _ in RECALLED]


def test_policy_settings_default_to_the_reference_and_preset_values_can_be_overridden() -> None:
    assert rerank_policy(load_settings(preset="qwen3vl").query).is_reference
    custom = load_settings(preset="qwen3vl", query={"rerank_start_depth": 5, "rerank_widen_margin": 0.3})
    policy = rerank_policy(custom.query)
    assert policy.depths(50) == [5, 10, 20, 40, 50]
    with pytest.raises(ValueError):
        load_settings(query={"rerank_depth_growth": 1.0})


def _stored(query_id: str, table: dict[str, float], k: int) -> dict:
    return {"id": query_id, "ranked": [asdict(i) for i in rerank_topk(RECALLED, table, k, 0.4, 0.6)]}


def test_replay_on_stored_scores_equals_running_the_policy() -> None:
    tables = [{f"c{i}": float((i * (n + 3)) % 11) for i in range(20)} for n in range(6)]
    results = [_stored(f"q{n}", t, 20) for n, t in enumerate(tables)]
    qrels = {f"q{n}": {f"c{(n * 3) % 20}": 1} for n in range(6)}
    policy = RerankPolicy(depth=20, start_depth=5, widen_margin=2.0, recall_margin_gate=0.5)
    [row] = policy_sweep(results, qrels, [("p", policy)])
    live = [apply_policy(RECALLED, CountingScorer(t), policy) for t in tables]
    assert row["pairs_per_query"] == sum(o.pairs for o in live) / 6
    # The replayed metrics are the live run's, exactly: the same rankings scored the same way.
    live_run = {f"q{n}": {item.id: item.score for item in outcome.ranked} for n, outcome in enumerate(live)}
    assert row["metrics"] == evaluate(live_run, qrels)
    assert row["kept_recall_order"] == sum(o.gate is not None for o in live) / 6
    recalled, _, depth = stored_scorer(results[0]["ranked"])
    assert recalled == RECALLED and depth == 20
    grid = dict(policy_grid(results, RerankPolicy(depth=20)))
    assert grid["reference"].is_reference and "fixed depth 5" in grid


def test_templates_are_the_presets_settings_and_the_user_wins() -> None:
    reference = load_settings(preset="tiny")
    assert query_templates(reference).base_template == "Reference video after edit instruction: {edit}"
    offline = load_settings(preset="offline")
    assert query_templates(offline).base_template == "{edit}"
    assert query_templates(offline).source_text_template == "{source_text}"
    explicit = load_settings(preset="offline", query={"base_template": "Edit: {edit}"})
    assert query_templates(explicit).base_template == "Edit: {edit}"
    assert query_templates(explicit).source_text_template == "{source_text}"
    # What `r3 settings --preset offline` prints is what runs.
    assert offline.query.base_template == "{edit}" and offline.query.reasoning_template == "{edit}\n{reasoning}"


def test_offline_preset_ships_a_protected_policy_and_user_settings_win() -> None:
    shipped = rerank_policy(load_settings(preset="offline").query)
    assert not shipped.is_reference and shipped.depth == 20 and shipped.recall_window == 0.12
    assert shipped.recall_margin_gate is None and shipped.reranker_scale == 0.04
    assert shipped.decision is not None and shipped.decision.keep_below <= shipped.decision.threshold
    # The reranker loves a candidate recall put far below the top-1 (outside the window).
    recalled = [("right", 0.80), ("close", 0.75)] + [(f"c{i}", 0.70 - 0.01 * i) for i in range(18)]
    table = {item_id: -3.0 for item_id, _ in recalled} | {"c10": 0.0, "right": -2.5}
    assert apply_policy(recalled, CountingScorer(table), shipped).ranked[0].id == "right"
    assert apply_policy(recalled, CountingScorer(table), RerankPolicy(depth=20)).ranked[0].id == "c10"  # R^3 0.4/0.6
    back = rerank_policy(
        load_settings(
            preset="offline",
            query={"rerank_k": 50, "rerank_recall_window": None, "final_reranker_scale": None, "rerank_decision": None},
        ).query
    )
    assert back.is_reference and back.depth == 50
