"""The ablation flow: index a benchmark's gallery, run each arm's query batch, score, report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from flows.common import flow_settings
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.datasets import EGOCVR_NAMES, Benchmark, load_benchmark
from r3tasks.evaluation import (
    arm_report,
    arms,
    fusion_grid_arms,
    markdown_table,
    plot_recall,
    policy_grid,
    policy_sweep,
    reranker_weight_sweep,
    split_line,
    split_record,
    write_benchmark_files,
)
from r3tasks.rerank_policy import policy_from_settings
from r3tasks.settings import QuerySettings
from r3tasks.synthetic import generate_benchmark

GENERATED_QUERIES = 60


@task(name="load-benchmark", cache_policy=NONE)
def load_benchmark_task(
    dataset: str, limit: int | None, options: dict[str, Any], home: str, skip: int = 0
) -> Benchmark:
    if dataset == "generated":
        # Procedural clips with known attributes: checks pixels-in, ranks-out end to end.
        generated = generate_benchmark(Path(home) / "eval" / "generated-clips", n_queries=limit or GENERATED_QUERIES)
        benchmark = load_benchmark(generated.folder)
        benchmark.name = "generated"
        return benchmark
    loaded = load_benchmark(dataset, limit=None if limit is None else skip + limit, **options)
    return loaded.queries_from(skip) if skip else loaded


@task(name="record-eval-artifacts", cache_policy=NONE)
def record_eval(report: dict, table: str) -> None:
    create_markdown_artifact(table, key="eval-metrics", description="Metrics per ablation arm.")
    create_table_artifact(
        [{"arm": a["arm"], **a["metrics"], "gate_pass_rate": a["gate_pass_rate"]} for a in report["arms"]],
        key="eval-arms",
    )


@flow(name="evaluate", log_prints=True)
def evaluate_benchmark(
    dataset: str,
    out: str,
    preset: str | None = None,
    home: str | None = None,
    limit: int | None = None,
    overrides: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    rerank_k: int | None = None,
    skip: int = 0,
    fusion_grid: bool = False,
    gallery: str | None = None,
    arm_names: list[str] | None = None,
) -> dict:
    """Run the arms base, +reasoning, +reasoning+rerank on the same queries (stages cached across arms).

    The benchmark is indexed into GALLERY (None: `eval-<benchmark>-<setting>`), never into a user's own."""
    settings = flow_settings(preset, home, overrides)
    logger = get_run_logger()
    options = dict(dataset_options or {})
    if dataset.lower() in EGOCVR_NAMES and settings.data.egocvr_dir is not None:
        options.setdefault("folder", str(settings.data.egocvr_dir))
    benchmark = load_benchmark_task(dataset, limit, options, str(settings.home), skip)
    work = settings.home / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{benchmark.name}-{benchmark.setting}")
    manifest, queries = write_benchmark_files(benchmark, work)
    gallery = gallery or eval_gallery_name(benchmark)
    index_gallery(source=str(manifest), preset=preset, home=home, overrides=overrides, gallery=gallery)
    report: dict[str, Any] = {
        "benchmark": benchmark.name,
        "setting": benchmark.setting,
        "queries": len(benchmark.queries),
        "gallery": len(benchmark.items),
        "preset": settings.models.preset,
        "arms": [],
        "split": split_record(dataset, benchmark.setting, skip, limit, len(benchmark.queries)),
    }
    print(split_line(report["split"]))
    policy = policy_from_settings(settings.query)
    # The reference arm's depth: --rerank-k, else R^3's; the settings' arms rerank at --rerank-k when given.
    k = QuerySettings.model_fields["rerank_k"].default if rerank_k is None else rerank_k
    settings_depth = policy.depth if rerank_k is None else rerank_k
    for arm in arms(k, arm_names, policy.is_reference and settings_depth == k, settings_k=rerank_k):
        merged = _merge(overrides or {}, arm.overrides)
        payload = query_batch(queries=str(queries), preset=preset, home=home, overrides=merged, gallery=gallery)
        report["arms"].append(arm_report(arm.name, payload, benchmark.qrels))
        logger.info("%s: %s", arm.name, report["arms"][-1]["metrics"])
        fixed_depth = arm.name == "+rerank (reference)" or (
            arm.name == "+rerank" and policy.is_reference and settings_depth == policy.depth
        )
        if fixed_depth or (arm.name == "+reasoning+rerank" and "reranker_weight_sweep" not in report):
            report["reranker_weight_sweep"] = reranker_weight_sweep(payload["results"], benchmark.qrels)
        if fixed_depth:
            # One model pass at fixed depth K; every other policy is replayed from its stored scores.
            depth = k if arm.name == "+rerank (reference)" else settings_depth
            report["policy_sweep"] = policy_sweep(
                payload["results"], benchmark.qrels, policy_grid(payload["results"], policy, depth=depth)
            )
    if fusion_grid:
        report["fusion_sweep"] = []
        for arm in fusion_grid_arms():
            payload = query_batch(
                queries=str(queries),
                preset=preset,
                home=home,
                overrides=_merge(overrides or {}, arm.overrides),
                gallery=gallery,
            )
            report["fusion_sweep"].append(arm_report(arm.name, payload, benchmark.qrels))
            logger.info("%s: %s", arm.name, report["fusion_sweep"][-1]["metrics"])
    table = markdown_table(report)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    report["plot"] = str(plot_recall(report, out_path.with_suffix(".png")))
    out_path.write_text(json.dumps(report, indent=2))
    record_eval(report, table)
    if report["arms"]:
        from flows.assets import record_report

        record_report(str(out_path), payload["lineage"]["gallery"], dataset)  # the report's lineage asset
    print(table)
    return report


def eval_gallery_name(benchmark: Benchmark) -> str:
    """The gallery an evaluation indexes into by default: its own, named after the benchmark and setting."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"eval-{benchmark.name}-{benchmark.setting}").strip("-")[:64]


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged
