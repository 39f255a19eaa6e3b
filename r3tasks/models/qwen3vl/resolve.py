"""Locating a Qwen3-VL checkpoint (tiny, local path, hub cache, hub) and identifying its weights by content."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse
from urllib.request import getproxies

from r3tasks.errors import ModelNotAvailableError, R3Error
from r3tasks.settings.tree import ModelSettings, R3Settings

log = logging.getLogger(__name__)

Role = Literal["embedding", "reranker", "reasoner"]

MODEL_SETTING: dict[str, str] = {
    "embedding": "embedding_model",
    "reranker": "reranker_model",
    "reasoner": "reasoner_model",
}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}
_HUB_CHECK_TIMEOUT_S = 3.0
_HASH_CHUNK = 8 << 20
_HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")
# Content hashes by file identity: a file rewritten in place gets a new ctime, which no one can set back.
_hash_cache: dict[tuple, str] = {}
_hash_lock = threading.Lock()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a role's weights are and what identifies them.

    `spec` is the hub id, the absolute local path, or ``tiny/<role>/v<N>``; `revision` is the hub
    commit of a cached snapshot; `weights` hashes the weight files' names and contents and config.json.
    """

    role: str
    spec: str
    path: Path
    revision: str | None
    weights: str


def how_to_supply(spec: str, role: str) -> str:
    field = MODEL_SETTING[role]
    env = "R3_MODELS__" + field.upper()
    # For a path, suggest the reference checkpoint of the role as the thing to download.
    hub_id = str(ModelSettings.model_fields[field].default) if _looks_like_path(spec) or not spec else spec
    return (
        f"on a machine with network access run `hf download {hub_id} --local-dir <dir>` "
        f"(older huggingface_hub: `huggingface-cli download {hub_id} --local-dir <dir>`), copy <dir> here "
        f"and set {env}=<dir> (or models.{field} in r3.toml); or pre-populate the Hugging Face cache "
        "(HF_HOME) on this machine with that model; or run with `--preset offline`, which runs on this "
        "machine without any download"
    )


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that names a place on disk is a path.
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def _content_hash(file: Path) -> str:
    """sha256 of a weight file; a hub-cache blob is already named by it."""
    target = file.resolve()
    if _HUB_BLOB.match(target.name) and target.parent.name == "blobs":
        return target.name
    st = target.stat()
    key = (str(target), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def weights_signature(path: Path) -> str:
    """Hash of every weight file's name and content, and config.json: weights changed in place change it."""
    digest = hashlib.sha256()
    found = False
    for file in sorted(path.rglob("*")):
        if file.suffix in _WEIGHT_SUFFIXES and file.is_file():
            found = True
            digest.update(f"{file.relative_to(path).as_posix()}:{_content_hash(file)}\n".encode())
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
            spec, f"{path} holds no config.json, so it is not a checkpoint; " + how_to_supply(spec, role)
        )
    weights = weights_signature(path)
    if not weights:
        raise ModelNotAvailableError(spec, f"{path} holds no weight files; " + how_to_supply(spec, role))
    return ResolvedModel(role=role, spec=str(path), path=path, revision=None, weights=weights)


def resolve_model(settings: R3Settings, role: Role) -> ResolvedModel:
    """Find (never download, unless allowed and reachable) the checkpoint for `role`.

    Order: the `tiny` preset builds its own; an existing local directory; the local Hugging Face
    cache; then the hub, only when `models.local_files_only` is false and the hub answers within a
    few seconds. Anything else raises `ModelNotAvailableError` saying how to supply the model.
    """
    if role not in MODEL_SETTING:
        raise R3Error(f"unknown Qwen3-VL role {role!r}")
    models = settings.models
    if models.preset == "tiny":
        from r3tasks.models.qwen3vl.tiny import TINY_VERSION, ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint(settings.models_dir, role)
        return ResolvedModel(
            role=role, spec=f"tiny/{role}/v{TINY_VERSION}", path=path, revision=None, weights=weights_signature(path)
        )

    spec = str(getattr(models, MODEL_SETTING[role])).strip()
    if not spec:
        raise ModelNotAvailableError(spec, f"models.{MODEL_SETTING[role]} is empty; " + how_to_supply(spec, role))
    local = Path(spec).expanduser()
    if local.is_dir():
        return _local_checkpoint(spec, role, local)
    if _looks_like_path(spec) or local.exists():
        raise ModelNotAvailableError(spec, f"no checkpoint directory at {local}; " + how_to_supply(spec, role))

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
            "the hub; " + how_to_supply(spec, role),
        )
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelNotAvailableError(
            spec,
            f"it is not in the local Hugging Face cache and the hub ({constants.ENDPOINT}) cannot be reached; "
            + how_to_supply(spec, role),
        )
    log.info("downloading %s (%s) from the hub", spec, role)
    try:
        fetched = snapshot(offline=False)
    except Exception as exc:
        raise ModelNotAvailableError(spec, f"download failed ({exc}); " + how_to_supply(spec, role)) from exc
    resolved = _local_checkpoint(spec, role, fetched)
    return ResolvedModel(role=role, spec=spec, path=resolved.path, revision=fetched.name, weights=resolved.weights)


_REGISTRY_ROLES: dict[str, Role] = {"embedder": "embedding", "reasoner": "reasoner", "reranker": "reranker"}


def check_models(settings: R3Settings, roles: Iterable[str]) -> None:
    """Resolve the Qwen3-VL checkpoints these registry roles (embedder, reasoner, reranker) will use, so that a
    missing model is one clear `ModelNotAvailableError` before any flow or server starts."""
    models = settings.models
    wanted = set(roles)
    if models.backend("reasoner") == "qwen3vl" and not settings.query.use_reasoning:
        wanted.discard("reasoner")
    if settings.query.rerank_k == 0:
        wanted.discard("reranker")
    for role in ("embedder", "reranker", "reasoner"):
        if role in wanted and models.backend(role) == "qwen3vl":  # type: ignore[arg-type]
            resolve_model(settings, _REGISTRY_ROLES[role])


def config_hidden_size(path: Path) -> int:
    config = json.loads((path / "config.json").read_text())
    return int(config.get("text_config", config)["hidden_size"])


__all__ = [
    "MODEL_SETTING",
    "ResolvedModel",
    "Role",
    "check_models",
    "how_to_supply",
    "resolve_model",
    "weights_signature",
]
