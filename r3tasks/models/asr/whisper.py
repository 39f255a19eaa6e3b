"""The `whisper` speech recogniser: an OpenAI Whisper checkpoint (`models.asr_model`, a hub id or a local
folder; openai/whisper-large-v3-turbo by default) run through transformers.

Path chosen: `WhisperForConditionalGeneration.generate(return_timestamps=True, return_segments=True)` on the
processor's log-mel features, not the `automatic-speech-recognition` pipeline. For audio up to 30 s (the
chunks `r3tasks.media.speech` streams) it is one window; for longer arrays transformers runs Whisper's own
sequential long-form decoding (each window starts where the last complete segment ended, as OpenAI's
`transcribe` does), which its documentation rates more accurate than the pipeline's chunked decoding, whose
stitching of strided windows can leave a chunk's last timestamp unset. Every segment comes back with start
and end in seconds from the start of the audio. Cues are those timestamped segments (phrases, typically
2-10 s): word times would need the checkpoint's cross-attention alignment heads, which fine-tuned or
converted checkpoints often lack.

Finding the checkpoint follows the Qwen3-VL backends (`r3tasks.models.qwen3vl.resolve`): a local folder,
else the local Hugging Face cache, else the hub only when `models.local_files_only` is false and the hub
answers; otherwise `ModelNotAvailableError` saying how to supply it. Weights load on the first `transcribe`:
a run whose speech is cached needs only the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r3tasks.errors import ModelNotAvailableError, R3Error
from r3tasks.media.cues import Cue
from r3tasks.models.base import MODEL_LOADING
from r3tasks.settings.tree import ModelSettings, R3Settings

log = logging.getLogger(__name__)

BACKEND = "whisper"
SETTING = "models.asr_model"
# Bump when the way audio becomes cues changes what comes out: it is in the fingerprint.
FORMAT_VERSION = 1
_MIN_AUDIO_S = 0.1  # Whisper "hears" words in near-empty input; shorter than this is nothing said.
# Peak below -60 dBFS: nothing audible. Whisper is known to "hear" stock phrases in silence, and a long video's
# silent chunks would cost a forward pass each; such audio is not decoded.
SILENCE_PEAK = 1e-3


@dataclass(frozen=True)
class ResolvedWhisper:
    """Where the checkpoint is: `spec` is the hub id or absolute path, `revision` a hub snapshot's commit,
    `weights` a hash of the weight files and config.json."""

    spec: str
    path: Path
    revision: str | None
    weights: str


def how_to_supply(spec: str) -> str:
    hub_id = spec if spec and not _looks_like_path(spec) else str(ModelSettings.model_fields["asr_model"].default)
    return (
        f"on a machine with network access run `hf download {hub_id} --local-dir <dir>`, copy <dir> here and set "
        f"R3_MODELS__ASR_MODEL=<dir> (or {SETTING} in r3.toml); or pre-populate the Hugging Face cache (HF_HOME) "
        "with that model; or set models.asr = 'pocketsphinx' (its model ships in the pocketsphinx wheel) or 'none'"
    )


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that names a place on disk is a path.
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def _checkpoint(spec: str, path: Path, revision: str | None = None) -> ResolvedWhisper:
    from r3tasks.models.qwen3vl.resolve import weights_signature

    path = path.resolve()
    config = path / "config.json"
    if not config.is_file():
        raise ModelNotAvailableError(
            spec, f"{path} holds no config.json, so it is not a checkpoint; " + how_to_supply(spec)
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(spec, f"unreadable config.json in {path}: {exc}") from exc
    if model_type != "whisper":
        raise R3Error(f"{SETTING} = {spec!r} is a {model_type!r} checkpoint; the whisper backend needs a Whisper one")
    weights = weights_signature(path)
    if not weights:
        raise ModelNotAvailableError(spec, f"{path} holds no weight files; " + how_to_supply(spec))
    return ResolvedWhisper(spec=str(path) if revision is None else spec, path=path, revision=revision, weights=weights)


def resolve_whisper(settings: R3Settings) -> ResolvedWhisper:
    """Find (never download, unless allowed and reachable) the checkpoint `models.asr_model` names."""
    models = settings.models
    spec = models.asr_model.strip()
    if not spec:
        raise ModelNotAvailableError(spec, f"{SETTING} is empty; " + how_to_supply(spec))
    local = Path(spec).expanduser()
    if local.is_dir():
        return _checkpoint(spec, local)
    if _looks_like_path(spec) or local.exists():
        raise ModelNotAvailableError(spec, f"no checkpoint directory at {local} ({SETTING}); " + how_to_supply(spec))

    from huggingface_hub import constants, snapshot_download

    from r3tasks.models.qwen3vl.resolve import _hub_reachable

    def snapshot(offline: bool) -> Path:
        return Path(snapshot_download(spec, local_files_only=offline))

    try:
        cached = snapshot(offline=True)
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError) or not a valid repo id
        cached = None
    if cached is not None:
        return _checkpoint(spec, cached, revision=cached.name)
    if models.local_files_only or constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(
            spec,
            f"{SETTING} names a hub id that is not in the local Hugging Face cache, and models.local_files_only "
            "(or HF_HUB_OFFLINE) forbids the hub; " + how_to_supply(spec),
        )
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelNotAvailableError(
            spec,
            f"{SETTING} names a hub id that is not in the local Hugging Face cache and the hub ({constants.ENDPOINT}) "
            "cannot be reached; " + how_to_supply(spec),
        )
    log.info("downloading %s (speech recognition) from the hub", spec)
    try:
        fetched = snapshot(offline=False)
    except Exception as exc:
        raise ModelNotAvailableError(spec, f"download failed ({exc}); " + how_to_supply(spec)) from exc
    return _checkpoint(spec, fetched, revision=fetched.name)


@dataclass
class _Loaded:
    model: Any
    processor: Any
    device: Any
    dtype: Any


class WhisperRecognizer:
    """`SpeechRecognizer` over a Whisper checkpoint: one cue per timestamped segment (a phrase)."""

    def __init__(self, settings: R3Settings, resolved: ResolvedWhisper) -> None:
        from r3tasks.models.device import resolve_device, resolve_dtype_name

        self._settings = settings
        self._resolved = resolved
        self._device = resolve_device(settings.models.device)
        self._dtype_name = resolve_dtype_name(settings.models.dtype, self._device)
        self._language = settings.models.asr_language.strip()
        payload = {
            "backend": BACKEND,
            "model": resolved.spec,
            "revision": resolved.revision,
            "weights": resolved.weights,
            "dtype": self._dtype_name,
            "language": self._language,
            "format": FORMAT_VERSION,
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        self._fingerprint = f"{BACKEND}-{digest}"
        self._bundle: _Loaded | None = None

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def sample_rate(self) -> int:
        return 16_000

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> list[Cue]:
        """Phrases with start and end in seconds from the start of `audio` (mono float32 at 16 kHz; any length,
        past 30 s by Whisper's sequential long-form decoding), in order, inside the audio's duration."""
        if sample_rate != self.sample_rate:
            raise ValueError(
                f"whisper hears {self.sample_rate} Hz audio, got {sample_rate} Hz: decode at its sample_rate"
            )
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration = len(audio) / sample_rate
        if duration < _MIN_AUDIO_S or float(np.abs(audio).max()) < SILENCE_PEAK:
            return []
        loaded = self._loaded()
        segments = self._generate(loaded, audio)
        return _cues(segments, loaded.processor.tokenizer, duration)

    def _generate(self, loaded: _Loaded, audio: np.ndarray) -> list[dict[str, Any]]:
        import torch

        extractor = loaded.processor.feature_extractor
        long_form = len(audio) > extractor.n_samples
        # Long-form decoding needs the whole input unpadded and its mask; a short input is padded to 30 s.
        extra = {"truncation": False, "padding": "longest"} if long_form else {}
        features = extractor(
            audio, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True, **extra
        )
        kwargs: dict[str, Any] = {"return_timestamps": True, "return_segments": True}
        if getattr(loaded.model.generation_config, "is_multilingual", False):
            # English-only checkpoints (*.en) refuse a language or task.
            kwargs.update(language=self._language, task="transcribe")
        with torch.inference_mode():
            out = loaded.model.generate(
                features["input_features"].to(loaded.device, loaded.dtype),
                attention_mask=features["attention_mask"].to(loaded.device),
                **kwargs,
            )
        return list(out["segments"][0]) if isinstance(out, dict) and out.get("segments") else []

    def _loaded(self) -> _Loaded:
        if self._bundle is None:
            with MODEL_LOADING:
                if self._bundle is None:
                    self._bundle = self._load()
        return self._bundle

    def _load(self) -> _Loaded:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path, spec = self._resolved.path, self._resolved.spec
        dtype = getattr(torch, self._dtype_name)
        try:
            model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
            processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelNotAvailableError(spec, f"cannot load the checkpoint at {path} ({SETTING}): {exc}") from exc
        model.to(self._device).eval()
        log.info("loaded whisper %s on %s (%s)", spec, self._device, self._dtype_name)
        return _Loaded(model, processor, self._device, dtype)


def _cues(segments: list[dict[str, Any]], tokenizer: Any, duration: float) -> list[Cue]:
    """Segments as cues, times clipped into the audio and never going back: a model's timestamps can run
    past the end of a short input (it was padded to 30 s) or overlap a little at a window's seam."""
    cues: list[Cue] = []
    floor = 0.0
    for segment in segments:
        text = tokenizer.decode(_ids(segment["tokens"]), skip_special_tokens=True).strip()
        if not text:
            continue
        start = min(max(_seconds(segment["start"]), floor), duration)
        end = min(max(_seconds(segment["end"]), start), duration)
        if start >= duration:
            break  # what the model "heard" in the padding after the audio
        cues.append(Cue(min(round(start, 3), duration), min(round(end, 3), duration), text))
        floor = start
    return cues


def _seconds(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _ids(tokens: Any) -> list[int]:
    return [int(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]


def load_recognizer(settings: R3Settings) -> WhisperRecognizer:
    """Resolve `models.asr_model` now (a missing model fails here, before any file is read); weights load on
    the first `transcribe`."""
    return WhisperRecognizer(settings, resolve_whisper(settings))


__all__ = ["ResolvedWhisper", "WhisperRecognizer", "how_to_supply", "load_recognizer", "resolve_whisper"]
