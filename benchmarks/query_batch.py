"""Query batches end to end: 1,000 text and 1,000 composed queries against 100k and 1M caption rows.

The embedder is the benchmarks' hashing fake at MiniLM's width (384) and Qwen3-VL-2B's (2048), and the
reasoner an echo (the source caption plus the edit), so neither model dominates: what is measured is the
query path around them. Rerank is off. Per (rows, dim, query kind) it reports queries/s of the recall
stage (`r3tasks.query.recall.recall` over the whole batch, gallery already pinned and loaded) and of the whole batch
through the Prefect flow (`query_batch`, cold stage caches, results and contact sheets written), against
the numpy floor measured in the same process: one product of all the batch's query vectors (base and
reasoning) with the gallery's unit matrix, in the same 64 MiB score chunks. Each size runs in its own child
processes (one builds the LanceDB table, one measures), so the peak RSS is that of the query side alone.

Child use: ``python -m benchmarks.query_batch build|measure --home H --rows N --dim D [--queries Q]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT, RESULTS_DIR, Context, Result
from benchmarks.memory_child import _proc_status
from r3tasks.gallery.pinned import pin

TITLE = "Query batch: recall stage and whole flow vs the numpy floor"
SIZES_FULL = [(100_000, 384), (100_000, 2048), (1_000_000, 384)]
SIZES_QUICK = [(10_000, 384)]
QUERIES = 1_000
RECALL_TARGET = 1.5  # recall stage time / floor
BATCH_TARGET = 2.0  # whole batch (Prefect included) / floor, at 100k rows
_CHILD_TIMEOUT_S = 3 * 3600


def _overrides(dim: int) -> dict[str, Any]:
    from benchmarks.fakes import ECHO_REASONER, HASH_TEXT_DIMS

    return {
        "models": {"embedder": HASH_TEXT_DIMS[dim], "reasoner": ECHO_REASONER},
        "query": {"rerank_k": 0, "use_reasoning": True, "copy_gate_threshold": None},
        "gallery": {"exact_search_max_bytes": 16 * 2**30},
    }


def _settings(home: Path, dim: int) -> Any:
    from r3tasks.settings.tree import load_settings

    return load_settings(home=home, **_overrides(dim))


def _caption(i: int) -> str:
    return f"clip {i}: a person does thing {i % 997} near object {i % 89} in place {i % 13}"


# -- child: build ---------------------------------------------------------------------------------
def build(home: Path, rows: int, dim: int) -> dict[str, Any]:
    """Write `rows` caption rows of random unit vectors straight into the gallery table (no model)."""
    import datetime as dt

    import pyarrow as pa

    from r3tasks.gallery.table import GalleryStore, gallery_schema
    from r3tasks.models.registry import shared_embedder

    settings = _settings(home, dim)
    embedder = shared_embedder(settings)
    store = GalleryStore(
        settings.gallery_uri,
        settings.gallery.table_prefix,
        embedder.fingerprint,
        dim,
        settings=settings.gallery,
        gallery=settings.gallery.name,
    )
    table = store.table()
    schema = gallery_schema(dim, embedder.fingerprint, settings.gallery.name)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    step = max(1, min(100_000, 2**27 // (dim * 4)))
    now = dt.datetime.now(dt.UTC)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"item-{i:07d}" for i in range(start, start + n)]
        columns = {
            "id": pa.array(ids, pa.string()),
            "path": pa.nulls(n, pa.string()),
            "path_bytes": pa.nulls(n, pa.binary()),
            "text": pa.array([_caption(i) for i in range(start, start + n)], pa.string()),
            "group": pa.nulls(n, pa.string()),
            "content_key": pa.array([f"k{i}" for i in range(start, start + n)], pa.string()),
            "num_frames": pa.nulls(n, pa.int32()),
            "indexed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        }
        table.add(pa.table(columns, schema=schema))
    return {"rows": store.count(), "build_s": time.perf_counter() - started}


def _write_queries(folder: Path, rows: int, n: int) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    sources = rng.choice(rows, size=n, replace=n > rows)
    text = folder / "text.jsonl"
    text.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "text": f"a person does thing {i % 997} in place {i % 13}"}) + "\n"
            for i in range(n)
        )
    )
    composed = folder / "composed.jsonl"
    composed.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "source": f"item-{int(s):07d}", "edit": f"make it happen near object {i % 89}"})
            + "\n"
            for i, s in enumerate(sources)
        )
    )
    return {"text": text, "composed": composed}


# -- child: measure -------------------------------------------------------------------------------
def _floor_s(vectors: np.ndarray, matrix: np.ndarray) -> float:
    """One product of every query vector with the gallery, in the score chunks r3 uses; best of two."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    step = max(1, 2**24 // len(matrix))
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for start in range(0, len(unit), step):
            scores = unit[start : start + step] @ matrix.T
            del scores
        best = min(best, time.perf_counter() - started)
    return best


