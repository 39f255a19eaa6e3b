"""Opening a video container with PyAV: one place that says why an untrusted file is not a video."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r3tasks.errors import VideoReadError


def ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or type(exc).__name__


@contextmanager
def video_container(path: Path) -> Iterator[tuple[Any, Any]]:
    """(container, its first video stream), header only; `VideoReadError` naming why for a non-video."""
    import av

    try:
        container = av.open(str(path))
    except av.error.PermissionError:
        raise VideoReadError(path, "permission denied") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure to parse means "not a video"
        raise VideoReadError(path, f"not a video: FFmpeg cannot read it ({ffmpeg_reason(exc)})") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            found = f"only {', '.join(kinds)} streams" if kinds else "no streams at all"
            raise VideoReadError(path, f"not a video: no video stream ({found})")
        yield container, container.streams.video[0]
