"""The three ways a batch starts, on a real Prefect server (127.0.0.1) with a process worker.

Deployments come from deployments/prefect.yaml through scripts/deploy.sh; the worker runs the
flows in subprocesses, which learn the test's fake models from a `sitecustomize` module. Marked
`server` (and `slow`): deselect with `-m 'not server'`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prefect-server.sh"
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.server, pytest.mark.slow]

SITE = """
import os
from r3tasks.models.registry import register_backend
register_backend("embedder", "fake-text", "tests.fakes:load_fake_text_embedder")
register_backend("reasoner", "fake", "tests.fakes:load_fake_reasoner")
register_backend("reranker", "fake", "tests.fakes:load_fake_reranker")

if os.environ.get("R3TEST_FLOCK_LOG"):
    # One line per refused try at a gallery writer's file lock (flows/writers.py): a test sees a writer waiting.
    import fcntl

    _flock = fcntl.flock

    def _logged_flock(fd, operation):
        try:
            return _flock(fd, operation)
        except BlockingIOError:
            number = fd if isinstance(fd, int) else fd.fileno()
            if "/.r3-writers/" in os.readlink(f"/proc/self/fd/{number}"):
                with open(os.environ["R3TEST_FLOCK_LOG"], "a") as log:
                    log.write("refused\\n")
            raise

    fcntl.flock = _logged_flock
"""
CAPTIONS = {
    "dog-day": "a dog runs in a park during the day",
    "cat-sofa": "a cat sleeps on a sofa",
    "car-road": "a car drives on a road",
    "bird-sky": "a bird flies across the sky",
}
QUERIES = [{"id": "t-cat", "text": "a cat sleeping"}, {"id": "t-dog", "text": "a dog at night"}]


def api(url: str, path: str, body: dict | None = None) -> list[dict] | dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def runs_of(url: str, deployment: str) -> list[dict]:
    return api(url, "flow_runs/filter", {"deployments": {"name": {"any_": [deployment]}}, "limit": 20})


def until(what: str, check: Callable[[], object], timeout: float = 240.0) -> object:
    """Bounded wait for something a user would see; fails naming it.

    One poll the server is too busy to answer in time (SQLite on two cores, while the worker's flow writes) is a
    poll that saw nothing yet, as the UI would retry it; a server that never answers still fails at the deadline.
    """
    deadline = time.monotonic() + timeout
    unanswered: OSError | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except urllib.error.HTTPError:
            raise  # an answer, and a wrong one
        except (TimeoutError, urllib.error.URLError) as error:
            unanswered, value = error, None
        if value:
            return value
        time.sleep(1.0)
    last = f" (the last poll went unanswered: {unanswered!r})" if unanswered is not None else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{last}")


def write_manifest(path: Path, captions: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in captions.items()))
    return path


def stop(process: subprocess.Popen) -> None:
    # A process worker ignores the first SIGTERM: a second one ends it.
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("triggers")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    home = root / "r3-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "R3_SERVER_DIR": str(root / "server"),
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
            "R3_HOME": str(home),
            "R3_MODELS__EMBEDDER": "fake-text",
            "R3_MODELS__REASONER": "fake",
            "R3_MODELS__RERANKER": "fake",
            # The fake reranker (word overlap) decides the top-1 this test checks; the offline preset's recall window
            # and additive fusion (protecting recall) would keep the fake embedder's order instead: R^3's fusion.
            "R3_QUERY__RERANK_RECALL_WINDOW": "null",
            "R3_QUERY__FINAL_RERANKER_SCALE": "null",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        }
    )
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=240)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]
    env["PREFECT_API_URL"] = f"{url}/api"
    worker = None
    try:
        manifest = write_manifest(root / "gallery.jsonl", CAPTIONS)
        standing = root / "standing.jsonl"
        standing.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
        deploy_env = {
            **env,
            "R3DEPLOY_GALLERY": str(manifest),
            "R3DEPLOY_CRON": "0 0 1 1 *",
            "R3DEPLOY_PRESET": "offline",
            "R3DEPLOY_STANDING_QUERIES": str(standing),
            "R3DEPLOY_PREFECT": str(BIN / "prefect"),
        }
        deployed_ = subprocess.run(
            ["bash", str(REPO / "scripts" / "deploy.sh")],
            env=deploy_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deployed_.returncode == 0, deployed_.stdout[-2000:] + deployed_.stderr[-3000:]
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "r3-local"],
            env=env,
            cwd=REPO,
            stdout=(root / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        yield {"url": url, "env": env, "root": root, "home": home, "manifest": manifest}
    finally:
        if worker is not None:
            stop(worker)
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)


def refreshed_events(url: str) -> list[dict]:
    """The `r3.gallery.refreshed` events the server has recorded."""
    page = api(url, "events/filter", {"filter": {"event": {"name": ["r3.gallery.refreshed"]}}, "limit": 50})
    return page["events"]


def emitted_by(event: dict) -> str | None:
    """The id of the flow run an event was emitted from."""
    runs = [r["prefect.resource.id"] for r in event["related"] if r.get("prefect.resource.role") == "flow-run"]
    return runs[0].removeprefix("prefect.flow-run.") if runs else None


def completed(url: str, deployment: str, n: int = 1) -> list[dict] | None:
    runs = runs_of(url, deployment)
    done = [r for r in runs if r["state_type"] == "COMPLETED"]
    failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
    assert not failed, f"{deployment} run failed: {failed[0]['state_name']}"
    return done if len(done) >= n else None


def test_a_batch_by_hand_and_after_a_refresh_that_changed_the_gallery(deployed: dict) -> None:
    url, env, root = deployed["url"], deployed["env"], deployed["root"]
    # 1. By hand, as from the UI form: the refresh, then a batch pinned to the refresh's tag.
    ran = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "index-gallery/gallery-refresh"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    refresh = until("the refresh to complete", lambda: completed(url, "gallery-refresh"))[0]
    # 2. The refresh changed the gallery: the standing queries ran by themselves, with their changes artifact.
    standing = until("the standing-queries run the refresh triggered", lambda: completed(url, "standing-queries"))
    assert len(standing) == 1
    artifacts = api(url, "artifacts/filter", {"flow_runs": {"id": {"any_": [standing[0]["id"]]}}})
    changes = [a for a in artifacts if a["key"] == "standing-changes"]
    assert changes and "t-cat" in json.dumps(changes[0]["data"])
    assert standing[0]["parameters"]["gallery_version"].startswith("refresh-")

    out = root / "by-hand.json"
    ran = subprocess.run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "query-batch/query-batch",
            "-p",
            f"queries={root / 'standing.jsonl'}",
            "-p",
            f"out={out}",
            "-p",
            f"gallery_version={standing[0]['parameters']['gallery_version']}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    until("the hand-started batch", lambda: completed(url, "query-batch"))
    results = json.loads(out.read_text())["results"]
    assert results[0]["ranked"][0]["id"] == "cat-sofa"

    # An unchanged refresh emits nothing, so it starts no standing run.
    subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "index-gallery/gallery-refresh"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    until("the second refresh", lambda: completed(url, "gallery-refresh", 2))
    # Nothing to wait for proves a negative; something later does. The server handles events in the order they
    # arrive, so an event of the second refresh would be recorded, and its standing run created, before those of
    # a later refresh: a third refresh that does change the gallery (one clip added) is that later event.
    more = write_manifest(root / "gallery-more.jsonl", {**CAPTIONS, "fish-tank": "a fish swims in a tank"})
    subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "index-gallery/gallery-refresh", "-p", f"source={more}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    refreshes = until("the third refresh", lambda: completed(url, "gallery-refresh", 3))
    third = next(r for r in refreshes if r["parameters"]["source"] == str(more))
    events = until(
        "the server to record the third refresh's event",
        lambda: [e for e in refreshed_events(url) if emitted_by(e) == third["id"]] and refreshed_events(url),
    )
    assert sorted(emitted_by(e) for e in events) == sorted([refresh["id"], third["id"]])  # none from the second
    third_tag = next(e["payload"]["tag"] for e in events if emitted_by(e) == third["id"])
    until(
        "the standing run the third refresh triggered",
        lambda: [
            r for r in completed(url, "standing-queries") or [] if r["parameters"]["gallery_version"] == third_tag
        ],
    )
    tags = sorted(r["parameters"]["gallery_version"] for r in runs_of(url, "standing-queries"))
    assert tags == sorted(e["payload"]["tag"] for e in events)  # one standing run per changing refresh, no other


def test_a_file_dropped_in_the_inbox_runs_one_batch(deployed: dict) -> None:
    url, env, root = deployed["url"], deployed["env"], deployed["root"]
    if not completed(url, "gallery-refresh"):
        subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "index-gallery/gallery-refresh"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        until("a refresh", lambda: completed(url, "gallery-refresh"))
    inbox = root / "inbox"
    inbox.mkdir()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "watch", str(inbox), "--polls", "40"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        target = inbox / "mine.jsonl"
        with target.open("w") as handle:  # written in pieces
            handle.write(json.dumps(QUERIES[0]) + "\n")
            handle.flush()
            time.sleep(0.5)
            handle.write(json.dumps(QUERIES[1]) + "\n")
        done = until("the batch the dropped file started", lambda: completed(url, "query-batch-inbox"))
        assert len(done) == 1 and done[0]["parameters"]["queries"] == str(target.resolve())
        results = json.loads((inbox / "results" / "mine.results.json").read_text())["results"]
        assert [r["id"] for r in results] == ["t-cat", "t-dog"]  # the whole file, not its first piece
    finally:
        stop(watcher)
    assert len(runs_of(url, "query-batch-inbox")) == 1


def test_a_second_writer_waits_or_is_refused(deployed: dict) -> None:
    from flows.writers import writer_slot
    from r3tasks.gallery.pinned import pin
    from r3tasks.gallery.views import open_store
    from r3tasks.settings.tree import load_settings

    url, env, root = deployed["url"], deployed["env"], deployed["root"]
    manifest = write_manifest(root / "g2.jsonl", {**CAPTIONS, "boat": "a boat on a lake"})
    settings = load_settings(home=deployed["home"], models={"embedder": "fake-text"})
    import prefect.settings

    def version_now() -> int | None:
        store = open_store(settings)  # a fresh handle: it sees commits made by other processes
        return store.version() if store.exists() else None

    with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: f"{url}/api"}):
        with writer_slot(open_store(settings), settings):  # this test is the writer now
            held_at = version_now()
            refused = subprocess.run(
                [sys.executable, "-m", "flows.cli", "index", str(manifest)],
                env={**env, "R3_UPKEEP__WRITER_WAIT_SECONDS": "0"},
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert refused.returncode == 2
            assert "is being written by another run" in refused.stderr and "not waiting" in refused.stderr
            refusals = root / "waiting-writer-flock.log"
            waiting = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "index", str(manifest), "--json"],
                env={**env, "R3TEST_FLOCK_LOG": str(refusals)},  # the sitecustomize logs its refused lock tries
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # The event: the second writer was refused the slot and tried again, so it waits. A writer that
            # ignored the slot would have written after its first refusal; one that gave up would have exited.
            until(
                "the second writer to be refused the slot twice",
                lambda: refusals.exists() and refusals.read_text().count("refused") >= 2,
                timeout=180,
            )
            assert waiting.poll() is None  # still waiting for the slot this test holds
            assert version_now() == held_at  # nothing written meanwhile
        out, err = waiting.communicate(timeout=240)
    assert waiting.returncode == 0, err[-3000:]
    assert json.loads(out)["added"] >= 1 and "boat" in pin(open_store(settings)).records
