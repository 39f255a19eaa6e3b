"""Backends by name. A backend module is imported only when its name is asked for, so torch,
transformers and their weights load on first use, never at import."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Literal

from r3tasks.errors import R3Error
from r3tasks.models.base import Embedder, QueryTemplates, Reasoner, Reranker
from r3tasks.settings.tree import R3Settings

Role = Literal["embedder", "reasoner", "reranker"]

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
}


# How each embedder backend writes a composed query, where it departs from R^3's reference templates
# (the query settings' defaults). MiniLM embeds text only: on held-out EgoCVR queries plain
# "source caption + edit" beats the templated query (README, "Evaluation"); qwen3vl keeps the reference.
_QUERY_TEMPLATES: dict[str, QueryTemplates] = {
    "minilm": QueryTemplates(
        base_template="{edit}", reasoning_template="{edit}\n{reasoning}", source_text_template="{source_text}"
    ),
}
_TEMPLATE_FIELDS = ("base_template", "reasoning_template", "source_text_template")


def query_templates(settings: R3Settings, embedder: object | None = None) -> QueryTemplates:
    """The templates queries are written with: a template set explicitly in the settings, else the
    embedder's own (`query_templates` attribute, then the registry's declaration), else the reference."""
    q = settings.query
    declared = getattr(embedder, "query_templates", None) or _QUERY_TEMPLATES.get(settings.models.backend("embedder"))
    values = {
        name: getattr(declared, name) if declared is not None and name not in q.model_fields_set else getattr(q, name)
        for name in _TEMPLATE_FIELDS
    }
    return QueryTemplates(**values)


def register_backend(role: Role, name: str, target: str, templates: QueryTemplates | None = None) -> None:
    """Add a backend (``"package.module:factory"``) so settings can pick it by name; an embedder may
    declare how queries are written for it."""
    _BACKENDS[role][name] = target
    if templates is not None and role == "embedder":
        _QUERY_TEMPLATES[name] = templates


def available_backends(role: Role) -> list[str]:
    return sorted(_BACKENDS[role])


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


def clear_loaded_models() -> None:
    _LOADED.clear()
