"""Qwen3-VL backends: the embedder (Qwen3-VL-Embedding), the reranker (Qwen3-VL-Reranker) and the
reasoner (Qwen3-VL Thinking or Instruct), for the `qwen3vl` preset (real checkpoints by hub id or
local path) and the `tiny` preset (tiny random checkpoints built on disk, then loaded by the same code).

Inputs are prepared as the official Qwen3-VL-Embedding code with qwen-vl-utils prepares them
(`video`: frame sizing, true timestamps; `inputs`: truncation, text tokenized as data). torch and
transformers are imported inside functions: importing this package is cheap.

Modules: `resolve` (finding a checkpoint, weight hashes), `loading` (weights, fingerprints), `video`,
`inputs`, `embedder`, `reranker`, `reasoner`.
"""

from __future__ import annotations

from r3tasks.models.qwen3vl.embedder import Qwen3VLEmbedder, embedding_dim
from r3tasks.models.qwen3vl.inputs import last_token_pool
from r3tasks.models.qwen3vl.loading import BACKEND, check_model_type, model_fingerprint
from r3tasks.models.qwen3vl.reasoner import (
    Qwen3VLReasoner,
    is_unterminated,
    parse_thinking_output,
    prompt_version,
    reasoning_prompt,
)
from r3tasks.models.qwen3vl.reranker import Qwen3VLReranker, rerank_scores
from r3tasks.models.qwen3vl.resolve import ResolvedModel, check_models, resolve_model
from r3tasks.settings.tree import R3Settings


def load_embedder(settings: R3Settings) -> Qwen3VLEmbedder:
    return Qwen3VLEmbedder(settings)


def load_reranker(settings: R3Settings) -> Qwen3VLReranker:
    return Qwen3VLReranker(settings)


def load_reasoner(settings: R3Settings) -> Qwen3VLReasoner:
    return Qwen3VLReasoner(settings)


def embedder_fingerprint(settings: R3Settings) -> str:
    """What `load_embedder(settings).fingerprint` is, without constructing the embedder (the same function
    computes both)."""
    resolved = resolve_model(settings, "embedding")
    check_model_type(resolved)  # the error loading the embedder would give
    return model_fingerprint(settings, "embedding", resolved)


def embedder_dim(settings: R3Settings) -> int:
    """What `load_embedder(settings).dim` is, from the checkpoint's config.json."""
    return embedding_dim(settings, resolve_model(settings, "embedding").path)


__all__ = [
    "BACKEND",
    "Qwen3VLEmbedder",
    "Qwen3VLReasoner",
    "Qwen3VLReranker",
    "ResolvedModel",
    "check_models",
    "embedder_dim",
    "embedder_fingerprint",
    "is_unterminated",
    "last_token_pool",
    "load_embedder",
    "load_reasoner",
    "load_reranker",
    "model_fingerprint",
    "parse_thinking_output",
    "prompt_version",
    "reasoning_prompt",
    "rerank_scores",
    "resolve_model",
]
