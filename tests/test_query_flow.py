"""The query-batch flow end to end: results, errors, caching, pinned gallery versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main as cli_main
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.models.registry import shared_embedder, shared_reasoner, shared_reranker
from tests.conftest import fake_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAKES = {"models": {"embedder": "fake-text", "reasoner": "fake", "reranker": "fake"}}

CAPTIONS = {
    "dog-park-day": "a dog runs in a park during the day",
    "dog-park-night": "a dog runs in a park at night",
    "cat-sofa": "a cat sleeps on a sofa",
    "car-road": "a car drives on a road",
    "person-sits": "a person sits down on a bench",
    "person-stands": "a person stands up from a bench",
}


def write_gallery(folder: Path, captions: dict[str, str] = CAPTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in captions.items()) + "\n")
    return manifest


def write_queries(folder: Path, rows: list[dict]) -> Path:
    path = folder / "queries.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


QUERIES = [
    {"id": "q-night", "source": "dog-park-day", "edit": "make it night"},
    {"id": "q-stand", "source": "person-sits", "edit": "the person stands up instead"},
    {"id": "t-cat", "text": "a cat sleeping"},
]


def run(queries: Path, home: Path, out: Path | None = None, **overrides) -> dict:
    merged = {**FAKES, **overrides}
    merged["models"] = {**FAKES["models"], **overrides.get("models", {})}
    return query_batch(queries=str(queries), out=str(out) if out else None, home=str(home), overrides=merged)


@pytest.fixture
def indexed(tmp_path: Path, r3_home: Path) -> Path:
    manifest = write_gallery(tmp_path / "g")
    index_gallery(source=str(manifest), home=str(r3_home), overrides=FAKES)
    return manifest


def test_batch_returns_ranked_results_with_reasoning_gate_and_lineage(tmp_path, r3_home, indexed) -> None:
    out = tmp_path / "results.json"
    payload = run(write_queries(tmp_path, QUERIES), r3_home, out)

    assert json.loads(out.read_text())["results"] == payload["results"]
    by_id = {r["id"]: r for r in payload["results"]}
    composed = by_id["q-night"]
    assert composed["kind"] == "composed" and composed["error"] is None
    assert composed["reasoning"].endswith("after: make it night")
    assert set(composed["gate"]) == {"agreement", "source_similarity", "names_edit", "used"}
    ranked_ids = [r["id"] for r in composed["ranked"]]
    assert "dog-park-day" not in ranked_ids  # the source never comes back
    assert len(ranked_ids) == len(CAPTIONS) - 1
    scores = [r["score"] for r in composed["ranked"]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["reranker_score"] is not None for r in composed["ranked"])
    assert by_id["t-cat"]["kind"] == "text" and by_id["t-cat"]["reasoning"] is None
    # The fake reranker counts words its query text shares with a caption; the composed queries' text holds the
    # source's caption and the edit (and, when the gate lets it in, the fake reasoning: the two again). q-night's
    # target "a dog runs in a park at night" shares 6 words (a dog runs in park night), every other candidate 1;
    # q-stand's target "a person stands up from a bench" 5 (a person stands up bench), the others 2 at most. After
    # min-max the target scores 1 and the rest 0.25 at most, so R^3's 0.6 reranker weight puts it first whatever
    # recall's order. t-cat: "a cat sleeping" shares "a" with every caption and "cat" with cat-sofa's only.
    assert {qid: r["ranked"][0]["id"] for qid, r in by_id.items()} == {
        "q-night": "dog-park-night",
        "q-stand": "person-stands",
        "t-cat": "cat-sofa",
    }
    lineage = composed["lineage"]
    assert lineage["gallery"]["version"] >= 1 and lineage["embedder"].startswith("fake")
    assert lineage["reranker"] == "fake-reranker-1" and lineage["settings_hash"]
    artifacts = Path(payload["artifacts"])
    assert (artifacts / "report.md").read_text().count("## ") == 3
    assert (artifacts / "q-night.png").stat().st_size > 0


def test_a_large_batch_draws_contact_sheets_for_its_first_queries_only(tmp_path, r3_home, indexed) -> None:
    payload = run(write_queries(tmp_path, QUERIES), r3_home, query={"contact_sheets": 2})
    artifacts = Path(payload["artifacts"])
    assert sorted(p.name for p in artifacts.glob("*.png")) == ["q-night.png", "q-stand.png"]
    report = (artifacts / "report.md").read_text()
    assert report.count("## ") == 3 and report.count("![contact sheet]") == 2  # every query is still reported
    assert len(payload["results"]) == 3 and all(r["error"] is None for r in payload["results"])


def test_bad_queries_carry_their_error_and_the_rest_complete(tmp_path, r3_home, indexed, capsys, monkeypatch) -> None:
    rows = QUERIES[:1] + [
        {"id": "unknown", "source": "no-such-item", "edit": "make it night"},
        {"id": "empty-edit", "source": "cat-sofa", "edit": "   "},
        {"id": "huge-edit", "source": "cat-sofa", "edit": "x" * 100_000},
        {"id": "outside", "source": "../../etc/passwd", "edit": "make it night"},
    ]
    payload = run(write_queries(tmp_path, rows), r3_home)
    errors = {r["id"]: r["error"] for r in payload["results"]}
    assert errors["q-night"] is None
    assert "unknown source id 'no-such-item'" in errors["unknown"]
    assert errors["empty-edit"] == "empty edit instruction"
    assert "100000 characters" in errors["huge-edit"]
    assert errors["outside"] is not None

    for name, value in {
        "R3_MODELS__EMBEDDER": "fake-text",
        "R3_MODELS__REASONER": "fake",
        "R3_MODELS__RERANKER": "fake",
    }.items():
        monkeypatch.setenv(name, value)
    code = cli_main(
        ["query", str(tmp_path / "queries.jsonl"), "--out", str(tmp_path / "o.json"), "--home", str(r3_home)]
    )
    assert code == 1
    assert "ERROR empty edit instruction" in capsys.readouterr().out


def test_malformed_queries_file_exits_2_naming_the_line(tmp_path, r3_home, indexed, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{oops\n')
    assert cli_main(["query", str(bad), "--out", str(tmp_path / "o.json"), "--home", str(r3_home)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_second_run_of_the_same_batch_calls_no_model(tmp_path, r3_home, indexed) -> None:
    queries = write_queries(tmp_path, QUERIES)
    first = run(queries, r3_home)
    settings = fake_settings(r3_home, models=FAKES["models"])
    reasoner, reranker, embedder = shared_reasoner(settings), shared_reranker(settings), shared_embedder(settings)
    calls_before = (reasoner.calls, reranker.pairs, embedder.queries_embedded)
    assert calls_before[0] == 2 and calls_before[1] > 0

    second = run(queries, r3_home)

    assert (reasoner.calls, reranker.pairs, embedder.queries_embedded) == calls_before
    assert [r["ranked"] for r in second["results"]] == [r["ranked"] for r in first["results"]]


def test_rerank_k_zero_keeps_recall_order_and_reranks_nothing(tmp_path, r3_home, indexed) -> None:
    payload = run(write_queries(tmp_path, QUERIES), r3_home, query={"rerank_k": 0})
    for result in payload["results"]:
        assert all(item["reranker_score"] is None for item in result["ranked"])
        embedding = [item["embedding_score"] for item in result["ranked"]]
        assert embedding == sorted(embedding, reverse=True)
    assert payload["results"][0]["lineage"]["reranker"] is None


def test_copy_gate_leaves_out_reasoning_that_restates_the_source(tmp_path, r3_home, indexed) -> None:
    # The fake reasoner writes "<source caption>, after: <edit>": word similarity 0.7-0.8 to the source caption.
    queries = write_queries(tmp_path, QUERIES[:2])
    base = run(queries, r3_home, query={"rerank_k": 0, "use_reasoning": False})["results"]
    # tau = -1: the agreement gate passes everything, so only the copy gate decides.
    strict = run(queries, r3_home, query={"rerank_k": 0, "gate_threshold": -1.0, "copy_gate_threshold": 0.6})
    loose = run(queries, r3_home, query={"rerank_k": 0, "gate_threshold": -1.0, "copy_gate_threshold": 0.95})
    for b, s, lo in zip(base, strict["results"], loose["results"]):
        assert 0.6 <= s["gate"]["source_similarity"] < 0.95
        assert s["gate"]["used"] is False and lo["gate"]["used"] is True
        assert [i["id"] for i in s["ranked"]] == [i["id"] for i in b["ranked"]]  # recall as with no reasoning
        assert [i["score"] for i in s["ranked"]] == pytest.approx([i["score"] for i in b["ranked"]])


def test_edit_gate_leaves_out_reasoning_that_drops_the_edit(tmp_path, r3_home, indexed) -> None:
    queries = write_queries(tmp_path, QUERIES[:2])
    base = run(queries, r3_home, query={"rerank_k": 0, "use_reasoning": False})["results"]
    # tau = -1 and no copy gate: only the edit gate decides.
    gates = {"rerank_k": 0, "gate_threshold": -1.0, "copy_gate_threshold": None, "edit_gate": True}
    copying = FAKES["models"] | {"reasoner": "fake-copying"}
    dropped = run(queries, r3_home, query=gates, models=copying)["results"]
    ungated = run(queries, r3_home, query=gates | {"edit_gate": False}, models=copying)["results"]
    carried = run(queries, r3_home, query=gates)["results"]  # the fake reasoner appends the edit
    for b, d, u, c in zip(base, dropped, ungated, carried):
        assert (d["gate"]["names_edit"], d["gate"]["used"]) == (False, False)
        assert u["gate"]["used"] is True and (c["gate"]["names_edit"], c["gate"]["used"]) == (True, True)
        assert [i["id"] for i in d["ranked"]] == [i["id"] for i in b["ranked"]]  # recall as with no reasoning
        assert [i["score"] for i in d["ranked"]] == pytest.approx([i["score"] for i in b["ranked"]])


def test_batch_pinned_to_a_version_ignores_a_refresh(tmp_path, r3_home, indexed) -> None:
    queries = write_queries(tmp_path, QUERIES)
    before = run(queries, r3_home)
    version = before["results"][0]["lineage"]["gallery"]["version"]

    bigger = dict(CAPTIONS, **{"dog-night-2": "a dog runs in a park at night, again", "cat-2": "a cat sleeping"})
    index_gallery(source=str(write_gallery(tmp_path / "g", bigger)), home=str(r3_home), overrides=FAKES)

    pinned = query_batch(queries=str(queries), home=str(r3_home), overrides=FAKES, gallery_version=version)
    latest = run(queries, r3_home)
    assert [r["ranked"] for r in pinned["results"]] == [r["ranked"] for r in before["results"]]
    assert pinned["results"][0]["lineage"]["gallery"]["version"] == version
    assert latest["results"][0]["lineage"]["gallery"]["version"] > version
    assert any(item["id"] == "cat-2" for item in latest["results"][2]["ranked"])


def test_query_against_an_empty_gallery_is_a_clear_error(tmp_path, r3_home, capsys, monkeypatch) -> None:
    monkeypatch.setenv("R3_MODELS__EMBEDDER", "fake-text")
    code = cli_main(
        ["query", str(write_queries(tmp_path, QUERIES)), "--out", str(tmp_path / "o.json"), "--home", str(r3_home)]
    )
    assert code == 2
    assert "run `r3 index`" in capsys.readouterr().err


def test_tiny_preset_end_to_end_on_generated_videos(tmp_path, r3_home) -> None:
    """Pixels in, ranks out, through the real Qwen3-VL code path (tiny random weights: no quality claim)."""
    from r3tasks.datasets.synthetic import edit_instruction
    from tests.videos import write_three_clip_gallery

    gallery = tmp_path / "videos"
    specs = write_three_clip_gallery(gallery)
    overrides = {"models": {"reasoning_max_new_tokens": 12}, "query": {"rerank_k": 2}}
    summary = index_gallery(source=str(gallery), preset="tiny", home=str(r3_home), overrides=overrides)
    assert summary["added"] == 3 and summary["failed"] == []

    queries = write_queries(
        tmp_path,
        [
            {"id": "night", "source": specs[0].clip_id(), "edit": edit_instruction(specs[0], specs[1])},
            {"id": "squares", "text": "blue squares moving left"},
        ],
    )
    payload = query_batch(queries=str(queries), preset="tiny", home=str(r3_home), overrides=overrides)

    night, squares = payload["results"]
    assert night["error"] is None and squares["error"] is None
    assert night["reasoning"] is not None  # generated by the tiny reasoner from the source frames
    assert [item["id"] for item in night["ranked"]] and specs[0].clip_id() not in [i["id"] for i in night["ranked"]]
    assert len(squares["ranked"]) == 3
    reranked = [item for item in squares["ranked"] if item["reranker_score"] is not None]
    assert len(reranked) == 2  # only the top-K is rescored
    assert 0.0 <= reranked[0]["reranker_score"] <= 1.0  # sigmoid of the yes-no logit
    assert night["lineage"]["embedder"] != squares["lineage"]["reranker"]


def test_a_rerank_decision_runs_only_with_the_reranker_it_was_calibrated_on(tmp_path, r3_home, indexed) -> None:
    from r3tasks.rerank.decision import FEATURES

    queries = write_queries(tmp_path, QUERIES)
    # Every query confident: the strong fusion (R^3's min-max) wherever the reranker disagrees with recall.
    block = {"weights": dict.fromkeys(FEATURES, 0.0), "bias": 10.0, "threshold": 0.5}
    ours = run(queries, r3_home, query={"rerank_decision": {**block, "reranker_fingerprint": "fake-reranker-1"}})
    assert ours["results"][0]["lineage"]["rerank_decision"] == {"calibrated_on": "fake-reranker-1", "applied": True}
    assert all(r["rerank"]["fusion"] == "strong" and r["rerank"]["probability"] > 0.99 for r in ours["results"])
    assert not any(r["warnings"] for r in ours["results"])
    # Calibrated on another reranker: the default fusion runs, and each result says why.
    other = run(queries, r3_home, query={"rerank_decision": {**block, "reranker_fingerprint": "gemma-1234"}})
    assert other["results"][0]["lineage"]["rerank_decision"] == {"calibrated_on": "gemma-1234", "applied": False}
    plain = run(queries, r3_home)
    for result, without in zip(other["results"], plain["results"]):
        assert "fusion" not in result["rerank"] and result["ranked"] == without["ranked"]
        assert any("calibrated on reranker gemma-1234" in w and "fake-reranker-1" in w for w in result["warnings"])
