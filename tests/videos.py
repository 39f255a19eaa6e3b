"""Test helpers: videos whose frames say their own index, and broken or odd files.

Each frame of an "indexed" video carries its index as eight black/white
vertical stripes (bit 7 on the left), which survive compression and resizing,
so a test can check which frame a decoder really returned.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BITS = 8


def indexed_frame(index: int, height: int, width: int) -> np.ndarray:
    """An RGB frame showing `index` (0-255) as stripes in the top half; the bottom half is a moving gradient."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    stripe = width // BITS
    for bit in range(BITS):
        if (index >> (BITS - 1 - bit)) & 1:
            frame[: height // 2, bit * stripe : (bit + 1) * stripe] = 255
    gradient = (np.arange(width, dtype=np.int64) * 3 + index * 5) % 256
    frame[height // 2 :, :, 1] = gradient.astype(np.uint8)
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read back the index drawn by `indexed_frame` (from a decoded, possibly resized frame)."""
    height, width = frame.shape[:2]
    stripe = width / BITS
    band = frame[height // 8 : 3 * height // 8].astype(np.float64).mean(axis=2)
    value = 0
    for bit in range(BITS):
        centre = band[:, int((bit + 0.25) * stripe) : max(int((bit + 0.75) * stripe), int((bit + 0.25) * stripe) + 1)]
        value = (value << 1) | int(centre.mean() > 127)
    return value


def write_indexed_video(
    path: Path,
    num_frames: int = 16,
    *,
    fps: int = 8,
    size: tuple[int, int] = (96, 128),
    codec: str = "mpeg4",
    container_format: str | None = None,
    faststart: bool = False,
    pix_fmt: str | None = None,
) -> Path:
    """Encode `num_frames` indexed frames. `size` is (height, width)."""
    import av

    height, width = size
    options = {"movflags": "faststart"} if faststart else {}
    pix_fmt = pix_fmt or ("rgb8" if codec == "gif" else "yuv420p")
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "mpeg4":
            stream.codec_context.options = {"qscale": "2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(indexed_frame(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_huge_video(path: Path, *, num_frames: int = 2, size: tuple[int, int] = (4320, 7680)) -> Path:
    """An 8k clip (two frames of flat colour: encoding stays about a second)."""
    import av

    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, : width // 3, 0] = 200
        for _ in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def truncate_copy(source: Path, target: Path, fraction: float) -> Path:
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[: int(len(data) * fraction)])
    return Path(target)


def write_empty(path: Path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def write_text_as_video(path: Path) -> Path:
    Path(path).write_text("this is a shopping list, not a video\n" * 30, encoding="utf-8")
    return Path(path)


def write_random_bytes(path: Path, size: int = 20_000, seed: int = 0) -> Path:
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return Path(path)


def write_audio_only(path: Path) -> Path:
    """An .mp4 holding one AAC stream and no video."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_frameless(path: Path) -> Path:
    """A valid AVI header declaring a video stream, and not one frame."""
    import av

    container = av.open(str(path), "w", format="avi")
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    container.start_encoding()
    container.close()
    return Path(path)


def zero_payload(source: Path, target: Path) -> Path:
    """Keep an MP4's header (moov first) and zero every byte of its media data."""
    data = bytearray(Path(source).read_bytes())
    start = data.find(b"mdat")
    if start < 0:
        raise ValueError(f"{source}: no mdat box")
    data[start + 4 :] = bytes(len(data) - start - 4)
    Path(target).write_bytes(bytes(data))
    return Path(target)


def make_unreadable(path: Path) -> Path:
    os.chmod(path, 0)
    return Path(path)


def write_three_clip_gallery(folder: Path) -> list:
    """Three generated 2 s clips with caption sidecars (a red circle by day and by night, two blue squares):
    the small gallery the tiny-preset end-to-end tests index. Returns their `ClipSpec`s."""
    from r3tasks.datasets.synthetic import ClipSpec, write_clip

    specs = [
        ClipSpec(shape="circle", colour="red", motion="right", background="day"),
        ClipSpec(shape="circle", colour="red", motion="right", background="night"),
        ClipSpec(shape="square", colour="blue", motion="left", background="grass", count=2),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        write_clip(folder / f"{spec.clip_id()}.mp4", spec, seconds=2.0, caption_sidecar=True)
    return specs
