"""The query section of the settings: templates, fusion, recall and the protected rerank policy.

Apart from `r3tasks.settings` only to keep modules small; import it from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from r3tasks.rerank.decision import FEATURES
from r3tasks.settings.section import Section

FusionMode = Literal["gated_residual", "max", "mean", "rrf"]


class RerankDecisionSettings(Section):
    """A per-query rerank decision (`r3tasks.rerank.decision`), as `python -m r3tasks.evaluation.calibrate`
    prints it after fitting on dev queries. It runs only with the reranker it was fitted on."""

    weights: dict[str, float] = Field(description=f"Logistic weights, one per feature: {', '.join(FEATURES)}.")
    bias: float = Field(description="Logistic bias.")
    threshold: float = Field(
        ge=0, le=1, description="A query whose probability reaches this gets the strong fusion; below it the default."
    )
    keep_below: float = Field(
        0.0,
        ge=0,
        le=1,
        description="A query whose probability is below this keeps recall's order (the reranker is not trusted at "
        "all); 0 never does.",
    )
    reranker_fingerprint: str = Field(
        description="Fingerprint of the reranker the weights were fitted on; with any other the default fusion runs."
    )
    strong_reranker_scale: float | None = Field(
        None,
        ge=0,
        description="The strong fusion: additive at this scale (embedding units per reranker unit); None is R^3's "
        "reference min-max at 0.4 / 0.6.",
    )

    @field_validator("weights")
    @classmethod
    def _one_weight_per_feature(cls, weights: dict[str, float]) -> dict[str, float]:
        if set(weights) != set(FEATURES):
            missing, unknown = set(FEATURES) - set(weights), set(weights) - set(FEATURES)
            raise ValueError(
                f"needs exactly one weight per feature ({', '.join(FEATURES)})"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(unknown)}" if unknown else "")
            )
        return weights


class QuerySettings(Section):
    base_template: str = Field("Reference video after edit instruction: {edit}", description="R^3 base query template.")
    reasoning_template: str = Field(
        "Reference video after edit instruction: {edit}\nReasoned target video description: {reasoning}",
        description="R^3 reasoning-augmented query template.",
    )
    document_instruction: str = Field(
        "Represent this candidate target video for composed video retrieval. Focus on visible objects, actions, "
        "state changes, scene, camera framing, and temporal progression.",
        description="Embedder system instruction for gallery items (R^3 reference).",
    )
    query_instruction: str = Field(
        "Retrieve the target video that matches the reference video after applying the edit instruction. "
        "The correct target should satisfy the requested visual change while preserving unchanged visual context, "
        "including objects, actions, state changes, scene, camera framing, and temporal progression.",
        description="Embedder system instruction for composed queries (R^3 reference).",
    )
    text_query_instruction: str = Field(
        "Retrieve videos relevant to the user's query.", description="Embedder system instruction for text queries."
    )
    reranker_instruction: str = Field(
        "Score how well the candidate target video matches the reference video after applying the edit instruction. "
        "A good candidate satisfies the requested visual change, preserves unchanged context, and remains temporally "
        "and visually consistent with the intended edited result.",
        description="Reranker instruction for composed queries (R^3 reference).",
    )
    text_reranker_instruction: str = Field(
        "Judge whether the candidate video is relevant to the user's query.",
        description="Reranker instruction for text queries.",
    )
    reasoning_reranker_template: str = Field(
        "{edit}\n\nReasoned target video description:\n{reasoning}",
        description="Reranker query text when reasoning is used (R^3 reference).",
    )
    use_reasoning: bool = Field(True, description="Generate target-side reasoning for composed queries.")
    gate_threshold: float = Field(0.5, description="Agreement gate tau: reasoning is used only if agreement >= tau.")
    copy_gate_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Leave reasoning out (as when the agreement gate fails) when its word-sequence similarity to "
        "the source's text is at least this: a reasoner that restates the source adds no target-side information. "
        "None (the reference) turns the check off; it needs the source's caption.",
    )
    edit_gate: bool = Field(
        False,
        description="Leave reasoning out (as when the agreement gate fails) when it holds none of the edit's "
        "content words that the source's text lacks: a reasoner that restates the source, or rewrites it some "
        "other way than asked, adds no target-side information. False (the reference) turns the check off.",
    )
    edit_gate_function_words: list[str] = Field(
        default_factory=lambda: (
            "a an the it its this that these those to of in on at by for from with into onto instead rather than "
            "and or but not no without make change replace swap turn add remove same one ones is are be was were do "
            "does so then now"
        ).split(),
        description="Words the edit gate does not count as content: an edit's new content words are its words "
        "minus these and minus the source's.",
    )
    fusion: FusionMode = Field("gated_residual", description="How base and reasoning scores combine.")
    fusion_weight: float = Field(0.5, ge=0, le=1, description="w in s_base + w (s_reason - s_base).")
    rrf_k: int = Field(60, ge=1, description="k of reciprocal-rank fusion.")
    recall_k: int = Field(50, ge=1, description="Candidates recalled per query (source excluded).")
    unit: Literal["moment", "video"] = Field(
        "moment",
        description="What a result is in a gallery of long videos: a `moment` (a segment, with its times) or a "
        "`video` (the best moment of each video). A gallery of whole clips answers the same either way.",
    )
    merge_gap_s: float | None = Field(
        1.0,
        ge=0,
        description="Hits of one video that overlap or are at most this many seconds apart merge into one moment "
        "spanning them, at the best one's rank; None keeps every segment apart.",
    )
    merge_score_window: float = Field(
        0.05,
        ge=0,
        description="Only a hit whose embedding score is within this much of the kept hit's merges into it: a "
        "weak neighbour does not stretch a strong moment.",
    )
    candidate_pool: int = Field(
        0, ge=0, description="Items each query vector scores before fusion; 0 scores the whole gallery (reference)."
    )
    source_text_template: str = Field(
        "Reference video: {source_text}",
        description="How a source's caption enters a query when no pixels do (text-only presets, caption galleries).",
    )
    rerank_k: int = Field(50, ge=0, description="Top-K reranked; 0 turns reranking off.")
    rerank_start_depth: int | None = Field(
        None,
        ge=1,
        description="Adaptive rerank depth: score the recalled top this-many first and widen (x "
        "`rerank_depth_growth`, up to `rerank_k`) only while the reranker is uncertain (`rerank_widen_margin`). "
        "None (the reference) scores all `rerank_k` at once.",
    )
    rerank_widen_margin: float | None = Field(
        None,
        ge=0,
        description="With `rerank_start_depth`: stop widening once the reranker's best raw score in the block "
        "leads its second by at least this (in the reranker's own units, so calibrated per reranker). None "
        "widens to `rerank_k` always.",
    )
    rerank_depth_growth: float = Field(
        2.0, gt=1, description="Factor by which an adaptive rerank depth widens at each step."
    )
    rerank_recall_margin_gate: float | None = Field(
        None,
        ge=0,
        description="Keep the recall order, without asking the reranker, when recall's top-1 leads its top-2 "
        "by at least this much embedding score (a confident recall). None (the reference) always reranks.",
    )
    rerank_recall_window: float | None = Field(
        None,
        ge=0,
        description="Rerank only the candidates whose embedding score is within this much of recall's top-1 "
        "(up to `rerank_k`); the rest keep their recall order below them, so a reranker cannot pull up a "
        "candidate recall clearly ranked lower. In the embedder's own units (cosine). None (the reference) "
        "reranks the whole top `rerank_k`.",
    )
    rerank_flat_gate: float | None = Field(
        None,
        ge=0,
        description="Keep the recall order when the reranker's raw scores over the block it scored span less "
        "than this (it cannot tell the candidates apart). None (the reference) always uses its scores.",
    )
    final_embedding_weight: float = Field(0.4, ge=0, le=1, description="Weight of min-max embedding score.")
    final_reranker_weight: float = Field(0.6, ge=0, le=1, description="Weight of min-max reranker score.")
    final_reranker_scale: float | None = Field(
        None,
        ge=0,
        description="Additive final fusion: a reranked candidate scores embedding score + this x its raw "
        "reranker score (embedding units per reranker unit, so calibrated per reranker), in place of R^3's "
        "min-max fusion and its weights. Min-max stretches any recall gap in the block to the full weight; "
        "here the reranker must outweigh recall's actual lead. None (the reference): min-max.",
    )
    rerank_decision: RerankDecisionSettings | None = Field(
        None,
        description="Per-query rerank decision: where its calibrated probability reaches its threshold, the query "
        "gets a stronger fusion than `final_*` (docs/decisions/). None: every query gets the `final_*` fusion.",
    )
    max_edit_chars: int = Field(2000, ge=1, description="Longest edit instruction accepted.")
    contact_sheets: int = Field(
        50,
        ge=0,
        description="Answered queries of a batch (the first ones) that get a contact sheet picture (source and "
        "top-5); the others are in the results and the report without one. A picture costs tens of "
        "milliseconds, more than recall itself per query, and a thousand of them help no reader. 0: none.",
    )
    stage_cache_max_bytes: int = Field(
        2 * 2**30,
        ge=0,
        description="Bound on each query stage cache in `<home>/cache` (frames, reasoning, query-embedding, "
        "rerank); past it the least recently used entries are deleted. 0 caches nothing.",
    )
    stage_chunk: int = Field(
        16,
        ge=1,
        description="Queries per reasoning and rerank task of a batch (the model-bound stages: a task each, "
        "so progress shows per chunk) and the batch the reasoner sees at once (padding within a batch can move "
        "a score in the last bits). Embedding and reranking score one query at a time.",
    )
    task_queries: int = Field(
        256,
        ge=1,
        description="Queries per validate and query-embedding task of a batch (the light stages): one Prefect "
        "task run, its lineage artifact and a progress step each. A task run costs the orchestrator API calls, "
        "so a 1,000-query batch in 16-query tasks spent more time orchestrating than retrieving. Recall is "
        "one task over the whole batch whatever this is.",
    )
