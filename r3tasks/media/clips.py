"""Frames of moments: sampling inside a span of a video, as a pure indices function plus one decode call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from r3tasks.inputs.frames import SampledFrames, SamplingPolicy, read_chosen, sample_indices, thumbnail
from r3tasks.media.cues import Span


def span_frame_range(total: int, fps: float, span: Span) -> tuple[int, int]:
    """First and last native frame index inside `span` (at least one frame, clamped to the video)."""
    first = min(max(int(math.floor(span.start_s * fps + 1e-6)), 0), total - 1)
    last = min(max(int(math.ceil(span.end_s * fps - 1e-6)) - 1, first), total - 1)
    return first, last


def rates_disagree(counted_s: float, duration_s: float) -> bool:
    """Whether frames over the declared rate (`counted_s`) and the stream's duration tell different lengths: a
    variable-rate file declares a rate its timestamps do not keep (1000 fps for 217 frames over 50 s). Pure."""
    return abs(counted_s - duration_s) > max(1.0, 0.1 * duration_s)


def timed_fps(total: int, fps: float, duration_s: float | None) -> float:
    """The rate that places frames in time: the declared one, unless the video's known duration says the file
    keeps another. Pure."""
    if duration_s and duration_s > 0 and rates_disagree(total / fps, duration_s):
        return total / duration_s
    return fps


def span_indices(
    total: int, fps: float, policy: SamplingPolicy, span: Span, duration_s: float | None = None
) -> list[int]:
    """What `sample_indices` picks for the frames inside `span`, as indices of the whole video. Pure."""
    fps = timed_fps(total, fps, duration_s)
    first, last = span_frame_range(total, fps, span)
    return [first + i for i in sample_indices(last - first + 1, fps, policy)]


def read_span_frames(
    path: str | Path, policy: SamplingPolicy, span: Span, max_side: int | None = 448, duration_s: float | None = None
) -> SampledFrames:
    """Frames of one moment; their `FrameSource` holds the native indices, so a model sees true timestamps."""
    return read_chosen(
        path, max_side, lambda total, fps: span_indices(total, fps, policy, span, duration_s), policy.min_pixels
    )


def read_frames_per_span(
    path: str | Path,
    spans: Sequence[Span],
    per_span: int,
    max_side: int | None = 448,
    duration_s: float | None = None,
) -> list[np.ndarray]:
    """`per_span` evenly spaced frames of each span, decoded in one pass over the video (OCR reads these).

    Callers pass a bounded number of spans at a time: memory holds only these frames."""
    policy = SamplingPolicy(fps=None, num_frames=per_span, min_frames=1, frame_factor=1)
    chosen: list[list[int]] = []

    def choose(total: int, fps: float) -> list[int]:
        chosen.clear()  # a damaged file is sampled again within its decodable part
        chosen.extend(span_indices(total, fps, policy, span, duration_s) for span in spans)
        return sorted({i for indices in chosen for i in indices})

    sampled = read_chosen(path, max_side, choose, policy.min_pixels)
    position = {index: row for row, index in enumerate(sampled.indices)}
    frames = np.asarray(sampled.frames)
    return [frames[[position[i] for i in indices if i in position]] for indices in chosen]


def moment_thumbnail(path: str | Path, start_s: float | None, end_s: float | None, max_side: int = 160) -> np.ndarray:
    """The middle frame of a moment (of the whole video when it has no times), ``uint8 (H, W, 3)``."""
    if start_s is None or end_s is None:
        return thumbnail(path, max_side=max_side)
    middle = Span(start_s, end_s)

    def choose(total: int, fps: float) -> list[int]:
        first, last = span_frame_range(total, fps, middle)
        return [(first + last) // 2]

    return np.asarray(read_chosen(path, max_side, choose).frames[0])


def moment_label(video_id: str | None, start_s: float | None, end_s: float | None) -> str:
    """`video 1:05-1:21` for a moment, the video id alone for a whole item."""
    if video_id is None or start_s is None or end_s is None:
        return video_id or ""
    return f"{video_id} {clock(start_s)}-{clock(end_s)}"


def clock(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"
