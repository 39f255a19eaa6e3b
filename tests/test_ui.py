"""The Prefect UI in a real browser: a server started by scripts/prefect-server.sh, index runs and a query
batch made against it (fake models), then headless Chromium (driven by Playwright) finds the last index run
and its artifacts, the batch and its `query-report` and `lineage-*` artifacts, and the assets: the gallery
table (`lancedb://...`) the refresh materialized and the results file (`file://...`) the batch did.
Prefect 3.8.8's UI has no Assets page, so the assets are checked where it shows them: the Event Feed,
filtered to asset materializations, each with its upstream assets as related resources.

Skipped, with the reason, when Playwright or a Chromium binary is missing (`.ci/run` installs both).
Set R3TEST_SAVE_SCREENSHOT=1 to also save the screenshots as docs/ui-index-run.png, docs/ui-query-run.png
and docs/ui-assets.png (not R3_*: the test session clears every R3_* variable), R3TEST_CHROMIUM to pick the
browser binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from r3tasks.datasets.synthetic import ClipSpec, write_clip

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prefect-server.sh"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    chosen = os.environ.get("R3TEST_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


# What a test driving a real browser needs; skipped with the reason when either is missing.
NEEDS_A_BROWSER = [
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("playwright") is None,
        reason="Playwright is not installed (pip install 'r3[ui]'); .ci/run installs it",
    ),
    pytest.mark.skipif(
        chromium_path() is None,
        reason="no Chromium browser found (apt-get install chromium, or set R3TEST_CHROMIUM); .ci/run installs it",
    ),
]
pytestmark = NEEDS_A_BROWSER

CLI_SCRIPT = textwrap.dedent(
    """
    import sys
    from r3tasks.models.registry import register_backend
    register_backend("embedder", "fake", "tests.fakes:load_fake_embedder")
    register_backend("reasoner", "fake", "tests.fakes:load_fake_reasoner")
    register_backend("reranker", "fake", "tests.fakes:load_fake_reranker")
    from flows.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


MATERIALIZED = "prefect.asset.materialization.succeeded"


