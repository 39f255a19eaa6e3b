"""Shot cuts (PySceneDetect's ContentDetector) and container durations, with failures as `VideoReadError`.

Speed of `detect_cuts` (threshold 27, frames compared at 213x120), measured on this project's 2-core box while
other jobs shared it (load average 3-4; figures are the range over several runs, a quiet box does better):

- a 10-minute 640x360 H.264 video at 25 fps (`tests.media_factory.long_video`: still scenes, a small moving
  square, 52 cuts): 6-12 s, 50-100x real time, every cut found on its exact frame;
- 2 minutes of 640x360 at 25 fps of full-frame moving texture (a much harder decode): 2.0-2.8 s, 43-60x;
- PySceneDetect's stock PyAV backend (`open_video(backend="pyav")`) managed only 19-29x and 16-24x on the same
  files in the same runs: see `_open` for why, and what is different here.

Every frame is read (no `frame_skip`), so a cut lands on the first frame of the new shot. Memory stays flat
(about 150 MB peak for the process, the same for 2 and for 10 minutes). High-resolution or HEVC sources are
slower in proportion to their decode cost.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from r3tasks.errors import VideoReadError
from r3tasks.inputs.containers import video_container
from r3tasks.inputs.frames import check_file

# Shots shorter than this are flashes (a strobe, a camera flash): ContentDetector merges their cuts. Given in
# seconds, not PySceneDetect's default of 15 frames, so it means the same at 5 fps and at 60 fps.
MIN_SHOT_S = 0.5


def detect_cuts(path: Path, threshold: float, max_side: int = 256) -> list[float]:
    """Times (seconds from the start, ascending) where a new shot begins: the first frame of each shot but the
    first. An empty list means one continuous shot.

    Frames are shrunk so their longest side is at most `max_side` before they are compared: content changes
    are just as visible, and comparing costs far less. Decoding streams frame by frame, so memory stays flat
    however long the video is. Raises `VideoReadError` for a file that is not a readable video, or whose
    decoding stops well before the length its header gives (a truncated or damaged file).
    """
    import av
    import cv2
    from scenedetect import ContentDetector, SceneManager, VideoOpenFailure
    from scenedetect.video_stream import FrameRateUnavailable

    if max_side < 16:
        raise ValueError(f"max_side must be at least 16 pixels, got {max_side}")
    path = Path(path)
    # Clear reasons for files that are no video, before PySceneDetect sees them.
    _, stream_s = _probe(path)
    try:
        video = _open(path)
    except FrameRateUnavailable:
        raise VideoReadError(path, "unusable metadata: no frame rate in the header") from None
    except VideoOpenFailure as exc:
        raise VideoReadError(path, f"not a video: PySceneDetect cannot open it ({_first_line(exc)})") from None
    except OSError as exc:
        raise VideoReadError(path, f"cannot open file ({exc.strerror or exc})") from None

    manager = SceneManager()
    # SceneManager's auto downscale aims at its own fixed 256 px; the same rule with our `max_side`, rounded
    # up to the whole factor SceneManager takes.
    manager.auto_downscale = False
    manager.downscale = max(1, math.ceil(max(video.frame_size) / max_side))
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=MIN_SHOT_S))
    try:
        frames = manager.detect_scenes(video)
        decoded_s = video.position.seconds
    except (av.error.FFmpegError, cv2.error, VideoOpenFailure, OSError) as exc:
        raise VideoReadError(path, f"decoding failed ({type(exc).__name__}: {_first_line(exc)})") from None
    if frames <= 0:
        raise VideoReadError(path, "no decodable frames (the video stream is empty or damaged)")
    # A truncated file can open fine (its header is intact) and then just stop: cuts from part of the video
    # would pass for the whole. Only the video stream's own duration is trusted for this; a container's
    # duration also counts audio, which often runs on past the last frame.
    decoded_s += 1 / float(video.frame_rate)  # position is where the last frame starts
    if stream_s is not None and stream_s - decoded_s > max(1.0, 0.05 * stream_s):
        raise VideoReadError(
            path, f"decoding stopped at {decoded_s:.1f} s of {stream_s:.1f} s (truncated or damaged file)"
        )
    return [round(start.seconds, 3) for start, _ in manager.get_scene_list()[1:]]


def _open(path: Path) -> Any:
    """PySceneDetect's PyAV backend with decoder threads, converting frames through one reused swscale context.

    PyAV rather than OpenCV (`open_video(..., backend="opencv")` decoded 1.4-1.8x faster than the stock PyAV
    backend here): both skip damaged packets and time frames by their timestamps, but OpenCV's bundled FFmpeg
    prints every decoder error of a damaged file straight to stderr (no per-call way to quiet it), and PyAV is
    the FFmpeg the rest of r3 probes and decodes with, so mp4/avi/mkv are judged the same everywhere.

    Built directly, not through `scenedetect.open_video`, because (1) that silently falls back to OpenCV and
    (2) the stock backend converts each frame with `VideoFrame.to_ndarray`, which sets up a new swscale context
    every frame, which made the whole detection 2.5x slower on 640x360 than with one reused context. Decoder
    threads ("AUTO") gave another 1.5-2.5x on two cores. `suppress_output` keeps PyAV's default of ignoring
    FFmpeg's log (else PySceneDetect routes it to stderr for the whole process); PyAV's warning about threads
    with suppressed output concerns a Python log callback, which nothing in r3 installs.
    """
    return _fast_backend()(str(path), threading_mode="AUTO", suppress_output=True)


@functools.cache
def _fast_backend() -> type:
    from av.video.reformatter import VideoReformatter
    from scenedetect.backends.pyav import VideoStreamAv

    class FastVideoStreamAv(VideoStreamAv):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not hasattr(self, "_frame"):
                # Relies on VideoStreamAv keeping the current av.VideoFrame in `_frame` (scenedetect 0.7).
                raise RuntimeError("scenedetect's VideoStreamAv no longer has `_frame`: update r3tasks.media.shots")
            self._reformatter = VideoReformatter()

        def read(self, decode: bool = True) -> Any:
            got = super().read(decode=False)
            if got is False or not decode:
                return got
            return self._reformatter.reformat(self._frame, format="bgr24").to_ndarray()

    return FastVideoStreamAv


def probe_duration(path: Path) -> float:
    """Length of the video in seconds, from the container header (no decoding): the first video stream's
    duration, else the container's. Raises `VideoReadError` for a missing, empty or unreadable file, one with
    no video stream, and one whose header gives no usable duration."""
    return _probe(Path(path))[0]


def _probe(path: Path) -> tuple[float, float | None]:
    """(duration, the video stream's own duration or None when only the container gives one)."""
    check_file(path)
    with video_container(path) as (container, stream):
        own = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        # Container durations are in AV_TIME_BASE units (microseconds).
        duration = own if own is not None else (container.duration or 0) / 1_000_000
    if not math.isfinite(duration) or duration <= 0:
        raise VideoReadError(path, "unusable metadata: the header gives no duration")
    return duration, own if own is not None and math.isfinite(own) and own > 0 else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
