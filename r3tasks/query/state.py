"""What one query carries through the stages: its source, reasoning, vectors, recall and ranking."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from r3tasks.inputs.queries import Query
from r3tasks.media.cues import Span
from r3tasks.models.base import Reasoning


@dataclass(frozen=True)
class RankedItem:
    """One entry of a final ranking. `score` never increases down a list from :func:`rerank_topk`."""

    id: str
    score: float
    embedding_score: float
    reranker_score: float | None
    # Where the moment is: its video and times (None for a text-only item); what is said and written in it.
    video_id: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    transcript: str | None = None
    screen_text: str | None = None


@dataclass(frozen=True)
class SourceInfo:
    """A composed query's source as the models see it."""

    item_id: str | None  # set when the source is a gallery item (it is then excluded from results)
    path: Path | None
    text: str | None
    content_key: str
    span: Span | None = None  # a moment of the video: its frames are sampled inside it
    # Rows that are the source itself (its moments overlapping the span), never a result.
    exclude: frozenset[str] = frozenset()

    @property
    def excluded(self) -> set[str]:
        return set(self.exclude) | ({self.item_id} if self.item_id else set())


@dataclass
class QueryState:
    """Everything one query accumulates on its way through the stages."""

    query: Query
    error: str | None = None
    source: SourceInfo | None = None
    reasoning: Reasoning | None = None
    base_vectors: np.ndarray | None = None  # (B, D)
    reasoning_vector: np.ndarray | None = None  # (D,)
    agreement: float | None = None
    source_similarity: float | None = None  # reasoning text vs the source's text (1.0: a copy)
    names_edit: bool | None = None  # the reasoning holds a word the edit asks for that the source lacks
    gate_used: bool = False
    recalled: list[tuple[str, float]] = field(default_factory=list)
    ranked: list[RankedItem] = field(default_factory=list)
    # What went wrong without costing the query its answer (reasoning left out, candidates unscored).
    warnings: list[str] = field(default_factory=list)
    rerank_decision: dict | None = None  # pairs scored, depth reached, gate that kept recall order

    @property
    def ok(self) -> bool:
        return self.error is None
