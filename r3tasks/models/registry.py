"""Backends by name. A backend module is imported only when its name is asked for, so torch,
transformers and their weights load on first use, never at import."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any, Literal

from r3tasks.errors import R3Error
from r3tasks.models.base import MODEL_LOADING, Embedder, QueryTemplates, Reasoner, Reranker, SpeechRecognizer
from r3tasks.settings.tree import R3Settings

Role = Literal["embedder", "reasoner", "reranker", "asr"]

# role -> backend name -> "module:factory"; each factory takes the settings.
_BACKENDS: dict[Role, dict[str, str]] = {
    "embedder": {
        "qwen3vl": "r3tasks.models.qwen3vl:load_embedder",
        "minilm": "r3tasks.models.minilm:load_embedder",
    },
    "reasoner": {
        "qwen3vl": "r3tasks.models.qwen3vl:load_reasoner",
        "gemma3": "r3tasks.models.gemma3:load_reasoner",
    },
    "reranker": {
        "qwen3vl": "r3tasks.models.qwen3vl:load_reranker",
        "gemma3": "r3tasks.models.gemma3:load_reranker",
    },
    # `none` is no recogniser at all (shared_speech_recognizer returns None).
    "asr": {
        "pocketsphinx": "r3tasks.models.asr.pocketsphinx:load_recognizer",
        "whisper": "r3tasks.models.asr.whisper:load_recognizer",
    },
}


def query_templates(settings: R3Settings) -> QueryTemplates:
    """The templates queries are written with: the query settings' (a preset's defaults where the user set
    none, e.g. the offline preset's plain caption + edit for MiniLM)."""
    q = settings.query
    return QueryTemplates(
        base_template=q.base_template,
        reasoning_template=q.reasoning_template,
        source_text_template=q.source_text_template,
    )


def register_backend(role: Role, name: str, target: str) -> None:
    """Add a backend (``"package.module:factory"``) so settings can pick it by name."""
    _BACKENDS[role][name] = target


def available_backends(role: Role) -> list[str]:
    return sorted([*_BACKENDS[role], "none"] if role == "asr" else _BACKENDS[role])


def _factory(role: Role, name: str) -> Callable[[R3Settings], object]:
    try:
        target = _BACKENDS[role][name]
    except KeyError:
        raise R3Error(f"unknown {role} backend {name!r}; available: {', '.join(available_backends(role))}") from None
    module_name, _, attr = target.partition(":")
    return getattr(import_module(module_name), attr)


def load_embedder(settings: R3Settings) -> Embedder:
    return _factory("embedder", settings.models.backend("embedder"))(settings)  # type: ignore[return-value]


def load_reasoner(settings: R3Settings) -> Reasoner:
    return _factory("reasoner", settings.models.backend("reasoner"))(settings)  # type: ignore[return-value]


def load_reranker(settings: R3Settings) -> Reranker:
    return _factory("reranker", settings.models.backend("reranker"))(settings)  # type: ignore[return-value]


# Loading weights takes seconds to minutes, and a flow calls many tasks with the same settings:
# keep the last few loaded models per process (a Dask worker gets its own), keyed by the settings
# that pick and configure them. Explicitly clearable, never populated at import.
_LOADED: dict[tuple[Role, str], object] = {}
_MAX_LOADED = 6


def _cached(role: Role, settings: R3Settings, loader: Callable[[R3Settings], object]) -> object:
    key = (role, settings.settings_hash("models", "frames") + str(settings.home))
    if key not in _LOADED:
        # One loader at a time: two tasks asking first would load twice and race on transformers' imports.
        with MODEL_LOADING:
            if key not in _LOADED:
                if len(_LOADED) >= _MAX_LOADED:
                    _LOADED.pop(next(iter(_LOADED)))
                _LOADED[key] = loader(settings)
    return _LOADED[key]


def shared_embedder(settings: R3Settings) -> Embedder:
    """The process's loaded embedder for these settings, loading it on first use."""
    return _cached("embedder", settings, load_embedder)  # type: ignore[return-value]


def shared_reasoner(settings: R3Settings) -> Reasoner:
    return _cached("reasoner", settings, load_reasoner)  # type: ignore[return-value]


def shared_reranker(settings: R3Settings) -> Reranker:
    return _cached("reranker", settings, load_reranker)  # type: ignore[return-value]


def shared_speech_recognizer(settings: R3Settings) -> SpeechRecognizer | None:
    """The process's loaded speech recogniser, or None when `models.asr` is `none`."""
    name = settings.models.backend("asr")
    if name == "none":
        return None
    return _cached("asr", settings, lambda s: _factory("asr", name)(s))  # type: ignore[return-value]


def shared_screen_text_reader(settings: R3Settings) -> object:
    """The process's loaded OCR engine (RapidOCR) for `media.ocr_min_confidence`."""
    from r3tasks.media.ocr import load_screen_text_reader

    key = ("ocr", f"{settings.media.ocr_min_confidence}")
    if key not in _LOADED:
        _LOADED[key] = load_screen_text_reader(settings.media.ocr_min_confidence)  # type: ignore[index]
    return _LOADED[key]  # type: ignore[index]


class LazyReranker:
    """The shared reranker, loaded on its first use: a batch whose every query keeps recall's order (a
    confident recall, a recall window holding one candidate) loads no reranker at all (Gemma: seconds, and
    a one-time conversion in a new data home)."""

    def __init__(self, settings: R3Settings) -> None:
        self._settings = settings
        self._model: Reranker | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Reranker:
        if self._model is None:
            self._model = shared_reranker(self._settings)
        return self._model

    def __getattr__(self, name: str) -> Any:
        # Only names this class lacks get here: everything the Reranker interface has.
        return getattr(self.model(), name)


def clear_loaded_models() -> None:
    _LOADED.clear()


def _backend_function(role: Role, settings: R3Settings, name: str) -> Callable[[R3Settings], Any] | None:
    """`name` from the module of the settings' `role` backend, or None where that backend has none."""
    backend = settings.models.backend(role)  # type: ignore[arg-type]
    target = _BACKENDS[role].get(backend)
    if target is None:
        return None
    return getattr(import_module(target.partition(":")[0]), name, None)


def embedder_fingerprint(settings: R3Settings) -> str:
    """The fingerprint the settings' embedder reports, from its files and settings without loading its weights
    (a gallery's table name carries it). Each built-in backend computes its own `.fingerprint` with the same
    function; a backend without one is loaded and asked."""
    compute = _backend_function("embedder", settings, "embedder_fingerprint")
    return compute(settings) if compute is not None else shared_embedder(settings).fingerprint


def embedder_dim(settings: R3Settings) -> int:
    """The settings' embedder's vector size, from its config without loading its weights (as
    `embedder_fingerprint`)."""
    compute = _backend_function("embedder", settings, "embedder_dim")
    return int(compute(settings)) if compute is not None else shared_embedder(settings).dim
