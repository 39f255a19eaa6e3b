"""Shot cuts on generated videos, and how a video's length and cuts become moments."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from r3tasks.errors import VideoReadError
from r3tasks.media.cues import Span
from r3tasks.media.segments import moment_id, plan_spans, shot_segments, window_segments
from r3tasks.media.shots import detect_cuts, probe_duration
from r3tasks.settings.media import MediaSettings
from tests import videos
from tests.media_factory import Scene, cut_times, long_video, write_scenes_video

RED, BLUE, YELLOW, GREEN, DARK = (200, 30, 30), (30, 60, 200), (230, 200, 40), (30, 160, 40), (25, 25, 35)


def assert_tiles(spans: list[Span], duration_s: float) -> None:
    """Sorted, contiguous, from 0 to the duration (to the millisecond)."""
    assert spans[0].start_s == 0.0
    assert spans[-1].end_s == pytest.approx(duration_s, abs=1e-3)
    for before, after in zip(spans, spans[1:]):
        assert before.end_s == after.start_s
    assert all(s.duration_s > 0 for s in spans)


# ---------------------------------------------------------------------------
# Cut detection on generated videos


def test_cuts_are_found_on_the_frame_the_new_scene_starts(tmp_path: Path) -> None:
    # Lengths off the frame grid, and words on screen (which must not count as a cut of their own).
    scenes = [
        Scene(2.3, RED),
        Scene(1.7, BLUE, words="GOAL!"),
        Scene(3.15, YELLOW),
        Scene(2.5, DARK, words="see you tomorrow"),
        Scene(2.0, GREEN),
    ]
    fps = 10
    video = write_scenes_video(tmp_path / "scenes.mp4", scenes, fps=fps)

    found = detect_cuts(video, threshold=MediaSettings().shot_threshold)

    truth = cut_times(scenes, fps)
    assert len(found) == len(truth) == 4
    for cut, true in zip(found, truth):
        assert cut == pytest.approx(true, abs=1 / fps + 1e-6)
    assert probe_duration(video) == pytest.approx(sum(s.seconds for s in scenes), abs=1 / fps)


def test_one_scene_with_motion_has_no_cut(tmp_path: Path) -> None:
    video = write_scenes_video(tmp_path / "still.mp4", [Scene(6.0, GREEN, words="no cut here")], fps=10)

    assert detect_cuts(video, threshold=27.0) == []


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    return long_video(tmp_path_factory.mktemp("long") / "ten_minutes.mp4", minutes=10)


def test_ten_minute_video_becomes_moments_between_min_and_max_that_respect_shots(
    ten_minutes: tuple[Path, list[float]],
) -> None:
    path, truth = ten_minutes
    settings = MediaSettings()
    duration = probe_duration(path)
    assert duration == pytest.approx(600.0, abs=0.5)

    cuts = detect_cuts(path, threshold=settings.shot_threshold)

    fps = 5  # long_video's default
    assert len(cuts) == len(truth)
    assert max(abs(c - t) for c, t in zip(cuts, truth)) <= 1 / fps + 1e-6
    spans = plan_spans(duration, cuts, settings)
    assert_tiles(spans, duration)
    assert all(settings.segment_min_s <= s.duration_s <= settings.segment_max_s for s in spans)
    # Every shot is at least 3 s long here, so no moment straddles a cut: each detected cut is a moment edge.
    edges = {s.start_s for s in spans}
    assert all(round(c, 3) in edges for c in cuts)

    windows = plan_spans(duration, cuts, settings.model_copy(update={"segmentation": "windows"}))
    assert windows[0].start_s == 0.0 and windows[-1].end_s == pytest.approx(duration, abs=1e-3)
    assert all(w.duration_s == pytest.approx(settings.segment_max_s) for w in windows)
    assert all(a.overlap_s(b) >= settings.window_overlap_s for a, b in zip(windows, windows[1:]))


# ---------------------------------------------------------------------------
# Files that are not usable videos


def _faststart_truncated(folder: Path) -> Path:
    # Header first (faststart), so the cut-off file still opens and then ends after about half its frames.
    whole = videos.write_indexed_video(folder / "whole.mp4", num_frames=80, fps=8, faststart=True)
    return videos.truncate_copy(whole, folder / "truncated.mp4", 0.5)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: videos.write_text_as_video(d / "list.mp4"), "not a video"),
        (lambda d: videos.write_random_bytes(d / "noise.avi"), "not a video"),
        (lambda d: videos.write_empty(d / "empty.mp4"), "empty"),
        (lambda d: d / "missing.mp4", "not found"),
        (lambda d: videos.write_audio_only(d / "voice.mp4"), "no video stream"),
        (_faststart_truncated, "truncated"),
    ],
    ids=["text", "random-bytes", "empty", "missing", "audio-only", "truncated"],
)
def test_unusable_file_is_a_video_read_error_saying_why(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)

    with pytest.raises(VideoReadError) as caught:
        detect_cuts(path, threshold=27.0)

    assert caught.value.path == path
    assert reason in caught.value.reason


def test_probe_duration_rejects_a_non_video(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="not a video"):
        probe_duration(videos.write_text_as_video(tmp_path / "notes.mkv"))


# ---------------------------------------------------------------------------
# Shots to segments


def test_flash_cuts_merge_into_the_shorter_neighbour() -> None:
    # Shots: 10 s, 0.4 s, 1.2 s, 6 s. The 0.4 s flash joins the 1.2 s shot beside it (the shorter neighbour),
    # which leaves a 1.6 s shot that joins the 6 s one after it rather than the 10 s one before.
    spans = shot_segments([10.0, 10.4, 11.6], 17.6, min_s=2.0, max_s=16.0)

    assert spans == [Span(0.0, 10.0), Span(10.0, 17.6)]


def test_first_short_shot_merges_forward_and_last_backward() -> None:
    spans = shot_segments([0.5, 8.0, 15.2], 16.0, min_s=2.0, max_s=16.0)

    assert spans == [Span(0.0, 8.0), Span(8.0, 16.0)]


def test_one_long_shot_is_split_into_equal_parts() -> None:
    spans = shot_segments([], 40.0, min_s=2.0, max_s=16.0)

    assert len(spans) == 3
    assert_tiles(spans, 40.0)
    assert all(s.duration_s == pytest.approx(40 / 3, abs=1e-3) for s in spans)


def test_long_shots_split_and_short_ones_merge_in_one_video() -> None:
    cuts = [1.0, 35.0, 35.5, 36.0, 50.0]
    spans = shot_segments(cuts, 90.0, min_s=2.0, max_s=16.0)

    assert_tiles(spans, 90.0)
    assert all(2.0 <= s.duration_s <= 16.0 for s in spans)
    assert 50.0 in {s.start_s for s in spans}  # a clean cut between long shots stays an edge


def test_video_shorter_than_min_is_one_span() -> None:
    assert shot_segments([0.5, 1.0], 1.5, min_s=2.0, max_s=16.0) == [Span(0.0, 1.5)]


def test_cuts_out_of_range_repeated_or_not_numbers_are_ignored() -> None:
    cuts = [-3.0, 0.0, 5.0, 5.0, 5.0004, math.nan, math.inf, 12.0, 12.0, 20.0, 99.0]

    assert shot_segments(cuts, 20.0, min_s=2.0, max_s=16.0) == [Span(0.0, 5.0), Span(5.0, 12.0), Span(12.0, 20.0)]


def test_segment_times_are_whole_milliseconds() -> None:
    spans = shot_segments([3.33333333], 10.0, min_s=2.0, max_s=16.0)

    assert spans == [Span(0.0, 3.333), Span(3.333, 10.0)]


@pytest.mark.parametrize(
    ("min_s", "max_s"),
    [(0.0, 16.0), (5.0, 4.0), (-1.0, 16.0)],
)
def test_shot_segments_rejects_impossible_lengths(min_s: float, max_s: float) -> None:
    with pytest.raises(ValueError):
        shot_segments([], 60.0, min_s=min_s, max_s=max_s)


# ---------------------------------------------------------------------------
# Windows


def test_windows_step_by_window_minus_overlap_and_the_last_ends_at_the_duration() -> None:
    assert window_segments(40.0, 16.0, 2.0) == [Span(0.0, 16.0), Span(14.0, 30.0), Span(24.0, 40.0)]


def test_a_tail_shorter_than_the_overlap_gets_no_sliver_of_a_window() -> None:
    spans = window_segments(31.0, 16.0, 2.0)

    assert spans[-1] == Span(15.0, 31.0)
    assert all(s.duration_s == 16.0 for s in spans)


def test_windows_that_fit_exactly_add_nothing() -> None:
    assert window_segments(30.0, 16.0, 2.0) == [Span(0.0, 16.0), Span(14.0, 30.0)]


def test_video_shorter_than_a_window_is_one_window() -> None:
    assert window_segments(9.5, 16.0, 2.0) == [Span(0.0, 9.5)]


def test_windows_reject_an_overlap_as_long_as_the_window() -> None:
    with pytest.raises(ValueError):
        window_segments(60.0, 16.0, 16.0)


# ---------------------------------------------------------------------------
# Planning and ids


def test_a_clip_up_to_whole_clip_max_is_one_moment_whatever_its_cuts() -> None:
    settings = MediaSettings()

    assert plan_spans(30.0, [5.0, 10.0, 20.0], settings) == [Span(0.0, 30.0)]
    assert plan_spans(4.2, None, settings) == [Span(0.0, 4.2)]


def test_a_long_video_follows_the_segmentation_setting() -> None:
    shots = MediaSettings(segmentation="shots")
    windows = MediaSettings(segmentation="windows")
    cuts = [20.0]

    assert plan_spans(40.0, cuts, shots) == [Span(0.0, 10.0), Span(10.0, 20.0), Span(20.0, 30.0), Span(30.0, 40.0)]
    assert plan_spans(40.0, cuts, windows) == window_segments(40.0, 16.0, 2.0)
    assert plan_spans(40.0, None, windows) == plan_spans(40.0, cuts, windows)


def test_shot_segmentation_of_a_long_video_needs_the_cuts() -> None:
    with pytest.raises(ValueError, match="cut times"):
        plan_spans(120.0, None, MediaSettings(segmentation="shots"))


@pytest.mark.parametrize("duration", [0.0, -5.0, math.nan, math.inf, 0.0001])
def test_plan_spans_rejects_a_duration_that_is_not_a_length(duration: float) -> None:
    with pytest.raises(ValueError):
        plan_spans(duration, [], MediaSettings())


def test_moment_ids_are_the_video_id_or_a_media_fragment() -> None:
    assert moment_id("clips/beach.mp4", Span(0.0, 12.5), whole=True) == "clips/beach.mp4"
    assert moment_id("beach", Span(14.0, 30.0), whole=False) == "beach#t=14.000,30.000"
    # The same span from a fresh computation gives the same id.
    again = window_segments(40.0, 16.0, 2.0)[1]
    assert moment_id("beach", again, whole=False) == "beach#t=14.000,30.000"
    assert moment_id("beach", Span(1 / 3, 2 / 3), whole=False) == "beach#t=0.333,0.667"
