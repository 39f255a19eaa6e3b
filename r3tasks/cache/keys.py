"""Stage-cache keys, each built from what its backend reads and nothing else.

A key that folds in an input the backend ignores only costs recomputation (a frame setting changed, a
text-only model recomputes); a key that leaves out an input it reads serves stale results. So each key
takes the backend's own declaration where it has one: `uses_frames` (False: no frame setting, no source
video content in the key) and, for rerankers, an optional `query_key(query)` naming the parts of the
`RerankQuery` its score reads (Gemma's `edit_likelihood` reads the source caption and the edit, not the
reasoning paragraph in `text`).
"""

from __future__ import annotations

from typing import Any

from r3tasks.cache.stages import stage_key
from r3tasks.models.base import Reranker, RerankQuery
from r3tasks.settings.tree import R3Settings


def _frames_part(backend: Any, settings: R3Settings, content_key: str | None) -> tuple:
    """The source video's content and the frame settings, for a backend that sees pixels."""
    if not getattr(backend, "uses_frames", True):
        return ()
    return (content_key, settings.settings_hash("frames"))


def reasoning_key(
    reasoner: Any, source_text: str | None, content_key: str | None, edit: str, settings: R3Settings
) -> str:
    return stage_key(
        "reasoning",
        source_text,
        edit,
        reasoner.fingerprint,
        reasoner.prompt_version,
        *_frames_part(reasoner, settings, content_key),
    )


def embedding_key(
    embedder: Any, texts: list[str], instruction: str, content_key: str | None, settings: R3Settings
) -> str:
    # A text-only embedder sees the source only through its caption, which is in `texts`.
    return stage_key(
        "query-embedding", texts, embedder.fingerprint, instruction, *_frames_part(embedder, settings, content_key)
    )


def rerank_key(
    reranker: Reranker,
    query: RerankQuery,
    source_content_key: str | None,
    candidate_content_key: str,
    settings: R3Settings,
) -> str:
    declared = getattr(reranker, "query_key", None)
    reads = (
        tuple(declared(query)) if callable(declared) else (query.text, query.instruction, settings.models.rerank_rule)
    )
    return stage_key(
        "rerank",
        reads,
        candidate_content_key,
        reranker.fingerprint,
        *_frames_part(reranker, settings, source_content_key),
    )
