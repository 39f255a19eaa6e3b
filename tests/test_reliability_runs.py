"""Reliability, continued: kill -9 during indexing, a refresh during a batch, flaky and failing model calls.

Split from tests/test_reliability.py (same fixtures and backends, imported from there).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.gallery.table import open_committed
from tests.test_reliability import (
    CAPTIONS,
    FAKE_QUERY_MODELS,
    REPO,
    FlakyEmbedder,
    GatedReranker,
    table_ids,
    write_caption_gallery,
    write_queries,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

# ---------------------------------------------------------------------------
# 3. kill -9 at random points of an index run, repeated, then a rerun

SLOW_INDEX_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from r3tasks.models.registry import register_backend
    import tests.fakes as fakes

    class SlowFake(fakes.FakeEmbedder):
        lock = threading.Lock()  # one model: batches take their turn, as on one GPU

        def embed_documents(self, items, instruction):
            with self.lock:
                time.sleep(0.15)
                return super().embed_documents(items, instruction)

    fakes.load_slow = lambda settings: SlowFake(uses_frames=False)
    register_backend("embedder", "slow", "tests.fakes:load_slow")
    from flows.cli import main
    sys.exit(main(["index", sys.argv[1], "--home", sys.argv[2], "--json"]))
    """
)


def _lance_ids(home: Path) -> list[str]:
    import lancedb

    folder = home / "lancedb"
    tables = sorted(folder.glob("gallery_*.lance")) if folder.exists() else []
    assert len(tables) <= 1
    if not tables:
        return []
    # The writer may be inside its first commit (folder made, manifest not yet written): no rows yet.
    table = open_committed(lancedb.connect(folder), tables[0].name.removesuffix(".lance"))
    return [] if table is None else table.to_arrow().column("id").to_pylist()


