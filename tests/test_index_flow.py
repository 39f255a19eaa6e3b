"""The indexing flow end to end under a Prefect test server: incremental runs, failures, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.cli import main as cli_main
from flows.index_flow import index_gallery
from r3tasks.datasets.synthetic import ClipSpec, write_clip
from r3tasks.gallery.pinned import snapshot
from r3tasks.gallery.table import GalleryStore
from r3tasks.gallery.views import open_store
from r3tasks.models.registry import shared_embedder
from tests.conftest import fake_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAKE = {"models": {"embedder": "fake"}}

SPECS = [
    ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1),
    ClipSpec(shape="square", colour="blue", motion="left", background="night", count=2),
    ClipSpec(shape="triangle", colour="green", motion="up", background="grass", count=1),
    ClipSpec(shape="circle", colour="yellow", motion="still", background="sand", count=3),
]


def make_gallery(folder: Path, specs=SPECS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        write_clip(folder / f"{spec.clip_id()}.mp4", spec, seconds=1.0, caption_sidecar=True)
    return folder


def store_for(home: Path) -> GalleryStore:
    return open_store(fake_settings(home))


def stored_ids(home: Path) -> list[str]:
    return sorted(store_for(home).content_keys())


def run_index(source: Path, home: Path, **overrides) -> dict:
    return index_gallery(source=str(source), home=str(home), overrides={**FAKE, **overrides})


def test_first_run_indexes_every_video_with_its_caption(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery")
    summary = run_index(gallery, r3_home)

    assert summary["added"] == len(SPECS)
    assert summary["updated"] == summary["removed"] == summary["unchanged"] == 0
    assert summary["failed"] == []
    assert summary["table"]["name"].startswith("gallery_default_fake-16")
    assert isinstance(summary["version"], int)
    stored = snapshot(store_for(r3_home))
    assert sorted(stored.ids) == sorted(s.clip_id() for s in SPECS)
    assert stored.ref.version == summary["version"]
    texts = dict(zip(stored.ids, stored.texts))
    assert texts[SPECS[0].clip_id()] == SPECS[0].caption()


def test_rerun_on_unchanged_gallery_embeds_nothing(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery")
    first = run_index(gallery, r3_home)
    embedder = shared_embedder(fake_settings(r3_home))
    embedded_before = embedder.documents_embedded

    second = run_index(gallery, r3_home)

    assert embedder.documents_embedded == embedded_before
    assert second["unchanged"] == len(SPECS)
    assert second["added"] == second["updated"] == second["removed"] == 0
    assert second["version"] == first["version"]


def test_changed_removed_and_new_videos_are_reconciled(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery", SPECS[:3])
    run_index(gallery, r3_home)
    embedder = shared_embedder(fake_settings(r3_home))
    before = embedder.documents_embedded

    changed, removed = SPECS[0], SPECS[1]
    write_clip(gallery / f"{changed.clip_id()}.mp4", changed, seconds=1.0, seed=7)  # new bytes, same id
    (gallery / f"{removed.clip_id()}.mp4").unlink()
    write_clip(gallery / f"{SPECS[3].clip_id()}.mp4", SPECS[3], seconds=1.0)
    summary = run_index(gallery, r3_home)

    assert (summary["added"], summary["updated"], summary["removed"], summary["unchanged"]) == (1, 1, 1, 1)
    assert embedder.documents_embedded - before == 2
    assert stored_ids(r3_home) == sorted([SPECS[0].clip_id(), SPECS[2].clip_id(), SPECS[3].clip_id()])


def test_broken_items_are_reported_and_never_stop_the_batch(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery", SPECS[:2])
    (gallery / "empty.mp4").write_bytes(b"")
    (gallery / "not-a-video.mp4").write_text("this is a text file, not a video\n" * 50)
    (gallery / "folder.mp4").mkdir()
    good = gallery / f"{SPECS[0].clip_id()}.mp4"
    (gallery / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])

    summary = run_index(gallery, r3_home)

    reasons = {f["id"]: f["reason"] for f in summary["failed"]}
    assert set(reasons) == {"empty", "not-a-video", "folder", "truncated"}
    assert "empty" in reasons["empty"]
    assert "directory" in reasons["folder"]
    assert all(f["path"].endswith(".mp4") for f in summary["failed"])
    assert summary["added"] == 2
    assert stored_ids(r3_home) == sorted(s.clip_id() for s in SPECS[:2])


def test_a_file_broken_after_indexing_keeps_its_stored_row(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery", SPECS[:2])
    run_index(gallery, r3_home)
    (gallery / f"{SPECS[0].clip_id()}.mp4").write_bytes(b"")

    summary = run_index(gallery, r3_home)

    assert [f["id"] for f in summary["failed"]] == [SPECS[0].clip_id()]
    assert summary["removed"] == 0
    assert stored_ids(r3_home) == sorted(s.clip_id() for s in SPECS[:2])


def test_manifest_with_text_only_items_and_relative_paths(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery", SPECS[:1])
    manifest = gallery / "manifest.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"id": "clip", "path": f"{SPECS[0].clip_id()}.mp4", "text": "a red circle"},
                {"id": "caption-only", "text": "a person sits down on a bench"},
            ]
        )
    )
    summary = run_index(manifest, r3_home)
    assert summary["added"] == 2 and summary["failed"] == []
    stored = snapshot(store_for(r3_home))
    paths = dict(zip(stored.ids, stored.paths))
    assert paths["caption-only"] is None
    assert Path(paths["clip"]).is_file()


def test_changing_the_embedder_writes_a_separate_table(tmp_path: Path, r3_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery", SPECS[:2])
    video = run_index(gallery, r3_home)
    text = index_gallery(source=str(gallery), home=str(r3_home), overrides={"models": {"embedder": "fake-text"}})
    assert video["table"]["name"] != text["table"]["name"]
    assert text["added"] == 2  # nothing was reused from the other model's table


def test_cli_json_summary_and_strict_exit_code(tmp_path: Path, r3_home: Path, capsys, monkeypatch) -> None:
    gallery = make_gallery(tmp_path / "gallery", SPECS[:1])
    (gallery / "empty.mp4").write_bytes(b"")
    monkeypatch.setenv("R3_MODELS__EMBEDDER", "fake")

    assert cli_main(["index", str(gallery), "--home", str(r3_home), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"added", "updated", "unchanged", "removed", "failed", "table", "version"} <= set(summary)
    assert summary["failed"][0]["id"] == "empty"

    assert cli_main(["index", str(gallery), "--home", str(r3_home), "--strict"]) == 1
    assert "FAILED empty" in capsys.readouterr().out


def test_cli_rejects_a_malformed_manifest_with_exit_2(tmp_path: Path, r3_home: Path, capsys, monkeypatch) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    monkeypatch.setenv("R3_MODELS__EMBEDDER", "fake")
    assert cli_main(["index", str(manifest), "--home", str(r3_home)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "bad JSON line" in err and err.count("\n") == 1


STALLING_INDEX_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from r3tasks.models.registry import register_backend
    import tests.fakes as fakes

    STALL_AFTER = int(sys.argv[3]) if len(sys.argv) > 3 else None  # items; None: never stall

    class StallingFake(fakes.FakeEmbedder):
        # Embeds the first STALL_AFTER items, then blocks every later batch until the process is killed:
        # the run is mid-way for as long as the test needs, however fast or slow the machine is.
        lock = threading.Lock()
        admitted = 0

        def embed_documents(self, items, instruction):
            with StallingFake.lock:
                stall = STALL_AFTER is not None and StallingFake.admitted + len(items) > STALL_AFTER
                if not stall:
                    StallingFake.admitted += len(items)
            if stall:
                threading.Event().wait()
            return super().embed_documents(items, instruction)

    fakes.load_stalling = lambda settings: StallingFake(uses_frames=False)
    register_backend("embedder", "stalling", "tests.fakes:load_stalling")
    from flows.cli import main
    sys.exit(main(["index", sys.argv[1], "--home", sys.argv[2], "--json"]))
    """
)


