"""Token ids and model inputs for Qwen3-VL prompts, with text as data and the official truncation.

Text is data, never control: every text part of a conversation (instruction, query, caption, edit,
reasoning) is rendered through the chat template as a placeholder; the rendered prompt is split at the
template's own added tokens, the texts are put back, and each plain stretch is tokenized with
``split_special_tokens=True``. A ``<|im_end|>`` or ``<|video_pad|>`` typed by a user is then the plain
text it reads as, while the template's own special tokens stay special. For texts without such strings
the ids equal the processor's own tokenization of the rendered prompt (the official code's).

Videos are expanded by the processor's own ``replace_video_token`` (timestamps and pads), from the
`VideoPlan` alone; pixels are prepared only for the forward pass that uses them.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from r3tasks.models.qwen3vl.loading import Loaded
from r3tasks.models.qwen3vl.video import VideoPlan, resized_pixels

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_MARK = "\ue000{}\ue001"  # private-use code points: no tokenizer template writes them
_MARK_RE = re.compile("\ue000(\\d+)\ue001")
_END_TOKEN = "<|im_end|>"
T = TypeVar("T")


@dataclass
class Prompt:
    """One row: its token ids (truncated), the videos in it, and how many tokens the row has."""

    ids: list[int]
    videos: list[VideoPlan] = field(default_factory=list)
    truncated: int = 0  # text tokens cut


def _added_token_pattern(tokenizer: Any) -> tuple[re.Pattern[str], dict[str, int]]:
    cached = getattr(tokenizer, "_r3_added_pattern", None)
    if cached is not None:
        return cached
    added = {token.content: int(token_id) for token_id, token in tokenizer.added_tokens_decoder.items()}
    # Longest first: the regex then matches as the tokenizer's own added-token split does (leftmost-longest).
    pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
    tokenizer._r3_added_pattern = (pattern, added)
    return pattern, added


def special_ids(tokenizer: Any) -> set[int]:
    """Ids truncation never cuts: the tokenizer's special ids and every added token marked special
    (on Qwen's own tokenizers these are the same set, `all_special_ids`)."""
    ids = set(int(i) for i in tokenizer.all_special_ids)
    ids.update(int(i) for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def _video_expansion(loaded: Loaded, plan: VideoPlan) -> str:
    import torch
    from transformers.video_utils import VideoMetadata

    metadata = VideoMetadata(
        total_num_frames=plan.total_frames,
        fps=plan.fps,
        frames_indices=list(plan.indices),
        height=plan.height,
        width=plan.width,
    )
    inputs = {"video_grid_thw": torch.tensor([plan.grid]), "video_metadata": [metadata]}
    return loaded.processor.replace_video_token(inputs, 0)


def encode_conversation(loaded: Loaded, conversation: list[dict[str, Any]], videos: Sequence[VideoPlan]) -> list[int]:
    """Token ids of `conversation` (with its generation prompt); text parts are data, see the module doc."""
    processor = loaded.processor
    tokenizer = processor.tokenizer
    texts: list[str] = []
    marked = copy.deepcopy(conversation)
    for message in marked:
        for part in message["content"]:
            if part.get("type") == "text":
                texts.append(part["text"])
                part["text"] = _MARK.format(len(texts) - 1)
    rendered = processor.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
    pieces = rendered.split(processor.video_token)
    if len(pieces) != len(videos) + 1:
        raise ValueError(f"the chat template wrote {len(pieces) - 1} video placeholders for {len(videos)} videos")
    expanded = pieces[0] + "".join(_video_expansion(loaded, v) + rest for v, rest in zip(videos, pieces[1:]))
    pattern, added = _added_token_pattern(tokenizer)
    ids: list[int] = []
    position = 0

    def plain(stretch: str) -> None:
        stretch = _MARK_RE.sub(lambda m: texts[int(m.group(1))], stretch)
        if stretch:
            ids.extend(tokenizer(stretch, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    for match in pattern.finditer(expanded):
        plain(expanded[position : match.start()])
        ids.append(added[match.group(0)])
        position = match.end()
    plain(expanded[position:])
    return ids


def truncate(ids: list[int], max_length: int, keep: set[int], end_id: int | None) -> tuple[list[int], int]:
    """Qwen3-VL-Reranker's rule: the template's closing tokens (from its last ``<|im_end|>``) are kept; before
    them every special token (visual pads, turn markers) is kept and text tokens are kept, first first, while
    the body stays within `max_length`. Returns the ids and how many text tokens were cut."""
    tail_start = len(ids)
    if end_id is not None and end_id in ids:
        tail_start = len(ids) - 1 - ids[::-1].index(end_id)
    body, tail = ids[:tail_start], ids[tail_start:]
    if len(body) <= max_length:
        return ids, 0
    budget = max_length - sum(1 for i in body if i in keep)
    kept: list[int] = []
    for token in body:
        if token in keep:
            kept.append(token)
        elif budget > 0:
            kept.append(token)
            budget -= 1
    return kept + tail, len(body) - len(kept)


def make_prompt(
    loaded: Loaded, item: str, conversation: list[dict[str, Any]], videos: Sequence[VideoPlan], max_length: int
) -> Prompt:
    tokenizer = loaded.processor.tokenizer
    ids = encode_conversation(loaded, conversation, videos)
    end_id = tokenizer.convert_tokens_to_ids(_END_TOKEN)
    ids, cut = truncate(ids, max_length, special_ids(tokenizer), end_id if isinstance(end_id, int) else None)
    if cut:
        log.warning("%s: %d text tokens cut to keep the prompt within %d tokens", item, cut, max_length)
    return Prompt(ids=ids, videos=list(videos), truncated=cut)


def collate(loaded: Loaded, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """The model's batch: right-padded ids, mask, mm token types, and the videos' pixels (processor, no resize)."""
    import torch

    processor = loaded.processor
    pad = processor.tokenizer.pad_token_id
    pad = int(pad) if pad is not None else 0
    width = max(len(p.ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, : len(prompt.ids)] = torch.tensor(prompt.ids, dtype=torch.long)
        mask[row, : len(prompt.ids)] = 1
    # Under transformers 5.x the model needs mm_token_type_ids (as a tensor) to place visual tokens in M-RoPE.
    types = processor.create_mm_token_type_ids([p.ids for p in prompts])
    mm_types = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, row_types in enumerate(types):
        mm_types[row, : len(row_types)] = torch.as_tensor(row_types, dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": mm_types}
    plans = [video for prompt in prompts for video in prompt.videos]
    if plans:
        processed = processor.video_processor(
            videos=[resized_pixels(plan) for plan in plans],
            video_metadata=[plan.metadata() for plan in plans],
            do_resize=False,
            do_sample_frames=False,
            cap_pixels_per_frame=True,  # unused without resizing; silences transformers' warning
            return_tensors="pt",
        )
        grids = [tuple(int(x) for x in g) for g in processed["video_grid_thw"].tolist()]
        if grids != [plan.grid for plan in plans]:
            raise RuntimeError(f"video processor grids {grids} differ from the planned {[p.grid for p in plans]}")
        batch["pixel_values_videos"] = processed["pixel_values_videos"]
        batch["video_grid_thw"] = processed["video_grid_thw"]
    return {k: v.to(loaded.device) for k, v in batch.items()}


def token_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive groups of rows with at most `max_rows` rows and rows x longest <= `max_tokens`."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index, length in enumerate(lengths):
        wider = max(longest, length)
        if current and (len(current) >= max_rows or wider * (len(current) + 1) > max_tokens):
            groups.append(current)
            current, wider = [], length
        current.append(index)
        longest = wider
    if current:
        groups.append(current)
    return groups


def run_split_on_oom(rows: Sequence[T], run: Callable[[Sequence[T]], list[Any]], what: str) -> list[Any]:
    """`run(rows)`, halving the batch and retrying when the device runs out of memory (one row: re-raised)."""
    import torch

    try:
        return run(rows)
    except torch.OutOfMemoryError:
        if len(rows) < 2:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(rows) // 2
        log.warning("%s: out of memory on %d rows; splitting into %d + %d", what, len(rows), half, len(rows) - half)
        return run_split_on_oom(rows[:half], run, what) + run_split_on_oom(rows[half:], run, what)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its last real token (mask == 1), whether padding is on the left or the right."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last.to(hidden.device)]


__all__ = [
    "Prompt",
    "collate",
    "encode_conversation",
    "last_token_pool",
    "make_prompt",
    "run_split_on_oom",
    "special_ids",
    "token_batches",
    "truncate",
]
