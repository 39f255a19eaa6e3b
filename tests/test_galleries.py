"""Named galleries side by side in one data home, `r3 galleries`, and non-UTF-8 file names end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main as cli_main
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.datasets.synthetic import ClipSpec, write_clip
from r3tasks.demo import build_demo
from r3tasks.gallery.catalog import list_galleries
from r3tasks.gallery.pinned import pin
from r3tasks.gallery.views import open_store
from r3tasks.models.registry import register_backend
from r3tasks.query.report import _frame_or_none
from tests.conftest import fake_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAKE = {"models": {"embedder": "fake"}}


def _own_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(["red", "blue", "green"][:n]):
        spec = ClipSpec(shape="circle", colour=colour, motion="right", background="day", count=1)
        write_clip(folder / f"mine-{i}.mp4", spec, seconds=1.0, caption_sidecar=True)
    return folder


def test_indexing_your_own_folder_keeps_the_demo_gallery(tmp_path: Path, r3_home: Path, capsys) -> None:
    demo = build_demo(r3_home / "demo")
    first = index_gallery(source=str(demo.gallery), home=str(r3_home), overrides=FAKE, gallery="demo")
    demo_rows = first["added"]
    assert demo_rows >= 12 and first["table"]["gallery"] == "demo"

    own = index_gallery(source=str(_own_folder(tmp_path / "mine")), home=str(r3_home), overrides=FAKE)
    assert own["removed"] == 0 and own["added"] == 3 and own["table"]["name"] != first["table"]["name"]

    counts = {g.gallery: g.rows for g in list_galleries(fake_settings(r3_home))}
    assert counts == {"demo": demo_rows, "default": 3}
    again = index_gallery(source=str(demo.gallery), home=str(r3_home), overrides=FAKE, gallery="demo")
    assert again["removed"] == 0 and again["unchanged"] == demo_rows  # and the default gallery is untouched
    assert {g.gallery: g.rows for g in list_galleries(fake_settings(r3_home))} == counts

    os.environ["R3_MODELS__EMBEDDER"] = "fake"
    try:
        assert cli_main(["galleries", "--home", str(r3_home), "--json"]) == 0
    finally:
        del os.environ["R3_MODELS__EMBEDDER"]
    listed = json.loads(capsys.readouterr().out)["galleries"]
    assert [(g["gallery"], g["rows"]) for g in listed] == [("default", 3), ("demo", demo_rows)]
    assert all(g["version"] >= 1 for g in listed)


def test_a_query_searches_only_its_own_gallery(tmp_path: Path, r3_home: Path) -> None:
    index_gallery(source=str(_own_folder(tmp_path / "a", 2)), home=str(r3_home), overrides=FAKE, gallery="a")
    index_gallery(source=str(_own_folder(tmp_path / "b", 3)), home=str(r3_home), overrides=FAKE, gallery="b")
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "t", "text": "a red circle"}) + "\n")
    overrides = {"models": {"embedder": "fake", "reranker": "fake"}, "query": {"rerank_k": 0}}
    payload = query_batch(queries=str(queries), home=str(r3_home), overrides=overrides, gallery="a")
    assert payload["lineage"]["gallery"]["table"].startswith("gallery_a_")
    assert len(payload["results"][0]["ranked"]) == 2


# -- non-UTF-8 file names ------------------------------------------------------------------------
SEEN: list[tuple[str, bool]] = []  # (candidate id, had frames), from the frame-reading reranker


class FrameReranker:
    """Scores a candidate 1.0 when it came with decoded frames, so a lost path shows as a 0."""

    fingerprint = "fake-frame-reranker-1"
    uses_frames = True

    def score(self, query, candidates):
        assert query.frames is not None, "the source's frames were not read"
        SEEN.extend((c.item_id, c.frames is not None) for c in candidates)
        return np.array([1.0 if c.frames is not None else 0.0 for c in candidates])


def load_frame_reranker(settings) -> FrameReranker:
    return FrameReranker()


register_backend("reranker", "fake-frames", "tests.test_galleries:load_frame_reranker")


def test_a_non_utf8_file_name_reopens_as_source_candidate_and_thumbnail(tmp_path: Path, r3_home: Path) -> None:
    folder = _own_folder(tmp_path / "g", 2)
    odd = os.fsdecode(b"caf\xe9.mp4")  # not UTF-8: Python holds it with a surrogate escape
    (folder / "mine-0.mp4").rename(folder / odd)
    (folder / "mine-0.txt").rename(folder / os.fsdecode(b"caf\xe9.txt"))
    summary = index_gallery(source=str(folder), home=str(r3_home), overrides=FAKE)
    assert summary["failed"] == [] and summary["added"] == 2

    settings = fake_settings(r3_home)
    record = pin(open_store(settings)).records["caf\\xe9"]  # the id is printable text; the path is exact
    assert os.fsencode(record.path) == os.fsencode(str(folder)) + b"/caf\xe9.mp4"
    assert _frame_or_none(record.path) is not None  # the contact sheet's thumbnail

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "q", "source": "caf\\xe9", "edit": "make it blue"}) + "\n")
    SEEN.clear()
    overrides = {"models": {"embedder": "fake", "reranker": "fake-frames"}, "query": {"use_reasoning": False}}
    payload = query_batch(queries=str(queries), home=str(r3_home), overrides=overrides)
    result = payload["results"][0]
    assert result["error"] is None
    assert SEEN == [("mine-1", True)]  # the source is left out of its own ranking; the other candidate had frames
    assert result["ranked"][0]["reranker_score"] == 1.0

    queries.write_text(json.dumps({"id": "q2", "source": "mine-1", "edit": "make it red"}) + "\n")
    SEEN.clear()
    query_batch(queries=str(queries), home=str(r3_home), overrides=overrides)
    assert SEEN == [("caf\\xe9", True)]  # as a rerank candidate, its frames were read from the exact path


def test_a_table_from_before_named_galleries_is_listed_as_legacy_with_the_fix(tmp_path: Path, r3_home: Path) -> None:
    import lancedb
    import pyarrow as pa

    from r3tasks.errors import R3Error

    settings = fake_settings(r3_home)
    store = open_store(settings)
    old = pa.schema(
        [pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), store.dim))],
        metadata={b"r3.embedder": store.embedder_fingerprint.encode()},
    )
    lancedb.connect(settings.gallery_uri).create_table(store.legacy_name, schema=old)
    assert [(g.gallery, g.table) for g in list_galleries(settings)] == [("(legacy)", store.legacy_name)]
    with pytest.raises(R3Error, match=r"before named galleries: rebuild it with `r3 index SOURCE --gallery default`"):
        pin(store)
