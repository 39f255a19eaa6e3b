"""Test media with known content at known times: scenes, words on screen, speech, subtitles.

Everything is generated here (PyAV, Pillow, espeak-ng), so a test knows exactly what a reader should find and
when. Sizes are (width, height). Times are seconds from the start of the video.

- `write_scenes_video`: solid-colour scenes, optionally with large words drawn in the middle; H.264 mp4.
  A scene starts on the frame nearest its nominal start, so the true cut times are `cut_times(scenes, fps)`.
- `long_video`: many scenes (3-20 s each, deterministic) for long-video tests; returns the true cut times.
  Writing 10 minutes at the defaults (320x180, 5 fps) took about 1.4 s here (2 shared cores); 10 minutes of
  640x360 at 25 fps 10-13 s.
- `add_audio`: a copy of a video with a mono AAC track, silent except one WAV placed at a known time.
- `add_subtitle_stream`: a copy of a video with an embedded subtitle stream (mov_text in mp4, SubRip in mkv).
- `write_srt`, `write_vtt`: sidecar subtitle files.
- `speech_wav`: synthetic speech from espeak-ng; `recorded_speech`: real recorded sentences with reference
  transcripts from Debian's pocketsphinx-testdata.
"""

from __future__ import annotations

import colorsys
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from r3tasks.media.cues import Cue

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
AUDIO_RATE = 16_000


@dataclass(frozen=True)
class Scene:
    """`seconds` of one background `colour` (RGB); `words`, when set, are drawn large in every frame."""

    seconds: float
    colour: tuple[int, int, int]
    words: str | None = None


# ---------------------------------------------------------------------------
# Video


def cut_times(scenes: Sequence[Scene], fps: int) -> list[float]:
    """Where `write_scenes_video` really cuts: each scene boundary rounded to the nearest frame, in seconds."""
    bounds = _frame_bounds(scenes, fps)
    return [bounds[i] / fps for i in range(1, len(scenes)) if bounds[i] > bounds[i - 1]]


def _frame_bounds(scenes: Sequence[Scene], fps: int) -> list[int]:
    """First frame of each scene, then the frame count; rounding the running total, not each scene,
    keeps the cuts within half a frame of the nominal times however many scenes there are."""
    bounds, total = [0], 0.0
    for scene in scenes:
        if scene.seconds <= 0:
            raise ValueError(f"scene length must be positive, got {scene.seconds}")
        total += scene.seconds
        bounds.append(round(total * fps))
    return bounds


def write_scenes_video(path: Path, scenes: Sequence[Scene], fps: int = 10, size: tuple[int, int] = (320, 180)) -> Path:
    """Encode `scenes` back to back as an H.264 (yuv420p) mp4 of `size` (width, height) at `fps`.

    Each scene is its colour with a faint static texture; a small white square slides along the top edge
    (real motion, far from the words and too small to look like a cut). `words` are drawn in DejaVu Sans Bold,
    white with a dark outline, about 1/6 of the frame height (smaller if needed to fit the width), centred.
    """
    import av

    if not scenes:
        raise ValueError("need at least one scene")
    width, height = _even(size[0]), _even(size[1])
    bounds = _frame_bounds(scenes, fps)
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # ultrafast: the test media are simple and we write a lot of it; crf 20 keeps the words crisp for OCR.
        stream.codec_context.options = {"preset": "ultrafast", "crf": "20"}
        for index, scene in enumerate(scenes):
            background = _yuv_planes(_scene_image(scene, index, width, height))
            for frame_number in range(bounds[index], bounds[index + 1]):
                frame = av.VideoFrame.from_ndarray(_with_square(background, frame_number, width, height), "yuv420p")
                frame.pts = frame_number
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def long_video(
    path: Path, minutes: float, fps: int = 5, size: tuple[int, int] = (320, 180)
) -> tuple[Path, list[float]]:
    """A `minutes`-long video of scenes lasting 3-20 s (the same lengths and colours on every call) and its
    true cut times. Consecutive colours differ strongly in hue, saturation or brightness, as real cuts do."""
    total = minutes * 60.0
    rng = np.random.default_rng(20240601)
    scenes: list[Scene] = []
    elapsed, colour = 0.0, _PALETTE[0]
    while elapsed < total:
        remaining = total - elapsed
        # The last scene takes the remainder once it fits; before that, at least 3 s are left for it.
        seconds = remaining if remaining <= 20 else min(float(rng.integers(3, 21)), remaining - 3)
        scenes.append(Scene(seconds, colour))
        elapsed += seconds
        candidates = [c for c in _PALETTE if _content_distance(c, colour) >= 45]
        colour = candidates[int(rng.integers(len(candidates)))]
    write_scenes_video(path, scenes, fps=fps, size=size)
    return Path(path), cut_times(scenes, fps)


