"""Shared by the Qwen3-VL test modules: tiny-preset settings and one torch thread per module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from r3tasks.settings.tree import R3Settings, load_settings


def tiny_settings(home: Path, **models: object) -> R3Settings:
    # CPU float32 whatever the machine: the tolerances in the tests are float32 ones.
    return load_settings(home=home, models={"preset": "tiny", "device": "cpu", **models})


def random_frames(seed: int, count: int = 4, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy small CPU OpenMP's spinning
    # threads make each call 10-40x slower (measured: 8 ms vs 300 ms per embedding).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
