"""Embedders the benchmarks plug in through the registry: a counting wrapper around the tests' fake embedder.

The fake (`tests.fakes.FakeEmbedder`, one definition for tests and benchmarks) costs almost nothing per item,
so a run with it measures the orchestration, decoding and storage around the model, not the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from r3tasks.models.base import Embedder, EmbedInput
from r3tasks.models.registry import register_backend
from r3tasks.settings.tree import R3Settings
from tests.fakes import FakeEmbedder

HASH_DIM = 64


def hash_embedder(dim: int = HASH_DIM, uses_frames: bool = False) -> FakeEmbedder:
    """The fake embedder under the benchmarks' own name (fingerprint `bench-hash-<dim>-<frames>`)."""
    return FakeEmbedder(dim=dim, uses_frames=uses_frames, name="bench-hash")


class CountingEmbedder:
    """Wraps any embedder and counts calls and items; same fingerprint, so it writes the same table."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls = 0
        self.documents = 0
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    @property
    def uses_frames(self) -> bool:
        return self.inner.uses_frames

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        with self._lock:
            self.calls += 1
            self.documents += len(items)
        return self.inner.embed_documents(items, instruction)

    def embed_queries(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        return self.inner.embed_queries(items, instruction)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.calls, self.documents


class SerialSlowEmbedder(CountingEmbedder):
    """A stand-in for a real model's cost: `per_item_s` per item, one forward at a time (as the Qwen3-VL
    embedder holds a lock around its forward pass), and nothing else. Frames are still decoded by the caller."""

    def __init__(self, inner: Embedder, per_item_s: float) -> None:
        super().__init__(inner)
        self.per_item_s = per_item_s
        self._forward = threading.Lock()

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        with self._forward:
            time.sleep(self.per_item_s * len(items))
            return super().embed_documents(items, instruction)


def load_hash_text(settings: R3Settings) -> CountingEmbedder:
    return CountingEmbedder(hash_embedder(uses_frames=False))


def load_hash_video(settings: R3Settings) -> CountingEmbedder:
    return CountingEmbedder(hash_embedder(uses_frames=True))


def load_hash_video_serial(settings: R3Settings) -> CountingEmbedder:
    return SerialSlowEmbedder(hash_embedder(uses_frames=True), per_item_s=SERIAL_S_PER_ITEM)


def load_counted_qwen3vl(settings: R3Settings) -> CountingEmbedder:
    from r3tasks.models.qwen3vl import load_embedder

    return CountingEmbedder(load_embedder(settings))


# Backend names a benchmark puts in `models.embedder`.
HASH_TEXT = "bench-hash-text"
HASH_VIDEO = "bench-hash-video"
HASH_VIDEO_SERIAL = "bench-hash-video-serial"
SERIAL_S_PER_ITEM = 0.010
COUNTED_QWEN3VL = "bench-counted-qwen3vl"


def register() -> None:
    """Make the benchmark embedders selectable by name (idempotent; needed in every process that indexes)."""
    register_backend("embedder", HASH_TEXT, "benchmarks.fakes:load_hash_text")
    register_backend("embedder", HASH_VIDEO, "benchmarks.fakes:load_hash_video")
    register_backend("embedder", HASH_VIDEO_SERIAL, "benchmarks.fakes:load_hash_video_serial")
    register_backend("embedder", COUNTED_QWEN3VL, "benchmarks.fakes:load_counted_qwen3vl")


class EchoReasoner:
    """A reasoner that costs nothing: the source's caption with the edit appended (a second query vector set)."""

    fingerprint = "bench-echo-reasoner-1"
    prompt_version = "p1"

    def reason(self, requests):  # type: ignore[no-untyped-def]
        from r3tasks.models.base import Reasoning

        return [Reasoning(text=f"{r.source_text or 'a video'}, after: {r.edit}", raw="", thinking="") for r in requests]


def load_hash_text_384(settings: R3Settings) -> CountingEmbedder:
    return CountingEmbedder(hash_embedder(dim=384))


def load_hash_text_2048(settings: R3Settings) -> CountingEmbedder:
    return CountingEmbedder(hash_embedder(dim=2048))


def load_echo_reasoner(settings: R3Settings) -> EchoReasoner:
    return EchoReasoner()


# Text embedders at MiniLM's and Qwen3-VL-2B's widths, and the free reasoner, for the query-batch benchmark.
HASH_TEXT_DIMS = {384: "bench-hash-text-384", 2048: "bench-hash-text-2048"}
ECHO_REASONER = "bench-echo"


def register_query_batch() -> None:
    register_backend("embedder", HASH_TEXT_DIMS[384], "benchmarks.fakes:load_hash_text_384")
    register_backend("embedder", HASH_TEXT_DIMS[2048], "benchmarks.fakes:load_hash_text_2048")
    register_backend("reasoner", ECHO_REASONER, "benchmarks.fakes:load_echo_reasoner")
