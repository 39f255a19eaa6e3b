"""Reliability under bad input, crashes, concurrency and flaky models, through the real flows.

Each test drives `index_gallery` / `query_batch` (or the `r3` CLI) under the session's Prefect
test server with fake backends, and checks what a user would see: the summary names every bad
item with its reason, the table holds exactly the good rows, a batch's results do not move.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import tests.fakes as fakes
from flows.cli import main as cli_main
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.datasets.synthetic import ClipSpec, write_clip
from r3tasks.errors import TransientError
from r3tasks.gallery.views import open_store
from r3tasks.inputs import frames as frames_module
from r3tasks.models.base import EmbedInput
from r3tasks.models.registry import register_backend
from tests import videos
from tests.conftest import fake_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Backends made for these tests (registered by name, as a user's own backend would be).


class RecordingEmbedder(fakes.FakeEmbedder):
    """The fake embedder, remembering the frame size each item reached it with."""

    frame_shapes: dict[str, tuple[int, ...]] = {}

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        for item in items:
            if item.frames is not None:
                RecordingEmbedder.frame_shapes[item.item_id] = tuple(item.frames.shape)
        return super().embed_documents(items, instruction)


class FlakyEmbedder(fakes.FakeEmbedder):
    """Raises `TransientError` on its first call; items named in `always` fail transiently for good."""

    calls = 0
    always: set[str] = set()

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        FlakyEmbedder.calls += 1
        if FlakyEmbedder.calls == 1:
            raise TransientError("model server busy (injected, first call only)")
        stuck = sorted(FlakyEmbedder.always & {i.item_id for i in items})
        if stuck:
            raise TransientError(f"model server timed out on {stuck[0]} (injected, every call)")
        return super().embed_documents(items, instruction)


class GatedReranker(fakes.FakeReranker):
    """The fake reranker; when `armed`, it signals `entered` and waits for `release` (a refresh meanwhile)."""

    armed = False
    entered = threading.Event()
    release = threading.Event()

    def score(self, query, candidates):
        if GatedReranker.armed:
            GatedReranker.entered.set()
            assert GatedReranker.release.wait(120), "the concurrent refresh never finished"
        return super().score(query, candidates)


def load_recording(settings) -> RecordingEmbedder:
    return RecordingEmbedder()


def load_flaky(settings) -> FlakyEmbedder:
    return FlakyEmbedder(uses_frames=False)


def load_gated(settings) -> GatedReranker:
    return GatedReranker()


def load_refusing(settings) -> fakes.FakeEmbedder:
    return fakes.FakeEmbedder(uses_frames=False, fail_ids=["car-road"])


register_backend("embedder", "recording", f"{__name__}:load_recording")
register_backend("embedder", "flaky", f"{__name__}:load_flaky")
register_backend("reranker", "gated", f"{__name__}:load_gated")
register_backend("embedder", "refusing", f"{__name__}:load_refusing")


def table_ids(home: Path, embedder: str = "fake") -> list[str]:
    """Every id in the gallery table, duplicates kept (an upsert bug would show as a repeat)."""
    store = open_store(fake_settings(home, models={"embedder": embedder}))
    if not store.exists():
        return []
    return sorted(store.table().to_arrow().column("id").to_pylist())


# ---------------------------------------------------------------------------
# 1. A matrix of bad gallery items


GOOD = [
    ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1),
    ClipSpec(shape="square", colour="blue", motion="left", background="night", count=2),
    ClipSpec(shape="triangle", colour="green", motion="up", background="grass", count=1),
]


def _refuse_opening(monkeypatch: pytest.MonkeyPatch, refused: Path) -> None:
    """Make `refused` unreadable for this process, also as root (who reads a chmod-000 file anyway)."""
    os.chmod(refused, 0)
    if os.geteuid() != 0:
        return
    real_path_open, real_os_open = pathlib.Path.open, os.open

    def path_open(self, *args, **kwargs):
        if Path(self) == refused:
            raise PermissionError(13, "Permission denied", str(self))
        return real_path_open(self, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if Path(os.fsdecode(path)) == refused:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", path_open)
    monkeypatch.setattr(os, "open", os_open)


def _bytes_name(folder: Path, name: bytes) -> Path:
    """A path whose file name is not valid UTF-8 (as Python sees it: with surrogate escapes)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def _id_of(name: bytes) -> str:
    # A folder item's id is its name as text, undecodable bytes written as backslash escapes (b"\xe9" -> "\\xe9").
    return name.decode("utf-8", "backslashreplace")


