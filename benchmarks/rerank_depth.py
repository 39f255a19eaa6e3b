"""7. Rerank cost of R^3's fixed depth (K = 50) against the `offline` preset's protected rerank policy.

Live part: EgoCVR dev queries (from #500, disjoint from the reported first queries), recalled with the
preset's MiniLM embedder over all 10,666 narrations, then reranked by the Gemma 3 270M likelihood
reranker with no cache, once per policy: reranker pairs and wall seconds per query, and R@1 on those
queries. Quality at scale comes from `r3 eval` reports (their policy replay over K = 50 scores stored
once): set ``BENCH_EVAL_REPORTS`` to a comma-separated list of report JSONs to copy their rows in.
Target: the adaptive policy cuts pairs per query by at least half at equal or better R@1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import WORK_DIR, Context, Result

NAME = "rerank_depth"
TITLE = "Rerank pairs and seconds per query: fixed depth K = 50 vs the offline preset's adaptive policy"
DEV_SKIP = 500


def run(ctx: Context) -> Result:
    from r3tasks.datasets import load_benchmark
    from r3tasks.inputs.queries import ComposedQuery
    from r3tasks.models.base import EmbedInput, RerankCandidate, RerankQuery
    from r3tasks.models.registry import load_embedder, load_reranker, query_templates
    from r3tasks.rerank.policy import RerankPolicy, apply_policy, rerank_policy
    from r3tasks.settings.query import QuerySettings
    from r3tasks.settings.tree import load_settings

    result = Result(NAME, TITLE)
    home = ctx.new_home("rerank-depth")
    settings = load_settings(home=home, models={"preset": "offline"})
    q = settings.query
    n_queries = 4 if ctx.quick else 8
    bench = load_benchmark("egocvr")
    queries = [x for x in bench.queries[DEV_SKIP:] if isinstance(x, ComposedQuery)][:n_queries]
    embedder, reranker = load_embedder(settings), load_reranker(settings)
    # The gallery's vectors are the slow part on a loaded CPU (minutes): kept between runs, keyed by model.
    cached = WORK_DIR / f"rerank-depth-gallery-{embedder.fingerprint}-{len(bench.items)}.npy"
    start = time.perf_counter()
    if cached.is_file():
        gallery = np.load(cached)
    else:
        gallery = embedder.embed_documents(
            [EmbedInput(it.id, text=it.text) for it in bench.items], q.document_instruction
        )
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, gallery)
    ctx.log(f"  gallery of {len(bench.items)} narrations ready in {time.perf_counter() - start:.0f} s")
    ids = [it.id for it in bench.items]
    texts = {it.id: it.text for it in bench.items}
    templates = query_templates(settings)

    # R^3's fixed depth (the query settings' default K), whatever depth the preset ships, at the preset's own
    # fusion: the two differ in which pairs are scored only.
    reference = RerankPolicy(
        depth=QuerySettings.model_fields["rerank_k"].default,
        embedding_weight=q.final_embedding_weight,
        reranker_weight=q.final_reranker_weight,
        reranker_scale=q.final_reranker_scale,
    )
    policies = {"fixed depth (reference)": reference, "offline preset policy": rerank_policy(q)}
    per_policy: dict[str, dict[str, Any]] = {name: {"pairs": [], "seconds": [], "hits": 0} for name in policies}
    reranker.score(
        RerankQuery(text="warm up", instruction=q.reranker_instruction, source_text="a", edit="b"),
        [RerankCandidate("w", text="warm up")],
    )
    for query in queries:
        base = templates.base_template.format(edit=query.edit)
        text = f"{templates.source_text_template.format(source_text=query.source_text)}\n{base}"
        vector = embedder.embed_queries([EmbedInput(query.id, text=text)], q.query_instruction)[0]
        scores = gallery @ vector
        order = [i for i in np.argsort(-scores, kind="stable") if ids[i] != query.source][: q.recall_k]
        recalled = [(ids[i], float(scores[i])) for i in order]
        rerank_query = RerankQuery(
            text=f"{q.source_text_template.format(source_text=query.source_text)}\n{query.edit}",
            instruction=q.reranker_instruction,
            source_text=query.source_text,
            edit=query.edit,
        )

        def score(batch, rerank_query=rerank_query):
            if not batch:
                return {}
            values = reranker.score(rerank_query, [RerankCandidate(i, text=texts[i]) for i in batch])
            return dict(zip(batch, (float(v) for v in values)))

        for name, policy in policies.items():
            started = time.perf_counter()
            outcome = apply_policy(recalled, score, policy)
            seconds = time.perf_counter() - started
            stats = per_policy[name]
            stats["pairs"].append(outcome.pairs)
            stats["seconds"].append(seconds)
            stats["hits"] += outcome.ranked[0].id in bench.qrels.get(query.id, {})
            ctx.log(f"  {query.id} {name}: {outcome.pairs} pairs, {seconds:.1f} s, depth {outcome.depth}")

    result.data.update(
        per_policy=per_policy, policy=vars(policies["offline preset policy"]), queries=[x.id for x in queries]
    )
    summarise(result, result.data, ctx.quick)
    return result


def summarise(result: Result, data: dict[str, Any], quick: bool) -> None:
    """Rows and tables from the measurements in `data` (also `python -m benchmarks.run --render-only`)."""
    per_policy, queries = data["per_policy"], data["queries"]
    table = []
    for name, stats in per_policy.items():
        table.append(
            [
                name,
                f"{np.mean(stats['pairs']):.1f}",
                f"{np.mean(stats['seconds']):.2f}",
                f"{100 * stats['hits'] / max(len(queries), 1):.1f}",
                len(queries),
            ]
        )
    result.table(
        f"Live, EgoCVR global dev queries {queries[0]}-{queries[-1]} (annotation rows), no cache",
        ["policy", "pairs/query", "s/query", "R@1 (these queries)", "queries"],
        table,
    )
    ref, ada = per_policy["fixed depth (reference)"], per_policy["offline preset policy"]
    ratio = float(np.mean(ada["pairs"]) / max(np.mean(ref["pairs"]), 1e-9))
    result.row("reranker pairs per query, fixed depth K = 50", float(np.mean(ref["pairs"])), "pairs")
    result.row(
        "reranker pairs per query, offline preset policy",
        float(np.mean(ada["pairs"])),
        "pairs",
        target="<= 0.5 x fixed depth",
        passed=ratio <= 0.5,
        note=f"{ratio:.2f} x fixed depth",
    )
    result.row("rerank seconds per query, fixed depth K = 50", float(np.mean(ref["seconds"])), "s")
    result.row(
        "rerank seconds per query, offline preset policy",
        float(np.mean(ada["seconds"])),
        "s",
        note=f"{np.mean(ada['seconds']) / max(np.mean(ref['seconds']), 1e-9):.2f} x fixed depth",
    )
    _replayed(result)
    result.note(
        f"Policy: {data['policy']}. Pairs are what each policy asks the reranker for; seconds are wall "
        "time on this shared 2-core CPU (load average in the section header), so compare the two "
        "policies within this run only."
    )


def _replayed(result: Result) -> None:
    """Copy R@1 and pairs/query of the reference and the preset's policy from `r3 eval` reports' replays."""
    rows = []
    for path in filter(None, os.environ.get("BENCH_EVAL_REPORTS", "").split(",")):
        report = json.loads(Path(path).read_text())
        sweep = {row["policy"]: row for row in report.get("policy_sweep", [])}
        if "reference" not in sweep or "settings' policy" not in sweep:
            continue
        ref, ada = sweep["reference"], sweep["settings' policy"]
        split = report.get("split", {})
        rows.append(
            [
                f"{report['benchmark']} {report['setting']}",
                split.get("role", "?"),
                report["queries"],
                f"{ref['metrics']['R@1']:.1f}",
                f"{ref['pairs_per_query']:.1f}",
                f"{ada['metrics']['R@1']:.1f}",
                f"{ada['pairs_per_query']:.1f}",
            ]
        )
        result.row(
            f"R@1 offline preset policy - fixed depth, {report['benchmark']} {report['setting']} "
            f"({split.get('role', '?')}, {report['queries']} queries, replayed)",
            ada["metrics"]["R@1"] - ref["metrics"]["R@1"],
            "points",
            target=">= 0",
            passed=ada["metrics"]["R@1"] >= ref["metrics"]["R@1"],
            note=f"pairs/query {ada['pairs_per_query']:.1f} vs {ref['pairs_per_query']:.1f}",
        )
    if rows:
        result.table(
            "Replayed from `r3 eval` reports (K = 50 scores stored once)",
            ["dataset", "split", "queries", "R@1 fixed", "pairs fixed", "R@1 policy", "pairs policy"],
            rows,
        )
