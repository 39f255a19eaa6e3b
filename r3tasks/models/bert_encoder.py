"""A BERT encoder's forward pass in numpy, for the `offline` preset's MiniLM.

Why not torch + transformers for a query: a one-shot `r3 query` embeds one sentence, and importing torch
and transformers' model code costs about 4 s of its time, against 0.4 s for numpy, safetensors and
tokenizers. A short text takes a few milliseconds here; gallery-sized batches stay on torch, which runs
them about twice as fast. The hidden states match transformers' `BertModel` to within 1e-5 (tested
against it, padding and truncation included).

Only what BERT sentence encoders use is supported (absolute positions, exact GELU, post-layer norm);
anything else in a config is refused rather than silently computed differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r3tasks.errors import ModelNotAvailableError

_ERF_CLIP = 4.0 * 2.0**0.5  # a Python float: a numpy float64 bound would make the whole product float64

# Float32 erf as XLA and Eigen compute it: a rational approximation on [-4, 4] (erf is +-1 to float32
# precision beyond), within 5e-7 of the exact function. It keeps scipy (0.2-0.4 s to import) off the
# query path and runs about 4x faster than scipy's double-precision erf.
_ERF_NUMERATOR = tuple(
    np.float32(c)
    for c in (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
)
_ERF_DENOMINATOR = tuple(
    np.float32(c)
    for c in (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )
)


def _gelu_gate(x: np.ndarray) -> np.ndarray:
    """(1 + erf(x / sqrt 2)) / 2: the exact GELU's factor, as BERT was trained with it."""
    z = np.clip(x, -_ERF_CLIP, _ERF_CLIP) * np.float32(1.0 / np.sqrt(2.0))
    z2 = z * z
    numerator = np.full_like(z, _ERF_NUMERATOR[0])
    for c in _ERF_NUMERATOR[1:]:
        numerator *= z2
        numerator += c
    numerator *= z
    denominator = np.full_like(z, _ERF_DENOMINATOR[0])
    for c in _ERF_DENOMINATOR[1:]:
        denominator *= z2
        denominator += c
    numerator /= denominator
    numerator += 1.0
    numerator *= 0.5
    return numerator


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    norm1: tuple[np.ndarray, np.ndarray]
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class BertEncoder:
    """Token ids and attention masks -> last hidden states, float32."""

    word: np.ndarray
    position: np.ndarray
    token_type: np.ndarray
    embed_norm: tuple[np.ndarray, np.ndarray]
    layers: tuple[_Layer, ...]
    heads: int
    eps: float

    @property
    def hidden_size(self) -> int:
        return int(self.word.shape[1])

    @classmethod
    def load(cls, folder: Path, name: str) -> BertEncoder:
        """Weights from `folder/model.safetensors`, shapes from `folder/config.json` (a `BertModel` export)."""
        from safetensors.numpy import load_file

        config = json.loads((folder / "config.json").read_text())
        unsupported = {
            key: config.get(key)
            for key, wanted in (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute"))
            if config.get(key, wanted) != wanted
        }
        if unsupported:
            raise ModelNotAvailableError(name, f"{folder}/config.json: unsupported BERT variant {unsupported}")
        weights = load_file(folder / "model.safetensors")
        # Checkpoints saved from a pretraining head prefix the encoder's names with "bert.".
        prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."

        def tensor(key: str) -> np.ndarray:
            try:
                return np.ascontiguousarray(weights[prefix + key], dtype=np.float32)
            except KeyError:
                raise ModelNotAvailableError(name, f"{folder}/model.safetensors has no {prefix + key}") from None

        def linear(key: str) -> tuple[np.ndarray, np.ndarray]:
            # Stored (out, in) as torch keeps them; transposed once so every product is rows @ matrix.
            return np.ascontiguousarray(tensor(f"{key}.weight").T), tensor(f"{key}.bias")

        def norm(key: str) -> tuple[np.ndarray, np.ndarray]:
            return tensor(f"{key}.weight"), tensor(f"{key}.bias")

        layers = []
        for index in range(int(config["num_hidden_layers"])):
            at = f"encoder.layer.{index}."
            projections = [linear(f"{at}attention.self.{part}") for part in ("query", "key", "value")]
            out_w, out_b = linear(f"{at}attention.output.dense")
            up_w, up_b = linear(f"{at}intermediate.dense")
            down_w, down_b = linear(f"{at}output.dense")
            layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(np.concatenate([w for w, _ in projections], axis=1)),
                    qkv_b=np.concatenate([b for _, b in projections]),
                    out_w=out_w,
                    out_b=out_b,
                    norm1=norm(f"{at}attention.output.LayerNorm"),
                    up_w=up_w,
                    up_b=up_b,
                    down_w=down_w,
                    down_b=down_b,
                    norm2=norm(f"{at}output.LayerNorm"),
                )
            )
        return cls(
            word=tensor("embeddings.word_embeddings.weight"),
            position=tensor("embeddings.position_embeddings.weight"),
            token_type=tensor("embeddings.token_type_embeddings.weight"),
            embed_norm=norm("embeddings.LayerNorm"),
            layers=tuple(layers),
            heads=int(config["num_attention_heads"]),
            eps=float(config["layer_norm_eps"]),
        )

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``(batch, seq)`` ids and 0/1 mask (single-segment inputs) -> ``(batch, seq, hidden)`` states."""
        batch, seq = input_ids.shape
        if seq > self.position.shape[0]:
            raise ValueError(f"{seq} tokens exceed the model's {self.position.shape[0]} positions")
        hidden = self.hidden_size
        head_dim = hidden // self.heads
        x = self.word[input_ids] + self.position[:seq] + self.token_type[0]
        x = self._norm(x.reshape(batch * seq, hidden), self.embed_norm)
        # Padded keys get the most negative float: their softmax weight is exactly 0, as in transformers.
        padded = attention_mask[:, None, None, :] <= 0
        key_bias = np.where(padded, np.finfo(np.float32).min, 0.0).astype(np.float32) if padded.any() else None
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self.layers:
            qkv = x @ layer.qkv_w
            qkv += layer.qkv_b
            qkv[:, :hidden] *= scale  # on the queries, not the (seq times larger) scores
            q, k, v = (
                qkv[:, part * hidden : (part + 1) * hidden]
                .reshape(batch, seq, self.heads, head_dim)
                .transpose(0, 2, 1, 3)
                for part in range(3)
            )
            scores = q @ k.transpose(0, 1, 3, 2)
            if key_bias is not None:
                scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * seq, hidden)
            projected = context @ layer.out_w
            projected += layer.out_b
            projected += x
            x = self._norm(projected, layer.norm1)
            inner = x @ layer.up_w
            inner += layer.up_b
            inner *= _gelu_gate(inner)
            projected = inner @ layer.down_w
            projected += layer.down_b
            projected += x
            x = self._norm(projected, layer.norm2)
        return x.reshape(batch, seq, hidden)

    def _norm(self, x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        spread = np.sqrt(np.square(centred).mean(axis=-1, keepdims=True) + np.float32(self.eps))
        centred /= spread
        centred *= weight_bias[0]
        centred += weight_bias[1]
        return centred