def build_fault_gallery(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], set[str]]:
    """Good clips plus one file per fault; returns (failing id -> words its reason must hold, ids to index)."""
    folder.mkdir(parents=True)
    for spec in GOOD:
        write_clip(folder / f"{spec.clip_id()}.mp4", spec, seconds=1.0, caption_sidecar=True)
    good = folder / f"{GOOD[0].clip_id()}.mp4"

    videos.write_empty(folder / "zero-byte.mp4")
    # moov box at the end: a third of the file has no index at all.
    videos.truncate_copy(good, folder / "truncated.mp4", 1 / 3)
    videos.write_text_as_video(folder / "shopping-list.mp4")
    videos.write_random_bytes(folder / "noise.avi")
    videos.write_audio_only(folder / "audio-only.mp4")
    (folder / "a-folder.mp4").mkdir()
    (folder / "a-folder.mp4" / "inside.txt").write_text("a directory named like a video\n")
    videos.write_frameless(folder / "zero-frames.avi")
    write_clip(folder / "unreadable.mp4", GOOD[1], seconds=1.0)
    _refuse_opening(monkeypatch, folder / "unreadable.mp4")
    os.mkfifo(folder / "a-pipe.mp4")  # a decoder would block on it forever
    # Non-UTF-8 names (Latin-1 bytes): one good clip, one broken file.
    shutil.copy(good, _bytes_name(folder, b"caf\xe9-latin1.mp4"))
    _bytes_name(folder, b"\xff\xfe-broken.mp4").write_bytes(b"\x00" * 4096)
    # An 8k clip: indexed, decoded small.
    videos.write_huge_video(folder / "huge-8k.mp4")
    # A truncated file that keeps its index up front: sampled within what decodes.
    videos.write_indexed_video(folder / "indexed.mp4", 48, faststart=True)
    videos.truncate_copy(folder / "indexed.mp4", folder / "truncated-faststart.mp4", 0.6)
    (folder / "indexed.mp4").unlink()

    failing = {
        "zero-byte": "empty",
        "truncated": "not a video",
        "shopping-list": "not a video",
        "noise": "not a video",
        "audio-only": "no video stream",
        "a-folder": "directory",
        "zero-frames": "no decodable frames",
        "unreadable": "permission denied",
        "a-pipe": "",  # reason checked below: never a hang
        _id_of(b"\xff\xfe-broken"): "not a video",
    }
    indexed = {s.clip_id() for s in GOOD} | {_id_of(b"caf\xe9-latin1"), "huge-8k", "truncated-faststart"}
    return failing, indexed