def api(url: str, path: str, body: dict) -> Any:
    request = urllib.request.Request(
        f"{url}/api/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def asset_events(url: str, awaited: str) -> dict[str, dict]:
    """The materialization events by asset key, once `awaited`'s has arrived (events are written asynchronously)."""
    for _ in range(120):
        found = api(url, "events/filter", {"filter": {"event": {"name": [MATERIALIZED]}}, "limit": 50})["events"]
        by_key = {e["resource"]["prefect.resource.id"]: e for e in found}
        if awaited in by_key:
            return by_key
        time.sleep(0.5)
    raise AssertionError(f"no materialization of {awaited} within 60s; got {sorted(by_key)}")


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server of its own (not the session's test server), started and stopped by the project script."""
    env = {
        **os.environ,
        "R3_SERVER_DIR": str(tmp_path / "server"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip().splitlines()[-1]
        assert url.startswith("http://127.0.0.1:")
        pid = int((tmp_path / "server" / "server.pid").read_text())
        yield url, env
    finally:
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the server the script started is gone
    status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=30)
    assert status.returncode == 1


def test_ui_shows_the_last_index_run_a_query_batch_their_artifacts_and_the_assets(
    tmp_path: Path, prefect_server: tuple[str, dict[str, str]]
) -> None:
    from playwright.sync_api import sync_playwright

    url, env = prefect_server
    gallery = tmp_path / "gallery"
    for spec in [
        ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1),
        ClipSpec(shape="square", colour="blue", motion="left", background="night", count=2),
    ]:
        write_clip(gallery / f"{spec.clip_id()}.mp4", spec, seconds=1.0, caption_sidecar=True)
    (gallery / "not-a-video.mp4").write_text("a shopping list\n" * 20)
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    home = str(tmp_path / "r3-home")
    run_env = {
        **env,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": f"{url}/api",
        "R3_MODELS__EMBEDDER": "fake",
        "R3_MODELS__REASONER": "fake",
        "R3_MODELS__RERANKER": "fake",
    }

    def cli(*argv: str) -> dict:
        done = subprocess.run(
            [sys.executable, str(script), *argv, "--home", home, "--json"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    for _ in range(2):  # two runs: the UI must show the last one
        summary = cli("index", str(gallery))
    assert summary["unchanged"] == 2 and [f["id"] for f in summary["failed"]] == ["not-a-video"]

    runs = api(
        url, "flow_runs/filter", {"flows": {"name": {"any_": ["index-gallery"]}}, "sort": "START_TIME_DESC", "limit": 5}
    )
    assert len(runs) == 2 and runs[0]["state_type"] == "COMPLETED"
    last = runs[0]
    artifacts = api(url, "artifacts/filter", {"flow_runs": {"id": {"any_": [last["id"]]}}})
    keys = {a["key"] for a in artifacts}
    assert {"index-counts", "index-failures", "index-lineage", "index-progress"} <= keys

    red = ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1).clip_id()
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        json.dumps({"id": "q-night", "source": red, "edit": "make it night"})
        + "\n"
        + json.dumps({"id": "t-blue", "text": "two blue squares moving left"})
        + "\n"
    )
    results_file = tmp_path / "results" / "results.json"
    answered = cli("query", str(queries), "--out", str(results_file))
    assert answered["queries"] == 2 and answered["failed"] == 0
    batches = api(url, "flow_runs/filter", {"flows": {"name": {"any_": ["query-batch"]}}, "limit": 5})
    assert len(batches) == 1 and batches[0]["state_type"] == "COMPLETED"
    batch = batches[0]
    batch_keys = {a["key"] for a in api(url, "artifacts/filter", {"flow_runs": {"id": {"any_": [batch["id"]]}}})}
    lineage_keys = ("lineage-reasoning", "lineage-query-embedding", "lineage-rerank")
    assert {"query-report", *lineage_keys} <= batch_keys

    results_key = f"file://{results_file.as_posix().lstrip('/')}"
    materialized = asset_events(url, results_key)
    gallery_key = next(key for key in materialized if key.startswith("lancedb://"))
    upstream = {
        r["prefect.resource.id"] for r in materialized[results_key]["related"] if r["prefect.resource.role"] == "asset"
    }
    assert gallery_key in upstream  # the results file was read from the gallery table

    screenshot = tmp_path / "ui-index-run.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],  # root in a container
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/runs", wait_until="networkidle")
            # The runs list, newest first: the last index run is there by its name; open it.
            page.get_by_role("link", name=last["name"]).first.click()
            page.wait_for_url(f"**/flow-run/{last['id']}**")
            page.get_by_text("index-gallery").first.wait_for()
            page.get_by_text("Artifacts", exact=True).click()
            for key in ("index-counts", "index-failures", "index-lineage"):
                page.get_by_text(key, exact=True).last.wait_for()
            body = page.inner_text("body")
            assert last["name"] in body and "Completed" in body
            assert "Items that could not be indexed, with the reason." in body
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(screenshot))

            # The failures artifact itself names the bad file and why.
            page.get_by_text("index-failures", exact=True).last.click()
            page.get_by_text("not-a-video", exact=True).first.wait_for()
            assert "not a video" in page.inner_text("body")
            page.screenshot(path=str(tmp_path / "ui-index-failures.png"))

            query_shot = tmp_path / "ui-query-run.png"
            page.goto(f"{url}/runs", wait_until="networkidle")
            page.get_by_role("link", name=batch["name"]).first.click()
            page.wait_for_url(f"**/flow-run/{batch['id']}**")
            page.get_by_text("query-batch").first.wait_for()
            page.get_by_text("Artifacts", exact=True).click()
            for key in ("query-report", *lineage_keys):
                page.get_by_text(key, exact=True).last.wait_for()
            assert "Each query's reasoning and top-5." in page.inner_text("body")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(query_shot))

            assets_shot = tmp_path / "ui-assets.png"
            # Prefect 3.8.8's own UI has no Assets page (no /assets route): asset materializations show
            # as events, so the Events page, filtered to them, is where a user sees the assets.
            page.goto(f"{url}/events?events={quote(MATERIALIZED)}", wait_until="networkidle")
            page.get_by_text(MATERIALIZED).first.wait_for()
            page.get_by_text(results_key, exact=True).first.wait_for()
            page.get_by_text(gallery_key, exact=True).first.wait_for()
            feed = page.inner_text("body")
            assert feed.count("Asset materialization succeeded") >= 2  # the refresh's table and the batch's file
            assert "r3://embedder/" in feed and queries.name in feed  # each asset's upstreams, as related resources
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(assets_shot))
        finally:
            browser.close()

    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("R3TEST_SAVE_SCREENSHOT") == "1":
        for shot in (screenshot, query_shot, assets_shot):
            target = REPO / "docs" / shot.name
            target.parent.mkdir(exist_ok=True)
            shutil.copy(shot, target)
