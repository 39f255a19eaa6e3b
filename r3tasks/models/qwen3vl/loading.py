"""Loading weights and processor, fingerprints, and the lazy-loading base of the three backends."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r3tasks.errors import ModelNotAvailableError, R3Error
from r3tasks.models.base import MODEL_LOADING
from r3tasks.models.qwen3vl.prompts import prompt_version
from r3tasks.models.qwen3vl.resolve import MODEL_SETTING, ResolvedModel, Role, resolve_model
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BACKEND = "qwen3vl"
_MODEL_TYPES = {"qwen3_vl", "qwen3_vl_moe"}
# Bump a version when the way inputs are formatted changes what the model sees: it is in the fingerprints.
# 2: qwen-vl-utils frame sizing, true timestamps, truncation, text tokenized as data, no whitespace stripping.
EMBED_FORMAT_VERSION = 2
RERANK_FORMAT_VERSION = 2


def device_and_dtype(settings: R3Settings) -> tuple[torch.device, str]:
    from r3tasks.models.device import resolve_device, resolve_dtype_name

    device = resolve_device(settings.models.device)
    return device, resolve_dtype_name(settings.models.dtype, device)


def fingerprint(resolved: ResolvedModel, dtype_name: str, **parts: Any) -> str:
    payload = {
        "backend": BACKEND,
        "role": resolved.role,
        "model": resolved.spec,
        "revision": resolved.revision,
        "weights": resolved.weights,
        "dtype": dtype_name,
        **parts,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _video_parts(settings: R3Settings) -> dict[str, Any]:
    m = settings.models
    return {"video_tokens": [m.video_min_tokens, m.video_max_tokens, m.video_total_tokens]}


def fingerprint_parts(settings: R3Settings, role: Role) -> dict[str, Any]:
    m = settings.models
    if role == "embedding":
        return {
            "dim": m.embedding_dim,
            "max_length": m.embed_max_length,
            "format": EMBED_FORMAT_VERSION,
            **_video_parts(settings),
        }
    if role == "reranker":
        return {
            "rule": m.rerank_rule,
            "frames": settings.frames.rerank_frames,
            "max_length": m.rerank_max_length,
            "head": m.score_head_dtype,
            "format": RERANK_FORMAT_VERSION,
            **_video_parts(settings),
        }
    return {"max_new_tokens": m.reasoning_max_new_tokens, "prompt": prompt_version(), **_video_parts(settings)}


def model_fingerprint(settings: R3Settings, role: Role, resolved: ResolvedModel | None = None) -> str:
    """The fingerprint the `role` backend reports, without loading its weights (each backend takes its own from
    here, so the two cannot disagree). `resolved`: the checkpoint already resolved for `role`, if at hand."""
    resolved = resolved if resolved is not None else resolve_model(settings, role)
    _, dtype_name = device_and_dtype(settings)
    return fingerprint(resolved, dtype_name, **fingerprint_parts(settings, role))


@dataclass
class Loaded:
    resolved: ResolvedModel
    model: Any
    processor: Any
    device: torch.device
    dtype_name: str


def load(settings: R3Settings, role: Role, with_lm_head: bool) -> Loaded:
    """Load weights and processor from a resolved checkpoint directory (real or tiny alike)."""
    resolved = resolve_model(settings, role)
    check_model_type(resolved)
    device, dtype_name = device_and_dtype(settings)

    import torch
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name), "local_files_only": True}
    if settings.models.attn_implementation:
        kwargs["attn_implementation"] = settings.models.attn_implementation
    # The embedder needs the backbone only (Qwen3VLModel): a checkpoint's lm_head, if any, is skipped.
    model_cls = AutoModelForImageTextToText if with_lm_head else AutoModel
    try:
        model = model_cls.from_pretrained(resolved.path, **kwargs)
        processor = AutoProcessor.from_pretrained(resolved.path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailableError(resolved.spec, f"cannot load the checkpoint at {resolved.path}: {exc}") from exc
    model.to(device).eval()
    # Right padding everywhere: position ids of real tokens then match an unpadded run, and the
    # last-token gather works from the attention mask either way.
    processor.tokenizer.padding_side = "right"
    log.info("loaded %s %s from %s on %s (%s)", BACKEND, role, resolved.path, device, dtype_name)
    return Loaded(resolved, model, processor, device, dtype_name)


def check_model_type(resolved: ResolvedModel) -> None:
    try:
        model_type = json.loads((resolved.path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(resolved.spec, f"unreadable config.json in {resolved.path}: {exc}") from exc
    if model_type not in _MODEL_TYPES:
        raise R3Error(
            f"models.{MODEL_SETTING[resolved.role]} = {resolved.spec!r} is a {model_type!r} checkpoint; "
            f"the {BACKEND} backend needs a Qwen3-VL one ({', '.join(sorted(_MODEL_TYPES))})"
        )


class LazyWeights:
    """Weights load on first use: a run whose stages are all cached needs only the fingerprint."""

    def _init_lazy(self, settings: R3Settings, role: Role, with_lm_head: bool) -> None:
        self._settings = settings
        self._role = role
        self._with_lm_head = with_lm_head
        self._resolved = resolve_model(settings, role)
        check_model_type(self._resolved)
        self._fingerprint = model_fingerprint(settings, role, self._resolved)
        self._bundle: Loaded | None = None

    @property
    def _loaded(self) -> Loaded:
        if self._bundle is None:
            with MODEL_LOADING:
                if self._bundle is None:
                    self._bundle = load(self._settings, self._role, self._with_lm_head)
        return self._bundle

    @property
    def fingerprint(self) -> str:
        return self._fingerprint
