"""Qwen3-VL-Reranker: the official prompt (system judge line, ``<Instruct>``/``<Query>``/``<Document>``);
the score is sigmoid(logit_yes - logit_no) at the last real token, or RankVideo's
logsumexp(log P(yes variants)) - logsumexp(log P(no variants)). Texts and the instruction are not stripped.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from r3tasks.errors import ItemError, R3Error
from r3tasks.models.base import RerankCandidate, RerankQuery
from r3tasks.models.qwen3vl.inputs import Prompt, collate, last_token_pool, make_prompt, run_split_on_oom, token_batches
from r3tasks.models.qwen3vl.loading import LazyWeights
from r3tasks.models.qwen3vl.prompts import DEFAULT_RERANK_INSTRUCTION, RERANK_SYSTEM
from r3tasks.models.qwen3vl.video import VideoPlan, check_frames, video_plan
from r3tasks.settings.tree import R3Settings

if TYPE_CHECKING:
    import torch

# RankVideo counts every vocabulary entry that reads "yes"/"no" once stripped and lower-cased.
_YES, _NO = "yes", "no"


def answer_token_ids(tokenizer: Any, word: str, all_variants: bool) -> list[int]:
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
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Scores from final hidden states at the answer position, in `dtype` (float32 unless told otherwise).

    `yes_no_sigmoid`: sigmoid(h . (W_yes - W_no)) = sigmoid(logit_yes - logit_no), one id each.
    `rankvideo_logsumexp`: logsumexp(log P(yes ids)) - logsumexp(log P(no ids)); the softmax
    normaliser cancels, so only the answer rows of the head are needed.
    """
    import torch

    dtype = dtype or torch.float32

    def logits(ids: Sequence[int]) -> torch.Tensor:
        index = torch.as_tensor(list(ids), device=head_weight.device)
        rows = head_weight.index_select(0, index).to(dtype).to(last_hidden.device)
        out = last_hidden.to(dtype) @ rows.T
        if head_bias is not None:
            out = out + head_bias.index_select(0, index).to(dtype).to(last_hidden.device)
        return out

    if rule == "yes_no_sigmoid":
        # As the official head: one row W_yes - W_no, so its rounding is the model dtype's when asked for.
        index = torch.as_tensor([yes_ids[0], no_ids[0]], device=head_weight.device)
        rows = head_weight.index_select(0, index).to(dtype).to(last_hidden.device)
        logit = last_hidden.to(dtype) @ (rows[0] - rows[1])
        if head_bias is not None:
            bias = head_bias.index_select(0, index).to(dtype).to(last_hidden.device)
            logit = logit + (bias[0] - bias[1])
        return torch.sigmoid(logit).float()
    if rule == "rankvideo_logsumexp":
        yes, no = logits(yes_ids), logits(no_ids)
        return (torch.logsumexp(yes, dim=1) - torch.logsumexp(no, dim=1)).float()
    raise R3Error(f"unknown models.rerank_rule {rule!r}")


def _check_side(name: str, text: str | None, frames: Any, fps: float | None) -> None:
    if not (text and text.strip()) and frames is None:
        raise ItemError(name, "nothing to rerank with: no text and no frames")
    if frames is not None:
        check_frames(name, frames, fps)


class Qwen3VLReranker(LazyWeights):
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
            self._answer_ids = (answer_token_ids(tokenizer, _YES, variants), answer_token_ids(tokenizer, _NO, variants))
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
    ) -> tuple[list[dict[str, Any]], VideoPlan | None]:
        _check_side(name, text, frames, fps)
        content: list[dict[str, Any]] = [{"type": "text", "text": prefix}]
        video = None
        if frames is not None:
            video = video_plan(self, name, frames, fps, self._settings.frames.rerank_frames)
            content.append({"type": "video"})
        if text:
            content.append({"type": "text", "text": text})
        return content, video

    def prompts(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> list[Prompt]:
        query_content, query_video = self._side("query", "<Query>:", query.text, query.frames, query.fps)
        instruction = query.instruction or DEFAULT_RERANK_INSTRUCTION
        out = []
        for candidate in candidates:
            doc_content, doc_video = self._side(
                candidate.item_id, "\n<Document>:", candidate.text, candidate.frames, candidate.fps
            )
            conversation = [
                {"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "<Instruct>: " + instruction}, *query_content, *doc_content],
                },
            ]
            videos = [v for v in (query_video, doc_video) if v is not None]
            out.append(
                make_prompt(
                    self._loaded, candidate.item_id, conversation, videos, self._settings.models.rerank_max_length
                )
            )
        return out

    def build_inputs(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> dict[str, Any]:
        """The model's batch for these pairs (one row each), on the model's device."""
        return collate(self._loaded, self.prompts(query, candidates))

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
        head_dtype = None if self._settings.models.score_head_dtype == "float32" else head.weight.dtype
        prompts = self.prompts(query, candidates)

        def run(rows: Sequence[Prompt]) -> list[float]:
            inputs = collate(self._loaded, rows)
            with self._lock, torch.inference_mode():
                hidden = model.model(**inputs, use_cache=False).last_hidden_state
                last = last_token_pool(hidden, inputs["attention_mask"])
                batch = rerank_scores(
                    last, head.weight, self.yes_ids, self.no_ids, self._rule, getattr(head, "bias", None), head_dtype
                )
            return [float(x) for x in batch.double().cpu().numpy()]

        m = self._settings.models
        scores: list[float] = []
        for group in token_batches([len(p.ids) for p in prompts], m.rerank_batch_size, m.max_batch_tokens):
            scores.extend(run_split_on_oom([prompts[i] for i in group], run, "reranker"))
        return np.asarray(scores, dtype=np.float64)
