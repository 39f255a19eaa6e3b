"""Tiny, randomly initialised Qwen3-VL checkpoints for the `tiny` preset.

Each role (embedding, reranker, reasoner) gets a real on-disk checkpoint - config, safetensors
weights, a byte-level BPE tokenizer with the Qwen special tokens, the Qwen3-VL image and video
processors and a chat template - built offline from a fixed seed and written once under
``<models_dir>/tiny/<role>``. The backends then load it through exactly the code that loads a
real checkpoint. For tests and code-path benchmarks only: the weights are noise.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from r3tasks.errors import R3Error

# Bump when anything below changes what gets written, so stale copies are rebuilt.
TINY_VERSION = 1
TINY_ROLES = ("embedding", "reranker", "reasoner")
_MARKER = "r3_tiny.json"
_SEEDS = {"embedding": 0, "reranker": 1, "reasoner": 2}
# Weight init draws from torch's process-wide generator: two threads building at once would
# interleave their draws and lose the fixed seed.
_INIT_LOCK = threading.Lock()

# Qwen's added tokens, in Qwen's order. `<think>`/`</think>` are ordinary (non-special) added tokens
# there too, so decoding with skip_special_tokens keeps them.
_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_PLAIN_ADDED_TOKENS = ("<think>", "</think>")

# Whole-word merges on top of the 256 byte symbols: the reranker's answer words must be single
# tokens (as they are in Qwen's vocabulary), and a few frequent words keep sequences short.
_WORDS = (
    "yes no Yes No YES NO true false "
    "the a an of and to in on with for is are it this that as at by from be or "
    "video videos target source reference edit instruction scene camera objects actions "
    "state changes visible query document candidate retrieve represent describe after "
    "before person hand table frame motion background"
).split()

# Qwen3-VL's message layout: ChatML turns, a vision placeholder per image/video part. The processor
# expands `<|video_pad|>` into per-frame timestamps and tokens.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part.type == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part.text }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{{ GENERATION_SUFFIX }}{% endif %}"
)


def tiny_checkpoint_dir(models_dir: Path, role: str) -> Path:
    return Path(models_dir) / "tiny" / role


def _is_complete(path: Path) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == TINY_VERSION


def ensure_tiny_checkpoint(models_dir: Path, role: str) -> Path:
    """The tiny checkpoint for `role`, built on first use. Safe when several processes race for it."""
    if role not in TINY_ROLES:
        raise R3Error(f"no tiny checkpoint for role {role!r}; roles: {', '.join(TINY_ROLES)}")
    dest = tiny_checkpoint_dir(models_dir, role)
    if _is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename into place: a reader never sees half a checkpoint,
    # and the loser of a race just drops its copy (the builds are identical by construction).
    tmp = dest.parent / f".{role}.building-{uuid.uuid4().hex[:8]}"
    try:
        build_tiny_checkpoint(tmp, role)
        if dest.exists() and not _is_complete(dest):
            stale = dest.parent / f".{role}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(dest, stale)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _is_complete(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_tiny_checkpoint(dest: Path, role: str, thinking: bool = False) -> Path:
    """Write a tiny Qwen3-VL checkpoint for `role` into `dest` (created; must not hold another one).

    `thinking` makes the chat template open a ``<think>`` block for the answer, as the
    Qwen3-VL-*-Thinking templates do; the default matches the Instruct/Embedding/Reranker ones.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLModel,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    processor = _build_processor(thinking)
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=_text_config(vocab_size=len(tokenizer), pad_token_id=ids("<|endoftext|>")),
        vision_config=_vision_config(),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    # An embedding checkpoint is the backbone alone (no LM head), as Qwen3-VL-Embedding's is;
    # the reranker and reasoner need the head.
    model_cls = Qwen3VLModel if role == "embedding" else Qwen3VLForConditionalGeneration
    config.architectures = [model_cls.__name__]
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS.get(role, 0))
        model = model_cls(config).eval()
    if role != "embedding":
        model.generation_config = GenerationConfig(
            eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
            pad_token_id=ids("<|endoftext|>"),
            do_sample=False,
        )
    from transformers.utils import logging as hf_logging

    # Writing a 1 MB checkpoint needs no progress bar in every test log.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(dest)
        processor.save_pretrained(dest)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # Written last: its presence means the directory is complete.
    (dest / _MARKER).write_text(
        json.dumps({"version": TINY_VERSION, "role": role, "seed": _SEEDS.get(role, 0), "thinking": thinking})
    )
    return dest


def _text_config(vocab_size: int, pad_token_id: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        # mrope sections split head_dim / 2 = 8 rotary frequencies over (t, h, w), as [24, 20, 20] does for 128.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "pad_token_id": pad_token_id,
    }


def _vision_config() -> dict[str, Any]:
    # Real patch/merge sizes (16 x 2): a 96x128 frame pair becomes 3x4 = 12 tokens.
    return {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }


def _build_tokenizer() -> Any:
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = bytes_to_unicode()
    vocab: dict[str, int] = {byte_symbols[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []

    def add(symbol: str) -> None:
        if symbol in vocab:
            return
        # "Ġword" merges as ("Ġ", "word") so the bare word forms first, as in Qwen's merge table.
        if symbol.startswith("Ġ") and len(symbol) > 1:
            add(symbol[1:])
            pair = ("Ġ", symbol[1:])
        else:
            add(symbol[:-1])
            pair = (symbol[:-1], symbol[-1])
        vocab[symbol] = len(vocab)
        merges.append(pair)

    for word in _WORDS:
        add(word)
        add("Ġ" + word)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _PLAIN_ADDED_TOKENS])
    return tokenizer


def _build_processor(thinking: bool) -> Any:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 4096, "longest_edge": 256 * 32 * 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 4096, "longest_edge": 1024 * 32 * 32},
        fps=2,
    )
    suffix = "<think>\n" if thinking else ""
    template = _CHAT_TEMPLATE.replace("{{ GENERATION_SUFFIX }}", suffix)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=_build_tokenizer(),
        video_processor=video_processor,
        chat_template=template,
    )
