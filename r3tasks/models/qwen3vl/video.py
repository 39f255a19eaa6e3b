"""Video inputs as Qwen3-VL-Embedding/Reranker prepare them with qwen-vl-utils (0.0.14) for a video file.

qwen-vl-utils' `fetch_video` decodes the sampled frames at the native size, resizes each to
``smart_resize(h, w, factor=32, min_pixels=128 tokens, max_pixels=max(min(768 tokens, total_pixels /
n_frames x 2), 1.05 x min_pixels))`` with torchvision's antialiased bicubic resize, and hands the
processor the native frame indices and native fps, so that each temporal patch is stamped with its true
time; the processor then runs with ``do_resize=False``. The sizing below calls qwen-vl-utils' own
`smart_resize` and constants; frames from `r3tasks.inputs.frames.read_frames` carry their native indices, fps and
size (`FrameArray`), so the same file gives the same frames, sizes and timestamps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from r3tasks.errors import ItemError
from r3tasks.inputs.frames import frame_source
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_ASPECT_RATIO = 200  # qwen-vl-utils' MAX_RATIO: the Qwen3-VL processors refuse anything more elongated
_warned_upsampling = False


def check_frames(item: str, frames: Any, fps: float | None) -> None:
    if not isinstance(frames, np.ndarray):
        raise ItemError(item, f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ItemError(item, f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    total, height, width = frames.shape[:3]
    if total < 1 or height < 1 or width < 1:
        raise ItemError(item, f"frames are empty: shape {frames.shape}")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ItemError(item, f"frames of {width}x{height} are too elongated (aspect ratio over {MAX_ASPECT_RATIO})")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ItemError(item, f"fps must be a positive number, got {fps!r}")


@dataclass
class VideoPlan:
    """What one video becomes, decided before any pixel is touched."""

    item: str
    frames: np.ndarray  # as given (T, H, W, 3)
    positions: list[int]  # rows of `frames` that go in
    indices: list[int]  # their native frame indices (timestamps = index / fps)
    fps: float
    total_frames: int
    height: int  # resized frame size
    width: int
    grid: tuple[int, int, int]  # (t, h, w) in patches, as the processor will report

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w // 4

    def metadata(self) -> dict[str, Any]:
        return {"fps": self.fps, "frames_indices": list(self.indices), "total_num_frames": self.total_frames}


def frame_pixel_bounds(settings: R3Settings, factor: int, num_frames: int) -> tuple[int, float]:
    """(min_pixels, max_pixels) of one frame, as `fetch_video` computes them for `num_frames` frames."""
    from qwen_vl_utils.vision_process import FRAME_FACTOR

    m = settings.models
    min_pixels = m.video_min_tokens * factor * factor
    total_pixels = m.video_total_tokens * factor * factor
    frame_max = m.video_max_tokens * factor * factor
    max_pixels = max(min(frame_max, total_pixels / num_frames * FRAME_FACTOR), int(min_pixels * 1.05))
    return min_pixels, max_pixels


def plan_video(
    item: str,
    frames: Any,
    fps: float | None,
    settings: R3Settings,
    max_frames: int | None,
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
) -> VideoPlan:
    """Validate frames and size them as qwen-vl-utils would size the same frames of the same file."""
    from qwen_vl_utils.vision_process import smart_resize

    check_frames(item, frames, fps)
    count, decoded_h, decoded_w = frames.shape[:3]
    source = frame_source(frames)
    if source is not None:
        indices, rate, total = list(source.indices), source.fps, source.total_frames
        native_h, native_w = (source.height, source.width) if source.height and source.width else (decoded_h, decoded_w)
    else:
        # Frames of unknown origin: taken as consecutive samples at `fps`.
        rate = float(fps) if fps is not None else float(settings.frames.fps)
        indices, total = list(range(count)), count
        native_h, native_w = decoded_h, decoded_w
    positions = list(range(count))
    if max_frames is not None and count > max_frames:
        positions = [int(p) for p in np.unique(np.linspace(0, count - 1, max_frames).round().astype(int))]
        indices = [indices[p] for p in positions]
    factor = patch_size * merge_size
    min_pixels, max_pixels = frame_pixel_bounds(settings, factor, len(positions))
    try:
        height, width = smart_resize(native_h, native_w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:
        raise ItemError(item, f"frames of {native_w}x{native_h} cannot be sized for Qwen3-VL: {exc}") from None
    if decoded_h * decoded_w < height * width and (decoded_h, decoded_w) != (native_h, native_w):
        global _warned_upsampling
        if not _warned_upsampling:
            _warned_upsampling = True
            log.warning(
                "%s: frames decoded at %dx%d are upsampled to %dx%d for Qwen3-VL; raise frames.min_decode_pixels "
                "or frames.max_side so decoding keeps the model's pixels",
                item,
                decoded_w,
                decoded_h,
                width,
                height,
            )
    grid_t = -(-len(positions) // temporal_patch_size)
    return VideoPlan(
        item,
        frames,
        positions,
        indices,
        rate,
        total,
        height,
        width,
        (grid_t, height // patch_size, width // patch_size),
    )


def resized_pixels(plan: VideoPlan) -> torch.Tensor:
    """(T, C, H, W) float frames at the planned size: qwen-vl-utils' resize (bicubic, antialiased, uint8)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvF

    video = torch.from_numpy(np.ascontiguousarray(plan.frames[plan.positions])).permute(0, 3, 1, 2)
    video = tvF.resize(video, [plan.height, plan.width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return video.float()


__all__ = ["VideoPlan", "check_frames", "frame_pixel_bounds", "plan_video", "resized_pixels"]


def video_plan(backend: Any, item: str, frames: Any, fps: float | None, max_frames: int | None) -> VideoPlan:
    vp = backend._loaded.processor.video_processor
    return plan_video(
        item,
        frames,
        fps,
        backend._settings,
        max_frames,
        int(vp.patch_size),
        int(vp.merge_size),
        int(getattr(vp, "temporal_patch_size", 2)),
    )
