"""Scale-out: the embedding stage on a Dask cluster, and the gallery on S3 (moto's server on 127.0.0.1).

Both run the real flows end to end under the session's Prefect test server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import tests.fakes as fakes
from flows.cli import main as cli_main
from flows.index_flow import embedding_task_runner, index_gallery
from flows.query_flow import query_batch
from r3tasks.gallery.pinned import snapshot
from r3tasks.gallery.views import open_store
from r3tasks.models.base import EmbedInput
from tests.conftest import fake_settings
from tests.stores import gallery_store

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[1]

CAPTIONS = {
    "dog-park-day": "a dog runs in a park during the day",
    "dog-park-night": "a dog runs in a park at night",
    "cat-sofa": "a cat sleeps on a sofa",
    "car-road": "a car drives on a road",
    "person-sits": "a person sits down on a bench",
    "person-stands": "a person stands up from a bench",
    "bird-sky": "a bird flies across the sky",
    "boat-lake": "a boat drifts on a lake",
}
FAKES = {"embedder": "fake-text", "reasoner": "fake", "reranker": "fake"}
QUERIES = [
    {"id": "q-night", "source": "dog-park-day", "edit": "make it night"},
    {"id": "q-stand", "source": "person-sits", "edit": "the person stands up instead"},
    {"id": "t-cat", "text": "a cat sleeping"},
]


def write_gallery(folder: Path, captions: dict[str, str] = CAPTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in captions.items()) + "\n")
    return manifest


def write_queries(path: Path, rows: list[dict] = QUERIES) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored(home: Path, **overrides) -> dict[str, np.ndarray]:
    rows = snapshot(open_store(fake_settings(home, models={"embedder": "fake-text"}, **overrides)))
    assert len(rows.ids) == len(set(rows.ids))
    return dict(zip(rows.ids, rows.vectors))


# ---------------------------------------------------------------------------
# Dask

needs_dask = pytest.mark.skipif(
    __import__("importlib").util.find_spec("prefect_dask") is None,
    reason="the dask extra is not installed (pip install 'r3[dask]')",
)

# Dask worker processes start fresh: they learn the test's fake backends from this preload script.
WORKER_PRELOAD = """
from r3tasks.models.registry import register_backend
register_backend("embedder", "fake-text", "tests.fakes:load_fake_text_embedder")
register_backend("embedder", "where", "tests.test_scaleout:load_where_embedder")
"""


class WhereEmbedder(fakes.FakeEmbedder):
    """The fake text embedder, noting which Dask worker (or none) embedded each item in a log file.

    On Dask, a batch starts only once batches have started on two workers (`WORKERS_MET_S` at most): one
    worker cannot take every batch before the other is up, however the machine's timing goes.
    """

    def __init__(self, log: Path) -> None:
        super().__init__(uses_frames=False)
        self.log = log
        self.started = log.with_name("embedding-started.tsv")

    def _meet_another_worker(self, where: str) -> None:
        with self.started.open("a") as handle:
            handle.write(f"{where}\n")
        deadline = time.monotonic() + WORKERS_MET_S
        while len(set(self.started.read_text().split())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # polls for the other worker's first batch; past the deadline the test's check fails

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        try:
            from distributed import get_worker

            where = get_worker().address
        except (ImportError, ValueError):
            where = "no-dask"
        if where != "no-dask":
            self._meet_another_worker(where)
        with self.log.open("a") as handle:
            for item in items:
                handle.write(f"{item.item_id}\t{where}\t{os.getpid()}\n")
        return super().embed_documents(items, instruction)


def load_where_embedder(settings) -> WhereEmbedder:
    return WhereEmbedder(settings.home / "embedded-where.tsv")


WORKERS_MET_S = 120


def embedded_where(home: Path) -> dict[str, str]:
    lines = (home / "embedded-where.tsv").read_text().splitlines()
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines}


@pytest.fixture
def dask_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask
    import distributed  # noqa: F401 - its config defaults must exist before config.set, which restores on exit

    from r3tasks.models.registry import register_backend

    register_backend("embedder", "where", "tests.test_scaleout:load_where_embedder")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with dask.config.set({"distributed.worker.preload": [WORKER_PRELOAD]}):
        yield


@needs_dask
def test_settings_pick_the_task_runner(r3_home: Path) -> None:
    from prefect_dask import DaskTaskRunner

    assert embedding_task_runner(fake_settings(r3_home)) is None  # threads, the default
    local = embedding_task_runner(fake_settings(r3_home, index={"task_runner": "dask", "dask_workers": 3}))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3 and local.address is None
    remote = embedding_task_runner(
        fake_settings(r3_home, index={"task_runner": "dask", "dask_address": "tcp://127.0.0.1:8786"})
    )
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://127.0.0.1:8786"


@needs_dask
def test_index_on_a_local_dask_cluster_of_two_process_workers(tmp_path: Path, r3_home: Path, dask_preload) -> None:
    manifest = write_gallery(tmp_path / "g")
    threads_home = tmp_path / "threads-home"
    threads_home.mkdir()
    index = {"batch_size": 2}
    on_threads = index_gallery(
        source=str(manifest), home=str(threads_home), overrides={"models": {"embedder": "fake-text"}, "index": index}
    )

    state = index_gallery(
        source=str(manifest),
        home=str(r3_home),
        overrides={"models": {"embedder": "where"}, "index": {**index, "task_runner": "dask", "dask_workers": 2}},
        return_state=True,
    )
    on_dask = state.result()

    assert on_dask["added"] == len(CAPTIONS) and on_dask["failed"] == []
    where = embedded_where(r3_home)
    assert sorted(where) == sorted(CAPTIONS)
    workers = set(where.values())
    assert "no-dask" not in workers and len(workers) == 2, where  # both workers of the local cluster embedded
    lines = (r3_home / "embedded-where.tsv").read_text().splitlines()
    pids = {line.split("\t")[2] for line in lines}
    assert str(os.getpid()) not in pids  # in worker processes, not in the flow's
    # Each item embedded once, by the cluster's two worker processes: no batch re-run, no worker restarted.
    assert len(lines) == len(CAPTIONS) and len(pids) == 2
    # Same vectors as the thread runner's: the runner changes where, never what.
    dask_vectors, thread_vectors = stored(r3_home), stored(threads_home)
    assert sorted(dask_vectors) == sorted(thread_vectors) == sorted(CAPTIONS)
    for item_id, vector in thread_vectors.items():
        np.testing.assert_allclose(dask_vectors[item_id], vector, rtol=0, atol=1e-6)
    assert on_threads["table"]["name"] == on_dask["table"]["name"]
    # Prefect tracked the batches that ran on Dask as task runs of this flow run.
    embed_runs = [r for r in flow_task_runs(state.state_details.flow_run_id) if r.name.startswith("sample-and-embed")]
    assert len(embed_runs) == len(CAPTIONS) // 2 and all(r.state.is_completed() for r in embed_runs)


def flow_task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


@needs_dask
def test_index_on_an_existing_dask_scheduler_then_query(tmp_path: Path, r3_home: Path, dask_preload) -> None:
    from distributed import LocalCluster

    manifest = write_gallery(tmp_path / "g")
    # In-process workers (threads): the cluster a user already runs, reached by its address.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = index_gallery(
            source=str(manifest),
            home=str(r3_home),
            overrides={
                "models": {"embedder": "where"},
                "index": {"batch_size": 2, "task_runner": "dask", "dask_address": cluster.scheduler_address},
            },
        )
        worker_addresses = {worker.address for worker in cluster.workers.values()}
    assert summary["added"] == len(CAPTIONS)
    assert set(embedded_where(r3_home).values()) <= worker_addresses
    assert len(set(embedded_where(r3_home).values())) == 2

    # A rerun embeds nothing, so it needs no cluster at all (none is reachable any more).
    again = index_gallery(
        source=str(manifest),
        home=str(r3_home),
        overrides={
            "models": {"embedder": "where"},
            "index": {"task_runner": "dask", "dask_address": "tcp://127.0.0.1:9"},
        },
    )
    assert again["unchanged"] == len(CAPTIONS) and again["added"] == 0


# ---------------------------------------------------------------------------
# S3 (moto's server mode)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    pytest.importorskip("moto", reason="moto is not installed (pip install 'moto[server]')")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                assert process.poll() is None, "moto's server exited"
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.1)
        credentials = {"aws_access_key_id": "r3-test", "aws_secret_access_key": "r3-test-secret"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket="r3-gallery")
        yield {"endpoint": endpoint, "bucket": "r3-gallery", **credentials}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def s3_options(server: dict[str, str]) -> dict[str, str]:
    return {
        "aws_endpoint": server["endpoint"],
        "aws_region": "us-east-1",
        "allow_http": "true",
        "aws_access_key_id": server["aws_access_key_id"],
        "aws_secret_access_key": server["aws_secret_access_key"],
    }


def bucket_keys(server: dict[str, str], prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=server["aws_access_key_id"],
        aws_secret_access_key=server["aws_secret_access_key"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=server["bucket"], Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_gallery_store_on_s3_lists_creates_and_reopens_tables(s3_server: dict[str, str]) -> None:
    uri = f"s3://{s3_server['bucket']}/store-check"
    first = gallery_store(uri, "fake-16-0", 16, storage_options=s3_options(s3_server))
    assert not first.exists()
    created_at = first.version()  # creates the table
    again = gallery_store(uri, "fake-16-0", 16, storage_options=s3_options(s3_server))
    assert again.exists() and again.version() == created_at and again.count() == 0
    other = gallery_store(uri, "another-model", 16, storage_options=s3_options(s3_server))
    assert not other.exists()
    elsewhere = gallery_store(uri, "fake-16-0", 16, gallery="other", storage_options=s3_options(s3_server))
    assert not elsewhere.exists()  # another gallery of the same model has its own table
    assert any(
        key.startswith("store-check/gallery_default_fake-16-0.lance/") for key in bucket_keys(s3_server, "store-check")
    )


def test_index_and_query_end_to_end_on_s3(tmp_path: Path, r3_home: Path, s3_server: dict[str, str]) -> None:
    uri = f"s3://{s3_server['bucket']}/galleries/e2e"
    gallery = {"uri": uri, "storage_options": s3_options(s3_server)}
    overrides = {"models": FAKES, "gallery": gallery}
    manifest = write_gallery(tmp_path / "g")

    summary = index_gallery(source=str(manifest), home=str(r3_home), overrides=overrides)
    assert summary["added"] == len(CAPTIONS) and summary["table"]["uri"] == uri
    assert not (r3_home / "lancedb").exists()  # nothing went to the local data home
    keys = bucket_keys(s3_server, "galleries/e2e/")
    assert any(k.endswith(".lance") for k in keys) and any("/_versions/" in k for k in keys)

    # Incremental on S3 too: change one caption, remove one, add one.
    captions = {k: v for k, v in CAPTIONS.items() if k != "boat-lake"}
    captions["cat-sofa"] = "a cat sleeps on a red sofa"
    captions["cat-2"] = "a cat sleeping in the sun"
    second = index_gallery(source=str(write_gallery(tmp_path / "g", captions)), home=str(r3_home), overrides=overrides)
    assert (second["added"], second["updated"], second["removed"]) == (1, 1, 1)
    assert sorted(stored(r3_home, gallery=gallery)) == sorted(captions)

    out = tmp_path / "results.json"
    payload = query_batch(
        queries=str(write_queries(tmp_path / "q.jsonl")), out=str(out), home=str(r3_home), overrides=overrides
    )
    by_id = {r["id"]: r for r in payload["results"]}
    assert all(r["error"] is None for r in payload["results"])
    assert by_id["q-night"]["lineage"]["gallery"] == {
        "uri": uri,
        "table": summary["table"]["name"],
        "version": second["version"],
    }
    assert "dog-park-day" not in [i["id"] for i in by_id["q-night"]["ranked"]]
    assert by_id["t-cat"]["ranked"][0]["id"] in {"cat-sofa", "cat-2"}
    # Pinned to the first version, the batch still sees the removed item (LanceDB time travel on S3).
    old = query_batch(
        queries=str(write_queries(tmp_path / "q.jsonl")),
        home=str(r3_home),
        overrides=overrides,
        gallery_version=summary["version"],
    )
    assert "boat-lake" in [i["id"] for i in old["results"][2]["ranked"]]


def test_cli_reads_the_s3_gallery_from_the_environment(
    tmp_path: Path,
    r3_home: Path,
    s3_server: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    uri = f"s3://{s3_server['bucket']}/galleries/from-env"
    monkeypatch.setenv("R3_GALLERY__URI", uri)
    monkeypatch.setenv("R3_GALLERY__STORAGE_OPTIONS", json.dumps(s3_options(s3_server)))
    for role, name in FAKES.items():
        monkeypatch.setenv(f"R3_MODELS__{role.upper()}", name)

    assert cli_main(["index", str(write_gallery(tmp_path / "g")), "--home", str(r3_home), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["table"]["uri"] == uri and summary["added"] == len(CAPTIONS)
    out = tmp_path / "results.json"
    assert (
        cli_main(
            ["query", str(write_queries(tmp_path / "q.jsonl")), "--out", str(out), "--home", str(r3_home), "--json"]
        )
        == 0
    )
    results = json.loads(out.read_text())["results"]
    assert [r["id"] for r in results] == [q["id"] for q in QUERIES]
    assert all(r["ranked"] and r["lineage"]["gallery"]["uri"] == uri for r in results)
    assert bucket_keys(s3_server, "galleries/from-env/")


def test_two_service_replicas_serve_one_s3_gallery_and_both_follow_a_refresh(
    tmp_path: Path, r3_home: Path, s3_server: dict[str, str]
) -> None:
    from fastapi.testclient import TestClient

    from flows.common import code_version
    from r3tasks.serve.app import create_app
    from r3tasks.serve.service import QueryService
    from r3tasks.settings.tree import load_settings

    uri = f"s3://{s3_server['bucket']}/galleries/replicas"
    gallery = {"uri": uri, "storage_options": s3_options(s3_server)}
    overrides = {"models": FAKES, "gallery": gallery}
    first = index_gallery(source=str(write_gallery(tmp_path / "g")), home=str(r3_home), overrides=overrides)
    rows = [json.loads(line) for line in write_queries(tmp_path / "q.jsonl").read_text().splitlines() if line]

    def replica(home: Path) -> TestClient:
        # Each replica its own data home (caches): the gallery is the only thing they share.
        settings = load_settings(home=home, models=FAKES, gallery=gallery, serve={"version_check_seconds": 0})
        return TestClient(create_app(QueryService(settings, code_version())))

    with replica(tmp_path / "replica-a") as a, replica(tmp_path / "replica-b") as b:
        answers = [client.post("/v1/query", json={"queries": rows}).json() for client in (a, b)]
        assert [r["ranked"] for r in answers[0]["results"]] == [r["ranked"] for r in answers[1]["results"]]
        assert {r["lineage"]["gallery"]["version"] for answer in answers for r in answer["results"]} == {
            first["version"]
        }
        # A refresh written by a third process (the flow) is what both replicas answer from next.
        captions = {**CAPTIONS, "cat-2": "a cat sleeping in the sun"}
        second = index_gallery(
            source=str(write_gallery(tmp_path / "g", captions)), home=str(r3_home), overrides=overrides
        )
        text = [{"id": "t", "text": "a cat sleeping in the sun"}]
        for client in (a, b):
            result = client.post("/v1/query", json={"queries": text}).json()["results"][0]
            assert result["lineage"]["gallery"]["version"] == second["version"]
            assert result["ranked"][0]["id"] == "cat-2"
