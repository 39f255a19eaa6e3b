"""What an evaluation runs: its benchmark, the gallery it indexes into, its arms and the sweeps each arm feeds.

The evaluate flow only wires these decisions to tasks; they live here so that a reader (and a test) sees
them without Prefect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3tasks.datasets import Benchmark, load_benchmark
from r3tasks.datasets.synthetic import generate_benchmark
from r3tasks.evaluation.arms import Arm, arms
from r3tasks.evaluation.sweeps import policy_grid, policy_sweep, reranker_weight_sweep
from r3tasks.rerank.policy import RerankPolicy, rerank_policy
from r3tasks.settings.query import QuerySettings

# Queries of the `generated` benchmark when no --limit is given.
GENERATED_QUERIES = 60


def load_eval_benchmark(
    dataset: str, limit: int | None, options: dict[str, Any], home: Path, skip: int = 0
) -> Benchmark:
    """The benchmark's queries `skip` .. `skip + limit`; `generated` writes procedural clips under `home`."""
    if dataset == "generated":
        # Procedural clips with known attributes: checks pixels-in, ranks-out end to end.
        generated = generate_benchmark(home / "eval" / "generated-clips", n_queries=limit or GENERATED_QUERIES)
        benchmark = load_benchmark(generated.folder)
        benchmark.name = "generated"
        return benchmark
    loaded = load_benchmark(dataset, limit=None if limit is None else skip + limit, **options)
    return loaded.queries_from(skip) if skip else loaded


def eval_gallery_name(benchmark: Benchmark) -> str:
    """The gallery an evaluation indexes into by default: its own, named after the benchmark and setting."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"eval-{benchmark.name}-{benchmark.setting}").strip("-")[:64]


def eval_work_dir(home: Path, benchmark: Benchmark) -> Path:
    return home / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{benchmark.name}-{benchmark.setting}")


def merge_overrides(base: dict, extra: dict) -> dict:
    """`extra` over `base`, section by section (nested dicts merge, values replace)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge_overrides(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


# A benchmark judges retrieval over its own captions and clips: reading speech or on-screen text into them would
# change what is measured (its clips are all short enough to stay whole moments). A user's override still wins.
EVAL_MEDIA: dict[str, Any] = {"media": {"ocr": False, "subtitles": False}, "models": {"asr": "none"}}


def eval_overrides(overrides: dict | None) -> dict:
    """The overrides an evaluation runs with: `EVAL_MEDIA` under the user's own."""
    return merge_overrides(EVAL_MEDIA, overrides or {})


@dataclass(frozen=True)
class ArmPlan:
    """The arms of one evaluation, and the depths its sweeps replay at."""

    arms: list[Arm]
    policy: RerankPolicy  # the settings' own rerank policy
    reference_depth: int  # the `+rerank (reference)` arm's K: --rerank-k, else R^3's
    settings_depth: int  # the depth the settings' rerank arms run at

    def is_fixed_depth(self, arm_name: str) -> bool:
        """Whether this arm scores every top-K pair once, so other policies replay from its stored scores."""
        return arm_name == "+rerank (reference)" or (
            arm_name == "+rerank" and self.policy.is_reference and self.settings_depth == self.policy.depth
        )

    def sweeps(self, arm_name: str, results: list[dict], qrels: dict[str, dict[str, int]], report: dict) -> dict:
        """The sweeps this arm's results feed (added to the report by the caller): the reranker-weight sweep
        once, from the first fixed-depth arm or else `+reasoning+rerank`; the policy sweep from a fixed-depth
        arm."""
        out: dict[str, Any] = {}
        fixed = self.is_fixed_depth(arm_name)
        if fixed or (arm_name == "+reasoning+rerank" and "reranker_weight_sweep" not in report):
            out["reranker_weight_sweep"] = reranker_weight_sweep(results, qrels)
        if fixed:
            depth = self.reference_depth if arm_name == "+rerank (reference)" else self.settings_depth
            out["policy_sweep"] = policy_sweep(results, qrels, policy_grid(results, self.policy, depth=depth))
        return out


def plan_arms(query: QuerySettings, rerank_k: int | None, arm_names: list[str] | None) -> ArmPlan:
    """The arms to run: `arm_names` (default: the default arms), the reference arm's depth from `rerank_k`
    (None: R^3's K), the settings' arms at `rerank_k` when given, else at their own depth."""
    policy = rerank_policy(query)
    reference_depth = QuerySettings.model_fields["rerank_k"].default if rerank_k is None else rerank_k
    settings_depth = policy.depth if rerank_k is None else rerank_k
    chosen = arms(
        reference_depth, arm_names, policy.is_reference and settings_depth == reference_depth, settings_k=rerank_k
    )
    return ArmPlan(chosen, policy, reference_depth, settings_depth)
