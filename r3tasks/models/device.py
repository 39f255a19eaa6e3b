"""Device and dtype helpers for the torch backends. Import this module only where torch is wanted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from r3tasks.errors import R3Error

if TYPE_CHECKING:
    import torch

_DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; anything else goes to torch as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise R3Error(f"models.device {name!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise R3Error(f"models.device {name!r} asks for CUDA, but torch sees no CUDA device here")
    return device


def resolve_dtype_name(name: str, device: torch.device) -> str:
    """`auto` is bfloat16 on a GPU and float32 elsewhere (CPU bf16 matmuls are slow and lossy)."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in _DTYPES:
        raise R3Error(f"models.dtype {name!r} is not one of auto, {', '.join(_DTYPES)}")
    return name


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    return getattr(torch, resolve_dtype_name(name, device))
