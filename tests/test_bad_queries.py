"""Bad query files and bad queries, through the CLI and the real query flow (fake backends).

A malformed file exits 2 with one line naming the file, the line and the reason, before any server
starts; inside a deployment run the same line fails the run. A bad query is refused alone, with its
reason, and every other query in the batch is answered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main as cli_main
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.synthetic import ClipSpec, write_clip
from tests.test_reliability import CAPTIONS, FAKE_QUERY_MODELS, write_caption_gallery, write_queries

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("broken.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": \n', "broken.jsonl:2: bad JSON line"),
        ("latin1.jsonl", b'{"id": "a", "text": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8"),
        ("latin1-late.jsonl", b'{"id": "a", "text": "x"}\n\n{"id": "b", "text": "caf\xe9"}\n', "latin1-late.jsonl:3: not UTF-8"),
        ("latin1.csv", b"id,text\na,x\nb,caf\xe9\n", "latin1.csv:3: not UTF-8"),
        ("wide.csv", "id,text\na,x,y\n", "wide.csv:2: more fields than the header's 2"),
        ("typed.jsonl", '{"id": "a", "source": "s", "edit": {"do": "x"}}\n', "typed.jsonl:1: 'edit' must be a string"),
        ("noid.jsonl", '{"text": "a cat"}\n', "query has no `id`"),
        ("neither.jsonl", '{"id": "q", "colour": "red"}\n', "neither `source`+`edit` nor `text`"),
        ("dupes.jsonl", '{"id": "q", "text": "a"}\n{"id": "q", "text": "b"}\n', "duplicate query id 'q'"),
        ("empty.jsonl", "\n\n", "no queries in the file"),
        ("list.json", '{"queries": 5}', "is not a list of queries"),
        ("scalar.json", '"just a string"', "expected a list of queries"),
        ("row.jsonl", '["id", "text"]\n', "row.jsonl:1: expected a JSON object, got list"),
        ("queries.yaml", "- id: q\n", "queries are .jsonl, .json or .csv"),
        ("absent.jsonl", None, "queries file not found"),
    ],
)
def test_malformed_query_files_exit_2_with_a_clear_message(
    tmp_path: Path, r3_home: Path, capsys: pytest.CaptureFixture, name: str, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code = cli_main(["query", str(path), "--out", str(tmp_path / "o.json"), "--home", str(r3_home)])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err, captured.err
    assert captured.err.startswith("r3 query: ") and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""  # one line, and no flow run printed anything
    assert not (tmp_path / "o.json").exists()


def test_a_deployment_run_with_a_malformed_file_fails_with_that_line(tmp_path: Path, r3_home: Path) -> None:
    """The flows run the CLI's checks first: the run fails with the line as its message, before any task."""
    import asyncio

    from prefect.client.orchestration import get_client

    fakes_only = {"models": FAKE_QUERY_MODELS}
    bad = write_queries(tmp_path / "q.jsonl", [{"id": "a", "text": "x"}])
    bad.write_text(bad.read_text() + "{oops\n")
    state = query_batch(queries=str(bad), home=str(r3_home), overrides=fakes_only, return_state=True)
    assert state.is_failed() and f"{bad}:2: bad JSON line" in state.message
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n,x.mp4\n")
    state = index_gallery(source=str(manifest), home=str(r3_home), overrides=fakes_only, return_state=True)
    assert state.is_failed() and f"{manifest}:2: item has no `id`" in state.message

    async def task_runs() -> list:
        async with get_client() as client:
            return await client.read_task_runs()

    flow_run_id = state.state_details.flow_run_id
    assert not [run for run in asyncio.run(task_runs()) if run.flow_run_id == flow_run_id]


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """An allowed source root with a captioned clip, a clip outside it, and symlinks in and out."""
    root = tmp_path / "allowed"
    outside = tmp_path / "outside"
    spec = ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1)
    inside_clip = write_clip(root / "clips" / "mine.mp4", spec, seconds=1.0, caption_sidecar=True)
    outside_clip = write_clip(outside / "secret.mp4", spec, seconds=1.0, caption_sidecar=True)
    (root / "escape.mp4").symlink_to(outside_clip)
    (root / "alias.mp4").symlink_to(inside_clip)
    (root / "out-dir").symlink_to(outside, target_is_directory=True)
    return {"root": root, "outside": outside, "inside_clip": inside_clip, "outside_clip": outside_clip}