_PALETTE: list[tuple[int, int, int]] = [
    (200, 30, 30),
    (30, 160, 40),
    (30, 60, 200),
    (230, 200, 40),
    (150, 40, 170),
    (30, 170, 170),
    (240, 120, 20),
    (250, 245, 235),
    (25, 25, 35),
    (120, 70, 30),
]


def _content_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """The score PySceneDetect's ContentDetector gives a cut between two flat colours (mean |dH|, |dS|, |dV|
    on OpenCV's scales: hue 0-180, the others 0-255)."""
    ha, sa, va = colorsys.rgb_to_hsv(*(c / 255 for c in a))
    hb, sb, vb = colorsys.rgb_to_hsv(*(c / 255 for c in b))
    return (abs(ha - hb) * 180 + abs(sa - sb) * 255 + abs(va - vb) * 255) / 3


def _even(n: int) -> int:
    # yuv420p halves both sides for chroma; rounding here would make the video another size than asked.
    if n < 16 or n % 2:
        raise ValueError(f"frame side {n} must be even and at least 16 pixels")
    return n


def _scene_image(scene: Scene, index: int, width: int, height: int) -> np.ndarray:
    """The scene's still background (RGB): its colour, faint noise so the encoder has texture, and the words."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(index)
    noise = rng.integers(-5, 6, size=(height, width, 1))
    image = np.clip(np.asarray(scene.colour, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    if not scene.words:
        return image
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    font_size = max(8, height // 6)
    while True:
        font = ImageFont.truetype(str(FONT), font_size)
        stroke = max(1, font_size // 12)
        left, top, right, bottom = draw.multiline_textbbox(
            (0, 0), scene.words, font=font, stroke_width=stroke, align="center"
        )
        if (right - left <= 0.92 * width and bottom - top <= 0.7 * height) or font_size <= 8:
            break
        font_size -= 1
    origin = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.multiline_text(
        origin, scene.words, font=font, fill=(255, 255, 255), stroke_width=stroke, stroke_fill=(20, 20, 20)
    )
    return np.asarray(picture)


def _yuv_planes(rgb: np.ndarray) -> np.ndarray:
    """RGB to PyAV's packed yuv420p array (Y rows, then U, then V), converted once per scene."""
    import av

    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def _with_square(yuv: np.ndarray, frame_number: int, width: int, height: int) -> np.ndarray:
    """A copy of a yuv420p background with a white square sliding along the top (one lap every 8 s at 10 fps)."""
    out = yuv.copy()
    side = max(2, (height // 10) // 2 * 2)
    travel = max(2, width - side)
    x = (frame_number * 4) % travel // 2 * 2
    y = 2
    out[y : y + side, x : x + side] = 235
    chroma_w, chroma_h = width // 2, height // 2
    # PyAV packs the U then the V plane (each a quarter of Y) row after row below Y.
    chroma = out[height:].reshape(-1)
    u = chroma[: chroma_w * chroma_h].reshape(chroma_h, chroma_w)
    v = chroma[chroma_w * chroma_h :].reshape(chroma_h, chroma_w)
    u[y // 2 : (y + side) // 2, x // 2 : (x + side) // 2] = 128
    v[y // 2 : (y + side) // 2, x // 2 : (x + side) // 2] = 128
    return out


def _duration_s(container) -> float:
    """Length of an opened container's first video stream (its last frame's end), in seconds."""
    stream = container.streams.video[0]
    if stream.duration:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000


# ---------------------------------------------------------------------------
# Audio


def add_audio(video: Path, wav: Path, at_s: float, out: Path) -> Path:
    """Copy `video` (its video stream as is, not re-encoded) to `out` (mp4) with a mono 16 kHz AAC track that is
    silent except `wav`, which starts at `at_s`. The track lasts as long as the video; a WAV that would run past
    the end raises ValueError instead of being cut."""
    import av

    speech = _read_audio(Path(wav))
    with av.open(str(video)) as source:
        duration = _duration_s(source)
        start = round(at_s * AUDIO_RATE)
        if at_s < 0 or start + len(speech) > round(duration * AUDIO_RATE):
            raise ValueError(
                f"{wav} ({len(speech) / AUDIO_RATE:.2f} s) at {at_s} s does not fit in {video} ({duration:.2f} s)"
            )
        track = np.zeros(round(duration * AUDIO_RATE), dtype=np.float32)
        track[start : start + len(speech)] = speech
        with av.open(str(out), "w", format="mp4") as target:
            video_out = _copy_streams(source, target)
            audio = target.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            for packet in _audio_packets(audio, track):
                target.mux(packet)
            _remux(source, target, video_out)
    return Path(out)


def _read_audio(wav: Path) -> np.ndarray:
    """Any audio file as mono float32 samples at 16 kHz."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    chunks = []
    with av.open(str(wav)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    if not chunks:
        raise ValueError(f"{wav}: no audio samples")
    return np.concatenate(chunks).astype(np.float32)


def _audio_packets(stream, samples: np.ndarray):
    import av

    size = stream.codec_context.frame_size or 1024
    for offset in range(0, len(samples), size):
        chunk = samples[offset : offset + size]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, offset, Fraction(1, AUDIO_RATE)
        yield from stream.encode(frame)
    yield from stream.encode(None)


def _copy_streams(source, target) -> dict:
    """Output streams copying `source`'s video and audio streams (no re-encoding), keyed by input index."""
    return {
        stream.index: target.add_stream_from_template(stream)
        for stream in source.streams
        if stream.type in ("video", "audio")
    }


def _remux(source, target, streams: dict) -> None:
    for packet in source.demux(*(s for s in source.streams if s.index in streams)):
        if packet.dts is None:
            continue  # the demuxer's flush packet: nothing to write
        packet.stream = streams[packet.stream.index]
        target.mux(packet)


def speech_wav(text: str, out: Path) -> Path:
    """Synthetic speech of `text` (espeak-ng's default English voice, 22.05 kHz mono WAV).

    Raises FileNotFoundError when espeak-ng is not installed (Debian package `espeak-ng`)."""
    program = shutil.which("espeak-ng")
    if program is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian package espeak-ng): no synthetic speech")
    subprocess.run([program, "-w", str(out), "--", text], check=True, capture_output=True)
    return Path(out)


def recorded_speech() -> list[tuple[Path, str]]:
    """Real recorded sentences (LibriVox, 16 kHz mono WAV, 3-7 s each) and what is said in each, lower case,
    without punctuation; [] when Debian's pocketsphinx-testdata is not installed.

    The transcripts come from the package's `transcription` file, one line per recording:
    `<s> words ... </s> (file-id)`.
    """
    listing = LIBRIVOX / "transcription"
    if not listing.is_file():
        return []
    found = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.endswith(")") or "(" not in line:
            continue
        words, _, file_id = line[:-1].rpartition("(")
        text = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
        wav = LIBRIVOX / f"{file_id.strip()}.wav"
        if wav.is_file() and text:
            found.append((wav, text))
    return found


# ---------------------------------------------------------------------------
# Subtitles


def add_subtitle_stream(video: Path, cues: Sequence[Cue], out: Path) -> Path:
    """Copy `video` (video and audio streams as they are) to `out` with one subtitle stream holding `cues`:
    mov_text when `out` ends with .mp4/.m4v/.mov, SubRip when it ends with .mkv."""
    import av

    suffix = Path(out).suffix.lower()
    if suffix in (".mp4", ".m4v", ".mov"):
        codec, fmt = "mov_text", "mp4" if suffix != ".mov" else "mov"
    elif suffix == ".mkv":
        codec, fmt = "subrip", "matroska"
    else:
        raise ValueError(f"{out}: subtitles go in .mp4, .m4v, .mov or .mkv, not {suffix or 'no suffix'}")
    time_base = Fraction(1, 1000)
    # AAC starts 1024 samples before zero (encoder priming). mp4 keeps that in an edit list; Matroska's muxer
    # would instead shift every stream, subtitles and video included, 64 ms late. Keep the times as they are.
    options = {"avoid_negative_ts": "disabled"} if fmt == "matroska" else {}
    with av.open(str(video)) as source, av.open(str(out), "w", format=fmt, options=options) as target:
        streams = _copy_streams(source, target)
        # Cues are already encoded text: mux them as packets, no subtitle encoder needed.
        subtitles = target.add_mux_stream(codec)
        subtitles.time_base = time_base
        _remux(source, target, streams)
        for cue in sorted(cues, key=lambda c: c.start_s):
            if cue.end_s <= cue.start_s:
                raise ValueError(f"cue {cue!r} ends before it starts")
            data = cue.text.encode("utf-8")
            if codec == "mov_text":
                data = struct.pack(">H", len(data)) + data  # a tx3g sample: 16-bit length, then the text
            packet = av.Packet(data)
            packet.stream, packet.time_base = subtitles, time_base
            packet.pts = packet.dts = round(cue.start_s * 1000)
            packet.duration = round(cue.end_s * 1000) - packet.pts
            target.mux(packet)
    return Path(out)


def write_srt(path: Path, cues: Sequence[Cue]) -> Path:
    """A SubRip file (UTF-8): numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, text, blank line."""
    blocks = [
        f"{n}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n{c.text}\n" for n, c in enumerate(cues, start=1)
    ]
    Path(path).write_text("\n".join(blocks), encoding="utf-8")
    return Path(path)


def write_vtt(path: Path, cues: Sequence[Cue]) -> Path:
    """A WebVTT file (UTF-8): the `WEBVTT` header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues."""
    blocks = [f"{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n{c.text}\n" for c in cues]
    Path(path).write_text("WEBVTT\n\n" + "\n".join(blocks), encoding="utf-8")
    return Path(path)


def _clock(seconds: float, mark: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{mark}{millis:03d}"
