"""The Qwen3-VL prompts: reasoning, reranking and embedding instructions (a leaf: every backend reads it)."""

from __future__ import annotations

import hashlib
import json
import unicodedata

_REASONING_PROMPT = (
    "You are shown a source video{source_hint} and an edit instruction. Imagine the target video: "
    "the source video after the edit has been applied.\n\n"
    "{source_block}"
    "Edit instruction:\n{edit}\n\n"
    "Write one paragraph of 160 to 220 words that describes the target video itself, as a viewer "
    "would see it. Make clear what is changed, added, removed or replaced, and what stays as in the "
    "source: subjects and objects, actions and their order, scene and background, lighting and colour, "
    "camera framing and motion. Use concrete visible details in the present tense. Do not use lists, "
    "headings, markdown, greetings or remarks about yourself or the task; begin directly with the "
    "description."
)


_REASONING_SOURCE_BLOCK = "Source video description:\n{source_text}\n\n"


def prompt_version() -> str:
    """Short hash of the reasoning prompt template; changes whenever the wording does."""
    blob = json.dumps([_REASONING_PROMPT, _REASONING_SOURCE_BLOCK], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def reasoning_prompt(edit: str, source_text: str | None, has_video: bool) -> str:
    """The user-turn text asking for one target-side paragraph."""
    source_block = (
        _REASONING_SOURCE_BLOCK.format(source_text=source_text.strip()) if source_text and source_text.strip() else ""
    )
    hint = "" if has_video else " (described below; the video itself is not shown)"
    return _REASONING_PROMPT.format(source_hint=hint, source_block=source_block, edit=edit.strip())


RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)


DEFAULT_RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


DEFAULT_EMBED_INSTRUCTION = "Represent the user's input."


def with_full_stop(instruction: str) -> str:
    # Qwen3-VL-Embedding strips the instruction and ends it with punctuation before using it as the system message.
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction
