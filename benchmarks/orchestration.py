"""5. Orchestration overhead: the `index_gallery` flow against the same work as plain library calls.

Both arms index the same 1,000 items (generated video clips, and caption-only
items for the least work per item) into a fresh data home
(own LanceDB table, own Prefect result store), with the embedder already
loaded, alternating arms to spread the shared machine's noise. The flow arm
talks to one temporary Prefect server (SQLite, started once; its start is
reported on its own row), with Prefect's defaults: INFO logs shipped to the
API, task results persisted, artifacts written. The plain arm is
`benchmarks.indexing_common.index_plain`: discover, key, plan against the
table, embed each batch of `index.batch_size`, commit as the flow does, remove.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Context, Result
from benchmarks.fakes import COUNTED_QWEN3VL, HASH_TEXT
from benchmarks.galleries import ensure_clips, write_text_manifest, write_video_manifest
from benchmarks.indexing_common import index_plain, index_with_flow, preload
from benchmarks.torch_threads import single_torch_thread
from r3tasks.settings.tree import IndexSettings

NAME = "orchestration"
TITLE = "Orchestration overhead: Prefect flow vs plain function calls"
N_ITEMS = 1000
TARGET = 0.10


def _arm(
    ctx: Context, arm: str, manifest_of: Callable[[Path], Path], n: int, overrides: dict[str, Any]
) -> tuple[float, tuple[int, int]]:
    home = ctx.new_home(f"orch-{arm}")
    try:
        manifest = manifest_of(home)
        embedder = preload(home, overrides)
        before = embedder.counts()
        start = time.perf_counter()
        if arm == "flow":
            summary = index_with_flow(manifest, home, overrides)
            written = summary["added"]
        else:
            written = index_plain(manifest, home, overrides)["written"]
        wall = time.perf_counter() - start
        after = embedder.counts()
        if written != n:
            raise RuntimeError(f"{arm} arm wrote {written} of {n} items")
        return wall, (after[0] - before[0], after[1] - before[1])
    finally:
        ctx.drop_home(home)


def _compare(
    ctx: Context, label: str, manifest_of: Callable[[Path], Path], n: int, overrides: dict[str, Any], rounds: int
) -> dict[str, Any]:
    walls: dict[str, list[float]] = {"plain": [], "flow": []}
    calls: dict[str, tuple[int, int]] = {}
    for r in range(rounds):
        for arm in ("plain", "flow") if r % 2 == 0 else ("flow", "plain"):
            wall, counted = _arm(ctx, arm, manifest_of, n, overrides)
            walls[arm].append(wall)
            calls[arm] = counted
            ctx.log(f"  {label}: {arm} {wall:.2f} s ({counted[1]} items in {counted[0]} embedder calls)")
    plain, flow = statistics.median(walls["plain"]), statistics.median(walls["flow"])
    batch = overrides.get("index", {}).get("batch_size", IndexSettings.model_fields["batch_size"].default)
    return {
        "plain_s": walls["plain"],
        "flow_s": walls["flow"],
        "plain": plain,
        "flow": flow,
        "overhead": (flow - plain) / plain,
        "calls": calls,
        "batch_size": batch,
        "label": label,
        "task_runs": task_runs(n, overrides),
    }


def task_runs(n: int, overrides: dict[str, Any]) -> int:
    """Task runs of one index run: an embed task per batch, the commits, and discover/keys/plan/remove/artifacts.

    The commits are counted as the flow makes them when embedding is quicker than index.commit_seconds
    (one at the end) or, with commit_seconds 0, one per batch.
    """
    index = {**{k: f.default for k, f in IndexSettings.model_fields.items()}, **overrides.get("index", {})}
    embed_tasks = -(-n // index["batch_size"])
    commits = embed_tasks if index["commit_seconds"] == 0 else max(1, -(-n // index["commit_max_rows"]))
    return embed_tasks + commits + 5


def _cold_process(ctx: Context, n: int, arm: str) -> float | None:
    """Wall time of a fresh `python` process indexing `n` items with the hashing fake: imports, and for the
    flow arm Prefect's own temporary server started on demand (no server configured), included."""
    home = ctx.new_home(f"orch-cold-{arm}")
    prefect_home = Path(tempfile.mkdtemp(prefix="r3-bench-cold-prefect-"))
    try:
        manifest = write_text_manifest(home / "gallery.jsonl", n)
        script = (
            "import json, time, sys\n"
            "start = time.perf_counter()\n"
            "from pathlib import Path\n"
            "from benchmarks.fakes import register\n"
            "register()\n"
            "from benchmarks.indexing_common import index_plain, index_with_flow\n"
            f"fn = index_with_flow if {arm!r} == 'flow' else index_plain\n"
            f"fn(Path({str(manifest)!r}), Path({str(home)!r}), {{'models': {{'embedder': {HASH_TEXT!r}}}}})\n"
            "print(json.dumps({'inner_s': time.perf_counter() - start}))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "R3_"))}
        env.update(
            PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING"
        )
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            ctx.log(f"  cold {arm} process failed: {done.stderr[-800:]}")
            return None
        json.loads(done.stdout.strip().splitlines()[-1])
        return wall
    finally:
        ctx.drop_home(home)
        import shutil

        shutil.rmtree(prefect_home, ignore_errors=True)


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    n = N_ITEMS
    rounds = 2 if ctx.quick else 3
    clips, _ = ensure_clips(ctx.work / "clips", n, ctx.log)
    videos = lambda home: write_video_manifest(home / "gallery.jsonl", clips)  # noqa: E731
    captions = lambda home: write_text_manifest(home / "gallery.jsonl", n)  # noqa: E731
    server_s = ctx.prefect_server()
    tiny = {"models": {"preset": "tiny", "embedder": COUNTED_QWEN3VL}}
    hashing = {"models": {"embedder": HASH_TEXT}}
    before = {"index": {"batch_size": 16, "commit_seconds": 0, "max_batches_in_flight": 100_000}}
    compared: dict[str, dict[str, Any]] = {}
    with single_torch_thread():
        # One batch in flight: the flow does exactly the plain arm's sequential work, so the difference is
        # Prefect's own cost. With the default two in flight it also overlaps decoding with embedding.
        compared["tiny_video_serial"] = _compare(
            ctx,
            "video items, tiny, one batch in flight",
            videos,
            n,
            {**tiny, "index": {"max_batches_in_flight": 1}},
            rounds,
        )
        compared["tiny_video"] = _compare(ctx, "video items, tiny, default settings", videos, n, tiny, rounds)
        compared["tiny_caption"] = _compare(ctx, "caption items, tiny", captions, n, tiny, rounds)
        compared["hash"] = _compare(ctx, "caption items, hashing fake", captions, n, hashing, rounds)
        compared["tiny_caption_before"] = _compare(
            ctx, "caption items, tiny, previous defaults", captions, n, {**tiny, **before}, rounds
        )
        compared["hash_before"] = _compare(
            ctx, "caption items, hashing fake, previous defaults", captions, n, {**hashing, **before}, rounds
        )
    cold_flow = _cold_process(ctx, n, "flow")
    cold_plain = _cold_process(ctx, n, "plain")
    result.data.update(
        compared=compared, server_start_s=server_s, cold_flow_s=cold_flow, cold_plain_s=cold_plain, n=n, rounds=rounds
    )
    summarise(result, result.data, ctx.quick)
    return result


def summarise(result: Result, data: dict[str, Any], quick: bool) -> None:
    """Rows, tables and notes from the measurements in `data` (also used to re-render stored results)."""
    n, rounds, runs = data.get("n", N_ITEMS), data["rounds"], data["compared"]
    server_s, cold_flow, cold_plain = data["server_start_s"], data["cold_flow_s"], data["cold_plain_s"]

    def about(c: dict[str, Any]) -> str:
        return (
            f"flow {c['flow']:.2f} s vs plain {c['plain']:.2f} s (median of {rounds}); "
            f"batch_size {c['batch_size']}, {c['task_runs']} task runs"
        )

    serial = runs["tiny_video_serial"]
    result.row(
        f"Prefect overhead, index {n:,} video items (decode + `tiny` embed), one batch in flight (flow / plain − 1)",
        100 * serial["overhead"],
        "%",
        target="≤ 10 %",
        passed=serial["overhead"] <= TARGET,
        note=about(serial),
    )
    video = runs["tiny_video"]
    result.row(
        f"flow with its defaults (two batches in flight: decoding overlaps embedding) vs the sequential plain "
        f"calls, {n:,} video items",
        100 * video["overhead"],
        "%",
        note=about(video),
    )
    for key, text in [
        ("tiny_caption", f"Prefect overhead, {n:,} caption items, `tiny` (text only, the least work per item)"),
        ("hash", "Prefect overhead, caption items, hashing fake embedder (orchestration alone)"),
        (
            "tiny_caption_before",
            "previous defaults (batch_size 16, a commit per batch, all batches submitted at "
            "once), caption items, `tiny`",
        ),
        ("hash_before", "previous defaults, caption items, hashing fake"),
    ]:
        result.row(text, 100 * runs[key]["overhead"], "%", note=about(runs[key]))
    for key in ("hash", "hash_before"):
        c = runs[key]
        result.row(
            f"Prefect cost per task run, hashing fake, batch_size {c['batch_size']} (extra wall / task runs)",
            1000 * (c["flow"] - c["plain"]) / c["task_runs"],
            "ms",
        )
    result.row("temporary Prefect server start (once per run, not in the rows above)", server_s, "s")
    if cold_flow is not None and cold_plain is not None:
        result.row(
            "fresh process, no server configured: flow (starts Prefect's own server) vs plain, hashing fake",
            cold_flow,
            "s",
            note=f"plain fresh process {cold_plain:.1f} s; ratio {cold_flow / cold_plain:.1f}x",
        )
    result.table(
        "All timings (s)",
        [
            "items, embedder, settings",
            "batch_size",
            "task runs",
            "plain runs",
            "flow runs",
            "plain median",
            "flow median",
            "overhead",
        ],
        [
            [
                c["label"],
                c["batch_size"],
                c["task_runs"],
                ", ".join(f"{x:.2f}" for x in c["plain_s"]),
                ", ".join(f"{x:.2f}" for x in c["flow_s"]),
                f"{c['plain']:.2f}",
                f"{c['flow']:.2f}",
                f"{100 * c['overhead']:+.0f} %",
            ]
            for c in runs.values()
        ],
    )
    hashed, hashed_before = runs["hash"], runs["hash_before"]
    extra = hashed["flow"] - hashed["plain"]
    extra_before = hashed_before["flow"] - hashed_before["plain"]
    result.note(
        f"Why it was missed before: with the free (hashing) embedder the previous defaults added {extra_before:.1f} s "
        f"for {hashed_before['task_runs']} task runs, an embed task and a LanceDB commit task per batch of 16. The cost "
        "is per task run (task-run records and state changes on the server, result persistence, a LanceDB "
        "reconnect per commit, a progress update and a log line per batch), so the design now runs fewer, larger "
        f"tasks (batch_size {hashed['batch_size']}: frames are decoded one forward pass at a time inside a task, so "
        "a larger batch costs no memory) and commits rows every index.commit_seconds instead of per batch: "
        f"{extra:.1f} s for {hashed['task_runs']} task runs now. The fixed part per flow run stays, so the "
        "overhead ratio is largest where the work per item is least (caption items with the tiny model)."
    )
    result.note(
        "Both arms do the same work with the same commit policy: discover, content keys, plan against the table, "
        "embed per batch, commit, remove stale rows. Included in the flow arm only: flow and task run records and "
        "state changes on the server, INFO logs sent to the API, cache-key computation and result persistence of "
        "every embed task, the progress and summary artifacts. Excluded from both arms: model loading (done before "
        "timing) and the server start (its own row). Video items are generated clips (96x128, 2 s, 8 fps; "
        "benchmarks/galleries.py). torch runs with one intra-op thread in both arms (see "
        "benchmarks/torch_threads.py)."
    )
