"""The ablation flow: index a benchmark's gallery, run each arm's query batch, score, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from flows.common import flow_settings
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.datasets import EGOCVR_NAMES, Benchmark
from r3tasks.evaluation.arms import arm_report, fusion_grid_arms, split_line, split_record, write_benchmark_files
from r3tasks.evaluation.plan import (
    eval_gallery_name,
    eval_overrides,
    eval_work_dir,
    load_eval_benchmark,
    merge_overrides,
    plan_arms,
)
from r3tasks.evaluation.tables import markdown_table, plot_recall


@task(name="load-benchmark", cache_policy=NONE)
def load_benchmark_task(
    dataset: str, limit: int | None, options: dict[str, Any], home: str, skip: int = 0
) -> Benchmark:
    return load_eval_benchmark(dataset, limit, options, Path(home), skip)


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
    overrides = eval_overrides(overrides)
    settings = flow_settings(preset, home, overrides)
    logger = get_run_logger()
    options = dict(dataset_options or {})
    if dataset.lower() in EGOCVR_NAMES and settings.data.egocvr_dir is not None:
        options.setdefault("folder", str(settings.data.egocvr_dir))
    benchmark = load_benchmark_task(dataset, limit, options, str(settings.home), skip)
    manifest, queries = write_benchmark_files(benchmark, eval_work_dir(settings.home, benchmark))
    gallery = gallery or eval_gallery_name(benchmark)
    index_gallery(source=str(manifest), preset=preset, home=home, overrides=overrides, gallery=gallery)
    report: dict[str, Any] = {
        "benchmark": benchmark.name,
        "setting": benchmark.setting,
        "queries": len(benchmark.queries),
        "gallery": len(benchmark.items),
        "preset": settings.models.preset,
        "arms": [],
        "split": split_record(dataset, benchmark.setting, skip, limit, len(benchmark.queries), benchmark.dev_only),
    }
    print(split_line(report["split"]))
    plan = plan_arms(settings.query, rerank_k, arm_names)
    for arm in plan.arms:
        merged = merge_overrides(overrides or {}, arm.overrides)
        payload = query_batch(queries=str(queries), preset=preset, home=home, overrides=merged, gallery=gallery)
        report["arms"].append(arm_report(arm.name, payload, benchmark.qrels))
        logger.info("%s: %s", arm.name, report["arms"][-1]["metrics"])
        report.update(plan.sweeps(arm.name, payload["results"], benchmark.qrels, report))
    if fusion_grid:
        report["fusion_sweep"] = []
        for arm in fusion_grid_arms():
            payload = query_batch(
                queries=str(queries),
                preset=preset,
                home=home,
                overrides=merge_overrides(overrides or {}, arm.overrides),
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
