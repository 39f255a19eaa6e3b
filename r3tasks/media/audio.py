"""A video's sound as mono float32 samples in [-1, 1], decoded with PyAV and resampled for a speech recogniser.

The file is read packet by packet (never whole into memory). `read_audio` returns one array for a stretch of
the file; `iter_audio_chunks` yields overlapping fixed-length chunks, so recognising a 3-hour file holds one
chunk at a time (an hour at 16 kHz is 230 MB as one float32 array).

Sample ``i`` is at ``i / sample_rate`` seconds from the start of the file as a player counts it (the
container's timestamps, less the container's start time when that is positive: MPEG-TS clocks start at
an arbitrary value), so recognised words land at the times a player shows them:

- audio that starts late (a stream whose first timestamp is 2 s) is preceded by silence;
- a gap in the timestamps (a packet the decoder rejected, a hole in the stream) is filled with silence, so a
  damaged packet does not pull every later word earlier;
- samples before time 0 (encoder priming, negative edit lists) are dropped.

Damage, decided here once for every caller: a packet the decoder rejects is replaced by silence and the file
is still read (one glitch in an hour of speech should not lose the hour), with a warning in the log naming
the file and how many packets were lost. When rejected packets are at least as many as decoded ones, or none
decodes at all, the stream is called corrupt (`VideoReadError`: "audio stream is corrupt: ..."), since what
is left is mostly silence standing in for damage; for `iter_audio_chunks` that error comes at the end, after
the chunks that did decode. A container that stops early (damaged past some point) gives what came before,
with a warning when that is well short of the duration the header declares.

A file with no audio stream is normal (a silent video): `read_audio` returns None, `iter_audio_chunks`
yields nothing, and `has_audio` says False, so a caller can record a note instead of an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r3tasks.errors import VideoReadError

if TYPE_CHECKING:
    import av.container

log = logging.getLogger(__name__)

# Timestamps in ms time bases jitter by a millisecond; a real gap (one lost AAC packet is 21-64 ms) is longer.
_GAP_TOLERANCE_S = 0.01
_PRE_ROLL_S = 0.5
# A container that stops this much short of its declared duration gets a warning (headers round a little).
_SHORT_BY_S = 1.0


def has_audio(path: str | Path) -> bool:
    """Whether the file has an audio stream (a file that cannot be opened raises `VideoReadError`)."""
    container = _open(Path(path))
    with container:
        return bool(container.streams.audio)


def read_audio(path: str | Path, sample_rate: int, start_s: float = 0, end_s: float | None = None) -> np.ndarray | None:
    """The first audio stream from `start_s` to `end_s` (None: to its end) as mono float32 at `sample_rate`;
    None when the file has no audio stream. Shorter than asked when the audio ends first."""
    if end_s is not None and end_s < start_s:
        raise ValueError(f"end_s ({end_s}) is before start_s ({start_s})")
    path = Path(path)
    container = _open(path)
    with container:
        if not container.streams.audio:
            return None
        parts = list(_decode(path, container, sample_rate, start_s, end_s))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts)


def iter_audio_chunks(
    path: str | Path, sample_rate: int, chunk_s: float = 30.0, overlap_s: float = 2.0
) -> Iterator[tuple[float, np.ndarray]]:
    """``(offset_s, samples)`` for the whole first audio stream: chunks of `chunk_s` seconds (the last one
    shorter) starting every ``chunk_s - overlap_s`` seconds, so each chunk repeats the last `overlap_s` seconds
    of the one before (a word cut by one chunk's end is heard whole in the next). Every sample is in some chunk
    and the last chunk ends where the audio ends. Nothing is yielded for a file without an audio stream.

    Memory stays at about one chunk whatever the file's length."""
    if chunk_s <= 0 or not 0 <= overlap_s < chunk_s:
        raise ValueError(f"need chunk_s > 0 and 0 <= overlap_s < chunk_s (got {chunk_s}, {overlap_s})")
    path = Path(path)
    chunk = max(1, round(chunk_s * sample_rate))
    step = max(1, chunk - round(overlap_s * sample_rate))
    container = _open(path)
    with container:
        if not container.streams.audio:
            return
        pending: list[np.ndarray] = []
        held = 0  # samples in `pending`
        start = 0  # index of pending's first sample
        fresh = False  # pending holds samples no chunk has carried yet
        for part in _decode(path, container, sample_rate, 0.0, None):
            pending.append(part)
            held += len(part)
            fresh = True
            while held >= chunk:
                buffer = np.concatenate(pending)
                yield start / sample_rate, buffer[:chunk].copy()
                rest = buffer[step:]
                pending, held, start = [rest], len(rest), start + step
                # What is left is the overlap: heard already, unless more samples follow.
                fresh = held > chunk - step
        if fresh and held:
            yield start / sample_rate, np.concatenate(pending)


def _open(path: Path) -> av.container.InputContainer:
    import av

    try:
        return av.open(str(path))
    except FileNotFoundError:
        raise VideoReadError(path, "file not found") from None
    except (PermissionError, av.error.PermissionError):
        raise VideoReadError(path, "permission denied") from None
    except IsADirectoryError:
        raise VideoReadError(path, "is a directory, not a video file") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure to parse means "unreadable"
        raise VideoReadError(path, f"FFmpeg cannot read it ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or type(exc).__name__


def _decode(
    path: Path, container: av.container.InputContainer, sample_rate: int, start_s: float, end_s: float | None
) -> Iterator[np.ndarray]:
    """Mono float32 pieces, in order and without gaps, covering [start_s, end_s) of the first audio stream
    (or to its end)."""
    import av

    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive (got {sample_rate})")
    stream = container.streams.audio[0]
    first = max(0, round(start_s * sample_rate))
    last = None if end_s is None else round(end_s * sample_rate)
    # A negative start (encoder priming) is not counted: the video's first frame is at 0 there.
    origin = max(0.0, (container.start_time or 0) / 1_000_000)
    if first > 0:
        # Codecs with overlapping transforms (AAC, MP3, Opus) decode the first packet after a seek wrongly:
        # land a little early and drop that pre-roll by timestamp.
        _seek(container, stream, max(0.0, start_s - _PRE_ROLL_S) + origin)
    position = first  # index of the next sample to hand out
    cursor: int | None = None  # index the resampler's next output belongs at
    tolerance = round(_GAP_TOLERANCE_S * sample_rate)
    resampler = _resampler(sample_rate)
    decoded = rejected = 0
    first_error = ""

    def place(samples: np.ndarray, at: int) -> Iterator[np.ndarray]:
        """Hand out `samples` that belong at index `at`: silence before them if there is a gap, and none of
        what was handed out already or lies outside [first, last)."""
        nonlocal position
        end = at + len(samples)
        if last is not None:
            end = min(end, last)
        if end <= position:
            return
        if at > position:
            yield np.zeros(at - position, dtype=np.float32)
            position = at
        piece = samples[position - at : end - at]
        if len(piece):
            yield np.ascontiguousarray(piece, dtype=np.float32)
            position += len(piece)

    def emit(frames: list[Any]) -> Iterator[np.ndarray]:
        nonlocal cursor
        for out in frames:
            samples = out.to_ndarray().reshape(-1)
            at = cursor if cursor is not None else 0
            yield from place(samples, at)
            cursor = at + len(samples)

    try:
        for packet in container.demux(stream):
            if last is not None and position >= last:
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                rejected += 1
                first_error = first_error or _reason(exc)
                continue
            for frame in frames:
                decoded += 1
                if frame.time is not None:
                    target = round((frame.time - origin) * sample_rate)
                    # Follow the timestamps only when they disagree by more than jitter: a lost packet,
                    # a stream starting late, the first frame after a seek.
                    if cursor is None or abs(target - cursor) > tolerance:
                        yield from emit(resampler.resample(None))
                        resampler = _resampler(sample_rate)
                        cursor = target
                try:
                    converted = resampler.resample(frame)
                except ValueError:
                    # The stream changed rate or channels mid-way: finish the old resampler, start anew.
                    yield from emit(resampler.resample(None))
                    resampler = _resampler(sample_rate)
                    converted = resampler.resample(frame)
                yield from emit(converted)
    except av.error.FFmpegError as exc:
        # The container itself is damaged from here on: keep what came before, like a truncated file.
        log.warning(
            "%s: audio stops at %.1f s, the file is damaged there (%s)", path, position / sample_rate, _reason(exc)
        )
        first_error = first_error or _reason(exc)
    yield from emit(resampler.resample(None))

    if rejected and rejected >= decoded:
        raise VideoReadError(
            path,
            f"audio stream is corrupt: {rejected} of {rejected + decoded} audio packets cannot be decoded ({first_error})",
        )
    if rejected:
        log.warning(
            "%s: %d of %d audio packets cannot be decoded (%s); silence stands in for them",
            path,
            rejected,
            rejected + decoded,
            first_error,
        )
    _warn_if_short(path, container, stream, position / sample_rate, start_s, end_s)


def _resampler(sample_rate: int) -> Any:
    import av

    return av.AudioResampler(format="flt", layout="mono", rate=sample_rate)


def _seek(container: Any, stream: Any, start_s: float) -> None:
    """Jump near `start_s` (to a packet at or before it); samples before it are dropped by timestamp.
    A container that cannot seek is decoded from its start instead."""
    import av

    if stream.time_base is None:
        return
    try:
        container.seek(int(math.floor(start_s / stream.time_base)), stream=stream, backward=True)
    except (av.error.FFmpegError, OverflowError):
        container.seek(0, stream=stream, backward=True)


def _warn_if_short(
    path: Path, container: Any, stream: Any, reached_s: float, start_s: float, end_s: float | None
) -> None:
    declared = None
    if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        declared = container.duration / 1_000_000
    if declared is None:
        return
    wanted = declared if end_s is None else min(declared, end_s)
    if wanted - reached_s > max(_SHORT_BY_S, 0.1 * (wanted - start_s)):
        log.warning(
            "%s: audio ends at %.1f s, the header says %.1f s (truncated or damaged file?)", path, reached_s, declared
        )


__all__ = ["has_audio", "iter_audio_chunks", "read_audio"]
