"""One torch intra-op thread while a benchmark runs the tiny model.

On this shared 2-core machine, the tiny Qwen3-VL forward pass in the main thread with torch's
default of 2 intra-op threads was measured 20-25x slower than with one (2.2 s against 0.085 s
for a batch of 16 captions): the model's ops are microseconds long and every one of them waits
at an OpenMP barrier for a thread the busy machine has descheduled. The same call from a worker
thread (as the Prefect flow makes it) ran fast either way, so without this the plain-call arm of
a comparison would be the one penalised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def single_torch_thread() -> Iterator[int]:
    """Set torch to one intra-op thread for the block; yields the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield previous
    finally:
        torch.set_num_threads(previous)
