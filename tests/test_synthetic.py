"""Generated clips: captions, ids, edit instructions, rendering, encoding and the generated benchmark."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from r3tasks.datasets.synthetic import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    ClipSpec,
    all_specs,
    differing_attributes,
    edit_instruction,
    generate_benchmark,
    render_frames,
    write_clip,
)
from r3tasks.inputs.frames import SamplingPolicy, probe_video, read_frames

RED_CIRCLES = ClipSpec(shape="circle", colour="red", motion="right", background="night", count=2)


def test_caption_and_id():
    assert RED_CIRCLES.caption() == "Two red circles move to the right over a dark night background."
    assert RED_CIRCLES.clip_id() == "red-circle-x2-right-night"
    one = ClipSpec(shape="triangle", colour="yellow", motion="still", background="sand", count=1)
    assert one.caption() == "A yellow triangle stays still over a sandy beige background."
    assert one.clip_id() == "yellow-triangle-x1-still-sand"
    three = ClipSpec(shape="square", colour="blue", motion="up", background="day", count=3)
    assert three.caption() == "Three blue squares move up over a bright daytime sky background."


def test_every_spec_has_a_unique_id_and_caption_that_round_trip():
    specs = all_specs()
    assert len(specs) == 3 * 5 * 5 * 4 * 3
    assert len({s.clip_id() for s in specs}) == len(specs)
    assert len({s.caption() for s in specs}) == len(specs)
    assert all(ClipSpec.from_id(s.clip_id()) == s for s in specs)
    assert all_specs() == specs  # fixed order


def test_all_specs_can_be_restricted():
    specs = all_specs(shapes=["circle"], colours=["red", "blue"], counts=[1])
    assert len(specs) == 2 * 5 * 4
    assert {s.shape for s in specs} == {"circle"} and {s.count for s in specs} == {1}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shape="hexagon"),
        dict(colour="purple"),
        dict(motion="sideways"),
        dict(background="space"),
        dict(count=4),
        dict(count=0),
    ],
)
def test_unknown_attribute_values_are_refused(kwargs):
    base = dict(shape="circle", colour="red", motion="left", background="day", count=1)
    with pytest.raises(ValueError, match="unknown"):
        ClipSpec(**{**base, **kwargs})


@pytest.mark.parametrize(
    "bad", ["red-circle-2-right-night", "red-circle-x2-right", "nonsense", "red-circle-xx-right-night"]
)
def test_from_id_refuses_other_strings(bad):
    with pytest.raises(ValueError):
        ClipSpec.from_id(bad)


@pytest.mark.parametrize(
    "change,expected",
    [
        (dict(background="night"), "make it night"),
        (dict(background="day"), "make it daytime"),
        (dict(background="grass"), "put the scene on grass"),
        (dict(shape="square"), "change the circle to a square"),
        (dict(motion="left"), "make it move left instead"),
        (dict(motion="still"), "make it stay still instead"),
        (dict(colour="blue"), "make it blue"),
        (dict(count=3), "show three circles instead of one"),
    ],
)
def test_edit_instruction_for_one_attribute(change, expected):
    source = ClipSpec(shape="circle", colour="red", motion="right", background="sand", count=1)
    assert edit_instruction(source, replace(source, **change)) == expected


def test_edit_instruction_follows_the_number_of_objects():
    assert edit_instruction(RED_CIRCLES, replace(RED_CIRCLES, shape="square")) == "change the circles to squares"
    assert edit_instruction(RED_CIRCLES, replace(RED_CIRCLES, motion="left")) == "make them move left instead"
    assert edit_instruction(RED_CIRCLES, replace(RED_CIRCLES, colour="white")) == "make them white"
    assert edit_instruction(RED_CIRCLES, replace(RED_CIRCLES, count=1)) == "show one circle instead of two"


def test_edit_instruction_joins_several_changes_and_refuses_none():
    target = replace(RED_CIRCLES, colour="blue", background="day")
    assert edit_instruction(RED_CIRCLES, target) == "make them blue and make it daytime"
    with pytest.raises(ValueError, match="same clip"):
        edit_instruction(RED_CIRCLES, RED_CIRCLES)


# ---------------------------------------------------------------------------
# Rendering and encoding


def _object_mask(frame: np.ndarray, spec: ClipSpec) -> np.ndarray:
    return np.abs(frame.astype(int) - np.array(COLOURS[spec.colour])).sum(axis=-1) < 60


@pytest.mark.parametrize(
    "motion,axis,sign", [("right", 1, 1), ("left", 1, -1), ("down", 0, 1), ("up", 0, -1), ("still", 1, 0)]
)
def test_objects_move_the_way_the_spec_says(motion, axis, sign):
    spec = ClipSpec(shape="square", colour="yellow", motion=motion, background="grass", count=1)
    frames = render_frames(spec, num_frames=16)
    first = np.argwhere(_object_mask(frames[0], spec)).mean(axis=0)
    last = np.argwhere(_object_mask(frames[-1], spec)).mean(axis=0)
    moved = last[axis] - first[axis]
    if sign == 0:
        assert abs(moved) < 1
    else:
        assert moved * sign > 40  # 60% of the 128-pixel width or 96-pixel height


def test_background_colour_and_object_count_are_visible():
    areas = []
    for count in (1, 2, 3):
        spec = replace(RED_CIRCLES, count=count, motion="still")
        frame = render_frames(spec, num_frames=1)[0]
        # Most of the frame is the background colour.
        assert (np.abs(frame.astype(int) - BACKGROUNDS["night"]).sum(axis=-1) < 10).mean() > 0.6
        areas.append(_object_mask(frame, spec).sum())
    assert areas[1] == pytest.approx(2 * areas[0], rel=0.1)
    assert areas[2] == pytest.approx(3 * areas[0], rel=0.1)


def test_shapes_differ():
    masks = {}
    for shape in ("circle", "square", "triangle"):
        spec = ClipSpec(shape=shape, colour="white", motion="still", background="night", count=1)
        masks[shape] = _object_mask(render_frames(spec, num_frames=1)[0], spec)
    assert masks["triangle"].sum() < masks["circle"].sum() < masks["square"].sum() * 1.3
    assert (masks["circle"] != masks["square"]).sum() > 20


def test_written_clip_decodes_to_the_expected_frames(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", RED_CIRCLES, seconds=2.0, fps=8)
    meta = probe_video(path)
    assert (meta.num_frames, meta.fps, meta.width, meta.height) == (16, 8.0, 128, 96)
    sampled = read_frames(path, SamplingPolicy(fps=None, max_frames=64), max_side=None)
    assert sampled.decoder == "decord"
    assert sampled.frames.shape == (16, 96, 128, 3)
    # The decoded pixels match the rendering (lossy codec: small error).
    rendered = render_frames(RED_CIRCLES, num_frames=16)
    assert np.abs(sampled.frames.astype(int) - rendered.astype(int)).mean() < 4


@pytest.mark.parametrize("seconds,fps,size", [(1.0, 8, (96, 128)), (3.0, 4, (64, 64)), (0.5, 24, (48, 80))])
def test_written_clip_honours_length_rate_and_size(tmp_path, seconds, fps, size):
    path = write_clip(tmp_path / "clip.mp4", RED_CIRCLES, seconds=seconds, fps=fps, size=size)
    meta = probe_video(path)
    assert meta.num_frames == round(seconds * fps)
    assert meta.fps == pytest.approx(fps)
    assert (meta.height, meta.width) == size


def test_sidecar_only_when_asked_and_bytes_are_deterministic(tmp_path):
    a = write_clip(tmp_path / "a.mp4", RED_CIRCLES)
    assert not (tmp_path / "a.txt").exists()
    b = write_clip(tmp_path / "b.mp4", RED_CIRCLES, caption_sidecar=True)
    assert (tmp_path / "b.txt").read_text(encoding="utf-8").strip() == RED_CIRCLES.caption()
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b)
    c = write_clip(tmp_path / "c.mp4", RED_CIRCLES, seed=7)
    assert digest(c) != digest(a)


@pytest.mark.parametrize("size", [(95, 128), (8, 8), (96, 127)])
def test_bad_clip_size_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="even"):
        write_clip(tmp_path / "x.mp4", RED_CIRCLES, size=size)


# ---------------------------------------------------------------------------
# Generated benchmark


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_queries=12, seed=3, seconds=1.0)


def test_benchmark_files_agree(bench):
    with bench.manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == sorted(bench.items)
    for row in rows:
        assert (bench.folder / row["path"]).is_file()
        assert row["text"] == ClipSpec.from_id(row["id"]).caption()
    queries = [json.loads(line) for line in bench.queries_path.read_text(encoding="utf-8").splitlines()]
    assert [q["id"] for q in queries] == [q.id for q in bench.queries]
    assert all(set(q) == {"id", "source", "edit"} for q in queries)  # the answer is not in the queries file
    qrels = json.loads(bench.qrels_path.read_text(encoding="utf-8"))
    assert qrels == bench.qrels and len(qrels) == 12
    ids = {r["id"] for r in rows}
    for q in bench.queries:
        assert q.source in ids and q.target in ids and q.source != q.target


def test_each_target_differs_from_its_source_in_exactly_the_edited_attribute(bench):
    for q in bench.queries:
        source, target = ClipSpec.from_id(q.source), ClipSpec.from_id(q.target)
        assert differing_attributes(source, target) == [q.attribute]
        assert q.edit == edit_instruction(source, target)


def test_gallery_holds_hard_distractors(bench):
    specs = list(bench.items.values())
    for q in bench.queries:
        source, target = ClipSpec.from_id(q.source), ClipSpec.from_id(q.target)
        # The wrong edit: the same attribute changed to another value.
        wrong = [s for s in specs if differing_attributes(source, s) == [q.attribute] and s != target]
        # The edit done but the context lost: the target with one other attribute changed.
        lost = [
            s
            for s in specs
            if len(differing_attributes(target, s)) == 1 and differing_attributes(target, s) != [q.attribute]
        ]
        assert wrong and lost
    assert len(bench.items) > 2 * len(bench.queries)


def test_benchmark_clips_decode(bench):
    some = sorted(bench.items)[:3]
    for clip_id in some:
        sampled = read_frames(bench.folder / "clips" / f"{clip_id}.mp4", SamplingPolicy(fps=None, max_frames=64), None)
        assert sampled.frames.shape == (8, 96, 128, 3)


def test_benchmark_is_reproducible_and_seeded(tmp_path, bench):
    again = generate_benchmark(tmp_path / "again", n_queries=12, seed=3, seconds=1.0)
    assert again.queries == bench.queries and again.items == bench.items
    clip_id = sorted(bench.items)[0]
    clip = Path("clips") / f"{clip_id}.mp4"
    assert (again.folder / clip).read_bytes() == (bench.folder / clip).read_bytes()
    other = generate_benchmark(tmp_path / "other", n_queries=12, seed=4, seconds=1.0)
    assert other.queries != bench.queries


def test_benchmark_covers_every_attribute_with_enough_queries(tmp_path):
    bench = generate_benchmark(tmp_path / "b", n_queries=40, seed=0, seconds=0.5)
    assert {q.attribute for q in bench.queries} == set(ATTRIBUTES)
    assert len({(q.source, q.target) for q in bench.queries}) == 40


def test_benchmark_needs_a_query(tmp_path):
    with pytest.raises(ValueError):
        generate_benchmark(tmp_path / "none", n_queries=0)
