"""Benchmark loaders: the real EgoCVR annotations, small WebVid-CoVR / CoVR-R / generic fixtures, malformed files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from r3tasks.datasets import (
    ComposedQuery,
    TextQuery,
    clean_narration,
    default_egocvr_dir,
    load_benchmark,
    load_covrr_json,
    load_egocvr,
    load_generic,
    load_qrels,
    load_webvid_covr_csv,
)
from r3tasks.errors import SourceError

EGOCVR = default_egocvr_dir()
needs_egocvr = pytest.mark.skipif(EGOCVR is None, reason="EgoCVR annotations not present")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --------------------------------------------------------------------------- EgoCVR, real files


@needs_egocvr
def test_egocvr_global_counts_and_consistency() -> None:
    b = load_benchmark("egocvr")
    assert b.name == "egocvr" and b.setting == "global"
    assert len(b.queries) == 2295
    # egocvr_data.csv has 12,526 rows (12,527 lines with the header, one narration spans two lines);
    # 1,390 clips are repeated, leaving 10,666 distinct gallery clips.
    assert b.stats["clip_rows"] == 12526
    assert len(b.items) == 10666 == len({it.id for it in b.items})
    assert b.stats["dropped_missing_source"] == 0 and b.stats["dropped_missing_targets"] == 0
    item_ids = {it.id for it in b.items}
    assert all(isinstance(q, ComposedQuery) and q.source in item_ids for q in b.queries)
    assert all(t in item_ids for g in b.qrels.values() for t in g)
    assert sum(len(g) for g in b.qrels.values()) > len(b.queries)  # some queries have several targets
    assert all(q.gallery_group is None for q in b.queries if isinstance(q, ComposedQuery))
    assert all(it.path is None and it.text for it in b.items)  # caption space
    q0 = b.queries[0]
    assert isinstance(q0, ComposedQuery)
    assert q0.edit == "Shake it." and q0.source_text == "The camera wearer takes the sieve"


@needs_egocvr
def test_egocvr_local_galleries_are_the_source_video() -> None:
    b = load_benchmark("egocvr-local")
    assert b.setting == "local" and len(b.queries) == 2295
    groups = {it.id: it.group for it in b.items}
    for q in b.queries[:200]:
        assert isinstance(q, ComposedQuery)
        assert q.gallery_group == groups[q.source]
        gallery = b.gallery_for(q)
        assert len(gallery) >= 3 and all(it.group == q.gallery_group for it in gallery)
        assert set(b.qrels[q.id]) <= {it.id for it in gallery}


@needs_egocvr
def test_egocvr_source_targets_limit_and_narration_style() -> None:
    assert EGOCVR is not None
    dropped = load_egocvr(EGOCVR, source_targets="drop")
    assert len(dropped.queries) == 2295 - 9
    assert all(q.source not in dropped.qrels[q.id] for q in dropped.queries if isinstance(q, ComposedQuery))
    kept = load_egocvr(EGOCVR, limit=5, narration_style="raw")
    assert len(kept.queries) == 5 and len(kept.items) == 10666
    assert kept.items[0].text == "#C C takes the sieve"


@needs_egocvr
def test_egocvr_video_dir_sets_paths_that_exist(tmp_path: Path) -> None:
    flat = "d1d1b6da-e7f8-48e7-9ee4-d8382582695a_971_980"
    uid = "d1d1b6da-e7f8-48e7-9ee4-d8382582695a"
    nested = "d1d1b6da-e7f8-48e7-9ee4-d8382582695a_897_906"
    (tmp_path / f"{flat}.mp4").write_bytes(b"x")
    (tmp_path / uid).mkdir()
    (tmp_path / uid / f"{nested}.mp4").write_bytes(b"x")
    assert EGOCVR is not None
    b = load_egocvr(EGOCVR, video_dir=tmp_path, limit=1)
    paths = {it.id: it.path for it in b.items}
    assert paths[flat] == tmp_path / f"{flat}.mp4"
    assert paths[nested] == tmp_path / uid / f"{nested}.mp4"
    assert b.stats["items_with_video"] == 2


def test_clean_narration() -> None:
    assert clean_narration("#C C takes the sieve") == "The camera wearer takes the sieve"
    assert clean_narration("#c c holds bucket") == "The camera wearer holds bucket"
    assert clean_narration("#CC wipes the table") == "The camera wearer wipes the table"
    assert clean_narration("#C is cutting") == "The camera wearer is cutting"
    assert clean_narration("#O man Y applies gel on nails of C") == "Man Y applies gel on nails of the camera wearer"
    assert clean_narration("#C C picks a tissue paper. #unsure") == "The camera wearer picks a tissue paper."
    assert (
        clean_narration("#C C covers the lid in his \nleft hand") == "The camera wearer covers the lid in his left hand"
    )


# --------------------------------------------------------------------------- EgoCVR, small fixtures


def _egocvr_fixture(folder: Path, targets: str = "['v1_2']") -> Path:
    folder.mkdir(exist_ok=True)
    _write_csv(
        folder / "egocvr_data.csv",
        ["clip_name", "narration_text", "video_uid"],
        [
            ["v1_1", "#C C opens the door", "v1"],
            ["v1_2", "#C C closes the door", "v1"],
            ["v2_1", "#C C waters a plant", "v2"],
            ["v1_1", "#C C opens the door", "v1"],
        ],
    )
    _write_csv(
        folder / "egocvr_annotations.csv",
        [
            "video_clip_id",
            "target_clip_ids",
            "video_clip_narration",
            "target_clip_narration",
            "instruction",
            "modified_captions",
        ],
        [
            ["v1_1", targets, "#C C opens the door", "x", "Close it.", "y"],
            ["v2_1", "['nope']", "#C C waters a plant", "x", "Stop.", "y"],
        ],
    )
    return folder


def test_egocvr_drops_and_counts_queries_with_absent_targets(tmp_path: Path) -> None:
    b = load_egocvr(_egocvr_fixture(tmp_path / "ego"))
    assert [q.id for q in b.queries] == ["0"]
    assert b.qrels == {"0": {"v1_2": 1}}
    assert b.stats["dropped_missing_targets"] == 1 and b.stats["missing_target_ids"] == 1
    assert b.stats["duplicate_clip_rows"] == 1 and len(b.items) == 3


@pytest.mark.parametrize("bad", ["['v1_2'", "__import__('os').system('true')", "[1, 2]", "[]"])
def test_egocvr_bad_target_lists_name_file_and_line(tmp_path: Path, bad: str) -> None:
    folder = _egocvr_fixture(tmp_path / "ego", targets=bad)
    with pytest.raises(SourceError, match=r"egocvr_annotations\.csv:2: target_clip_ids"):
        load_egocvr(folder)


def test_egocvr_missing_column(tmp_path: Path) -> None:
    folder = _egocvr_fixture(tmp_path / "ego")
    _write_csv(folder / "egocvr_data.csv", ["clip_name", "narration_text"], [["a", "b"]])
    with pytest.raises(SourceError, match=r"egocvr_data\.csv:1: missing column\(s\) video_uid"):
        load_egocvr(folder)


# --------------------------------------------------------------------------- WebVid-CoVR CSV


def _webvid_fixture(tmp_path: Path) -> Path:
    return _write_csv(
        tmp_path / "webvid8m-covr_test.csv",
        ["pth1", "pth2", "edit", "txt1", "txt2"],
        [
            ["07/1001", "08/2001", "make it red", "a blue car", "a red car"],
            ["07/1002", "08/2002", "add a dog", "a park", "a park with a dog"],
            ["08/2001", "08/2002", "swap", "a red car", "a park with a dog"],
        ],
    )


def test_webvid_csv_gallery_is_the_targets(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    (videos / "07").mkdir(parents=True)
    (videos / "08").mkdir()
    (videos / "07" / "1001.mp4").write_bytes(b"x")
    (videos / "08" / "2001.mp4").write_bytes(b"x")
    (videos / "2002.mp4").write_bytes(b"x")  # flat layout: found by basename, as the reference looks
    b = load_webvid_covr_csv(_webvid_fixture(tmp_path), video_dir=videos)
    assert [it.id for it in b.items] == ["08/2001", "08/2002"]
    assert b.items[0].path == videos / "08" / "2001.mp4" and b.items[0].text == "a red car"
    assert b.items[1].path == videos / "2002.mp4"
    q = b.queries
    assert [x.id for x in q] == ["0", "1", "2"]
    assert isinstance(q[0], ComposedQuery) and q[0].source == str(videos / "07" / "1001.mp4")
    assert q[0].source_text == "a blue car" and q[0].edit == "make it red"
    assert isinstance(q[1], ComposedQuery) and q[1].source == "07/1002"  # no file, not a gallery item
    assert isinstance(q[2], ComposedQuery) and q[2].source == "08/2001"  # a gallery item
    assert b.qrels == {"0": {"08/2001": 1}, "1": {"08/2002": 1}, "2": {"08/2002": 1}}
    with_sources = load_webvid_covr_csv(_webvid_fixture(tmp_path), include_sources=True, limit=1)
    assert {it.id for it in with_sources.items} == {"07/1001", "07/1002", "08/2001", "08/2002"}
    assert len(with_sources.queries) == 1


def test_webvid_csv_malformed(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "a.csv", ["pth1", "edit"], [["1", "x"]])
    with pytest.raises(SourceError, match=r"a\.csv:1: missing column\(s\) pth2"):
        load_webvid_covr_csv(p)
    p = _write_csv(tmp_path / "b.csv", ["pth1", "pth2", "edit"], [["1", "2", "x"], ["1", "3", ""]])
    with pytest.raises(SourceError, match=r"b\.csv:3: empty 'edit'"):
        load_webvid_covr_csv(p)
    p = _write_csv(tmp_path / "c.csv", ["id", "pth1", "pth2", "edit"], [["7", "1", "2", "x"], ["7", "1", "3", "y"]])
    with pytest.raises(SourceError, match=r"c\.csv:3: duplicate query id '7'"):
        load_webvid_covr_csv(p)
    p = _write_csv(tmp_path / "d.csv", ["pth1", "pth2", "edit"], [["1", "2", "x", "extra"]])
    with pytest.raises(SourceError, match=r"d\.csv:2: more fields"):
        load_webvid_covr_csv(p)


# --------------------------------------------------------------------------- CoVR-R JSON


def test_covrr_sectioned_file_with_labels_and_scanned_gallery(tmp_path: Path) -> None:
    data = [
        {
            "webvid": [
                {
                    "id": 0,
                    "video_source": "112/1016223889",
                    "modification_text": "make it green",
                    "video_target": "112/555",
                },
                {"id": 1, "video_source": "14/5369546", "modification_text": "remove the gifts"},
            ]
        },
        {"ss2": [{"id": 0, "video_source": 74225, "modification_text": "a highlighter", "video_target": [117935]}]},
    ]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    webvid_dir = tmp_path / "webvid"
    (webvid_dir / "112").mkdir(parents=True)
    for name in ("1016223889", "555", "777"):
        (webvid_dir / "112" / f"{name}.mp4").write_bytes(b"x")
    b = load_covrr_json(path, video_dir={"webvid": webvid_dir})
    assert [q.id for q in b.queries] == ["webvid/0", "webvid/1", "ss2/0"]
    assert [q.gallery_group for q in b.queries if isinstance(q, ComposedQuery)] == ["webvid", "webvid", "ss2"]
    items = {it.id: it for it in b.items}
    assert items["112/777"].path == webvid_dir / "112" / "777.mp4"  # a scanned distractor
    assert items["112/1016223889"].path is not None and items["14/5369546"].path is None
    assert items["74225"].group == "ss2"
    assert b.qrels == {"webvid/0": {"112/555": 1}, "ss2/0": {"117935": 1}}  # unlabelled webvid/1 has none
    gallery = b.gallery_for(b.queries[2])
    assert {it.id for it in gallery} == {"74225", "117935"}


def test_covrr_flat_file_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "flat.json"
    path.write_text(
        json.dumps(
            [
                {"id": 5, "video_source": "a.mp4", "video_target": "b", "modification_text": "x"},
                {"id": 6, "video_source": "c", "video_target": "a", "modification_text": "y"},
            ]
        )
    )
    b = load_covrr_json(path, limit=1)
    assert [(q.id, q.source, q.gallery_group) for q in b.queries if isinstance(q, ComposedQuery)] == [("5", "a", None)]
    assert b.qrels == {"5": {"b": 1}}


def test_held_out_split_leaves_out_the_reported_queries(tmp_path: Path) -> None:
    path = tmp_path / "flat.json"
    path.write_text(
        json.dumps(
            [{"id": i, "video_source": f"s{i}", "video_target": f"t{i}", "modification_text": "x"} for i in range(5)]
        )
    )
    whole = load_covrr_json(path)
    held_out = whole.queries_from(3)
    assert [q.id for q in held_out.queries] == ["3", "4"]
    assert held_out.qrels == {"3": {"t3": 1}, "4": {"t4": 1}}
    assert held_out.items == whole.items and "from #3" in held_out.setting
    with pytest.raises(ValueError):
        whole.queries_from(-1)


def test_covrr_malformed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"id": 0,\n "video_source": }\n]')
    with pytest.raises(SourceError, match=r"bad\.json:3: bad JSON"):
        load_covrr_json(bad)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"webvid": [{"id": 0, "video_source": "a"}]}]))
    with pytest.raises(SourceError, match=r"missing\.json: section 'webvid' entry 0: empty 'modification_text'"):
        load_covrr_json(missing)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([{"id": 1, "video_source": "a", "modification_text": "x"}] * 2))
    with pytest.raises(SourceError, match="duplicate query id '1'"):
        load_covrr_json(dup)
    clash = tmp_path / "clash.json"
    clash.write_text(
        json.dumps(
            [
                {"webvid": [{"id": 0, "video_source": "7", "modification_text": "x"}]},
                {"ss2": [{"id": 0, "video_source": 7, "modification_text": "y"}]},
            ]
        )
    )
    with pytest.raises(SourceError, match="appears in sections"):
        load_covrr_json(clash)


# --------------------------------------------------------------------------- generic


def test_generic_csv_manifest_jsonl_queries_trec_qrels(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    _write_csv(
        tmp_path / "manifest.csv",
        ["id", "path", "text"],
        [["a", "clips/a.mp4", ""], ["b", "", "a dog runs"], ["c", "/abs/c.mp4", "cat"]],
    )
    (tmp_path / "queries.jsonl").write_text(
        json.dumps({"id": "t1", "text": "a running dog"})
        + "\n\n"
        + json.dumps({"id": "c1", "source": "a", "edit": "make it a cat"})
        + "\n"
        + json.dumps({"id": "c2", "source": "clips/a.mp4", "edit": "x", "source_text": "s"})
        + "\n"
    )
    (tmp_path / "qrels.txt").write_text("t1 0 b 2\nt1 0 c 0\n# comment\nc1 0 c 1\nzz 0 nope 1\n")
    b = load_benchmark(str(tmp_path))
    assert [it.path for it in b.items] == [tmp_path / "clips" / "a.mp4", None, Path("/abs/c.mp4")]
    assert b.items[1].text == "a dog runs"
    assert isinstance(b.queries[0], TextQuery) and b.queries[0].text == "a running dog"
    assert isinstance(b.queries[1], ComposedQuery) and b.queries[1].source == "a"
    assert isinstance(b.queries[2], ComposedQuery) and b.queries[2].source == str(tmp_path / "clips" / "a.mp4")
    assert b.qrels["t1"] == {"b": 2, "c": 0} and b.qrels["c1"] == {"c": 1}
    assert b.stats["qrels_unknown_queries"] == 1 and b.stats["qrels_unknown_items"] == 1


def test_generic_jsonl_manifest_csv_queries_json_qrels(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "x", "text": "t", "group": "g1"}\n{"id": "y", "path": "y.mp4"}\n')
    q = _write_csv(tmp_path / "q.csv", ["id", "text", "source", "edit"], [["1", "find x", "", ""]])
    r = tmp_path / "r.json"
    r.write_text(json.dumps({"1": {"x": 1}, "2": ["y"]}))
    b = load_generic(m, q, r)
    assert b.items[0].group == "g1" and b.items[1].path == tmp_path / "y.mp4"
    assert b.queries == [TextQuery("1", "find x")]
    assert b.qrels == {"1": {"x": 1}, "2": {"y": 1}}


def test_generic_folder_keeps_the_first_queries_under_a_limit(tmp_path: Path) -> None:
    from r3tasks.datasets import load_benchmark

    (tmp_path / "manifest.jsonl").write_text('{"id": "x", "text": "t"}\n{"id": "y", "text": "u"}\n')
    (tmp_path / "queries.jsonl").write_text('{"id": "1", "text": "find x"}\n{"id": "2", "text": "find y"}\n')
    (tmp_path / "qrels.json").write_text(json.dumps({"1": {"x": 1}, "2": {"y": 1}}))
    first = load_benchmark(tmp_path, limit=1)
    assert [q.id for q in first.queries] == ["1"] and first.qrels == {"1": {"x": 1}} and len(first.items) == 2
    assert len(load_benchmark(tmp_path).queries) == 2


def test_generic_malformed(tmp_path: Path) -> None:
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "1", "text": "a"}\n')
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "x", "text": "t"}\n{"id": "y", "text": \n')
    with pytest.raises(SourceError, match=r"m\.jsonl:2: bad JSON line"):
        load_generic(m, q, None)
    m.write_text('{"id": "x", "text": "t"}\n{"id": "x", "text": "u"}\n')
    with pytest.raises(SourceError, match=r"m\.jsonl:2: duplicate item id 'x'"):
        load_generic(m, q, None)
    m.write_text('{"id": "x"}\n')
    with pytest.raises(SourceError, match="neither a path nor a text"):
        load_generic(m, q, None)
    m.write_text('{"id": "x", "text": "t"}\n')
    q.write_text('{"id": "1"}\n')
    with pytest.raises(SourceError, match=r"q\.jsonl:1: query '1' needs 'edit'"):
        load_generic(m, q, None)
    r = tmp_path / "r.txt"
    r.write_text("1 0 x 1\n\n1 0 y high\n")
    with pytest.raises(SourceError, match=r"r\.txt:3: relevance grade 'high'"):
        load_qrels(r)
    r.write_text("1 0 x 1\n1 x 2\n")
    with pytest.raises(SourceError, match=r"r\.txt:2: expected 'qid iter item grade', got 3 fields"):
        load_qrels(r)
    r.write_text("1 0 x 1\n1 0 x 2\n")
    with pytest.raises(SourceError, match=r"r\.txt:2: item 'x' judged twice"):
        load_qrels(r)


def test_load_benchmark_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such benchmark"):
        load_benchmark(str(tmp_path / "nothing.csv"))
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(SourceError, match="suffix"):
        load_benchmark(str(tmp_path / "x.yaml"))
    with pytest.raises(SourceError, match="not a benchmark folder"):
        load_benchmark(str(tmp_path))
    b = load_benchmark(str(_webvid_fixture(tmp_path)))
    assert b.name == "webvid8m-covr_test" and len(b.queries) == 3
    ego = load_benchmark("egocvr-local", folder=_egocvr_fixture(tmp_path / "ego"))
    assert ego.setting == "local" and ego.queries[0].gallery_group == "v1"  # type: ignore[union-attr]


def _narrations_csv(folder: Path, narrations: list[str]) -> None:
    """An `egocvr_data.csv` of one clip per narration, as the swap benchmarks read it."""
    (folder / "egocvr_data.csv").write_text(
        "clip_name,narration_text,video_uid\n" + "".join(f"clip{i},{t},v{i}\n" for i, t in enumerate(narrations))
    )


def test_egocvr_swap_queries_differ_from_their_target_in_one_word_named_by_the_edit(tmp_path: Path) -> None:
    from r3tasks.datasets import load_benchmark

    narrations = [
        "#C C takes the sieve",
        "#C C shakes the sieve",
        "#C C takes the knife",
        "#C C washes a plate in the sink",
        "#C C washes a cup in the sink",
    ]
    _narrations_csv(tmp_path, narrations)
    first = load_benchmark("egocvr-swap", folder=tmp_path, n_queries=50, seed=3)
    again = load_benchmark("egocvr-swap", folder=tmp_path, n_queries=50, seed=3)
    assert [(q.id, q.edit, q.source_text) for q in first.queries] == [
        (q.id, q.edit, q.source_text) for q in again.queries
    ]
    texts = {item.id: item.text for item in first.items}
    assert len(texts) == len(set(texts.values()))  # no twins
    targets = [next(iter(first.qrels[q.id])) for q in first.queries]
    assert len(set(targets)) == len(targets) > 0  # one target per query, each the answer of one query only
    # Every source is a gallery item, or its query would fail for an unknown id: with one query the
    # source is nobody's target.
    for bench in (first, load_benchmark("egocvr-swap", folder=tmp_path, n_queries=1, seed=3)):
        ids = {item.id for item in bench.items}
        assert all(q.source in ids for q in bench.queries)
        assert ids == {q.source for q in bench.queries} | {t for q in bench.queries for t in bench.qrels[q.id]}
    for query in first.queries:
        (target_id,) = first.qrels[query.id]
        source, target = query.source_text.lower().split(), texts[target_id].lower().split()
        changed = [(a, b) for a, b in zip(source, target) if a != b]
        assert len(source) == len(target) and len(changed) == 1
        assert changed[0][1] in query.edit.lower()  # the edit names the new word


def test_egocvr_swap2_queries_differ_from_their_target_in_two_words_both_named_by_the_edit(tmp_path: Path) -> None:
    from r3tasks.datasets import load_benchmark

    narrations = [
        "#C C takes the sieve",
        "#C C shakes the knife",  # two words from the first: a two-word swap
        "#C C takes the knife",  # one word from each: not a two-word pair with either
        "#C C washes a plate in the sink",
        "#C C rinses a cup in the sink",
    ]
    _narrations_csv(tmp_path, narrations)
    bench = load_benchmark("egocvr-swap2", folder=tmp_path, n_queries=50, seed=1)
    assert bench.name == "egocvr-swap2"
    texts = {item.id: item.text for item in bench.items}
    # 2 unordered two-word pairs (sieve/knife, plate/cup), each in both directions: 4 queries, 4 targets.
    assert bench.stats["swap_pairs"] == 4 and len(bench.queries) == 4
    for query in bench.queries:
        assert query.id.startswith("swap2-")
        (target_id,) = bench.qrels[query.id]
        source, target = query.source_text.lower().split(), texts[target_id].lower().split()
        changed = [(a, b) for a, b in zip(source, target) if a != b]
        assert len(source) == len(target) and len(changed) == 2
        assert all(old in query.edit.lower() and new in query.edit.lower() for old, new in changed)


def test_egocvr_swap_sparse_gallery_holds_no_other_text_one_word_from_a_query(tmp_path: Path) -> None:
    from r3tasks.datasets import load_benchmark

    narrations = [
        "#C C takes the sieve",
        "#C C shakes the sieve",
        "#C C takes the knife",  # one word from the first: at most one pair of these three is taken
        "#C C washes a plate in the sink",
        "#C C washes a cup in the sink",
    ]
    _narrations_csv(tmp_path, narrations)
    dense = load_benchmark("egocvr-swap", folder=tmp_path, n_queries=50, seed=0)
    sparse = load_benchmark("egocvr-swap-sparse", folder=tmp_path, n_queries=50, seed=0)
    assert sparse.name == "egocvr-swap-sparse" and len(dense.queries) == 5
    # One pair from the sieve/knife texts, one from the sink texts: two queries, four gallery texts.
    assert len(sparse.queries) == 2 and len(sparse.items) == 4
    texts = [item.text.lower().split() for item in sparse.items]
    one_word_apart = {
        (" ".join(a), " ".join(b))
        for a in texts
        for b in texts
        if len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    }
    pairs = {(q.source_text.lower(), _target_text(sparse, q.id)) for q in sparse.queries}
    assert one_word_apart == pairs | {(b, a) for a, b in pairs}  # each text's only near-copy is its pair's
    assert all(q.id.startswith("swaps-") for q in sparse.queries)


def test_egocvr_swap_redraw_holds_no_text_of_the_swap_sets_reported_queries_and_is_all_dev(tmp_path: Path) -> None:
    from r3tasks.datasets import load_benchmark
    from r3tasks.evaluation.arms import split_record

    narrations = [
        "#C C takes the sieve",
        "#C C takes the knife",
        "#C C takes the spoon",
        "#C C takes the fork",
        "#C C washes a plate in the sink",
        "#C C washes a cup in the sink",
        "#C C washes a bowl in the sink",
        "#C C washes a pan in the sink",
    ]
    _narrations_csv(tmp_path, narrations)
    swap = load_benchmark("egocvr-swap", folder=tmp_path, n_queries=50, seed=0)
    redraw = load_benchmark("egocvr-swap-redraw", folder=tmp_path, n_queries=50, seed=0, reported=2)
    reported = swap.queries[:2]
    held = {q.source_text.lower() for q in reported} | {_target_text(swap, q.id) for q in reported}
    assert held and not held & {item.text.lower() for item in redraw.items}
    assert redraw.queries and all(q.id.startswith("swapr-") for q in redraw.queries)
    # Its first queries are dev data: an eval run without --skip is no reported split.
    assert redraw.dev_only and not swap.dev_only
    assert split_record(redraw.name, redraw.setting, 0, 2, 2, redraw.dev_only)["role"] == "dev"
    assert split_record(swap.name, swap.setting, 0, 2, 2, swap.dev_only)["role"] == "reported"


def _target_text(bench, query_id: str) -> str:
    (target_id,) = bench.qrels[query_id]
    return next(item.text for item in bench.items if item.id == target_id).lower()
