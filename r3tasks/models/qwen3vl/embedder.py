"""Qwen3-VL-Embedding: the last token's final hidden state, L2-normalised, optionally MRL-truncated.

As the official `Qwen3VLEmbedder`: the instruction (stripped, ended with punctuation) is the system
message; the user turn holds the video, then the text, which is not stripped.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from r3tasks.errors import ItemError, R3Error
from r3tasks.models.base import EmbedInput
from r3tasks.models.qwen3vl.inputs import Prompt, collate, last_token_pool, make_prompt, run_split_on_oom, token_batches
from r3tasks.models.qwen3vl.loading import LazyWeights
from r3tasks.models.qwen3vl.prompts import DEFAULT_EMBED_INSTRUCTION, with_full_stop
from r3tasks.models.qwen3vl.resolve import config_hidden_size
from r3tasks.models.qwen3vl.video import check_frames, video_plan
from r3tasks.settings.tree import R3Settings


def embedding_dim(settings: R3Settings, path: Path) -> int:
    """The vector size: `models.embedding_dim` (MRL), else the checkpoint's hidden size (its config.json)."""
    hidden = config_hidden_size(path)
    wanted = settings.models.embedding_dim
    if wanted is not None and wanted > hidden:
        raise R3Error(f"models.embedding_dim={wanted} exceeds the embedding model's {hidden} dimensions")
    return wanted if wanted is not None else hidden


class Qwen3VLEmbedder(LazyWeights):
    """Qwen3-VL-Embedding: last-token pooling, L2-normalised, optional MRL truncation."""

    def __init__(self, settings: R3Settings) -> None:
        self._init_lazy(settings, "embedding", with_lm_head=False)
        self._dim = embedding_dim(settings, self._resolved.path)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def uses_frames(self) -> bool:
        return True

    @property
    def model_path(self) -> Path:
        return self._resolved.path

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        return self._embed(items, instruction)

    def embed_queries(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        return self._embed(items, instruction)

    @staticmethod
    def _check(item: EmbedInput) -> None:
        if not (item.text and item.text.strip()) and item.frames is None:
            raise ItemError(item.item_id, "nothing to embed: no text and no frames")
        if item.frames is not None:
            check_frames(item.item_id, item.frames, item.fps)

    def prompt(self, item: EmbedInput, instruction: str) -> Prompt:
        """The item's token ids (truncated to models.embed_max_length) and video plan."""
        self._check(item)
        system = with_full_stop(instruction) or DEFAULT_EMBED_INSTRUCTION
        content: list[dict[str, Any]] = []
        videos = []
        if item.frames is not None:
            videos.append(video_plan(self, item.item_id, item.frames, item.fps, self._settings.frames.max_frames))
            content.append({"type": "video"})
        if item.text:
            content.append({"type": "text", "text": item.text})
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": content},
        ]
        return make_prompt(self._loaded, item.item_id, conversation, videos, self._settings.models.embed_max_length)

    def build_inputs(self, items: Sequence[EmbedInput], instruction: str) -> dict[str, Any]:
        """The model's batch for these items (one row each), on the model's device."""
        return collate(self._loaded, [self.prompt(item, instruction) for item in items])

    def _embed(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not items:
            return np.zeros((0, self._dim), dtype=np.float32)
        # Validate everything first: a bad item fails before any compute is spent on the batch.
        for item in items:
            self._check(item)
        prompts = [self.prompt(item, instruction) for item in items]

        def run(rows: Sequence[Prompt]) -> list[np.ndarray]:
            inputs = collate(self._loaded, rows)
            # The model keeps per-call state (rope deltas): one forward at a time per instance.
            with self._lock, torch.inference_mode():
                hidden = self._loaded.model(**inputs, use_cache=False).last_hidden_state
                pooled = last_token_pool(hidden, inputs["attention_mask"]).float()
                # MRL: the leading dims are an embedding of their own once re-normalised.
                pooled = F.normalize(pooled[:, : self._dim], p=2, dim=-1)
            return list(pooled.cpu().numpy().astype(np.float32))

        m = self._settings.models
        out: list[np.ndarray] = []
        for group in token_batches([len(p.ids) for p in prompts], m.embed_batch_size, m.max_batch_tokens):
            out.extend(run_split_on_oom([prompts[i] for i in group], run, "embedder"))
        return np.stack(out)
