"""Qwen3-VL backends: the embedder (Qwen3-VL-Embedding), the reranker (Qwen3-VL-Reranker) and the
reasoner (Qwen3-VL Thinking or Instruct), for the `qwen3vl` preset (real checkpoints by hub id or
local path) and the `tiny` preset (tiny random checkpoints built on disk, then loaded by the same code).

Input formats follow the reference implementations (Qwen3-VL-Embedding/Reranker, R^3, RankVideo):

- embedder: the instruction is the system message, the user turn holds the video then the text;
  the vector is the last real token's final hidden state, L2-normalised, optionally MRL-truncated.
- reranker: the Qwen3-VL-Reranker prompt (system judge line, ``<Instruct>``/``<Query>``/``<Document>``);
  the score is sigmoid(logit_yes - logit_no) at the last real token, or RankVideo's
  logsumexp(log P(yes variants)) - logsumexp(log P(no variants)).
- reasoner: greedy generation; the answer is the text after the last ``</think>``.

torch and transformers are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import socket
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse
from urllib.request import getproxies

import numpy as np

from r3tasks.errors import ItemError, ModelNotAvailableError, R3Error
from r3tasks.models.base import (
    EmbedInput,
    Reasoning,
    ReasonInput,
    RerankCandidate,
    RerankQuery,
)
from r3tasks.settings import ModelSettings, R3Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BACKEND = "qwen3vl"
Role = Literal["embedding", "reranker", "reasoner"]

# Bump a version when the way inputs are formatted changes what the model sees: it is in the fingerprints.
_EMBED_FORMAT_VERSION = 1
_RERANK_FORMAT_VERSION = 1

_MODEL_SETTING: dict[str, str] = {
    "embedding": "embedding_model",
    "reranker": "reranker_model",
    "reasoner": "reasoner_model",
}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}
_MODEL_TYPES = {"qwen3_vl", "qwen3_vl_moe"}
_MAX_ASPECT_RATIO = 200  # the Qwen3-VL processors refuse anything more elongated
_HUB_CHECK_TIMEOUT_S = 3.0

# Qwen3-VL-Embedding's fallback instruction and Qwen3-VL-Reranker's fixed system line / default instruction.
_DEFAULT_EMBED_INSTRUCTION = "Represent the user's input."
_RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
_DEFAULT_RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
# RankVideo counts every vocabulary entry that reads "yes"/"no" once stripped and lower-cased.
_YES, _NO = "yes", "no"

_REASONING_PROMPT = (
    "You are shown a source video{source_hint} and an edit instruction. Imagine the target video: "
    "the source video after the edit has been applied.\n\n"
    "{source_block}"
    "Edit instruction:\n{edit}\n\n"
    "Write one paragraph of 160 to 220 words that describes the target video itself, as a viewer "
    "would see it. Make clear what is changed, added, removed or replaced, and what stays as in the "
    "source: subjects and objects, actions and their order, scene and background, lighting and colour, "
    "camera framing and motion. Use concrete visible details in the present tense. Do not use lists, "
    "headings, markdown, greetings or remarks about yourself or the task; begin directly with the "
    "description."
)
_REASONING_SOURCE_BLOCK = "Source video description:\n{source_text}\n\n"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_END_MARKERS = ("<|im_end|>", "<|endoftext|>")


# ----------------------------------------------------------------------------------------------
# Locating a checkpoint


@dataclass(frozen=True)
class ResolvedModel:
    """Where a role's weights are and what identifies them.

    `spec` is the hub id, the absolute local path, or ``tiny/<role>/v<N>``; `revision` is the hub
    commit of a cached snapshot; `weights` hashes the weight files' names and sizes and config.json.
    """

    role: str
    spec: str
    path: Path
    revision: str | None
    weights: str


def _how_to_supply(spec: str, role: str) -> str:
    field = _MODEL_SETTING[role]
    env = "R3_MODELS__" + field.upper()
    # For a path, suggest the reference checkpoint of the role as the thing to download.
    hub_id = str(ModelSettings.model_fields[field].default) if _looks_like_path(spec) or not spec else spec
    return (
        f"on a machine with network access run `hf download {hub_id} --local-dir <dir>` "
        f"(older huggingface_hub: `huggingface-cli download {hub_id} --local-dir <dir>`), copy <dir> here "
        f"and set {env}=<dir> (or models.{field} in r3.toml); or pre-populate the Hugging Face cache "
        "(HF_HOME) on this machine with that model"
    )


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that names a place on disk is a path.
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def _weights_signature(path: Path) -> str:
    digest = hashlib.sha256()
    found = False
    for file in sorted(path.rglob("*")):
        if file.suffix in _WEIGHT_SUFFIXES and file.is_file():
            found = True
            digest.update(f"{file.relative_to(path).as_posix()}:{file.stat().st_size}\n".encode())
    if not found:
        return ""
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()[:16]


def _hub_reachable(endpoint: str) -> bool:
    """A quick TCP check, so that a blackholed network fails in seconds rather than after HTTP timeouts."""
    parsed = urlparse(endpoint)
    if getproxies().get(parsed.scheme or "https"):
        return True  # behind a proxy only the HTTP client can tell

    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_CHECK_TIMEOUT_S):
            return True
    except OSError:
        return False


def _local_checkpoint(spec: str, role: str, path: Path) -> ResolvedModel:
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            spec, f"{path} holds no config.json, so it is not a checkpoint; " + _how_to_supply(spec, role)
        )
    weights = _weights_signature(path)
    if not weights:
        raise ModelNotAvailableError(spec, f"{path} holds no weight files; " + _how_to_supply(spec, role))
    return ResolvedModel(role=role, spec=str(path), path=path, revision=None, weights=weights)


def resolve_model(settings: R3Settings, role: Role) -> ResolvedModel:
    """Find (never download, unless allowed and reachable) the checkpoint for `role`.

    Order: the `tiny` preset builds its own; an existing local directory; the local Hugging Face
    cache; then the hub, only when `models.local_files_only` is false and the hub answers within a
    few seconds. Anything else raises `ModelNotAvailableError` saying how to supply the model.
    """
    if role not in _MODEL_SETTING:
        raise R3Error(f"unknown Qwen3-VL role {role!r}")
    models = settings.models
    if models.preset == "tiny":
        from r3tasks.models.qwen3vl_tiny import TINY_VERSION, ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint(settings.models_dir, role)
        return ResolvedModel(
            role=role, spec=f"tiny/{role}/v{TINY_VERSION}", path=path, revision=None, weights=_weights_signature(path)
        )

    spec = str(getattr(models, _MODEL_SETTING[role])).strip()
    if not spec:
        raise ModelNotAvailableError(spec, f"models.{_MODEL_SETTING[role]} is empty; " + _how_to_supply(spec, role))
    local = Path(spec).expanduser()
    if local.is_dir():
        return _local_checkpoint(spec, role, local)
    if _looks_like_path(spec) or local.exists():
        raise ModelNotAvailableError(spec, f"no checkpoint directory at {local}; " + _how_to_supply(spec, role))

    from huggingface_hub import constants, snapshot_download

    def snapshot(offline: bool) -> Path:
        return Path(snapshot_download(spec, revision=models.revision, local_files_only=offline))

    try:
        cached = snapshot(offline=True)
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError) or not a valid repo id
        cached = None
    if cached is not None:
        resolved = _local_checkpoint(spec, role, cached)
        return ResolvedModel(role=role, spec=spec, path=resolved.path, revision=cached.name, weights=resolved.weights)

    if models.local_files_only or constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(
            spec,
            "it is not in the local Hugging Face cache and models.local_files_only (or HF_HUB_OFFLINE) forbids "
            "the hub; " + _how_to_supply(spec, role),
        )
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelNotAvailableError(
            spec,
            f"it is not in the local Hugging Face cache and the hub ({constants.ENDPOINT}) cannot be reached; "
            + _how_to_supply(spec, role),
        )
    log.info("downloading %s (%s) from the hub", spec, role)
    try:
        fetched = snapshot(offline=False)
    except Exception as exc:
        raise ModelNotAvailableError(spec, f"download failed ({exc}); " + _how_to_supply(spec, role)) from exc
    resolved = _local_checkpoint(spec, role, fetched)
    return ResolvedModel(role=role, spec=spec, path=resolved.path, revision=fetched.name, weights=resolved.weights)


def _device_and_dtype(settings: R3Settings) -> tuple[torch.device, str]:
    from r3tasks.models._torch import resolve_device, resolve_dtype_name

    device = resolve_device(settings.models.device)
    return device, resolve_dtype_name(settings.models.dtype, device)


def _fingerprint(resolved: ResolvedModel, dtype_name: str, **parts: Any) -> str:
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


def model_fingerprint(settings: R3Settings, role: Role) -> str:
    """The fingerprint the `role` backend will report, without loading its weights."""
    resolved = resolve_model(settings, role)
    _, dtype_name = _device_and_dtype(settings)
    return _fingerprint(resolved, dtype_name, **_fingerprint_parts(settings, role))


def _fingerprint_parts(settings: R3Settings, role: Role) -> dict[str, Any]:
    m = settings.models
    if role == "embedding":
        return {"dim": m.embedding_dim, "max_pixels": m.max_pixels_per_frame, "format": _EMBED_FORMAT_VERSION}
    if role == "reranker":
        return {
            "rule": m.rerank_rule,
            "max_pixels": m.max_pixels_per_frame,
            "frames": settings.frames.rerank_frames,
            "format": _RERANK_FORMAT_VERSION,
        }
    return {
        "max_new_tokens": m.reasoning_max_new_tokens,
        "max_pixels": m.max_pixels_per_frame,
        "prompt": prompt_version(),
    }


@dataclass
class _Loaded:
    resolved: ResolvedModel
    model: Any
    processor: Any
    device: torch.device
    dtype_name: str
    pixel_cap: bool


def _load(settings: R3Settings, role: Role, with_lm_head: bool) -> _Loaded:
    """Load weights and processor from a resolved checkpoint directory (real or tiny alike)."""
    resolved = resolve_model(settings, role)
    _check_model_type(resolved)
    device, dtype_name = _device_and_dtype(settings)

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
    # last-token gather below works from the attention mask either way.
    processor.tokenizer.padding_side = "right"
    pixel_cap = _configure_video_processor(processor.video_processor, settings.models.max_pixels_per_frame)
    log.info("loaded %s %s from %s on %s (%s)", BACKEND, role, resolved.path, device, dtype_name)
    return _Loaded(resolved, model, processor, device, dtype_name, pixel_cap)


def _check_model_type(resolved: ResolvedModel) -> None:
    try:
        model_type = json.loads((resolved.path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(resolved.spec, f"unreadable config.json in {resolved.path}: {exc}") from exc
    if model_type not in _MODEL_TYPES:
        raise R3Error(
            f"models.{_MODEL_SETTING[resolved.role]} = {resolved.spec!r} is a {model_type!r} checkpoint; "
            f"the {BACKEND} backend needs a Qwen3-VL one ({', '.join(sorted(_MODEL_TYPES))})"
        )


def _configure_video_processor(video_processor: Any, max_pixels_per_frame: int) -> bool:
    """Cap each frame at `max_pixels_per_frame`, as qwen-vl-utils does; False if this transformers can't."""
    kwargs_type = getattr(video_processor, "valid_kwargs", None)
    supported = "cap_pixels_per_frame" in getattr(kwargs_type, "__annotations__", {}) and hasattr(
        video_processor, "max_video_tokens"
    )
    if not supported:
        log.warning(
            "this transformers' Qwen3-VL video processor has no per-frame pixel cap; "
            "models.max_pixels_per_frame is not applied (only the checkpoint's total budget is)"
        )
        return False
    factor = int(video_processor.patch_size) * int(video_processor.merge_size)
    # The processor caps a frame at max_video_tokens * factor**2 pixels.
    video_processor.max_video_tokens = max(1, max_pixels_per_frame // (factor * factor))
    return True


# ----------------------------------------------------------------------------------------------
# Shared input handling


@dataclass
class _Video:
    frames: np.ndarray
    metadata: dict[str, Any]


def _check_frames(item: str, frames: Any, fps: float | None) -> None:
    if not isinstance(frames, np.ndarray):
        raise ItemError(item, f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ItemError(item, f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    total, height, width = frames.shape[:3]
    if total < 1 or height < 1 or width < 1:
        raise ItemError(item, f"frames are empty: shape {frames.shape}")
    if max(height, width) > _MAX_ASPECT_RATIO * min(height, width):
        raise ItemError(item, f"frames of {width}x{height} are too elongated (aspect ratio over {_MAX_ASPECT_RATIO})")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ItemError(item, f"fps must be a positive number, got {fps!r}")


def _video(
    item: str, frames: Any, fps: float | None, default_fps: float, max_frames: int | None, min_frames: int
) -> _Video:
    """Validate frames and describe them to the Qwen3-VL video processor (already sampled, with timestamps)."""
    _check_frames(item, frames, fps)
    total, height, width = frames.shape[:3]
    rate = float(fps) if fps is not None else float(default_fps)
    indices = np.arange(total)
    if max_frames is not None and total > max_frames:
        indices = np.unique(np.linspace(0, total - 1, max_frames).round().astype(int))
    # The processor cannot resize a clip shorter than one temporal patch: repeat the last frame.
    while len(indices) < min_frames:
        indices = np.append(indices, indices[-1])
    metadata = {
        "total_num_frames": int(total),
        "fps": rate,
        "duration": total / rate,
        "height": int(height),
        "width": int(width),
        "frames_indices": [int(i) for i in indices],
    }
    return _Video(frames=np.ascontiguousarray(frames[indices]), metadata=metadata)


def _with_full_stop(instruction: str) -> str:
    # Qwen3-VL-Embedding ends the instruction with punctuation before using it as the system message.
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its last real token (mask == 1), whether padding is on the left or the right."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last.to(hidden.device)]


def _processor_inputs(loaded: _Loaded, texts: list[str], videos: list[_Video]) -> Any:
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if videos:
        kwargs.update(
            videos=[v.frames for v in videos],
            video_metadata=[v.metadata for v in videos],
            do_sample_frames=False,
            input_data_format="channels_last",
        )
        if loaded.pixel_cap:
            kwargs["cap_pixels_per_frame"] = True
    return loaded.processor(**kwargs).to(loaded.device)


def _temporal_patch(loaded: _Loaded) -> int:
    return int(getattr(loaded.processor.video_processor, "temporal_patch_size", 2))


# ----------------------------------------------------------------------------------------------
# Embedder


class _LazyWeights:
    """Weights load on first use: a run whose stages are all cached needs only the fingerprint."""

    def _init_lazy(self, settings: R3Settings, role: Role, with_lm_head: bool) -> None:
        self._settings = settings
        self._role = role
        self._with_lm_head = with_lm_head
        self._resolved = resolve_model(settings, role)
        _check_model_type(self._resolved)
        _, dtype_name = _device_and_dtype(settings)
        self._fingerprint = _fingerprint(self._resolved, dtype_name, **_fingerprint_parts(settings, role))
        self._bundle: _Loaded | None = None
        self._load_lock = threading.Lock()

    @property
    def _loaded(self) -> _Loaded:
        if self._bundle is None:
            with self._load_lock:
                if self._bundle is None:
                    self._bundle = _load(self._settings, self._role, self._with_lm_head)
        return self._bundle

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


def _config_hidden_size(path: Path) -> int:
    config = json.loads((path / "config.json").read_text())
    return int(config.get("text_config", config)["hidden_size"])


class Qwen3VLEmbedder(_LazyWeights):
    """Qwen3-VL-Embedding: last-token pooling, L2-normalised, optional MRL truncation."""

    def __init__(self, settings: R3Settings) -> None:
        self._init_lazy(settings, "embedding", with_lm_head=False)
        hidden = _config_hidden_size(self._resolved.path)
        wanted = settings.models.embedding_dim
        if wanted is not None and wanted > hidden:
            raise R3Error(f"models.embedding_dim={wanted} exceeds the embedding model's {hidden} dimensions")
        self._dim = wanted if wanted is not None else hidden
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

    def _prepare(self, item: EmbedInput, system: str) -> tuple[list[dict[str, Any]], _Video | None]:
        text = item.text.strip() if item.text else ""
        if not text and item.frames is None:
            raise ItemError(item.item_id, "nothing to embed: no text and no frames")
        content: list[dict[str, Any]] = []
        video = None
        if item.frames is not None:
            video = _video(
                item.item_id,
                item.frames,
                item.fps,
                self._settings.frames.fps,
                max_frames=self._settings.frames.max_frames,
                min_frames=_temporal_patch(self._loaded),
            )
            content.append({"type": "video"})
        if text:
            content.append({"type": "text", "text": text})
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": content},
        ]
        return conversation, video

    def _embed(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not items:
            return np.zeros((0, self._dim), dtype=np.float32)
        system = _with_full_stop(instruction) or _DEFAULT_EMBED_INSTRUCTION
        # Validate everything first: a bad item fails before any compute is spent on the batch.
        prepared = [self._prepare(item, system) for item in items]
        processor = self._loaded.processor
        out: list[np.ndarray] = []
        size = self._settings.models.embed_batch_size
        for start in range(0, len(prepared), size):
            chunk = prepared[start : start + size]
            texts = [
                processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv, _ in chunk
            ]
            videos = [video for _, video in chunk if video is not None]
            inputs = _processor_inputs(self._loaded, texts, videos)
            # The model keeps per-call state (rope deltas): one forward at a time per instance.
            with self._lock, torch.inference_mode():
                hidden = self._loaded.model(**inputs, use_cache=False).last_hidden_state
                pooled = last_token_pool(hidden, inputs["attention_mask"]).float()
                # MRL: the leading dims are an embedding of their own once re-normalised.
                pooled = F.normalize(pooled[:, : self._dim], p=2, dim=-1)
            out.append(pooled.cpu().numpy().astype(np.float32))
        return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------------------------
# Reranker


def _answer_token_ids(tokenizer: Any, word: str, all_variants: bool) -> list[int]:
    """`word`'s own vocabulary id, or (RankVideo) every id whose text is `word` once stripped and lower-cased."""
    if not all_variants:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != word:
            raise R3Error(
                f"the reranker's tokenizer has no single token {word!r}; it is not a Qwen3-VL reranker tokenizer"
            )
        return [int(token_id)]
    decoder = tokenizer.backend_tokenizer.decoder
    ids = sorted(
        int(token_id)
        for token, token_id in tokenizer.get_vocab().items()
        if decoder.decode([token]).strip().lower() == word
    )
    if not ids:
        raise R3Error(f"the reranker's tokenizer has no token reading {word!r}")
    return ids


def rerank_scores(
    last_hidden: torch.Tensor,
    head_weight: torch.Tensor,
    yes_ids: Sequence[int],
    no_ids: Sequence[int],
    rule: str,
    head_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores from final hidden states at the answer position, computed in float32.

    `yes_no_sigmoid`: sigmoid(h . (W_yes - W_no)) = sigmoid(logit_yes - logit_no), one id each.
    `rankvideo_logsumexp`: logsumexp(log P(yes ids)) - logsumexp(log P(no ids)); the softmax
    normaliser cancels, so only the answer rows of the head are needed.
    """
    import torch

    def logits(ids: Sequence[int]) -> torch.Tensor:
        index = torch.as_tensor(list(ids), device=head_weight.device)
        rows = head_weight.index_select(0, index).float().to(last_hidden.device)
        out = last_hidden.float() @ rows.T
        if head_bias is not None:
            out = out + head_bias.index_select(0, index).float().to(last_hidden.device)
        return out

    yes, no = logits(yes_ids), logits(no_ids)
    if rule == "yes_no_sigmoid":
        return torch.sigmoid(yes[:, 0] - no[:, 0])
    if rule == "rankvideo_logsumexp":
        return torch.logsumexp(yes, dim=1) - torch.logsumexp(no, dim=1)
    raise R3Error(f"unknown models.rerank_rule {rule!r}")


def _check_side(name: str, text: str | None, frames: Any, fps: float | None) -> None:
    if not (text and text.strip()) and frames is None:
        raise ItemError(name, "nothing to rerank with: no text and no frames")
    if frames is not None:
        _check_frames(name, frames, fps)


class Qwen3VLReranker(_LazyWeights):
    """Qwen3-VL-Reranker: one forward pass per (query, candidate) pair, scored at the last real token."""

    def __init__(self, settings: R3Settings) -> None:
        if settings.models.rerank_rule not in ("yes_no_sigmoid", "rankvideo_logsumexp"):
            raise R3Error(
                f"models.rerank_rule {settings.models.rerank_rule!r} is for the offline Gemma reranker; the Qwen3-VL "
                "reranker scores yes/no: use yes_no_sigmoid or rankvideo_logsumexp"
            )
        self._init_lazy(settings, "reranker", with_lm_head=True)
        self._rule = settings.models.rerank_rule
        self._answer_ids: tuple[list[int], list[int]] | None = None
        self._lock = threading.Lock()

    def _yes_no_ids(self) -> tuple[list[int], list[int]]:
        if self._answer_ids is None:
            tokenizer = self._loaded.processor.tokenizer
            variants = self._rule == "rankvideo_logsumexp"
            self._answer_ids = (
                _answer_token_ids(tokenizer, _YES, variants),
                _answer_token_ids(tokenizer, _NO, variants),
            )
        return self._answer_ids

    @property
    def yes_ids(self) -> list[int]:
        return self._yes_no_ids()[0]

    @property
    def no_ids(self) -> list[int]:
        return self._yes_no_ids()[1]

    @property
    def uses_frames(self) -> bool:
        return True

    @property
    def model(self) -> Any:
        return self._loaded.model

    def _side(
        self, name: str, prefix: str, text: str | None, frames: Any, fps: float | None
    ) -> tuple[list[dict[str, Any]], _Video | None]:
        _check_side(name, text, frames, fps)
        text = text.strip() if text else ""
        content: list[dict[str, Any]] = [{"type": "text", "text": prefix}]
        video = None
        if frames is not None:
            video = _video(
                name,
                frames,
                fps,
                self._settings.frames.fps,
                max_frames=self._settings.frames.rerank_frames,
                min_frames=_temporal_patch(self._loaded),
            )
            content.append({"type": "video"})
        if text:
            content.append({"type": "text", "text": text})
        return content, video

    def build_inputs(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> Any:
        """The processor's batch for these pairs (one row each), on the model's device."""
        query_content, query_video = self._side("query", "<Query>:", query.text, query.frames, query.fps)
        instruction = query.instruction.strip() or _DEFAULT_RERANK_INSTRUCTION
        texts: list[str] = []
        videos: list[_Video] = []
        for candidate in candidates:
            doc_content, doc_video = self._side(
                candidate.item_id, "\n<Document>:", candidate.text, candidate.frames, candidate.fps
            )
            conversation = [
                {"role": "system", "content": [{"type": "text", "text": _RERANK_SYSTEM}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "<Instruct>: " + instruction}, *query_content, *doc_content],
                },
            ]
            texts.append(
                self._loaded.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            )
            videos.extend(v for v in (query_video, doc_video) if v is not None)
        return _processor_inputs(self._loaded, texts, videos)

    def score(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> np.ndarray:
        import torch

        if not candidates:
            return np.zeros(0, dtype=np.float64)
        # Validate every pair before spending compute on any.
        _check_side("query", query.text, query.frames, query.fps)
        for candidate in candidates:
            _check_side(candidate.item_id, candidate.text, candidate.frames, candidate.fps)
        model = self._loaded.model
        head = model.get_output_embeddings()
        scores: list[np.ndarray] = []
        size = self._settings.models.rerank_batch_size
        for start in range(0, len(candidates), size):
            inputs = self.build_inputs(query, candidates[start : start + size])
            with self._lock, torch.inference_mode():
                hidden = model.model(**inputs, use_cache=False).last_hidden_state
                last = last_token_pool(hidden, inputs["attention_mask"])
                batch = rerank_scores(
                    last, head.weight, self.yes_ids, self.no_ids, self._rule, getattr(head, "bias", None)
                )
            scores.append(batch.double().cpu().numpy())
        return np.concatenate(scores).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Reasoner


def prompt_version() -> str:
    """Short hash of the reasoning prompt template; changes whenever the wording does."""
    blob = json.dumps([_REASONING_PROMPT, _REASONING_SOURCE_BLOCK], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def reasoning_prompt(edit: str, source_text: str | None, has_video: bool) -> str:
    """The user-turn text asking for one target-side paragraph."""
    source_block = (
        _REASONING_SOURCE_BLOCK.format(source_text=source_text.strip()) if source_text and source_text.strip() else ""
    )
    hint = "" if has_video else " (described below; the video itself is not shown)"
    return _REASONING_PROMPT.format(source_hint=hint, source_block=source_block, edit=edit.strip())


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


class Qwen3VLReasoner(_LazyWeights):
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
        for request, (text, video) in zip(requests, prepared):
            # One request per generate call: long greedy generations gain little from padding-heavy batches.
            inputs = _processor_inputs(self._loaded, [text], [video] if video is not None else [])
            with self._lock, torch.inference_mode():
                output = self._loaded.model.generate(**inputs, generation_config=self._generation_config())
            new_tokens = output[0, inputs["input_ids"].shape[1] :]
            generated = tokenizer.decode(new_tokens, skip_special_tokens=False)
            # Thinking templates open `<think>` in the prompt; restore it so the parse sees the whole turn.
            opened = text.rstrip().endswith(_THINK_OPEN)
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

    def _prepare(self, request: ReasonInput) -> tuple[str, _Video | None]:
        if not request.edit or not request.edit.strip():
            raise ItemError(request.query_id, "the edit instruction is empty")
        has_source_text = bool(request.source_text and request.source_text.strip())
        if request.frames is None and not has_source_text:
            raise ItemError(request.query_id, "no source video frames and no source text to reason from")
        content: list[dict[str, Any]] = []
        video = None
        if request.frames is not None:
            video = _video(
                request.query_id,
                request.frames,
                request.fps,
                self._settings.frames.fps,
                max_frames=self._settings.frames.max_frames,
                min_frames=_temporal_patch(self._loaded),
            )
            content.append({"type": "video"})
        content.append({"type": "text", "text": reasoning_prompt(request.edit, request.source_text, video is not None)})
        conversation = [{"role": "user", "content": content}]
        text = self._loaded.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return text, video


# ----------------------------------------------------------------------------------------------
# Registry factories


def load_embedder(settings: R3Settings) -> Qwen3VLEmbedder:
    return Qwen3VLEmbedder(settings)


def load_reranker(settings: R3Settings) -> Qwen3VLReranker:
    return Qwen3VLReranker(settings)


def load_reasoner(settings: R3Settings) -> Qwen3VLReasoner:
    return Qwen3VLReasoner(settings)


__all__ = [
    "Qwen3VLEmbedder",
    "Qwen3VLReasoner",
    "Qwen3VLReranker",
    "ResolvedModel",
    "is_unterminated",
    "last_token_pool",
    "load_embedder",
    "load_reasoner",
    "load_reranker",
    "model_fingerprint",
    "parse_thinking_output",
    "prompt_version",
    "reasoning_prompt",
    "rerank_scores",
    "resolve_model",
]
