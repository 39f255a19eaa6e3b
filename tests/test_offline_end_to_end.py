"""`r3 index` then `r3 query --preset offline` on the preset's real, packaged weights, no network.

What a user of the offline preset sees first: captions in, the right clip first out, through MiniLM recall
and the Gemma 3 270M likelihood reranker as shipped (reasoning is off by default in this preset). Gemma comes
converted from the session's data home (its conversion has its own tests in test_offline_models.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Narrations in EgoCVR's style: each edit's target shares the source's scene, and near misses share most words.
CAPTIONS = {
    "phone-put": "#C C puts a phone on the table",
    "phone-pick": "#C C picks a phone from the table",
    "phone-bag": "#C C puts a phone in the bag",
    "phone-look": "#C C looks at the phone on the table",
    "cup-put": "#C C puts a cup on the table",
    "door-open": "#C C opens the door",
    "door-close": "#C C closes the door",
    "door-knock": "#C C knocks on the door",
    "door-lock": "#C C locks the door",
    "window-open": "#C C opens the window",
}
QUERIES = [
    {"id": "q-pick", "source": "phone-put", "edit": "Pick it up."},
    {"id": "q-close", "source": "door-open", "edit": "Close it."},
    {"id": "t-window", "text": "someone opening a window"},
]
# MiniLM embeds "<source caption>\n<edit>" (the offline preset's templates); the source never comes back. The
# target of each edit is the caption that keeps the source's object and does what the edit asks (picks the phone
# up; closes the door), the text query's the only window. Recall puts each first with a near miss (looks at the
# phone; locks the door) inside the preset's 0.12 recall window, so Gemma's likelihood scores that block and,
# preferring the target too, keeps it first (measured: cosine 0.95 vs 0.88, mean log-probability -1.99 vs -2.22;
# 0.96 vs 0.88, -1.53 vs -1.71).
EXPECTED_TOP1 = {"q-pick": "phone-pick", "q-close": "door-close", "t-window": "window-open"}


def share_converted_gemma(converted_home: Path, home: Path) -> None:
    """Point `home`'s models folder at the session's converted Gemma (a link: nothing is copied)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(converted_home / "models", target_is_directory=True)


def test_offline_preset_indexes_and_answers_composed_and_text_queries_with_its_real_models(
    tmp_path: Path, r3_home: Path, converted_gemma_home: Path, capsys: pytest.CaptureFixture
) -> None:
    share_converted_gemma(converted_gemma_home, r3_home)  # the conversion has its own tests
    manifest = tmp_path / "gallery.jsonl"
    manifest.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in CAPTIONS.items()))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))

    assert cli_main(["index", str(manifest), "--preset", "offline", "--home", str(r3_home), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["added"], summary["failed"]) == (len(CAPTIONS), [])

    out = tmp_path / "results.json"
    args = ["query", str(queries), "--out", str(out), "--preset", "offline", "--home", str(r3_home), "--json"]
    assert cli_main(args) == 0
    results = {r["id"]: r for r in json.loads(out.read_text())["results"]}

    assert {qid: r["ranked"][0]["id"] for qid, r in results.items()} == EXPECTED_TOP1
    assert all(r["error"] is None for r in results.values())
    assert results["q-pick"]["lineage"]["embedder"] == summary["embedder"]  # the table MiniLM wrote
    for qid in ("q-pick", "q-close"):  # Gemma scored the near misses in the window, and put the target above them
        target, near_miss = (item["reranker_score"] for item in results[qid]["ranked"][:2])
        assert results[qid]["rerank"]["pairs"] >= 2
        # The preset's per-query decision read the scores: it either used them or kept recall's order.
        assert results[qid]["rerank"]["fusion"] in ("strong", "default", "recall")
        assert results[qid]["rerank"]["gate"] == ("decision" if results[qid]["rerank"]["fusion"] == "recall" else None)
        assert None not in (target, near_miss) and target > near_miss
        assert results[qid]["lineage"]["reranker"] is not None
        # The preset's decision was calibrated on this very reranker (its fingerprint), so it ran.
        assert results[qid]["lineage"]["rerank_decision"]["applied"] is True
    # The text query's window holds its top-1 alone (cosine 0.60 against 0.43 for the next): recall is sure.
    assert results["t-window"]["rerank"] == {"pairs": 0, "depth": 0, "gate": "recall_window"}
    assert "phone-put" not in [i["id"] for i in results["q-pick"]["ranked"]]
