"""The model interfaces (embedder, reasoner, reranker, speech recogniser). Backends live in their own modules and import torch lazily.

Frames everywhere are ``uint8`` arrays shaped ``(T, H, W, 3)`` (RGB), as
``r3tasks.inputs.frames.read_frames`` returns them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from r3tasks.media.cues import Cue

# Held while any model loads. transformers' lazy module is not safe to import from two threads at once
# (measured with 5.23: of three threads reading `transformers.AutoTokenizer` together, one or two get
# "module 'transformers' has no attribute ..."), and index and query tasks run on thread pools.
MODEL_LOADING = threading.RLock()


@dataclass(frozen=True)
class EmbedInput:
    """One thing to embed: a gallery item or a query. At least one of text/frames is set."""

    item_id: str
    text: str | None = None
    frames: np.ndarray | None = field(default=None, compare=False, repr=False)
    fps: float | None = None  # sampling rate of `frames`, for the video processor's timestamps


@dataclass(frozen=True)
class QueryTemplates:
    """How a composed query is written for one embedder (fields as in the query settings).

    R^3's templates ("Reference video after edit instruction: {edit}") are written for a VLM that sees
    the source video; a text embedder reads them as noise words, so a preset sets its own (the offline
    preset's are in `r3tasks.settings.presets`).
    """

    base_template: str
    reasoning_template: str
    source_text_template: str


@runtime_checkable
class Embedder(Protocol):
    """Maps items and queries to L2-normalised float32 vectors in one space."""

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str:
        """Changes whenever the vectors would: model id/path, revision or weight hash, dtype, dim, settings."""
        ...

    @property
    def uses_frames(self) -> bool:
        """False for text-only embedders: callers skip decoding video for them."""
        ...

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        """Gallery items -> ``(len(items), dim)`` float32, unit rows."""
        ...

    def embed_queries(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        """Queries -> ``(len(items), dim)`` float32, unit rows."""
        ...


@dataclass(frozen=True)
class ReasonInput:
    """A composed query as the reasoner sees it: the source video (frames and/or its caption) and the edit."""

    query_id: str
    edit: str
    frames: np.ndarray | None = field(default=None, compare=False, repr=False)
    fps: float | None = None
    source_text: str | None = None


@dataclass(frozen=True)
class Reasoning:
    """A reasoner's output: `text` (after ``</think>``) is used; `raw` and `thinking` are kept for lineage."""

    text: str
    raw: str
    thinking: str | None = None


@runtime_checkable
class Reasoner(Protocol):
    @property
    def fingerprint(self) -> str: ...

    @property
    def prompt_version(self) -> str:
        """Changes whenever the prompt does; part of the reasoning cache key."""
        ...

    def reason(self, requests: Sequence[ReasonInput]) -> list[Reasoning]: ...


@dataclass(frozen=True)
class RerankQuery:
    """What the reranker compares candidates against."""

    text: str
    instruction: str
    frames: np.ndarray | None = field(default=None, compare=False, repr=False)
    fps: float | None = None
    # A composed query's parts, for rerankers that score them separately (gemma3 `edit_likelihood`).
    source_text: str | None = None
    edit: str | None = None


@dataclass(frozen=True)
class RerankCandidate:
    item_id: str
    text: str | None = None
    frames: np.ndarray | None = field(default=None, compare=False, repr=False)
    fps: float | None = None


@runtime_checkable
class Reranker(Protocol):
    @property
    def fingerprint(self) -> str: ...

    @property
    def uses_frames(self) -> bool: ...

    def score(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> np.ndarray:
        """Relevance of each candidate to the query, higher is better, float64 ``(len(candidates),)``."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit rows in float32; a zero row stays zero rather than turning into NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@runtime_checkable
class SpeechRecognizer(Protocol):
    """Speech to timed text. `audio` is mono float32 in [-1, 1] at `sample_rate` Hz (the backend's own rate,
    `SpeechRecognizer.sample_rate`, is what callers decode to)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> list[Cue]:
        """Words or phrases with their times in seconds from the start of `audio`, in order."""
        ...