def test_fault_matrix_names_every_bad_item_and_indexes_all_the_good_ones(
    tmp_path: Path, r3_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = tmp_path / "gallery"
    failing, indexed = build_fault_gallery(gallery, monkeypatch)
    RecordingEmbedder.frame_shapes.clear()
    overrides = {"models": {"embedder": "recording"}, "index": {"batch_size": 3}}
    # Every file a decoder (FFmpeg's demuxer) opens: a pipe there would block the run; a retried file would stall it.
    opened: list[str] = []
    real_probe = frames_module._probe_header

    def probe(path):
        opened.append(Path(path).stem.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
        return real_probe(path)

    monkeypatch.setattr(frames_module, "_probe_header", probe)

    summary = index_gallery(source=str(gallery), home=str(r3_home), overrides=overrides)

    reasons = {f["id"]: f["reason"] for f in summary["failed"]}
    assert set(reasons) == set(failing), reasons
    for item_id, words in failing.items():
        assert words.lower() in reasons[item_id].lower(), (item_id, reasons[item_id])
        assert reasons[item_id].strip(), item_id
    assert "regular file" in reasons["a-pipe"] or "empty" in reasons["a-pipe"]
    assert summary["added"] == len(indexed)
    assert table_ids(r3_home, "recording") == sorted(indexed)  # no row for any bad item, none lost
    # The 8k clip reached the model resized on decode (to about frames.min_decode_pixels, not 8k).
    frames, height, width, _ = RecordingEmbedder.frame_shapes["huge-8k"]
    assert height * width <= 1.01 * 768 * 32 * 32 and max(height, width) < 7680 // 4 and frames >= 1
    # No bad file stalled the run: what is not a regular, non-empty, readable file never reached a decoder
    # (a pipe would have blocked it); a good file is opened three times (its moments are found, its on-screen
    # text read, its frames decoded) and a broken one once (no retry loop on it).
    refused_before_decoding = {"zero-byte", "a-folder", "unreadable", "a-pipe"}
    assert not refused_before_decoding & set(opened), opened
    opens = Counter(opened)
    assert {item_id: opens[item_id] for item_id in opens if item_id in failing} == {
        item_id: 1 for item_id in set(failing) - refused_before_decoding
    }, opened
    assert {item_id: opens[item_id] for item_id in indexed} == dict.fromkeys(indexed, 3), opened
    assert set(opened) == (set(failing) | indexed) - refused_before_decoding
    # The summary and the CLI's JSON must be printable whatever the file names were.
    json.dumps(summary, ensure_ascii=False).encode("utf-8")

    # A rerun changes nothing: the bad items fail again, the good ones are left alone.
    again = index_gallery(source=str(gallery), home=str(r3_home), overrides=overrides)
    assert {f["id"] for f in again["failed"]} == set(failing)
    assert (again["added"], again["updated"], again["removed"], again["unchanged"]) == (0, 0, 0, len(indexed))
    assert table_ids(r3_home, "recording") == sorted(indexed)


def test_missing_files_in_a_manifest_are_named_and_the_rest_indexed(tmp_path: Path, r3_home: Path) -> None:
    folder = tmp_path / "g"
    for spec in GOOD[:2]:
        write_clip(folder / f"{spec.clip_id()}.mp4", spec, seconds=1.0)
    rows = [
        {"id": "present-1", "path": f"{GOOD[0].clip_id()}.mp4", "text": "a red circle"},
        {"id": "gone", "path": "deleted-yesterday.mp4", "text": "a clip someone deleted"},
        {"id": "gone-absolute", "path": str(tmp_path / "elsewhere" / "nope.mp4")},
        {"id": "present-2", "path": f"{GOOD[1].clip_id()}.mp4"},
        {"id": "text-only", "text": "a person waves"},
    ]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    summary = index_gallery(source=str(manifest), home=str(r3_home), overrides={"models": {"embedder": "fake"}})

    reasons = {f["id"]: f["reason"] for f in summary["failed"]}
    assert reasons == {"gone": "file not found", "gone-absolute": "file not found"}
    paths = {f["id"]: f["path"] for f in summary["failed"]}
    assert paths["gone"].endswith("deleted-yesterday.mp4")
    assert table_ids(r3_home) == ["present-1", "present-2", "text-only"]


# ---------------------------------------------------------------------------
# 2. Bad queries

FAKE_QUERY_MODELS = {"embedder": "fake-text", "reasoner": "fake", "reranker": "fake"}
CAPTIONS = {
    "dog-park-day": "a dog runs in a park during the day",
    "dog-park-night": "a dog runs in a park at night",
    "cat-sofa": "a cat sleeps on a sofa",
    "car-road": "a car drives on a road",
    "person-sits": "a person sits down on a bench",
}


def write_caption_gallery(folder: Path, captions: dict[str, str] = CAPTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in captions.items()) + "\n")
    return manifest


def write_queries(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("broken.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": \n', "broken.jsonl:2: bad JSON line"),
        ("latin1.jsonl", b'{"id": "a", "text": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8"),
        (
            "latin1-late.jsonl",
            b'{"id": "a", "text": "x"}\n\n{"id": "b", "text": "caf\xe9"}\n',
            "latin1-late.jsonl:3: not UTF-8",
        ),
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
    index_gallery(
        source=str(write_caption_gallery(tmp_path / "g")), home=str(r3_home), overrides={"models": FAKE_QUERY_MODELS}
    )
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