def test_repeated_kill_9_at_random_points_then_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, r3_home: Path
) -> None:
    import prefect.settings

    n_items = 120
    expected = [f"item-{i:03d}" for i in range(n_items)]
    manifest = tmp_path / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": i, "text": f"caption of {i}"}) for i in expected) + "\n")
    script = tmp_path / "slow_index.py"
    script.write_text(SLOW_INDEX_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
        "R3_MODELS__EMBEDDER": "slow",
        "R3_INDEX__BATCH_SIZE": "3",
        # Commits of a few batches each, so kills land between commits, inside them, and between a batch's
        # embedding and the commit that would have stored it.
        "R3_INDEX__COMMIT_SECONDS": "0.3",
    }
    rng = random.Random(20240607)
    kills: list[dict] = []
    # Kill 0 lands at a random time after launch, whatever the run is doing (start-up, planning, embedding);
    # kills 1-4 after a random number of new rows plus a random fraction of a batch, so they land
    # between commits and inside them, however fast this machine is.
    for attempt in range(5):
        before = _lance_ids(r3_home)
        process = subprocess.Popen(
            [sys.executable, str(script), str(manifest), str(r3_home)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if attempt == 0:
                point = f"{rng.uniform(0.5, 3.0):.2f} s after launch"
                time.sleep(float(point.split()[0]))
            else:
                target = len(before) + rng.randint(3, 18)
                jitter = rng.uniform(0.0, 0.2)
                point = f"{target - len(before)}+ new rows, then {jitter:.2f} s"
                deadline = time.monotonic() + 120
                while len(_lance_ids(r3_home)) < target and process.poll() is None:
                    assert time.monotonic() < deadline, "the index run stopped writing"
                    time.sleep(0.02)
                time.sleep(jitter)
            finished = process.poll() is not None
            if not finished:
                os.kill(process.pid, signal.SIGKILL)
                assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
        ids = _lance_ids(r3_home)
        kills.append({"attempt": attempt, "point": point, "rows": len(ids), "finished": finished})
        assert len(ids) == len(set(ids)), f"duplicate ids after kill {attempt}: {kills}"
        assert set(ids) <= set(expected)
        assert set(before) <= set(ids), f"a kill lost rows already written: {kills}"
    killed_mid_run = [k for k in kills[1:] if not k["finished"] and k["rows"] < n_items]
    assert len(killed_mid_run) == 4, f"a run finished before its kill: {kills}"

    rows_before = len(_lance_ids(r3_home))
    completed = subprocess.run(
        [sys.executable, str(script), str(manifest), str(r3_home)], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout)
    assert summary["added"] == n_items - rows_before and summary["unchanged"] == rows_before
    assert summary["failed"] == [] and summary["removed"] == 0
    ids = _lance_ids(r3_home)
    assert len(ids) == n_items and sorted(ids) == expected, kills


# ---------------------------------------------------------------------------
# 4. A refresh during a query batch


def test_a_refresh_during_a_query_batch_does_not_change_its_results(tmp_path: Path, r3_home: Path) -> None:
    models = {**FAKE_QUERY_MODELS, "reranker": "gated"}
    manifest = write_caption_gallery(tmp_path / "g")
    index_gallery(source=str(manifest), home=str(r3_home), overrides={"models": models})
    queries = write_queries(
        tmp_path / "queries.jsonl",
        [
            {"id": "q-night", "source": "dog-park-day", "edit": "make it night"},
            {"id": "q-cat", "source": "car-road", "edit": "a cat sleeps on a sofa instead"},
            {"id": "t-dog", "text": "a dog at night in a park"},
        ],
    )
    run = lambda: query_batch(queries=str(queries), home=str(r3_home), overrides={"models": models})  # noqa: E731
    alone = run()
    version = alone["results"][0]["lineage"]["gallery"]["version"]

    # The refresh removes a top result and adds better matches for every query.
    refreshed = {k: v for k, v in CAPTIONS.items() if k != "dog-park-night"}
    refreshed.update(
        {
            "night-dog": "a dog runs in a park at night, make it night",
            "sofa-cat": "a cat sleeps on a sofa instead",
            "dog-2": "a dog at night in a park",
        }
    )
    shutil.rmtree(r3_home / "cache", ignore_errors=True)  # the concurrent batch must really call its models
    GatedReranker.entered.clear()
    GatedReranker.release.clear()
    GatedReranker.armed = True
    outcome: dict = {}

    def batch() -> None:
        try:
            outcome["payload"] = run()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = error

    thread = threading.Thread(target=batch)
    try:
        thread.start()
        assert GatedReranker.entered.wait(120), "the batch never reached its rerank stage"
        # The batch has pinned its version and is mid-way: refresh the gallery under it.
        refresh = index_gallery(
            source=str(write_caption_gallery(tmp_path / "g", refreshed)),
            home=str(r3_home),
            overrides={"models": models},
        )
        assert refresh["added"] == 3 and refresh["removed"] == 1 and refresh["version"] > version
    finally:
        GatedReranker.release.set()
        thread.join(180)
        GatedReranker.armed = False
    assert "error" not in outcome, outcome.get("error")
    during = outcome["payload"]

    assert [r["lineage"]["gallery"]["version"] for r in during["results"]] == [version] * 3
    assert [(r["id"], r["ranked"], r["error"]) for r in during["results"]] == [
        (r["id"], r["ranked"], r["error"]) for r in alone["results"]
    ]
    after = run()  # the same batch now sees the refreshed gallery, so the equality above was not luck
    assert after["results"][0]["lineage"]["gallery"]["version"] == refresh["version"]
    assert [r["ranked"] for r in after["results"]] != [r["ranked"] for r in alone["results"]]
    assert "dog-park-night" not in {i["id"] for r in after["results"] for i in r["ranked"]}


# ---------------------------------------------------------------------------
# 5. Flaky and failing model calls


def test_a_transient_model_failure_is_retried_and_the_batch_indexes(tmp_path: Path, r3_home: Path) -> None:
    FlakyEmbedder.calls, FlakyEmbedder.always = 0, set()
    manifest = write_caption_gallery(tmp_path / "g")
    overrides = {"models": {"embedder": "flaky"}, "index": {"batch_size": 8, "retry_delay_seconds": 0}}

    summary = index_gallery(source=str(manifest), home=str(r3_home), overrides=overrides)

    assert summary["failed"] == [] and summary["added"] == len(CAPTIONS)
    assert table_ids(r3_home, "flaky") == sorted(CAPTIONS)
    # One batch: the failed call and its retry (embedding items one by one instead would make 1 + 5).
    assert FlakyEmbedder.calls == 2


def test_a_model_call_that_always_fails_ends_only_its_item(tmp_path: Path, r3_home: Path) -> None:
    FlakyEmbedder.calls, FlakyEmbedder.always = 0, {"cat-sofa"}
    manifest = write_caption_gallery(tmp_path / "g")
    overrides = {"models": {"embedder": "flaky"}, "index": {"batch_size": 2, "retries": 2, "retry_delay_seconds": 0}}

    summary = index_gallery(source=str(manifest), home=str(r3_home), overrides=overrides)

    assert [f["id"] for f in summary["failed"]] == ["cat-sofa"]
    reason = summary["failed"][0]["reason"]
    assert "TransientError" in reason and "timed out on cat-sofa" in reason and "after 2 retries" in reason
    assert summary["added"] == len(CAPTIONS) - 1
    assert table_ids(r3_home, "flaky") == sorted(set(CAPTIONS) - {"cat-sofa"})

    # A permanent, item-level refusal (ItemError) fails that item at once, without retries.
    other_home = tmp_path / "home2"
    other_home.mkdir()
    summary = index_gallery(
        source=str(manifest),
        home=str(other_home),
        overrides={"models": {"embedder": "refusing"}, "index": {"batch_size": 2}},
    )
    assert [(f["id"], f["reason"]) for f in summary["failed"]] == [("car-road", "injected embedder failure")]
    assert table_ids(other_home, "refusing") == sorted(set(CAPTIONS) - {"car-road"})
