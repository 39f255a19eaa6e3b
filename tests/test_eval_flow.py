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


# What the fakes make of the two queries (5 candidates each once the source is left out), worked out by hand:
# - The fake reranker counts words shared with its query text (the query template, the edit and the source's
#   caption). q1's target "a dog runs in a park at night" shares 6 words (a dog runs in park night), every other
#   candidate 1 (a); q2's target "a person stands up from a bench" 5 (a person stands up bench), the others at
#   most 2. Min-max puts each target at 1 and the rest at 0.25 at most, so with R^3's 0.4 / 0.6 fusion the target
#   leads (0.6 and up against 0.4 + 0.15 at most) whatever the embedding says: R@1 100, MRR 1, 5 pairs per query.
# - The fake text embedder's vectors are seeded by a hash of the text, so recall's order is fixed but arbitrary:
#   it puts q1's target 1st (cosine 0.17) and q2's 4th (-0.17, behind car-road 0.50, cat-sofa 0.21 and
#   dog-park-night 0.20): R@1 50, MRR (1 + 1/4) / 2 = 0.625.
# - The agreement gate's cosine between base and reasoning query vectors (hash-seeded too) is 0.42 and 0.07, below
#   tau 0.5: reasoning is never used (pass rate 0) and each +reasoning arm ranks as its twin without reasoning.
BASE = {"R@1": 50.0, "R@5": 100.0, "MRR": 0.625}
RERANKED = {"R@1": 100.0, "R@5": 100.0, "MRR": 1.0}


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("R@1", "R@5", "MRR")}


def test_eval_reports_three_arms_with_metrics_gate_rate_and_plot(tmp_path: Path, r3_home: Path) -> None:
    folder = _bench(tmp_path)
    out = tmp_path / "report.json"

    report = evaluate_benchmark(dataset=str(folder), out=str(out), home=str(r3_home), overrides=FAKES)

    arms = {a["arm"]: a for a in report["arms"]}
    assert list(arms) == ["base", "+rerank", "+reasoning", "+reasoning+rerank"]
    for arm in report["arms"]:
        assert set(arm["metrics"]) == {"R@1", "R@5", "R@10", "R@50", "R_mean", "MRR", "nDCG@10"}
        assert arm["queries"] == 2 and arm["failed"] == 0
    assert {name: _headline(a["metrics"]) for name, a in arms.items()} == {
        "base": BASE,
        "+rerank": RERANKED,
        "+reasoning": BASE,
        "+reasoning+rerank": RERANKED,
    }
    assert {name: (a["pairs_per_query"], a["gate_pass_rate"]) for name, a in arms.items()} == {
        "base": (0, None),  # no reranker, no reasoning
        "+rerank": (5, None),
        "+reasoning": (0, 0.0),
        "+reasoning+rerank": (5, 0.0),
    }
    assert arms["+reasoning"]["metrics"] == arms["base"]["metrics"]
    assert arms["+reasoning+rerank"]["metrics"] == arms["+rerank"]["metrics"]
    assert json.loads(out.read_text())["arms"][3]["arm"] == "+reasoning+rerank"
    assert report["split"]["role"] == "reported" and report["split"]["queries"] == 2
    assert report["policy_sweep"][0]["policy"] == "reference"
    assert report["policy_sweep"][0]["metrics"] == arms["+rerank"]["metrics"]  # replay = the arm it replays
    assert report["policy_sweep"][0]["pairs_per_query"] == arms["+rerank"]["pairs_per_query"]
    assert Path(report["plot"]).stat().st_size > 0
    # Re-fused at reranker weight wr (embedding 1 - wr): q1's target leads both scores, so only q2 moves. Its
    # target's min-max embedding is 0.14 (car-road 1, cat-sofa 0.63, dog-park-night 0.62), its reranker score 1
    # against 0.25: 4th up to wr 0.2, 2nd at wr 0.4 (0.48 < car-road 0.70), 1st from wr 0.6 (0.66 > 0.55).
    sweep = {row["reranker_weight"]: _headline(row["metrics"]) for row in report["reranker_weight_sweep"]}
    assert sweep == {
        0.0: BASE,
        0.2: BASE,
        0.4: {"R@1": 50.0, "R@5": 100.0, "MRR": 0.75},
        0.6: RERANKED,
        0.8: RERANKED,
        1.0: RERANKED,
    }