def stored_rows(home: Path) -> int:
    """Rows committed to the one gallery table in `home` so far (0 before it exists); read from outside."""
    import lancedb

    tables = list((home / "lancedb").glob("gallery_*.lance")) if (home / "lancedb").exists() else []
    if not tables or not list((tables[0] / "_versions").glob("*")):
        return 0
    return lancedb.connect(home / "lancedb").open_table(tables[0].name.removesuffix(".lance")).count_rows()


def test_kill_9_mid_run_then_rerun_leaves_no_duplicate_and_no_gap(tmp_path: Path, r3_home: Path) -> None:
    import prefect.settings

    n_items, batch, stall_after = 60, 4, 16
    manifest = tmp_path / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": f"item-{i:03d}", "text": f"caption {i}"}) for i in range(n_items)))
    script = tmp_path / "stalling_index.py"
    script.write_text(STALLING_INDEX_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
        "R3_MODELS__EMBEDDER": "stalling",
        "R3_INDEX__BATCH_SIZE": str(batch),
        "R3_INDEX__COMMIT_SECONDS": "0",  # a commit per batch, so there is something to kill between
        "R3_INDEX__MAX_BATCHES_IN_FLIGHT": "1",  # batches in order: the first four are the ones stored
    }
    args = [sys.executable, str(script), str(manifest), str(r3_home)]
    process = subprocess.Popen([*args, str(stall_after)], env=env)
    try:
        # The event: the four batches embedded before the stall are committed (the fifth never will be).
        deadline = time.monotonic() + 240
        while stored_rows(r3_home) < stall_after:
            assert process.poll() is None, "the index run ended before it could be killed"
            assert time.monotonic() < deadline, f"{stored_rows(r3_home)} of {stall_after} rows stored before the stall"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert stored_rows(r3_home) == stall_after  # killed mid-run: 16 of the 60 rows stored

    completed = subprocess.run(args, env=env, timeout=300, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    # The rerun embeds exactly what the killed run did not store, and keeps what it did.
    assert (summary["added"], summary["unchanged"], summary["failed"]) == (n_items - stall_after, stall_after, [])
    import lancedb

    table_dirs = list((r3_home / "lancedb").glob("gallery_*.lance"))
    assert len(table_dirs) == 1
    table = lancedb.connect(r3_home / "lancedb").open_table(table_dirs[0].name.removesuffix(".lance"))
    ids = table.to_arrow().column("id").to_pylist()
    assert len(ids) == n_items
    assert sorted(set(ids)) == sorted(f"item-{i:03d}" for i in range(n_items))


def test_non_finite_vector_fails_only_its_item(tmp_path: Path, r3_home: Path) -> None:
    import numpy as np

    from r3tasks.gallery.indexing import embed_batch, key_items
    from r3tasks.inputs.sources import GalleryItem
    from tests.fakes import FakeEmbedder

    class NanForOne(FakeEmbedder):
        def embed_documents(self, items, instruction):
            vectors = super().embed_documents(items, instruction)
            vectors[[i.item_id for i in items].index("bad")] = np.nan
            return vectors

    settings = fake_settings(r3_home)
    items = [GalleryItem(id=name, text=f"caption {name}") for name in ("good", "bad", "fine")]
    result = embed_batch(key_items(items, settings).keyed, NanForOne(uses_frames=False), settings)
    assert [row.id for row in result.rows] == ["good", "fine"]
    assert [(f.id, "non-finite" in f.reason) for f in result.failed] == [("bad", True)]


class _ConcurrencyProbe:
    """Counts embedding tasks alive at once: each holds its decoded frames until it returns."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.alive = 0
        self.most = 0
        self.calls = 0


def test_slow_embedder_keeps_batches_in_flight_bounded_and_commits_rarely(
    tmp_path: Path, r3_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import r3tasks.gallery.indexing as indexing

    probe = _ConcurrencyProbe()
    real_part = indexing._embed_part

    def probed_part(batch, embedder, settings, media=None):
        with probe.lock:
            probe.alive += 1
            probe.calls += 1
            probe.most = max(probe.most, probe.alive)
        try:
            time.sleep(0.05)  # an embedder slower than listing items: batches would pile up unbounded
            return real_part(batch, embedder, settings, media)
        finally:
            with probe.lock:
                probe.alive -= 1

    monkeypatch.setattr(indexing, "_embed_part", probed_part)
    manifest = tmp_path / "gallery.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": f"item-{i:02d}", "text": f"caption {i}"}) for i in range(40)))
    # Upkeep off: its index build and compaction add versions of their own; this test counts the run's commits.
    summary = run_index(
        manifest,
        r3_home,
        index={"batch_size": 2, "max_batches_in_flight": 2},
        upkeep={"optimize_after_refresh": False, "id_index": False},
    )

    assert summary["added"] == 40 and stored_ids(r3_home) == sorted(f"item-{i:02d}" for i in range(40))
    assert probe.calls == 20 and probe.most <= 2
    # 20 batches stored in one commit (commit_seconds 30 s not reached): one new table version, not 20.
    assert len(store_for(r3_home).table().list_versions()) <= 2  # the table's creation and the one upsert