def measure(home: Path, rows: int, dim: int, n: int) -> dict[str, Any]:
    from flows.query_flow import query_batch
    from r3tasks.cache.stages import StageCache
    from r3tasks.gallery.views import open_store
    from r3tasks.inputs.queries import load_queries
    from r3tasks.models.registry import shared_embedder, shared_reasoner
    from r3tasks.query.embedding import embed_queries
    from r3tasks.query.prepare import prepare
    from r3tasks.query.reasoning import run_reasoning
    from r3tasks.query.recall import recall

    settings = _settings(home, dim)
    files = _write_queries(home, rows, n)
    out: dict[str, Any] = {"rows": rows, "dim": dim, "queries": n, "matrix_bytes": rows * dim * 4}
    started = time.perf_counter()
    gallery = pin(open_store(settings))
    out["pin_s"] = time.perf_counter() - started
    started = time.perf_counter()
    matrix = gallery._matrix().vectors  # the in-memory exact matrix both paths search
    out["load_matrix_s"] = time.perf_counter() - started
    scratch = home / "direct-cache"  # the direct stage run must not warm the flow's caches
    for kind, path in files.items():
        states = prepare(load_queries(path), gallery, settings)
        caches = {name: StageCache(scratch, name) for name in ("reasoning", "query-embedding", "frames")}
        run_reasoning(states, shared_reasoner(settings), settings, caches["reasoning"], caches["frames"])
        embed_queries(states, shared_embedder(settings), settings, caches["query-embedding"], caches["frames"])
        vectors = np.concatenate(
            [
                np.vstack([s.base_vectors] + ([s.reasoning_vector[None, :]] if s.reasoning_vector is not None else []))
                for s in states
                if s.ok
            ]
        )
        started = time.perf_counter()
        recall(states, gallery, settings)
        recall_s = time.perf_counter() - started
        failed = [s.error for s in states if not s.ok]
        floor_s = _floor_s(vectors.astype(np.float32), matrix)
        started = time.perf_counter()
        payload = query_batch(queries=str(path), home=str(home), overrides=_overrides(dim))
        batch_s = time.perf_counter() - started
        out[kind] = {
            "query_vectors": int(len(vectors)),
            "recall_s": recall_s,
            "floor_s": floor_s,
            "batch_s": batch_s,
            "flow_stage_s": payload.get("stage_seconds", {}),
            "failed": len(failed) + sum(1 for r in payload["results"] if r["error"]),
            "first_error": failed[0] if failed else None,
        }
    out["peak_rss_bytes"] = _proc_status()["VmHWM"]
    return out


# -- parent -----------------------------------------------------------------------------------------
def _child(ctx: Context, args: list[str], log: Path) -> dict[str, Any]:
    env = dict(os.environ, PREFECT_LOGGING_LEVEL="WARNING", PYTHONPATH=str(REPO_ROOT))
    if ctx.api_url:
        env["PREFECT_API_URL"] = ctx.api_url
    report = log.with_suffix(".json")
    with log.open("w") as handle:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.query_batch", *args, "--report", str(report)],
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=_CHILD_TIMEOUT_S,
        )
    return json.loads(report.read_text())


def run(ctx: Context) -> Result:
    result = Result("query_batch", TITLE)
    ctx.prefect_server()
    sizes = (
        SIZES_QUICK if ctx.quick else [tuple(s) for s in json.loads(os.environ.get("QB_SIZES", "null")) or SIZES_FULL]
    )
    runs = []
    for rows, dim in sizes:
        home = ctx.new_home(f"qb-{rows}-{dim}")
        common = ["--home", str(home), "--rows", str(rows), "--dim", str(dim)]
        try:
            built = _child(ctx, ["build", *common], home / "build.log")
            ctx.log(f"  {rows:,} x {dim}: built in {built['build_s']:.0f} s")
            measured = _child(ctx, ["measure", *common, "--queries", str(QUERIES)], home / "measure.log")
            measured["build_s"] = built["build_s"]
            runs.append(measured)
            for kind in ("text", "composed"):
                m = measured[kind]
                ctx.log(
                    f"  {rows:,} x {dim} {kind}: recall {QUERIES / m['recall_s']:.0f} q/s, batch "
                    f"{QUERIES / m['batch_s']:.0f} q/s, floor {QUERIES / m['floor_s']:.0f} q/s"
                )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            tail = (home / "measure.log").read_text()[-2000:] if (home / "measure.log").exists() else ""
            runs.append({"rows": rows, "dim": dim, "error": f"{type(error).__name__}: {tail or error}"})
        finally:
            ctx.drop_home(home)
    result.data["runs"] = runs if ctx.quick else _merged(runs)
    summarise(result, result.data, ctx.quick)
    return result