def test_bad_queries_are_refused_one_by_one_and_the_rest_answered(
    tmp_path: Path, r3_home: Path, roots: dict[str, Path]
) -> None:
    index_gallery(source=str(write_caption_gallery(tmp_path / "g")), home=str(r3_home),
                  overrides={"models": FAKE_QUERY_MODELS})
    root, outside_clip = roots["root"], roots["outside_clip"]
    rows = [
        {"id": "ok-by-id", "source": "dog-park-day", "edit": "make it night"},
        {"id": "ok-text", "text": "a cat sleeping"},
        {"id": "ok-in-root", "source": "clips/mine.mp4", "edit": "make it night"},
        {"id": "ok-absolute-in-root", "source": str(roots["inside_clip"]), "edit": "make it night"},
        {"id": "ok-symlink-within", "source": "alias.mp4", "edit": "make it night"},
        {"id": "unknown-id", "source": "no-such-item", "edit": "make it night"},
        {"id": "empty-edit", "source": "cat-sofa", "edit": ""},
        {"id": "blank-edit", "source": "cat-sofa", "edit": " \t\n "},
        {"id": "huge-edit", "source": "cat-sofa", "edit": "make it night " * 7143},
        {"id": "huge-text", "text": "x" * 100_000},
        {"id": "empty-text", "text": ""},
        {"id": "no-source", "source": "", "edit": "make it night"},
        {"id": "dotdot", "source": "../outside/secret.mp4", "edit": "make it night"},
        {"id": "dotdot-deep", "source": "clips/../../outside/secret.mp4", "edit": "make it night"},
        {"id": "absolute-elsewhere", "source": str(outside_clip), "edit": "make it night"},
        {"id": "etc-passwd", "source": "/etc/passwd", "edit": "make it night"},
        {"id": "symlink-out", "source": "escape.mp4", "edit": "make it night"},
        {"id": "symlinked-dir-out", "source": "out-dir/secret.mp4", "edit": "make it night"},
        {"id": "missing-in-root", "source": "clips/absent.mp4", "edit": "make it night"},
    ]
    queries = write_queries(tmp_path / "queries.jsonl", rows)
    overrides = {"models": FAKE_QUERY_MODELS, "gallery": {"roots": [str(root)]}}

    payload = query_batch(queries=str(queries), home=str(r3_home), overrides=overrides)

    by_id = {r["id"]: r for r in payload["results"]}
    assert list(by_id) == [r["id"] for r in rows]  # every query reported, in order
    for ok in ("ok-by-id", "ok-text", "ok-in-root", "ok-absolute-in-root", "ok-symlink-within"):
        assert by_id[ok]["error"] is None, (ok, by_id[ok]["error"])
        assert len(by_id[ok]["ranked"]) >= 4
    # A source given as a path is not a gallery item: nothing is excluded from its results.
    assert len(by_id["ok-in-root"]["ranked"]) == len(CAPTIONS)
    assert by_id["ok-in-root"]["reasoning"].startswith("A red circle")  # its caption sidecar was read
    errors = {k: v["error"] for k, v in by_id.items() if not k.startswith("ok")}
    # With roots, an unknown id may still be a path under them: either way it is named and not found.
    assert "'no-such-item' not found" in errors["unknown-id"]
    assert errors["empty-edit"] == errors["blank-edit"] == "empty edit instruction"
    assert "100002 characters" in errors["huge-edit"] and "limit is 2000" in errors["huge-edit"]
    assert "100000 characters" in errors["huge-text"]
    assert errors["empty-text"] == "empty text query"
    assert errors["no-source"] == "composed query has no source"
    for refused in ("dotdot", "dotdot-deep", "absolute-elsewhere", "etc-passwd", "symlink-out", "symlinked-dir-out"):
        assert "outside the allowed roots" in errors[refused], (refused, errors[refused])
    assert "not found" in errors["missing-in-root"]
    for result in by_id.values():
        if result["error"]:
            assert result["ranked"] == []

    # Without configured roots, a path is never read: it is only an unknown id.
    no_roots = query_batch(queries=str(queries), home=str(r3_home), overrides={"models": FAKE_QUERY_MODELS})
    errors = {r["id"]: r["error"] for r in no_roots["results"]}
    assert "unknown source id 'clips/mine.mp4'" in errors["ok-in-root"]
    assert "unknown source id" in errors["absolute-elsewhere"]
    assert "unknown source id 'no-such-item'" in errors["unknown-id"]
