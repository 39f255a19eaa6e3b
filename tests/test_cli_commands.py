"""The commands a user types: `r3 settings`, `r3 query --format covrr`, `r3 demo`, `r3 eval` (fake models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main as cli_main
from tests.test_query_flow import QUERIES, write_gallery, write_queries

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake models through the environment, as a user's R3_* variables would pick backends."""
    monkeypatch.setenv("R3_MODELS__EMBEDDER", "fake-text")
    monkeypatch.setenv("R3_MODELS__REASONER", "fake")
    monkeypatch.setenv("R3_MODELS__RERANKER", "fake")


def test_settings_prints_every_setting_with_its_description_and_the_environment_wins(
    r3_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("R3_QUERY__RECALL_K", "7")
    assert cli_main(["settings", "--preset", "tiny", "--home", str(r3_home)]) == 0
    lines = capsys.readouterr().out.splitlines()
    recall = next(line for line in lines if line.startswith("query.recall_k = "))
    assert recall.startswith("query.recall_k = 7    # Candidates recalled per query")
    assert all("    # " in line for line in lines if "." in line.split(" = ")[0])  # every field is described
    assert any(line.startswith("query.stage_chunk = 16") for line in lines)

    assert cli_main(["settings", "--preset", "tiny", "--home", str(r3_home), "--json"]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert dumped["models"]["preset"] == "tiny" and dumped["query"]["recall_k"] == 7


def test_settings_with_a_bad_value_is_one_line_and_exit_2(
    r3_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("R3_QUERY__RECALL_K", "0")
    assert cli_main(["settings", "--home", str(r3_home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r3 settings: setting query.recall_k") and err.count("\n") == 1


def test_query_format_covrr_writes_the_submission_layout_beside_the_results(
    tmp_path: Path, r3_home: Path, fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_gallery(tmp_path / "g")
    assert cli_main(["index", str(manifest), "--home", str(r3_home)]) == 0
    rows = [dict(QUERIES[0], section="ego"), QUERIES[1], QUERIES[2]]
    out = tmp_path / "res" / "results.json"
    code = cli_main(
        ["query", str(write_queries(tmp_path, rows)), "--out", str(out), "--format", "covrr", "--home", str(r3_home)]
    )
    assert code == 0
    results = {r["id"]: r for r in json.loads(out.read_text())["results"]}
    covrr = json.loads(out.with_suffix(".covrr.json").read_text())
    assert set(covrr) == {"ego", "default"}
    assert covrr["ego"] == {"q-night": [item["id"] for item in results["q-night"]["ranked"]]}
    assert set(covrr["default"]) == {"q-stand", "t-cat"}
    assert covrr["default"]["t-cat"][0] == "cat-sofa"
    assert "results: " in capsys.readouterr().out


def test_demo_indexes_its_clips_and_answers_its_batch(
    tmp_path: Path, r3_home: Path, fakes: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("R3_DATA__OPENCV_SAMPLES_DIR", str(tmp_path / "no-opencv-here"))
    assert cli_main(["demo", "--home", str(r3_home)]) == 0
    out = capsys.readouterr().out
    assert "demo gallery 'demo'" in out
    # Each composed query's target after recall and after reranking, and the reranker's own choice, as the
    # fake models place them (hash-based embeddings and reranker scores: fixed, not meaningful).
    stages = out[out.index("composed queries, stage by stage") : out.index("results: ")].splitlines()
    assert [" ".join(line.split()) for line in stages] == [
        "composed queries, stage by stage (the intended target's rank):",
        "edit-red-circle-x1-right-day-to-red-circle-x1-right-night recall 5 final 5 reranker picks blue-circle-x1-right-day",
        "edit-red-circle-x1-right-day-to-blue-circle-x1-right-day recall 9 final 9 not reranked (the recall window kept recall's order)",
        "edit-red-circle-x1-right-day-to-red-square-x1-right-day recall 1 final 1 not reranked (the recall window kept recall's order)",
        "edit-green-triangle-x2-up-grass-to-green-triangle-x2-down-grass recall 13 final 13 "
        "reranker picks blue-square-x2-down-night",
        "edit-white-square-x3-still-day-to-white-square-x3-still-night recall 12 final 12 "
        "reranker picks blue-square-x2-down-night",
        "composed queries with the intended target at rank 1: 1/5 (after recall 1/5; the reranker's own first "
        "choice 0/5)",
    ]
    payload = json.loads((r3_home / "demo" / "results.json").read_text())
    assert payload["results"] and all(r["error"] is None and r["ranked"] for r in payload["results"])
    assert {r["kind"] for r in payload["results"]} == {"composed", "text"}


def test_eval_on_the_generated_benchmark_reports_each_ablation(
    tmp_path: Path, r3_home: Path, fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval" / "report.json"
    code = cli_main(
        ["eval", "generated", "--out", str(out), "--limit", "4", "--rerank-k", "3", "--home", str(r3_home), "--json"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["benchmark"] == "generated" and printed["queries"] == 4
    arms = {arm["arm"]: arm for arm in printed["arms"]}
    # Every default arm runs the settings as they are (at --rerank-k 3); the reference arm only when named.
    assert set(arms) == {"base", "+rerank", "+reasoning", "+reasoning+rerank"}
    assert arms["+rerank"]["pairs_per_query"] <= 3
    assert all(arm["queries"] == 4 and arm["failed"] == 0 for arm in arms.values())
    assert all(0.0 <= value <= 100.0 for arm in arms.values() for value in arm["metrics"].values())
    assert Path(printed["plot"]).is_file()
