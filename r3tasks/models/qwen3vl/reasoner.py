"""Qwen3-VL Thinking/Instruct reasoner: greedy generation of one target-side paragraph per composed query;
the answer is the text after the last ``</think>``."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from typing import Any

from r3tasks.errors import ItemError
from r3tasks.models.base import Reasoning, ReasonInput
from r3tasks.models.qwen3vl.inputs import Prompt, collate, encode_conversation
from r3tasks.models.qwen3vl.loading import LazyWeights
from r3tasks.models.qwen3vl.prompts import prompt_version, reasoning_prompt
from r3tasks.models.qwen3vl.video import video_plan
from r3tasks.settings.tree import R3Settings

log = logging.getLogger(__name__)

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_END_MARKERS = ("<|im_end|>", "<|endoftext|>")


def parse_thinking_output(raw: str) -> Reasoning:
    """Split a generation into answer and thinking.

    - ``... </think> answer``: the answer is the text after the LAST ``</think>``; what precedes it
      (without its ``<think>``) is the thinking.
    - no ``</think>`` and no ``<think>`` (Instruct models): the whole output is the answer.
    - ``<think>`` never closed (the token limit hit inside the thinking): the answer is ``""``, the
      partial thinking is kept; see `is_unterminated`.
    """
    cleaned = raw
    for marker in _END_MARKERS:
        cleaned = cleaned.replace(marker, "")
    cleaned = cleaned.strip()
    if _THINK_CLOSE in cleaned:
        thinking, _, answer = cleaned.rpartition(_THINK_CLOSE)
        thinking = thinking.replace(_THINK_OPEN, "", 1).strip()
        return Reasoning(text=answer.strip(), raw=raw, thinking=thinking or None)
    if _THINK_OPEN in cleaned:
        before, _, partial = cleaned.partition(_THINK_OPEN)
        return Reasoning(text="", raw=raw, thinking=(before + partial).strip() or None)
    return Reasoning(text=cleaned, raw=raw, thinking=None)


def is_unterminated(reasoning: Reasoning) -> bool:
    """True when the generation stopped inside ``<think>``: no answer was written."""
    return _THINK_OPEN in reasoning.raw and _THINK_CLOSE not in reasoning.raw


class Qwen3VLReasoner(LazyWeights):
    """Qwen3-VL Thinking/Instruct: greedy generation of one target-side paragraph per composed query."""

    def __init__(self, settings: R3Settings) -> None:
        self._init_lazy(settings, "reasoner", with_lm_head=True)
        self._max_new_tokens = settings.models.reasoning_max_new_tokens
        self._lock = threading.Lock()

    @property
    def prompt_version(self) -> str:
        return prompt_version()

    def _generation_config(self) -> Any:
        config = copy.deepcopy(self._loaded.model.generation_config)
        # Greedy, as the reference: clear the checkpoint's sampling defaults so none applies or warns.
        config.do_sample = False
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.max_new_tokens = self._max_new_tokens
        if config.pad_token_id is None:
            config.pad_token_id = self._loaded.processor.tokenizer.pad_token_id
        return config

    def reason(self, requests: Sequence[ReasonInput]) -> list[Reasoning]:
        import torch

        prepared = [self._prepare(request) for request in requests]
        tokenizer = self._loaded.processor.tokenizer
        results: list[Reasoning] = []
        for request, prompt in zip(requests, prepared):
            # One request per generate call: long greedy generations gain little from padding-heavy batches.
            inputs = collate(self._loaded, [prompt])
            with self._lock, torch.inference_mode():
                output = self._loaded.model.generate(**inputs, generation_config=self._generation_config())
            new_tokens = output[0, inputs["input_ids"].shape[1] :]
            generated = tokenizer.decode(new_tokens, skip_special_tokens=False)
            # Thinking templates open `<think>` in the prompt; restore it so the parse sees the whole turn.
            opened = tokenizer.decode(prompt.ids[-4:]).rstrip().endswith(_THINK_OPEN)
            reasoning = parse_thinking_output((_THINK_OPEN + "\n" + generated) if opened else generated)
            if is_unterminated(reasoning):
                log.warning(
                    "reasoning for query %s stopped inside <think> after %d new tokens: no answer; "
                    "raise models.reasoning_max_new_tokens",
                    request.query_id,
                    len(new_tokens),
                )
            results.append(reasoning)
        return results

    def _prepare(self, request: ReasonInput) -> Prompt:
        if not request.edit or not request.edit.strip():
            raise ItemError(request.query_id, "the edit instruction is empty")
        has_source_text = bool(request.source_text and request.source_text.strip())
        if request.frames is None and not has_source_text:
            raise ItemError(request.query_id, "no source video frames and no source text to reason from")
        content: list[dict[str, Any]] = []
        videos = []
        if request.frames is not None:
            videos.append(
                video_plan(self, request.query_id, request.frames, request.fps, self._settings.frames.max_frames)
            )
            content.append({"type": "video"})
        content.append({"type": "text", "text": reasoning_prompt(request.edit, request.source_text, bool(videos))})
        conversation = [{"role": "user", "content": content}]
        # The edit and the source text are data: tokenized so that special-token strings in them stay text.
        return Prompt(ids=encode_conversation(self._loaded, conversation, videos), videos=videos)