def test_replay_of_the_settings_policy_equals_its_live_arm(tmp_path: Path, r3_home: Path) -> None:
    # A protected policy in the settings: rerank only what recall puts within 0.12 of its top-1. Live, q1's window
    # holds 3 candidates (0.17, 0.11, 0.09) and the reranker lifts nothing over the target already first; q2's holds
    # car-road alone (0.50, next 0.21), so the reranker is not asked and the target stays 4th.
    overrides = {**FAKES, "query": {"rerank_recall_window": 0.12}}
    report = evaluate_benchmark(
        dataset=str(_bench(tmp_path)),
        out=str(tmp_path / "report.json"),
        home=str(r3_home),
        overrides=overrides,
        arm_names=["+rerank", "+rerank (reference)"],
    )

    live, reference = report["arms"]
    assert (live["arm"], reference["arm"]) == ("+rerank", "+rerank (reference)")
    assert (_headline(live["metrics"]), live["pairs_per_query"]) == (BASE, 1.5)
    assert (_headline(reference["metrics"]), reference["pairs_per_query"]) == (RERANKED, 5)
    # The reference arm's stored scores, replayed with the settings' policy: the live arm's report, exactly.
    [replayed] = [row for row in report["policy_sweep"] if row["policy"] == "settings' policy"]
    assert replayed["settings"]["rerank_recall_window"] == 0.12
    assert replayed["metrics"] == live["metrics"]
    assert replayed["pairs_per_query"] == live["pairs_per_query"]
    assert replayed["kept_recall_order"] == 0.5  # q2


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
    # q2 alone: recall puts its target 4th, and its reasoning fails the gate (see the figures above).
    assert [(_headline(a["metrics"]), a["pairs_per_query"], a["gate_pass_rate"]) for a in report["arms"]] == [
        ({"R@1": 0.0, "R@5": 100.0, "MRR": 0.25}, 0, None),
        ({"R@1": 0.0, "R@5": 100.0, "MRR": 0.25}, 0, 0.0),
    ]
    assert report["split"]["role"] == "dev" and report["split"]["first_query"] == 1
    names = [a["arm"] for a in report["fusion_sweep"]]
    assert "+reasoning w=0.25 tau=0.9" in names and "+reasoning rrf" in names
    assert all(a["queries"] == 1 and a["failed"] == 0 for a in report["fusion_sweep"])
    assert "reranker_weight_sweep" not in report


def test_a_whole_dataset_pooled_from_reported_and_dev_reports_is_replayed_but_never_calibrated_on(
    tmp_path: Path, r3_home: Path
) -> None:
    from r3tasks.evaluation.calibrate import main as calibrate
    from r3tasks.evaluation.replay import pooled_reports, replay

    folder = _bench(tmp_path)
    paths = []
    for name, split in (("reported", {"limit": 1}), ("dev", {"skip": 1})):
        paths.append(tmp_path / f"{name}.json")
        evaluate_benchmark(
            dataset=str(folder),
            out=str(paths[-1]),
            home=str(r3_home),
            overrides=FAKES,
            arm_names=["base", "+rerank (reference)"],
            **split,
        )

    [(split, results, qrels, base)] = pooled_reports(paths)
    assert split["role"] == "reported and dev" and split["queries"] == 2 and split["ranges"] == ["#0-#0", "#1-#1"]
    assert sorted(r["id"] for r in results) == ["q1", "q2"] and base["R@1"] == BASE["R@1"]
    with pytest.raises(SystemExit, match="dev splits only"):
        calibrate([str(p) for p in paths])
    [whole] = replay(paths, shipped_only=True)
    assert whole["policies"][0]["policy"] == "reference"  # every query's top-K was scored

    # A preset's own arm stores its window's scores only: R^3's reference cannot be replayed from them.
    windowed = tmp_path / "windowed.json"
    evaluate_benchmark(
        dataset=str(folder),
        out=str(windowed),
        home=str(r3_home),
        overrides={**FAKES, "query": {"rerank_recall_window": 0.12}},
        arm_names=["base", "+rerank"],
    )
    [row] = replay([windowed], shipped_only=True)
    assert row["policies"][0]["policy"] == "R^3's min-max over the stored windows (no fixed-depth scores)"
