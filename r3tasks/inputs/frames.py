"""Frame sampling and decoding.

Sampling follows qwen-vl-utils (`smart_nframes`), which Qwen3-VL-Embedding
(and so the R^3 reference) relies on: ``n = duration * fps`` clamped to ``[min_frames,
max_frames]`` and to the frame count, floored to a multiple of
``frame_factor`` (2 = Qwen3-VL's ``temporal_patch_size``), then
``linspace(0, N - 1, n).round()``. Rounding to an even count here, not padding
in the processor, keeps every sampled frame distinct; only a one-frame video
(or a cap of 1) yields an odd count, and the Qwen3-VL processor pads that by
repeating the last frame.

Decoding: decord, resized on decode (the longest side at most ``max_side``,
even sides), so full-resolution frames of an 8k video never reach numpy.
PyAV decodes sequentially instead when decord cannot open or decode a file
(its bundled FFmpeg is 4.1; GIF, NUT, raw streams, truncated files) and for
MPEG-PS/TS, where decord opens the file but silently returns the wrong frames
(measured on a 40-frame clip, indices 0/13/26/39: MPEG-PS gave frames
0/1/2/39, MPEG-TS 12/25/38/30).

Broken files raise `VideoReadError` with a human reason; no frame is ever
made up. A truncated file is sampled within its decodable prefix and the
result says so (`SampledFrames.truncated`).
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from r3tasks.errors import VideoReadError
from r3tasks.inputs.containers import ffmpeg_reason, video_container

if TYPE_CHECKING:
    from r3tasks.settings.tree import FrameSettings

logger = logging.getLogger(__name__)

# Containers without a frame index: decord's seeks land on the wrong frame there.
_SEQUENTIAL_FORMATS = frozenset({"mpeg", "mpegts", "mpegvideo", "h264", "hevc", "m4v"})


@dataclass(frozen=True)
class VideoMeta:
    """What a video declares: frame count, rate and size (the size before any resize)."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    container: str = ""
    codec: str = ""

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class SamplingPolicy:
    """How many frames to take and where.

    `fps` frames per second over the whole video, capped at `max_frames` and
    raised to `min_frames` (qwen-vl-utils' ``FPS_MIN_FRAMES``); `num_frames`
    asks for a fixed count instead and overrides both. `fps=None` without
    `num_frames` takes every frame up to the cap. Counts are floored to a
    multiple of `frame_factor` when at least that many frames exist.
    """

    fps: float | None = 1.0
    max_frames: int = 128
    num_frames: int | None = None
    min_frames: int = 4
    frame_factor: int = 2
    # Decode at least this many pixels per frame (never more than the video has), whatever max_side says.
    min_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"sampling fps must be a positive number or None, got {self.fps!r}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 or None, got {self.num_frames}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if self.frame_factor < 1:
            raise ValueError(f"frame_factor must be >= 1, got {self.frame_factor}")


