"""The `offline` preset's reranker: Gemma 3 270M scores (query, candidate caption) pairs by its
next-token yes/no preference, or (rule `edit_likelihood`) by the likelihood of the query given the
candidate. It reads text only: each candidate needs a caption."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from r3tasks.errors import MissingTextError, R3Error
from r3tasks.models.base import MODEL_LOADING, RerankCandidate, RerankQuery
from r3tasks.models.gemma3.lm import _MIN_TEXT_BATCH, GemmaLM, _fingerprint, _load_lm, _one_line, _short_hash
from r3tasks.models.gemma3.reasoner import REASON_EXAMPLES
from r3tasks.settings.tree import ModelSettings, R3Settings

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
# The settings' defaults (one source): the prompt versions below are computed with them.
MAX_QUERY_CHARS: int = ModelSettings.model_fields["offline_rerank_query_chars"].default
MAX_CANDIDATE_CHARS: int = ModelSettings.model_fields["offline_rerank_candidate_chars"].default


def _rerank_head(instruction: str) -> str:
    """The yes/no prompt's start, the same for every query with this instruction: header and examples."""
    header = (_one_line(instruction) + " " if instruction.strip() else "") + "Answer yes or no.\n\n"
    return header + "".join(
        _RERANK_QUERY.format(query=q) + _RERANK_CANDIDATE.format(candidate=c) + (" yes\n\n" if rel else " no\n\n")
        for q, c, rel in RERANK_EXAMPLES
    )


def rerank_prompt_parts(
    instruction: str,
    query: str,
    candidates: Sequence[str],
    query_chars: int = MAX_QUERY_CHARS,
    candidate_chars: int = MAX_CANDIDATE_CHARS,
) -> tuple[str, list[str]]:
    """The prompt split where candidates start: the prefix (instruction, examples, query) is shared
    by every candidate of one query, so its keys and values are computed once."""
    prefix = _rerank_head(instruction) + _RERANK_QUERY.format(query=_one_line(query)[:query_chars])
    return prefix, [_RERANK_CANDIDATE.format(candidate=_one_line(c)[:candidate_chars]) for c in candidates]


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
    query: str,
    candidates: Sequence[str],
    source_text: str | None,
    edit: str | None,
    query_chars: int = MAX_QUERY_CHARS,
    candidate_chars: int = MAX_CANDIDATE_CHARS,
) -> tuple[str, list[str], str]:
    """(shared prefix, per-candidate suffix, scored target) for `edit_likelihood`.

    Composed query: few-shot "Before / After / Instruction" lines (the reasoner's examples, reordered),
    then the source as Before, each candidate as After, and the edit as the scored target.
    Text query: "Video / Search query" lines, each candidate as Video, the query as the target.
    """
    if source_text and edit:
        prefix = _likelihood_head(composed=True) + "Before: " + _one_line(source_text)[:query_chars] + "\nAfter:"
        suffixes = [" " + _one_line(c)[:candidate_chars] + "\nInstruction:" for c in candidates]
        return prefix, suffixes, " " + _one_line(edit)[:query_chars] + "\n"
    prefix = _likelihood_head(composed=False) + "Video:"
    suffixes = [" " + _one_line(c)[:candidate_chars] + "\nSearch query:" for c in candidates]
    return prefix, suffixes, " " + _one_line(query)[:query_chars] + "\n"


def _likelihood_head(composed: bool) -> str:
    """The likelihood prompt's start, the same for every query of a kind: task line and examples."""
    if composed:
        shots = "".join(_EDIT_ITEM.format(source=s, target=t) + f" {e}\n\n" for s, e, t in REASON_EXAMPLES)
        return "Describe the change from the first video to the second.\n\n" + shots
    shots = "".join(_TEXT_ITEM.format(candidate=c) + f" {q}\n\n" for c, q in TEXT_LIKELIHOOD_EXAMPLES)
    return "Write a search query that finds the video.\n\n" + shots


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
class Gemma3Reranker(GemmaLM):
    """Scores (query text, candidate caption) pairs by Gemma's next-token yes/no preference, or (rule
    `edit_likelihood`) by the likelihood of the query given the candidate."""

    rule: str
    yes_id: int
    no_id: int
    yes_ids: list[int]
    no_ids: list[int]
    _fingerprint: str
    query_chars: int = MAX_QUERY_CHARS
    candidate_chars: int = MAX_CANDIDATE_CHARS

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def uses_frames(self) -> bool:
        return False

    def query_key(self, query: RerankQuery) -> tuple:
        return rerank_query_key(self.rule, query)

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
            prefix, suffixes, target = likelihood_prompt_parts(
                query.text, texts, query.source_text, query.edit, self.query_chars, self.candidate_chars
            )
            head = _likelihood_head(composed=bool(query.source_text and query.edit))
            return self.target_log_likelihood(prefix, suffixes, target, head)
        prefix, suffixes = rerank_prompt_parts(
            query.instruction, query.text, texts, self.query_chars, self.candidate_chars
        )
        logits = self.next_token_logits(prefix, suffixes, _rerank_head(query.instruction))
        return yes_no_score(logits, self.rule, self.yes_id, self.no_id, self.yes_ids, self.no_ids)


