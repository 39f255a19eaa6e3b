"""What the Gemma reasoner and reranker share: loading the converted LM, fingerprints, tokenizing
text as data, and prefix-cached scoring of continuations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from r3tasks.models.gemma3.convert import (
    BACKEND,
    CONVERTER_VERSION,
    _package,
    _package_version,
    ensure_converted,
)
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    import torch

# The text batch floor: a (query, caption) pair is ~200 tokens, far lighter than a video pair.
_MIN_TEXT_BATCH = 16
# Few-shot heads kept per loaded model: one per rule and instruction in use.
_HEAD_CACHES = 4


def _load_lm(settings: R3Settings) -> tuple[Any, Any, torch.device, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3tasks.models.device import resolve_device, resolve_dtype_name

    folder = ensure_converted(settings)
    device = resolve_device(settings.models.device)
    dtype = resolve_dtype_name(settings.models.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"  # batched generation continues from the right edge
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer, device, dtype


def _fingerprint(role: str, dtype: str, **extra: Any) -> str:
    blob = {
        "backend": BACKEND,
        "role": role,
        "package": _package_version(),
        "gguf_sha256": _package().EXPECTED_SHA256,
        "converter": CONVERTER_VERSION,
        "dtype": dtype,
        **extra,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _one_line(text: str) -> str:
    """Few-shot prompts are line-based: a newline inside a field would end it early."""
    return " ".join(text.split())


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_text(tokenizer: Any, text: str | Sequence[str], **kwargs: Any) -> Any:
    """Tokenize prompts whose fields hold user edits, queries, captions and generated reasoning.

    Those texts are data: a `<start_of_turn>`, `<eos>` or `<|im_end|>` inside them must read as the
    characters it is, never as the control token, or an edit could end the prompt and answer the
    reranker itself. Gemma's prompts here are plain few-shot text (no chat template), so the whole
    prompt is tokenized with `split_special_tokens`; the BOS the tokenizer adds is still its own.
    """
    return tokenizer(text, split_special_tokens=True, **kwargs)


@dataclass
class GemmaLM:
    """A loaded Gemma LM with prefix-cached scoring: the prefix shared by every candidate of a query
    runs once, each batch of continuations reuses a copy of its keys and values."""

    model: Any
    tokenizer: Any
    device: torch.device
    batch_size: int
    # Keys and values of the few-shot blocks prompts start with, by text: the same ~280 tokens open every
    # query's prompt, and recomputing them cost about a third of a query's scoring time.
    _head_caches: dict[str, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def _head_cache(self, head: str) -> tuple[Any, Any]:
        """(token ids, cache) of `head` run alone; kept for the few heads a reranker uses."""
        cached = self._head_caches.get(head)
        if cached is None:
            enc = encode_text(self.tokenizer, head, return_tensors="pt").to(self.device)
            cache = self.model(**enc, use_cache=True, logits_to_keep=1).past_key_values
            if len(self._head_caches) >= _HEAD_CACHES:
                self._head_caches.pop(next(iter(self._head_caches)))
            cached = self._head_caches[head] = (enc["input_ids"][0], cache)
        return cached

    def _prefix_cache(self, prefix: str, head: str) -> tuple[int, Any]:
        """(length, cache) of `prefix`, continued from `head`'s cache when the prefix's tokens start with
        exactly the head's (else run whole): the model reads the very same token sequence either way."""
        import copy

        import torch

        enc = encode_text(self.tokenizer, prefix, return_tensors="pt").to(self.device)
        ids = enc["input_ids"]
        prefix_len = int(ids.shape[1])
        if head and prefix.startswith(head):
            head_ids, head_cache = self._head_cache(head)
            start = int(head_ids.shape[0])
            if start < prefix_len and torch.equal(ids[0, :start], head_ids):
                cache = copy.deepcopy(head_cache)
                self.model(
                    input_ids=ids[:, start:],
                    attention_mask=torch.ones((1, prefix_len), dtype=torch.long, device=self.device),
                    position_ids=torch.arange(start, prefix_len, device=self.device)[None, :],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                return prefix_len, cache
        return prefix_len, self.model(**enc, use_cache=True, logits_to_keep=1).past_key_values

    def _continuations(self, prefix: str, rows: Sequence[list[int]], head: str = "") -> Iterator[tuple[Any, Any]]:
        """Hidden states of each token row continued after `prefix`: per batch, ``(hidden, lengths)``.

        The prefix runs once (from `head`'s kept cache when it starts with `head`); each batch of rows
        continues from a copy of its cache. Rows are right-padded (pads come after every real token, so
        causal attention never sees them, whatever the sliding window). Call inside
        ``torch.inference_mode()``.
        """
        import copy

        import torch

        prefix_len, prefix_cache = self._prefix_cache(prefix, head)
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch, length = len(chunk), max(len(r) for r in chunk)
            ids = torch.tensor([r + [pad] * (length - len(r)) for r in chunk], device=self.device)
            real = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in chunk], device=self.device)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
            mask = torch.cat([torch.ones((batch, prefix_len), dtype=real.dtype, device=self.device), real], dim=1)
            positions = prefix_len + torch.arange(length, device=self.device).expand(batch, length)
            hidden = self.model.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state
            yield hidden, torch.tensor([len(r) for r in chunk], device=self.device)

    def _head(self, hidden: Any) -> Any:
        # Only the rows asked for go through the 262k-word head (what Gemma3ForCausalLM does).
        import torch

        logits = self.model.lm_head(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _token_rows(self, texts: Sequence[str], tail: list[int] | None = None) -> list[list[int]]:
        return [encode_text(self.tokenizer, t, add_special_tokens=False)["input_ids"] + (tail or []) for t in texts]

    def next_token_logits(self, prefix: str, suffixes: Sequence[str], head: str = "") -> np.ndarray:
        """Logits of the token after each ``prefix + suffix``, ``(len(suffixes), vocab)`` float32,
        read at each row's last real token. `head`: the start of `prefix` shared across queries."""
        import torch

        if not suffixes:
            return np.zeros((0, self.model.config.vocab_size), dtype=np.float32)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for hidden, lengths in self._continuations(prefix, self._token_rows(suffixes), head):
                picked = hidden[torch.arange(len(lengths), device=self.device), lengths - 1]
                out.append(self._head(picked).cpu().numpy())
        return np.concatenate(out, axis=0)

    def target_log_likelihood(self, prefix: str, suffixes: Sequence[str], target: str, head: str = "") -> np.ndarray:
        """Mean log-probability of `target`'s tokens after each ``prefix + suffix``, ``(len(suffixes),)``."""
        import torch

        target_ids = encode_text(self.tokenizer, target, add_special_tokens=False)["input_ids"]
        if not suffixes or not target_ids:
            return np.zeros(len(suffixes), dtype=np.float64)
        n = len(target_ids)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            wanted = torch.tensor(target_ids, device=self.device)
            for hidden, lengths in self._continuations(prefix, self._token_rows(suffixes, target_ids), head):
                # The state before each target token predicts it: positions length-n-1 .. length-2.
                where = (lengths[:, None] - n - 1 + torch.arange(n, device=self.device)[None, :]).clamp(min=0)
                picked = hidden[torch.arange(len(lengths), device=self.device)[:, None], where]  # (batch, n, hidden)
                logprobs = torch.log_softmax(self._head(picked), dim=-1)
                scores = logprobs.gather(-1, wanted.expand(len(lengths), n)[..., None])[..., 0].mean(dim=1)
                out.append(scores.double().cpu().numpy())
        return np.concatenate(out)
