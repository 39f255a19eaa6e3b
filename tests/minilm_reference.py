"""all-MiniLM-L6-v2 as sentence-transformers computes it (transformers' tokenizer and `BertModel`, mean
pooling, unit length): the reference r3's MiniLM runtimes are checked against."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from r3tasks.models.minilm import model_dir

MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length


def minilm_reference() -> Callable[[str, bool], np.ndarray]:
    """`embed(text, split_special_tokens)` -> the unit vector transformers gives for `text`."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype="float32").eval()

    def embed(text: str, split_special_tokens: bool = True) -> np.ndarray:
        enc = tokenizer(
            [text],
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
            split_special_tokens=split_special_tokens,
        )
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state[0]
        vector = hidden.mean(dim=0).numpy()
        return vector / np.linalg.norm(vector)

    embed.tokenizer = tokenizer  # type: ignore[attr-defined]
    return embed