def sample_indices(num_frames: int, video_fps: float, policy: SamplingPolicy) -> list[int]:
    """Frame indices to decode: sorted, unique, within ``[0, num_frames)``, at least one. Pure."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"video has no frames to sample (frame count {num_frames!r})")
    if not (isinstance(video_fps, (int, float, np.floating)) and math.isfinite(video_fps) and video_fps > 0):
        raise ValueError(f"video frame rate is unusable ({video_fps!r} fps)")
    total = int(num_frames)
    if policy.num_frames is not None:
        wanted = float(policy.num_frames)
    elif policy.fps is not None:
        wanted = total / video_fps * policy.fps
        wanted = min(max(wanted, policy.min_frames), policy.max_frames)
    else:
        wanted = float(min(total, policy.max_frames))
    wanted = min(wanted, total)
    count = int(wanted // policy.frame_factor) * policy.frame_factor
    if count < 1:
        # Fewer frames than one temporal patch (or a cap below it): keep what exists.
        count = max(1, int(wanted))
    indices = np.linspace(0, total - 1, count).round().astype(np.int64)
    # linspace over >= count integers never repeats after rounding; unique() is a guard.
    return [int(i) for i in np.unique(indices)]


@dataclass(frozen=True)
class FrameSource:
    """Where decoded frames came from: the native frame indices, rate and size (qwen-vl-utils' video metadata)."""

    indices: tuple[int, ...]
    fps: float
    total_frames: int
    width: int
    height: int


class FrameArray(np.ndarray):
    """``uint8 (T, H, W, 3)`` frames that carry their `FrameSource`, so a model sees true timestamps.

    It is an ndarray everywhere else; slices and copies are other frames and carry no source.
    """

    source: FrameSource | None = None

    @classmethod
    def of(cls, frames: np.ndarray, source: FrameSource) -> FrameArray:
        array = np.asarray(frames).view(cls)
        array.source = source
        return array

    def __array_finalize__(self, obj: object) -> None:
        self.source = None

    def __reduce__(self) -> tuple:  # the stage cache pickles frames
        rebuild, args, state = super().__reduce__()  # type: ignore[misc]
        return rebuild, args, (state, self.source)

    def __setstate__(self, state: tuple) -> None:
        array_state, self.source = state
        super().__setstate__(array_state)


def frame_source(frames: np.ndarray) -> FrameSource | None:
    """The native indices, fps and size behind `frames`, when they came from `read_frames` unchanged."""
    source = getattr(frames, "source", None)
    return source if isinstance(source, FrameSource) and len(source.indices) == len(frames) else None


@dataclass(frozen=True)
class SampledFrames:
    """Decoded frames, ``uint8 (T, H, W, 3)`` RGB, with the indices they came from.

    `sample_fps` is the effective rate of the sampled frames (what the Qwen3-VL
    video processor needs for its timestamps). `meta.num_frames` is the number
    of frames sampling chose from: fewer than declared when `truncated`.
    """

    frames: np.ndarray
    indices: list[int]
    meta: VideoMeta
    sample_fps: float
    decoder: Literal["decord", "pyav"] = "decord"
    truncated: bool = False


def sampling_policy(frames: FrameSettings, purpose: Literal["gallery", "reasoning", "rerank"]) -> SamplingPolicy:
    """The sampling policy the settings ask for, per stage (the reranker has its own cap)."""
    floor = frames.min_decode_pixels
    if purpose in ("gallery", "reasoning"):
        return SamplingPolicy(fps=frames.fps, max_frames=frames.max_frames, min_pixels=floor)
    if purpose == "rerank":
        return SamplingPolicy(fps=frames.fps, max_frames=frames.rerank_frames, min_pixels=floor)
    raise ValueError(f"unknown frame purpose {purpose!r}: expected gallery, reasoning or rerank")


# ---------------------------------------------------------------------------
# Checks and probing


def check_file(path: Path) -> None:
    """Cheap checks before any decoder sees the file (decoders give poor reasons, and a FIFO would hang them)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoReadError(path, "file not found") from None
    except PermissionError:
        raise VideoReadError(path, "permission denied") from None
    except OSError as exc:
        raise VideoReadError(path, f"cannot stat file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoReadError(path, "is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoReadError(path, "not a regular file")
    if st.st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    try:
        # Actually opening is the only check that holds for root and for ACLs.
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        raise VideoReadError(path, "permission denied") from None
    except OSError as exc:
        raise VideoReadError(path, f"cannot open file ({exc.strerror or exc})") from None
    os.close(fd)


@dataclass(frozen=True)
class _Header:
    container: str
    codec: str
    width: int
    height: int
    fps: float  # 0.0 when unknown
    frames: int  # 0 when the header does not say; then packets are counted


def _probe_header(path: Path) -> _Header:
    """Read the container header with PyAV (no decoding); raise for non-videos."""
    with video_container(path) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        # No estimate from duration * fps: on MPEG-PS/NUT it was measured off by several frames.
        frames = int(stream.frames or 0)
        return _Header(
            container=container.format.name,
            codec=stream.codec_context.name,
            width=int(stream.width or 0),
            height=int(stream.height or 0),
            fps=fps,
            frames=max(frames, 0),
        )


def _count_packets(path: Path) -> int:
    """Video packets that can be demuxed (no decoding): stops where a truncated file ends."""
    import av

    count = 0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size:
                    count += 1
    except (av.error.FFmpegError, OSError, IndexError):
        pass  # a read error ends the usable part of the file
    return count


def probe_video(path: str | Path) -> VideoMeta:
    """Frame count, rate and size from the container header (no decoding)."""
    path = Path(path)
    check_file(path)
    header = _probe_header(path)
    frames = header.frames if header.frames > 0 else _count_packets(path)
    if frames <= 0:
        raise VideoReadError(path, "no decodable frames (the video stream is empty)")
    if header.fps <= 0:
        raise VideoReadError(path, "unusable metadata: no frame rate in the header")
    return VideoMeta(path, frames, header.fps, header.width, header.height, header.container, header.codec)


def target_size(width: int, height: int, max_side: int | None, min_pixels: int | None = None) -> tuple[int, int]:
    """Decode size: aspect kept, longest side <= max_side, both sides even (>= 2).

    With `min_pixels`, a size below that many pixels is raised to hold them (never above the native size),
    so a model that resizes after decoding never has to upsample a downscaled frame.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size unknown ({width}x{height})")
    if max_side is not None and max_side < 2:
        raise ValueError(f"max_side must be >= 2, got {max_side}")
    longest = max(width, height)
    # The longest side is floored to even (never above max_side); the other follows the aspect ratio.
    long_side = max(2, min(longest, max_side if max_side is not None else longest) // 2 * 2)
    short = min(width, height)
    short_side = min(long_side, max(2, round(short * long_side / longest / 2) * 2))
    if min_pixels is not None and long_side * short_side < min_pixels and long_side < longest:
        scale = min(1.0, math.sqrt(min_pixels / (width * height)))
        # Rounded up to even: at least the scaled size on each side, so at least min_pixels in all.
        long_side = min(longest, max(long_side, math.ceil(longest * scale / 2) * 2))
        short_side = min(short, max(short_side, math.ceil(short * scale / 2) * 2))
    return (long_side, short_side) if width >= height else (short_side, long_side)


# ---------------------------------------------------------------------------
# Readers: one per decoder.

IndexChooser = Callable[[int, float], list[int]]


class _DecordFailed(Exception):
    """Decord cannot open or decode this file; the PyAV reader takes over."""


def _with_source(frames: np.ndarray, indices: list[int], fps: float, total: int, header: _Header) -> FrameArray:
    source = FrameSource(tuple(int(i) for i in indices), float(fps), int(total), header.width, header.height)
    return FrameArray.of(frames, source)


def _read_decord(path: Path, header: _Header, size: tuple[int, int] | None, choose: IndexChooser) -> SampledFrames:
    import decord

    # decord bundles its own FFmpeg 4.1 that prints to stderr; our errors carry the reason.
    decord.logging.set_level(decord.logging.QUIET)
    width, height = size if size is not None else (-1, -1)
    # Any decord failure hands the file to the PyAV reader, which gives the final verdict.
    try:
        # fault_tol: raise rather than silently repeat a neighbour for an undecodable frame.
        reader = decord.VideoReader(str(path), width=width, height=height, fault_tol=1e-9)
        total = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as exc:  # noqa: BLE001
        raise _DecordFailed(_last_line(exc)) from None
    if not (math.isfinite(fps) and fps > 0):
        fps = header.fps  # decord's FFmpeg 4.1 may not know the rate; the newer one in PyAV might
    meta = VideoMeta(path, total, fps, header.width, header.height, header.container, header.codec)
    try:
        indices = choose(total, fps)
    except ValueError as exc:
        raise VideoReadError(path, f"unusable metadata: {exc}") from None
    try:
        batch = reader.get_batch(indices).asnumpy()
    except Exception as exc:  # noqa: BLE001
        raise _DecordFailed(_last_line(exc)) from None
    frames = _with_source(batch, indices, fps, total, header)
    return SampledFrames(frames, indices, meta, _sample_fps(len(indices), total, fps), "decord")


def _read_pyav(
    path: Path,
    header: _Header,
    max_side: int | None,
    choose: IndexChooser,
    decord_reason: str | None,
    min_pixels: int | None = None,
) -> SampledFrames:
    """Sequential decode, resizing each kept frame at once; re-samples within a truncated file's decodable part."""
    if header.fps <= 0:
        raise VideoReadError(path, "unusable metadata: no frame rate in the header")
    packets = _count_packets(path)
    if packets == 0:
        raise VideoReadError(path, "no decodable frames (the video stream is empty)")
    declared = header.frames if header.frames > 0 else packets
    available = min(declared, packets)
    try:
        indices = choose(available, header.fps)
    except ValueError as exc:
        raise VideoReadError(path, f"unusable metadata: {exc}") from None
    frames, decoded, error = _decode_pyav(path, indices, max_side, min_pixels)
    truncated = packets < declared or error is not None
    if len(frames) < len(indices):
        # Fewer frames decode than packets promised: sample again within what does decode.
        if decoded == 0:
            why = f": {error}" if error else ""
            raise VideoReadError(path, f"no decodable frames{why}")
        available = decoded
        indices = choose(available, header.fps)
        frames, decoded_again, _ = _decode_pyav(path, indices, max_side, min_pixels)
        if len(frames) < len(indices):
            raise VideoReadError(path, f"decoding is not repeatable (frames stop at {decoded_again}, then fewer)")
    if truncated:
        logger.warning("%s: truncated or damaged; sampled within its first %d decodable frames", path, available)
    if decord_reason:
        logger.debug("%s: read with PyAV because decord failed: %s", path, decord_reason)
    meta = VideoMeta(path, available, header.fps, header.width, header.height, header.container, header.codec)
    stacked = _with_source(np.stack(frames).astype(np.uint8, copy=False), indices, header.fps, available, header)
    return SampledFrames(stacked, indices, meta, _sample_fps(len(indices), available, header.fps), "pyav", truncated)


def _decode_pyav(
    path: Path, indices: list[int], max_side: int | None, min_pixels: int | None = None
) -> tuple[list[np.ndarray], int, str | None]:
    """Decode frames in order, keep the wanted ones resized; return (frames, frames decoded, error or None)."""
    import av

    wanted = set(indices)
    last = indices[-1]
    kept: list[np.ndarray] = []
    position = 0
    error: str | None = None
    size: tuple[int, int] | None = None

    def keep(frame: av.VideoFrame) -> None:
        nonlocal size
        if size is None:
            size = target_size(frame.width, frame.height, max_side, min_pixels)
        kept.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC"))

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if position in wanted:
                        keep(frame)
                    position += 1
                if position > last:
                    return kept, position, None
        except (av.error.FFmpegError, OSError) as exc:
            # A truncated or damaged stream: what decoded so far stands, nothing is made up.
            error = ffmpeg_reason(exc)
        try:
            for frame in stream.codec_context.decode(None):  # flush frames held back for reordering
                if position in wanted:
                    keep(frame)
                position += 1
        except (av.error.FFmpegError, OSError, ValueError):
            pass
    return kept, position, error


def _last_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[-1][-200:]


def _sample_fps(count: int, total: int, video_fps: float) -> float:
    # qwen-vl-utils: sample_fps = nframes / total_frames * video_fps.
    return count / max(total, 1) * video_fps


def read_chosen(
    path: str | Path, max_side: int | None, choose: IndexChooser, min_pixels: int | None = None
) -> SampledFrames:
    """Decode the frames `choose(total_frames, fps)` picks (decord, else PyAV), resized on decode."""
    path = Path(path)
    check_file(path)
    header = _probe_header(path)
    decord_reason: str | None = None
    if header.container not in _SEQUENTIAL_FORMATS and header.width > 0 and header.height > 0:
        size = target_size(header.width, header.height, max_side, min_pixels) if max_side is not None else None
        try:
            return _read_decord(path, header, size, choose)
        except _DecordFailed as exc:
            decord_reason = str(exc)
    return _read_pyav(path, header, max_side, choose, decord_reason, min_pixels)


def read_frames(path: str | Path, policy: SamplingPolicy, max_side: int | None = 448) -> SampledFrames:
    """Decode the frames `policy` picks, resized on decode so the longest side is at most `max_side`."""
    return read_chosen(path, max_side, lambda total, fps: sample_indices(total, fps, policy), policy.min_pixels)


def thumbnail(path: str | Path, max_side: int = 160) -> np.ndarray:
    """The middle frame, ``uint8 (H, W, 3)``, for contact sheets."""
    sampled = read_chosen(path, max_side, lambda total, fps: [total // 2])
    return sampled.frames[0]


__all__ = [
    "FrameArray",
    "FrameSource",
    "SampledFrames",
    "SamplingPolicy",
    "VideoMeta",
    "sampling_policy",
    "probe_video",
    "frame_source",
    "read_chosen",
    "read_frames",
    "sample_indices",
    "target_size",
    "thumbnail",
]
