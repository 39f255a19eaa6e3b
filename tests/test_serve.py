"""The warm query service (`r3 serve`): the batch flow's answers over HTTP, its errors, limits and auth, and a
gallery refresh followed without a restart. Apps run in FastAPI's TestClient on fake backends; one test
starts uvicorn on a socket bound here for `r3 query --server`."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flows.cli import main as cli_main
from flows.common import code_version
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.errors import R3Error
from r3tasks.gallery.views import open_store
from r3tasks.models.registry import register_backend
from r3tasks.serve.app import create_app
from r3tasks.serve.service import QueryService, check_binding
from r3tasks.settings.operations import ServeSettings
from tests.conftest import fake_settings
from tests.fakes import FakeEmbedder
from tests.test_reliability import CAPTIONS
from tests.videos import write_indexed_video

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODELS = {"embedder": "fake-text", "reasoner": "fake", "reranker": "fake"}
QUERY = {"use_reasoning": True}
QUERIES = [
    {"id": "q-night", "source": "dog-park-day", "edit": "make it night"},
    {"id": "q-cat", "source": "car-road", "edit": "a cat sleeps on a sofa instead"},
    {"id": "t-dog", "text": "a dog at night in a park"},
]
VIDEO_ITEM = {"id": "clip-red", "path": "clip.mp4", "text": "a coloured clip"}


class GatedEmbedder(FakeEmbedder):
    """The fake text embedder (same fingerprint, so it reads the same gallery), holding any query with HOLD in
    its text until the test releases it: a request the test knows is still being answered."""

    entered = threading.Event()
    release = threading.Event()

    def __init__(self) -> None:
        super().__init__(uses_frames=False)

    def embed_queries(self, items, instruction):
        if any("HOLD" in (item.text or "") for item in items):
            GatedEmbedder.entered.set()
            assert GatedEmbedder.release.wait(timeout=60), "the test never released the held request"
        return super().embed_queries(items, instruction)


def load_gated_embedder(settings) -> GatedEmbedder:
    return GatedEmbedder()


register_backend("embedder", "gated", "tests.test_serve:load_gated_embedder")


def write_manifest(folder: Path, extra: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_indexed_video(folder / "clip.mp4")
    rows = [{"id": k, "text": v} for k, v in {**CAPTIONS, **(extra or {})}.items()] + [VIDEO_ITEM]
    manifest = folder / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest


def index(manifest: Path, home: Path) -> dict:
    return index_gallery(source=str(manifest), home=str(home), overrides={"models": MODELS})


@pytest.fixture
def home(tmp_path: Path, r3_home: Path) -> Path:
    index(write_manifest(tmp_path / "g"), r3_home)
    return r3_home


def service_for(home: Path, models: dict | None = None, **serve) -> QueryService:
    settings = fake_settings(home, models={**MODELS, **(models or {})}, query=QUERY, serve=serve)
    return QueryService(settings, code_version())


def ask(client: TestClient, rows: list, **fields) -> dict:
    response = client.post("/v1/query", json={"queries": rows, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def ranking(result: dict) -> list[tuple]:
    return [(x["id"], x["score"], x["embedding_score"], x["reranker_score"]) for x in result["ranked"]]


def test_served_answers_are_the_batch_flows(tmp_path: Path, home: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(r) for r in QUERIES) + "\n")
    batch = query_batch(queries=str(queries), home=str(home), overrides={"models": MODELS, "query": QUERY})

    with TestClient(create_app(service_for(home))) as client:
        served = ask(client, QUERIES)

    assert [r["id"] for r in served["results"]] == [r["id"] for r in batch["results"]]
    for mine, theirs in zip(served["results"], batch["results"]):
        assert mine["error"] is None and ranking(mine) == ranking(theirs) and ranking(mine)
        assert mine.keys() == theirs.keys()
        assert (mine["kind"], mine["reasoning"], mine["gate"], mine["rerank"], mine["warnings"]) == (
            theirs["kind"],
            theirs["reasoning"],
            theirs["gate"],
            theirs["rerank"],
            theirs["warnings"],
        )
    same = {k: v for k, v in batch["lineage"].items() if k != "cache"}
    assert {k: v for k, v in served["lineage"].items() if k != "cache"} == same
    # The batch filled the caches; the service reads them, and counts this request's hits only.
    for stage in ("reasoning", "query-embedding", "rerank"):
        computed = batch["lineage"]["cache"][stage]["misses"]
        assert computed > 0 and served["lineage"]["cache"][stage] == {"hits": computed, "misses": 0, "evicted": 0}


def test_a_bad_row_is_its_querys_error_and_the_others_answer_as_alone(home: Path) -> None:
    rows = [
        QUERIES[2],
        {"id": "typed", "source": "dog-park-day", "edit": {"do": "x"}},
        ["id", "text"],
        {"id": "neither", "colour": "red"},
        {"text": "no id"},
        {"id": "t-dog", "text": "the same id again"},
        {"id": "unknown-source", "source": "no-such-item", "edit": "make it night"},
        QUERIES[0],
    ]
    with TestClient(create_app(service_for(home))) as client:
        alone = ask(client, [QUERIES[2], QUERIES[0]])["results"]
        mixed = ask(client, rows)["results"]

    assert [(r["id"], r["kind"], r["error"]) for r in mixed] == [
        ("t-dog", "text", None),
        ("typed", "composed", "request: queries[1]: 'edit' must be a string, got dict"),
        (None, None, "request: queries[2]: expected an object, got list"),
        ("neither", None, "request: queries[3]: query 'neither' has neither `source`+`edit` nor `text`"),
        (None, "text", "request: queries[4]: query has no `id`"),
        ("t-dog", "text", "request: queries[5]: duplicate query id 't-dog'"),
        ("unknown-source", "composed", mixed[6]["error"]),
        ("q-night", "composed", None),
    ]
    assert mixed[6]["error"].startswith("unknown source id 'no-such-item'")
    assert all(r["ranked"] == [] for r in mixed[1:7])
    assert ranking(mixed[0]) == ranking(alone[0]) and ranking(mixed[7]) == ranking(alone[1])
    assert all(r.keys() == mixed[0].keys() for r in mixed)


def test_top_k_cuts_each_ranking(home: Path) -> None:
    with TestClient(create_app(service_for(home))) as client:
        full = ask(client, QUERIES)["results"]
        cut = ask(client, QUERIES, top_k=2)["results"]
    assert [ranking(r) for r in cut] == [ranking(r)[:2] for r in full]
    assert all(len(r["ranked"]) > 2 for r in full)


@pytest.mark.parametrize(
    "body,headers,message",
    [
        (b'{"queries": [', {"content-type": "application/json"}, "malformed JSON: Expecting value (at character 13)"),
        (b"[1, 2]", {"content-type": "application/json"}, "the body must be a JSON object, not list"),
        (
            b'{"queries": []}',
            {"content-type": "application/json"},
            "queries: List should have at least 1 item after validation, not 0",
        ),
        (b"{}", {"content-type": "application/json"}, "queries: Field required"),
        (b"", {"content-type": "application/json"}, "the request has no body: send a JSON object with `queries`"),
        (
            b'{"queries": [{"id": "a", "text": "b"}], "topk": 3}',
            {"content-type": "application/json"},
            "topk: Extra inputs are not permitted",
        ),
        (
            b'{"queries": [{"id": "a", "text": "b"}], "top_k": 0}',
            {"content-type": "application/json"},
            "top_k: Input should be greater than or equal to 1",
        ),
        (
            b'{"queries": [{"id": "a", "text": "b"}]}',
            {"content-type": "text/plain"},
            "the body must be a JSON object sent with Content-Type: application/json",
        ),
    ],
)
def test_a_malformed_body_is_400_with_one_line(home: Path, body: bytes, headers: dict, message: str) -> None:
    with TestClient(create_app(service_for(home))) as client:
        response = client.post("/v1/query", content=body, headers=headers)
    assert (response.status_code, response.json()) == (400, {"error": message})


def test_unknown_gallery_version_and_item_are_404(home: Path) -> None:
    with TestClient(create_app(service_for(home))) as client:
        nope = client.post("/v1/query", json={"queries": QUERIES, "gallery": "nope"})
        bad_name = client.post("/v1/query", json={"queries": QUERIES, "gallery": "../etc"})
        version = client.post("/v1/query", json={"queries": QUERIES, "gallery_version": 999})
        tag = client.post("/v1/query", json={"queries": QUERIES, "gallery_version": "refresh-999"})
        item = client.get("/v1/items/no-such-item")
        route = client.get("/v2/query")
        current = client.get("/healthz").json()["gallery"]["version"]

    assert nope.status_code == 404
    assert nope.json()["error"].startswith("gallery 'nope' has not been indexed in ")
    assert bad_name.status_code == 404 and "is not allowed" in bad_name.json()["error"]
    assert version.status_code == 404 and "has no version 999" in version.json()["error"]
    assert tag.status_code == 404 and "has no tag 'refresh-999'" in tag.json()["error"]
    assert item.json() == {"error": f"no item 'no-such-item' in gallery 'default' version {current}"}
    assert (route.status_code, route.json()) == (404, {"error": "Not Found"})


def test_a_full_queue_is_503_with_retry_after(home: Path) -> None:
    GatedEmbedder.entered.clear()
    GatedEmbedder.release.clear()
    service = service_for(home, models={"embedder": "gated"}, max_pending=1, retry_after_seconds=7)
    held: dict = {}
    with TestClient(create_app(service)) as client:
        first = threading.Thread(
            target=lambda: held.update(
                response=client.post("/v1/query", json={"queries": [{"id": "h", "text": "HOLD"}]})
            )
        )
        first.start()
        try:
            assert GatedEmbedder.entered.wait(timeout=60)
            refused = client.post("/v1/query", json={"queries": QUERIES})
            health = client.get("/healthz").json()  # the event loop still answers while the models work
        finally:
            GatedEmbedder.release.set()
            first.join(timeout=60)
        after = client.post("/v1/query", json={"queries": QUERIES})

    assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
    assert refused.json() == {"error": "1 query requests are already admitted (serve.max_pending); retry later"}
    assert (health["pending"], health["max_pending"]) == (1, 1)
    assert held["response"].status_code == 200 and held["response"].json()["results"][0]["error"] is None
    assert after.status_code == 200


def test_a_body_over_the_limit_is_413(home: Path) -> None:
    rows = [{"id": f"q{i}", "text": "a dog in a park"} for i in range(20)]
    with TestClient(create_app(service_for(home, max_body_bytes=300))) as client:
        declared = client.post("/v1/query", json={"queries": rows})
        streamed = client.post(
            "/v1/query",
            content=iter([json.dumps({"queries": rows}).encode()]),  # chunked: no Content-Length to go by
            headers={"content-type": "application/json"},
        )
        small = client.post("/v1/query", json={"queries": rows[:1]})
    expected = {"error": "request body over 300 bytes (serve.max_body_bytes)"}
    assert (declared.status_code, declared.json()) == (413, expected)
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert (streamed.status_code, streamed.json()) == (413, expected)
    assert small.status_code == 200


def test_a_token_is_required_when_set(home: Path) -> None:
    with TestClient(create_app(service_for(home, token="s3cret"))) as client:
        missing = client.post("/v1/query", json={"queries": QUERIES})
        wrong = client.get("/healthz", headers={"Authorization": "Bearer nope"})
        right = client.post("/v1/query", json={"queries": QUERIES}, headers={"Authorization": "Bearer s3cret"})
        page = client.get("/")
    assert (missing.status_code, missing.json()) == (401, {"error": "missing or wrong bearer token"})
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert right.status_code == 200 and [r["error"] for r in right.json()["results"]] == [None, None, None]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_only_a_loopback_address_may_be_bound_without_a_token(r3_home: Path, capsys) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_binding(ServeSettings(host=host))
    check_binding(ServeSettings(host="0.0.0.0", token="t"))
    with pytest.raises(R3Error, match="set a token first"):
        check_binding(ServeSettings(host="0.0.0.0"))

    assert cli_main(["serve", "--host", "0.0.0.0", "--home", str(r3_home)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "r3 serve: binding 0.0.0.0 exposes the service beyond this machine: set a token first "
        "(R3_SERVE__TOKEN or serve.token), or bind 127.0.0.1\n"
    )


def test_a_refresh_is_served_without_a_restart_and_old_versions_stay_pinnable(tmp_path: Path, home: Path) -> None:
    kite = {"id": "t-kite", "text": "a red kite flies over the sea"}
    with TestClient(create_app(service_for(home, version_check_seconds=0))) as client:
        before = ask(client, [kite, QUERIES[0]])
        old = before["lineage"]["gallery"]["version"]
        index(write_manifest(tmp_path / "g", extra={"kite-sea": kite["text"]}), home)  # a refresh, elsewhere
        after = ask(client, [kite, QUERIES[0]])
        pinned = ask(client, [kite, QUERIES[0]], gallery_version=old)
        health = client.get("/healthz").json()["gallery"]
        old_item = client.get("/v1/items/kite-sea", params={"gallery_version": old})
        new_item = client.get("/v1/items/kite-sea")

    new = after["lineage"]["gallery"]["version"]
    assert new > old and (health["version"], health["latest_version"]) == (new, new)
    assert after["results"][0]["ranked"][0]["id"] == "kite-sea"
    assert "kite-sea" not in [x["id"] for x in before["results"][0]["ranked"]]
    assert pinned["lineage"]["gallery"]["version"] == old
    assert [ranking(r) for r in pinned["results"]] == [ranking(r) for r in before["results"]]
    assert old_item.status_code == 404 and new_item.json()["text"] == kite["text"]


def test_items_thumbnails_galleries_health_and_schema(home: Path) -> None:
    with TestClient(create_app(service_for(home))) as client:
        text_item = client.get("/v1/items/cat-sofa").json()
        video_item = client.get("/v1/items/clip-red").json()
        video = client.get("/v1/items/clip-red/thumbnail")
        text_only = client.get("/v1/items/cat-sofa/thumbnail")
        unknown = client.get("/v1/items/nothing/thumbnail")
        galleries = client.get("/v1/galleries").json()
        health = client.get("/healthz").json()
        schema = client.get("/openapi.json").json()

    version = health["gallery"]["version"]
    assert {k: v for k, v in text_item.items() if k != "times"} == {
        "id": "cat-sofa",
        "path": None,
        "text": "a cat sleeps on a sofa",
        "group": None,
        "kind": "text",
        "num_frames": None,
        "gallery": {"name": "default", "table": health["gallery"]["table"], "version": version},
        "video_id": "cat-sofa",
        "start_s": None,
        "end_s": None,
        "transcript": None,
        "screen_text": None,
    }
    assert text_item["times"]["duration_s"] is None and text_item["times"]["indexed_at"]
    assert video_item["path"].endswith("clip.mp4") and video_item["times"]["duration_s"] == 2.0
    # A short clip is one moment covering it.
    assert (video_item["video_id"], video_item["start_s"], video_item["end_s"]) == (video_item["id"], 0.0, 2.0)
    assert video.status_code == 200 and video.headers["content-type"] == "image/jpeg"
    assert video.content.startswith(b"\xff\xd8")
    assert (text_only.status_code, text_only.json()) == (
        404,
        {"error": "item 'cat-sofa' is text only: it has no video to show"},
    )
    assert unknown.status_code == 404
    assert [(g["gallery"], g["rows"], g["version"]) for g in galleries["galleries"]] == [
        ("default", len(CAPTIONS) + 1, version)
    ]
    assert galleries["served"] == "default"
    assert health["models"] == {"embedder": "fake-16-0", "reasoner": None, "reranker": None}
    assert (health["status"], health["gallery"]["rows"], health["pending"]) == ("ok", len(CAPTIONS) + 1, 0)
    assert {"/v1/query", "/v1/galleries", "/v1/items/{item_id}", "/healthz"} <= set(schema["paths"])


def test_a_where_filter_passes_through_and_a_bad_one_is_400(home: Path) -> None:
    with TestClient(create_app(service_for(home))) as client:
        dogs = ask(client, [QUERIES[2]], where="text LIKE '%dog%'")
        bad = client.post("/v1/query", json={"queries": QUERIES, "where": "no_such_column = 1"})
    assert {x["id"] for x in dogs["results"][0]["ranked"]} == {"dog-park-day", "dog-park-night"}
    assert dogs["lineage"]["where"] == "text LIKE '%dog%'"
    assert bad.status_code == 400 and bad.json()["error"].startswith("where: ")


def _serve_in_thread(service: QueryService) -> tuple[str, object, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue from now on, so no wait for the server's start
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def test_r3_query_with_a_server_writes_and_prints_what_a_local_run_does(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(r) for r in QUERIES) + "\n")
    with TestClient(create_app(service_for(home))) as client:
        direct = ask(client, QUERIES)
    url, server, thread = _serve_in_thread(service_for(home))
    try:
        code = cli_main(["query", str(queries), "--out", str(tmp_path / "r.json"), "--server", url, "--top", "2"])
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    printed = capsys.readouterr().out

    written = json.loads((tmp_path / "r.json").read_text())
    assert code == 0
    assert [ranking(r) for r in written["results"]] == [ranking(r) for r in direct["results"]]
    assert written["lineage"]["gallery"] == direct["lineage"]["gallery"]
    top = direct["results"][2]["ranked"][0]
    assert f"  1. {top['score']:6.3f}  {top['id'][:40]:40s}  {CAPTIONS[top['id']]}" in printed
    assert f"answered by {url}" in printed


def test_r3_query_with_a_server_that_cannot_be_reached_exits_2(tmp_path: Path, capsys) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps(QUERIES[2]) + "\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
    try:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        code = cli_main(["query", str(queries), "--out", str(tmp_path / "r.json"), "--server", url])
    finally:
        closed.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"r3 query: cannot reach the r3 service at {url}: ")
    assert not (tmp_path / "r.json").exists()


def test_r3_query_with_a_server_and_no_gallery_asks_the_gallery_the_service_serves(
    tmp_path: Path, r3_home: Path, capsys: pytest.CaptureFixture
) -> None:
    index_gallery(
        source=str(write_manifest(tmp_path / "g")), home=str(r3_home), overrides={"models": MODELS}, gallery="holiday"
    )
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps(QUERIES[2]) + "\n")
    settings = fake_settings(r3_home, models=MODELS, query=QUERY, gallery={"name": "holiday"})
    url, server, thread = _serve_in_thread(QueryService(settings, code_version()))  # no `default` gallery here
    try:
        code = cli_main(["query", str(queries), "--out", str(tmp_path / "r.json"), "--server", url, "--top", "1"])
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    printed = capsys.readouterr()

    assert code == 0, printed.err
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["lineage"]["gallery"]["table"] == open_store(settings).name
    top = written["results"][0]["ranked"][0]["id"]
    assert top.startswith("dog-park") and f"{top[:40]:40s}  {CAPTIONS[top]}" in printed.out