def _merged(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's sizes replace the stored ones; other stored sizes are kept (sizes can be measured apart)."""
    path = RESULTS_DIR / "query_batch.json"
    stored = json.loads(path.read_text())["data"].get("runs", []) if path.is_file() else []
    if stored and json.loads(path.read_text()).get("mode") == "quick":
        stored = []
    done = {(m["rows"], m["dim"]) for m in runs}
    kept = [m for m in stored if (m["rows"], m["dim"]) not in done and "error" not in m]
    return sorted(kept + runs, key=lambda m: (m["rows"], m["dim"]))


def summarise(result: Result, data: dict[str, Any], quick: bool) -> None:
    table = []
    for m in data["runs"]:
        size = f"{m['rows']:,} x {m['dim']}"
        if "error" in m:
            result.note(f"{size}: not measured ({m['error'][-300:]})")
            continue
        for kind in ("text", "composed"):
            k = m[kind]
            n = m["queries"]
            recall_ratio, batch_ratio = k["recall_s"] / k["floor_s"], k["batch_s"] / k["floor_s"]
            result.row(
                f"recall stage / floor, {n:,} {kind} queries, {size}",
                recall_ratio,
                "x",
                f"≤ {RECALL_TARGET}x",
                recall_ratio <= RECALL_TARGET,
            )
            at_100k = m["rows"] == 100_000
            result.row(
                f"whole batch (Prefect flow) / floor, {n:,} {kind} queries, {size}",
                batch_ratio,
                "x",
                f"≤ {BATCH_TARGET}x at 100k rows" if at_100k else "",
                batch_ratio <= BATCH_TARGET if at_100k else None,
            )
            stages = k["flow_stage_s"]
            models = sum(stages.get(name, 0.0) for name in ("validate", "reasoning", "embedding"))
            rest = k["batch_s"] - sum(stages.values())  # pin, results and contact sheets, flow start and end
            table.append(
                [
                    size,
                    kind,
                    k["query_vectors"],
                    f"{n / k['floor_s']:,.0f}",
                    f"{n / k['recall_s']:,.0f}",
                    f"{recall_ratio:.2f}",
                    f"{n / k['batch_s']:,.1f}",
                    f"{batch_ratio:.0f}",
                    f"{models:.1f}",
                    f"{stages.get('recall', float('nan')):.2f}",
                    f"{rest:.1f}",
                    k["failed"],
                ]
            )
        result.table(
            f"Peak memory, {size}",
            ["matrix", "peak RSS", "peak / matrix", "pin s", "load matrix s"],
            [
                [
                    f"{m['matrix_bytes'] / 2**20:,.0f} MiB",
                    f"{m['peak_rss_bytes'] / 2**20:,.0f} MiB",
                    f"{m['peak_rss_bytes'] / m['matrix_bytes']:.2f}",
                    f"{m['pin_s']:.2f}",
                    f"{m['load_matrix_s']:.2f}",
                ]
            ],
        )
    result.table(
        "Queries/s per batch of 1,000 (hashing embedder, echo reasoner, rerank off)",
        [
            "rows x dim",
            "queries",
            "query vectors",
            "floor q/s",
            "recall q/s",
            "recall / floor",
            "whole batch q/s",
            "batch / floor",
            "flow: validate + reasoning + embedding s",
            "flow: recall s",
            "flow: pin, results, sheets, start/end s",
            "failed",
        ],
        table,
    )
    measured = {(m["rows"], m["dim"]) for m in data["runs"] if "error" not in m}
    if not quick and (1_000_000, 2048) not in measured:
        result.note(
            "1,000,000 x 2048 not measured: its matrix is 7.6 GiB (plus LanceDB's copy while the table is "
            "written) on a shared 23 GiB, 2-core box, and a run would take most of an hour; "
            "`QB_SIZES='[[1000000,2048]]' python -m benchmarks.run --only query_batch` measures it."
        )
    result.note(
        "The machine was shared with other work during these runs: absolute q/s move with its load; "
        "the ratios compare figures taken in the same process minutes apart."
    )
    result.note(
        "Floor: one float32 product of all query vectors (base + reasoning) with the unit gallery matrix, "
        "in r3's 64 MiB score chunks, no top-k; best of two. Recall stage: `r3tasks.query.recall.recall` on the whole "
        "batch with the pinned gallery already in memory. Whole batch: `query_batch` through Prefect, "
        "cold stage caches, including validation, the hashing embedder, the echo reasoner, results and "
        "contact sheets. The embedder and reasoner are fakes so that the model does not dominate."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.query_batch")
    parser.add_argument("mode", choices=["build", "measure"])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, choices=[384, 2048], required=True)
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    from benchmarks.fakes import register_query_batch

    register_query_batch()
    if args.mode == "build":
        report = build(args.home, args.rows, args.dim)
    else:
        report = measure(args.home, args.rows, args.dim, args.queries)
    args.report.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
