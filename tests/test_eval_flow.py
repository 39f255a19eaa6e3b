"""The ablation flow on a small generic benchmark with fake models: the arms, metrics, split, sweeps, plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.eval_flow import evaluate_benchmark
from tests.test_query_flow import CAPTIONS, FAKES

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _bench(tmp_path: Path) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in CAPTIONS.items()))
    (folder / "queries.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "q1", "source": "dog-park-day", "edit": "make it night"},
                {"id": "q2", "source": "person-sits", "edit": "the person stands up instead"},
            ]
        )
    )
    (folder / "qrels.json").write_text(json.dumps({"q1": {"dog-park-night": 1}, "q2": {"person-stands": 1}}))
    return folder


def test_eval_reports_three_arms_with_metrics_gate_rate_and_plot(tmp_path: Path, r3_home: Path) -> None:
    folder = _bench(tmp_path)
    out = tmp_path / "report.json"

    report = evaluate_benchmark(dataset=str(folder), out=str(out), home=str(r3_home), overrides=FAKES)

    assert [a["arm"] for a in report["arms"]] == ["base", "+rerank", "+reasoning", "+reasoning+rerank"]
    for arm in report["arms"]:
        assert set(arm["metrics"]) == {"R@1", "R@5", "R@10", "R@50", "R_mean", "MRR", "nDCG@10"}
        assert arm["queries"] == 2 and arm["failed"] == 0
        assert 0 <= arm["metrics"]["R@1"] <= arm["metrics"]["R@5"] <= 100
    assert report["arms"][0]["gate_pass_rate"] is None  # no reasoning in the base arm
    assert report["arms"][2]["gate_pass_rate"] is not None  # +reasoning
    # With only 5 candidates after excluding the source, every target is within the top 5.
    assert report["arms"][0]["metrics"]["R@5"] == 100.0
    assert json.loads(out.read_text())["arms"][3]["arm"] == "+reasoning+rerank"
    assert report["split"]["role"] == "reported" and report["split"]["queries"] == 2
    assert report["arms"][0]["pairs_per_query"] == 0 and report["arms"][1]["pairs_per_query"] == 5  # 5 candidates
    assert report["policy_sweep"][0]["policy"] == "reference"
    assert report["policy_sweep"][0]["metrics"] == report["arms"][1]["metrics"]  # replay = the arm it replays
    assert Path(report["plot"]).stat().st_size > 0
    assert [row["reranker_weight"] for row in report["reranker_weight_sweep"]] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_eval_on_a_held_out_split_with_the_fusion_grid_and_no_rerank_arm(tmp_path: Path, r3_home: Path) -> None:
    out = tmp_path / "dev.json"
    report = evaluate_benchmark(
        dataset=str(_bench(tmp_path)),
        out=str(out),
        home=str(r3_home),
        overrides=FAKES,
        skip=1,
        rerank_k=0,
        fusion_grid=True,
    )

    assert report["queries"] == 1 and [a["arm"] for a in report["arms"]] == ["base", "+reasoning"]
    assert report["split"]["role"] == "dev" and report["split"]["first_query"] == 1
    names = [a["arm"] for a in report["fusion_sweep"]]
    assert "+reasoning w=0.25 tau=0.9" in names and "+reasoning rrf" in names
    assert all(a["queries"] == 1 and a["failed"] == 0 for a in report["fusion_sweep"])
    assert "reranker_weight_sweep" not in report
