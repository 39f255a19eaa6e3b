"""The `offline` preset's reasoner: Gemma 3 270M (a base LM, so a few-shot prompt) writes the target
description from the source's caption and the edit. It reads text only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r3tasks.errors import MissingTextError
from r3tasks.models.base import Reasoning, ReasonInput
from r3tasks.models.gemma3.lm import _MIN_TEXT_BATCH, _fingerprint, _load_lm, _one_line, _short_hash, encode_text
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    import torch


# Written for this project (none is taken from a benchmark): plain captions and Ego4D-style
# narrations ("#C C ..." is the camera wearer) with short edits, so the model learns to change the
# action or object the edit names while keeping the rest and the source's style. The order
# (instruction first, then before/after) made the 270M model copy the source far less often than
# source-first orders (10% vs 50-70% verbatim copies on 40 EgoCVR queries).
REASON_HEADER = (
    "Rewrite the video description so that it shows the result of the edit. "
    "Change the action or object as the edit says.\n\n"
)
REASON_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "A man chops carrots on a wooden cutting board in a kitchen.",
        "Make him peel potatoes instead.",
        "A man peels potatoes over a wooden cutting board in a kitchen.",
    ),
    ("#C C opens the fridge door", "Close it.", "#C C closes the fridge door"),
    (
        "A dog runs across a grassy park chasing a red ball.",
        "The dog should be asleep.",
        "A dog sleeps on the grass in a park next to a red ball.",
    ),
    ("#C C paints the wall with a roller", "Use a brush on the door instead.", "#C C paints the door with a brush"),
    ("#C C holds a cup in his left hand", "Drink from it.", "#C C drinks from the cup"),
    ("#C C picks the shirt from the bed", "Fold it instead.", "#C C folds the shirt on the bed"),
    (
        "A woman rides a bicycle down a city street.",
        "She pushes it instead.",
        "A woman pushes a bicycle down a city street.",
    ),
    ("#C C cuts the rope with a knife", "Tie them together.", "#C C ties the ropes together"),
)
_REASON_ITEM = "Instruction: {edit}\nBefore: {source}\nAfter:"


def reasoning_prompt(source_text: str, edit: str) -> str:
    """The few-shot prompt whose continuation (one line) is the target description."""
    shots = "".join(_REASON_ITEM.format(source=s, edit=e) + f" {t}\n\n" for s, e, t in REASON_EXAMPLES)
    return REASON_HEADER + shots + _REASON_ITEM.format(source=_one_line(source_text), edit=_one_line(edit))


REASON_PROMPT_VERSION = _short_hash(reasoning_prompt("{source}", "{edit}"))


def _newline_ids(tokenizer: Any) -> list[int]:
    """Tokens that contain a line break, plus end-of-sequence: where a one-line answer ends."""
    ids = {int(i) for t, i in tokenizer.get_vocab().items() if "\n" in t or "<0x0A>" in t}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


@dataclass
class Gemma3Reasoner:
    """Writes the target description from the source caption and the edit (greedy, one line)."""

    model: Any
    tokenizer: Any
    device: torch.device
    max_new_tokens: int
    batch_size: int
    stop_ids: list[int]
    _fingerprint: str

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def uses_frames(self) -> bool:
        return False  # reads the caption and the edit: frame settings stay out of its cache key

    @property
    def prompt_version(self) -> str:
        return REASON_PROMPT_VERSION

    def reason(self, requests: Sequence[ReasonInput]) -> list[Reasoning]:
        import torch

        prompts: list[str] = []
        for request in requests:
            if not (request.source_text or "").strip():
                raise MissingTextError(
                    request.query_id,
                    "the offline reasoner reasons from the source's text (caption or narration), "
                    "and this query's source has none; it cannot see video frames",
                )
            prompts.append(reasoning_prompt(request.source_text or "", request.edit))
        results: list[Reasoning] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc = encode_text(self.tokenizer, chunk, return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    # The example format ends each answer with a newline: stop at any token holding
                    # one (transformers' stop_strings rescans the 262k vocabulary on every call).
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for row in new_tokens:
                raw = self.tokenizer.decode(row, skip_special_tokens=True)
                results.append(Reasoning(text=_first_line(raw), raw=raw, thinking=None))
        return results


def load_reasoner(settings: R3Settings) -> Gemma3Reasoner:
    model, tokenizer, device, dtype = _load_lm(settings)
    max_new = settings.models.offline_reasoning_max_new_tokens
    return Gemma3Reasoner(
        model=model,
        tokenizer=tokenizer,
        device=device,
        max_new_tokens=max_new,
        batch_size=max(settings.models.rerank_batch_size, _MIN_TEXT_BATCH),
        stop_ids=_newline_ids(tokenizer),
        _fingerprint=_fingerprint("reasoner", dtype, max_new_tokens=max_new, prompt=REASON_PROMPT_VERSION),
    )