def rerank_query_key(rule: str, query: RerankQuery) -> tuple:
    """What `score` reads of the query, for the rerank cache key: `edit_likelihood` scores a composed
    query's source caption and edit (never the reasoning paragraph in `text`)."""
    if rule == "edit_likelihood":
        if query.source_text and query.edit:
            return (rule, query.source_text, query.edit)
        return (rule, query.text)
    return (rule, query.instruction, query.text)


def reranker_fingerprint(settings: R3Settings) -> str:
    """The loaded reranker's `fingerprint`, from the settings and the package alone (the same function
    computes both, so they cannot disagree)."""
    from r3tasks.models.device import resolve_device, resolve_dtype_name

    rule = settings.models.rerank_rule
    return _fingerprint(
        "reranker",
        resolve_dtype_name(settings.models.dtype, resolve_device(settings.models.device)),
        rule=rule,
        prompt=LIKELIHOOD_PROMPT_VERSION if rule == "edit_likelihood" else RERANK_PROMPT_VERSION,
        # Only a cut other than the default enters the fingerprint, so default caches stay valid.
        **_non_default_caps(settings.models),
    )


class LazyGemma3Reranker:
    """Gemma's reranker with its weights loaded at the first score. What a rerank cache key reads of a
    reranker (`fingerprint`, `query_key`, `uses_frames`) needs no weights, so a batch whose every pair is
    cached loads no model (about 10 s of a one-shot query on a CPU)."""

    def __init__(self, settings: R3Settings) -> None:
        self._settings = settings
        self.rule = settings.models.rerank_rule
        self._fingerprint = reranker_fingerprint(settings)
        self._reranker: Gemma3Reranker | None = None

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def uses_frames(self) -> bool:
        return False

    @property
    def is_loaded(self) -> bool:
        return self._reranker is not None

    def query_key(self, query: RerankQuery) -> tuple:
        return rerank_query_key(self.rule, query)

    def load(self) -> Gemma3Reranker:
        """The reranker with its weights, loaded (and converted, the first time in a data home) once."""
        if self._reranker is None:
            with MODEL_LOADING:  # transformers' lazy imports are not safe from two threads at once
                if self._reranker is None:
                    self._reranker = _load_reranker_weights(self._settings)
        return self._reranker

    def score(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> np.ndarray:
        return self.load().score(query, candidates)

    def __getattr__(self, name: str) -> Any:
        # Only names this class lacks get here (the loaded model's own: batch_size, tokenizer, ...).
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.load(), name)


def load_reranker(settings: R3Settings) -> LazyGemma3Reranker:
    return LazyGemma3Reranker(settings)


def _load_reranker_weights(settings: R3Settings) -> Gemma3Reranker:
    model, tokenizer, device, _ = _load_lm(settings)
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
        _fingerprint=reranker_fingerprint(settings),
        query_chars=settings.models.offline_rerank_query_chars,
        candidate_chars=settings.models.offline_rerank_candidate_chars,
    )


def _non_default_caps(models: ModelSettings) -> dict[str, int]:
    caps = {"query_chars": models.offline_rerank_query_chars, "candidate_chars": models.offline_rerank_candidate_chars}
    defaults = {"query_chars": MAX_QUERY_CHARS, "candidate_chars": MAX_CANDIDATE_CHARS}
    return {name: value for name, value in caps.items() if value != defaults[name]}
