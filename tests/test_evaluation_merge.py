"""Whole-dataset reports merged from `r3 eval --skip/--limit` chunks."""

from __future__ import annotations

import pytest

from r3tasks.evaluation.merge import markdown, merge

METRICS = ("R@1", "R@5", "R@10", "R@50", "R_mean", "MRR", "nDCG@10")


def _chunk(first: int, n: int, r1: float, pairs: float, preset: str = "offline") -> dict:
    arm = {
        "metrics": {k: r1 for k in METRICS},
        "queries": n,
        "failed": 1,
        "seconds_per_query": {"rerank": pairs / 10},
        "pairs_per_query": pairs,
        "results": f"/runs/{first}",
    }
    return {
        "benchmark": "egocvr",
        "setting": "global",
        "preset": preset,
        "gallery": "eval-egocvr-global",
        "queries": n,
        "arms": [{"arm": "base", **arm, "gate_pass_rate": None}, {"arm": "+rerank", **arm, "gate_pass_rate": 0.5}],
        "split": {
            "dataset": "egocvr",
            "setting": "global",
            "first_query": first,
            "last_query": first + n - 1,
            "queries": n,
            "role": "reported",
        },
    }


def test_chunks_merge_into_the_whole_range_weighted_by_their_queries() -> None:
    later = _chunk(100, 300, 50.0, 20.0)
    later["setting"] = later["split"]["setting"] = "global, queries from #100"  # as `--skip 100` names it
    merged = merge([later, _chunk(0, 100, 10.0, 10.0)])
    rerank = merged["arms"][1]
    assert merged["queries"] == 400 and merged["split"]["first_query"] == 0 and merged["split"]["last_query"] == 399
    assert rerank["metrics"]["R@1"] == pytest.approx(40.0)  # (100 x 10 + 300 x 50) / 400
    assert rerank["pairs_per_query"] == pytest.approx(17.5) and rerank["failed"] == 2
    assert merged["arms"][0]["gate_pass_rate"] is None and merged["split"]["gaps"] == []
    assert merged["setting"] == "global" and merged["split"]["setting"] == "global"
    assert "| +rerank | 40.00 |" in markdown(merged)


def test_overlapping_or_mismatched_chunks_are_refused_by_name_and_gaps_are_named() -> None:
    with pytest.raises(ValueError, match=r"#0-#99 and #50-#149 overlap"):
        merge([_chunk(0, 100, 10.0, 1.0), _chunk(50, 100, 10.0, 1.0)])
    with pytest.raises(ValueError, match=r"chunk #100-#199: preset 'tiny'"):
        merge([_chunk(0, 100, 10.0, 1.0), _chunk(100, 100, 10.0, 1.0, preset="tiny")])
    assert merge([_chunk(0, 100, 1.0, 1.0), _chunk(200, 100, 1.0, 1.0)])["split"]["gaps"] == ["#100-#199"]
