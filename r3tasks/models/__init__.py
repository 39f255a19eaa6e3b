"""Model backends behind three small interfaces (embedder, reasoner, reranker), picked by name."""

from r3tasks.models.base import (
    Embedder,
    EmbedInput,
    Reasoner,
    Reasoning,
    ReasonInput,
    RerankCandidate,
    Reranker,
    RerankQuery,
)
from r3tasks.models.registry import available_backends, load_embedder, load_reasoner, load_reranker

__all__ = [
    "EmbedInput",
    "Embedder",
    "ReasonInput",
    "Reasoner",
    "Reasoning",
    "RerankCandidate",
    "RerankQuery",
    "Reranker",
    "available_backends",
    "load_embedder",
    "load_reasoner",
    "load_reranker",
]
