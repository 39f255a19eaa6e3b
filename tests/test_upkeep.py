"""Gallery upkeep, the inbox's 'complete and new' rule and standing-query diffs (no Prefect server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3tasks.errors import R3Error
from r3tasks.gallery.pinned import pin, snapshot
from r3tasks.gallery.table import GalleryRow, GalleryStore
from r3tasks.gallery.upkeep import drop_tables, health, resolve_version, retired_tables, upkeep
from r3tasks.inputs.inbox import InboxState, landed, list_inbox
from r3tasks.query.standing import topk_changes
from r3tasks.settings.operations import UpkeepSettings
from tests.stores import gallery_store


def _refresh(store: GalleryStore, n: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    version = store.version()
    for i in range(n):
        version = store.upsert(
            [
                GalleryRow(
                    id=f"item-{i % 5}",
                    path=None,
                    text=f"text {i}",
                    group=None,
                    content_key=f"k{i}",
                    num_frames=1,
                    vector=rng.random(8).astype(np.float32),
                )
            ]
        )
    return version


def test_upkeep_compacts_prunes_and_keeps_tagged_versions(tmp_path: Path) -> None:
    store = gallery_store(str(tmp_path / "db"), "model-a-0123456789", 8)
    first = _refresh(store, 3)
    store.table().tags.create("before-change", first)
    pinned_rows = {r for r in pin(store, "before-change").records}
    _refresh(store, 30, seed=1)
    before = health(store)
    assert before.fragments >= 5 and before.versions >= 30

    report = upkeep(store, UpkeepSettings(keep_versions=5))
    after = report.after
    assert after.fragments == 1 and after.rows == before.rows == 5
    assert report.tag == f"refresh-{after.version}" and after.tags[report.tag] == after.version
    # The user's tag survives the pruning, and a batch can still pin it by name.
    assert resolve_version(store, "before-change") == "before-change"
    assert set(pin(store, "before-change").records) == pinned_rows
    assert any(list(index.columns) == ["id"] for index in store.table().list_indices())

    # Without the user's tag, old versions go: only the newest few (and the refresh tag) stay.
    store.table().tags.delete("before-change")
    pruned = upkeep(store, UpkeepSettings(keep_versions=5)).after
    kept = sorted(v["version"] for v in store.table().list_versions())
    # LanceDB prunes by age, so a version committed within milliseconds of the fifth newest may stay
    # too; what is promised is that the newest five stay and the old history goes.
    assert kept[-5:] == list(range(pruned.version - 4, pruned.version + 1))
    assert pruned.versions < after.versions and first not in kept
    with pytest.raises(R3Error, match="has no version 2"):
        pin(store, 2)
    with pytest.raises(R3Error, match="no tag 'nope'"):
        resolve_version(store, "nope")
    assert resolve_version(store, "12") == 12 and resolve_version(store, "latest") is None


def test_refresh_tags_beyond_the_kept_number_are_deleted_but_user_tags_stay(tmp_path: Path) -> None:
    store = gallery_store(str(tmp_path / "db"), "model-a-0123456789", 8)
    _refresh(store, 2)
    store.table().tags.create("mine", store.version())
    tags = []
    for round_ in range(4):
        _refresh(store, 2, seed=round_ + 10)
        tags.append(upkeep(store, UpkeepSettings(keep_refresh_tags=2)).tag)
    kept = health(store).tags
    assert set(kept) == {"mine", tags[-1], tags[-2]}


def test_reads_never_create_a_table(tmp_path: Path) -> None:
    store = gallery_store(str(tmp_path / "db"), "model-a-0123456789", 8)
    with pytest.raises(R3Error, match="has not been indexed .* run `r3 index`"):
        pin(store)
    with pytest.raises(R3Error, match="has not been indexed"):
        snapshot(store)
    assert not store.exists()


def test_a_table_whose_first_commit_never_landed_reads_as_not_indexed_and_the_next_index_creates_it(
    tmp_path: Path,
) -> None:
    from r3tasks.gallery.catalog import list_galleries
    from tests.conftest import fake_settings

    settings = fake_settings(tmp_path)
    store = gallery_store(settings.gallery_uri, "model-a-0123456789", 8, gallery=settings.gallery.name)
    # What a writer killed inside LanceDB's create_table leaves: the folder, no manifest.
    (Path(settings.gallery_uri) / f"{store.name}.lance" / "_versions").mkdir(parents=True)
    assert not store.exists()
    with pytest.raises(R3Error, match="has not been indexed"):
        pin(store)
    assert list_galleries(settings) == []
    _refresh(store, 2)
    assert store.exists() and store.count() == 2
    assert [info.table for info in list_galleries(settings)] == [store.name]


def test_retired_embedder_tables_are_listed_and_dropped_never_the_current_one(tmp_path: Path) -> None:
    uri = str(tmp_path / "db")
    old = gallery_store(uri, "old-model-aaaaaaaa", 8)
    _refresh(old, 1)
    other = gallery_store(uri, "old-model-aaaaaaaa", 8, gallery="other")  # another gallery: not ours to drop
    _refresh(other, 1)
    current = gallery_store(uri, "new-model-bbbbbbbb", 8)
    _refresh(current, 1)
    assert retired_tables(current) == [old.name]
    with pytest.raises(R3Error, match="current embedder"):
        drop_tables(current, [current.name])
    with pytest.raises(R3Error, match="not retired"):
        drop_tables(current, [other.name])
    assert drop_tables(current, retired_tables(current)) == [old.name]
    assert retired_tables(current) == [] and current.exists() and not old.exists() and other.exists()


def test_inbox_reports_a_file_once_when_its_size_stopped_changing(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = InboxState()
    patterns = ["*.jsonl"]
    target = inbox / "batch.jsonl"
    target.write_text('{"id": "a", "text": "x"}\n')
    (inbox / "notes.txt").write_text("ignored")
    (inbox / ".hidden.jsonl").write_text("ignored")
    assert landed(state, list_inbox(inbox, patterns), 2) == []  # first sight
    with target.open("a") as handle:  # a second piece
        handle.write('{"id": "b", "text": "y"}\n')
    assert landed(state, list_inbox(inbox, patterns), 2) == []
    assert landed(state, list_inbox(inbox, patterns), 2) == []
    assert landed(state, list_inbox(inbox, patterns), 2) == ["batch.jsonl"]  # stable for two polls
    assert landed(state, list_inbox(inbox, patterns), 2) == []  # reported once
    target.write_text('{"id": "c", "text": "z"}\n' * 3)  # rewritten: a new file to answer
    results = [landed(state, list_inbox(inbox, patterns), 2) for _ in range(3)]
    assert results == [[], [], ["batch.jsonl"]]


def test_topk_changes_name_what_entered_left_and_moved() -> None:
    before = [
        {"id": "q1", "ranked": [{"id": "a"}, {"id": "b"}, {"id": "c"}]},
        {"id": "q2", "ranked": [{"id": "x"}, {"id": "y"}]},
    ]
    after = [
        {"id": "q1", "ranked": [{"id": "b"}, {"id": "a"}, {"id": "d"}]},
        {"id": "q2", "ranked": [{"id": "x"}, {"id": "y"}]},
        {"id": "q3", "ranked": [{"id": "z"}]},
    ]
    rows = {r["query"]: r for r in topk_changes(before, after, 3)}
    assert rows["q1"]["entered"] == "d" and rows["q1"]["left"] == "c" and rows["q1"]["moved"] == "b, a"
    assert rows["q1"]["top-1 before"] == "a" and rows["q1"]["top-1 after"] == "b"
    assert not rows["q2"]["changed"] and rows["q3"]["entered"] == "z"


def test_cli_galleries_lists_and_prunes_retired_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    from flows.cli import main as cli_main
    from r3tasks.gallery.views import open_store
    from tests.conftest import fake_settings

    monkeypatch.setenv("R3_MODELS__EMBEDDER", "fake")
    current = open_store(fake_settings(tmp_path))
    _refresh(gallery_store(current.uri, "retired-model-0000", 8, gallery=current.gallery), 1)
    assert cli_main(["galleries", "--home", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "gallery_default_retired-model-00" in listed
    assert cli_main(["galleries", "--prune", "--home", str(tmp_path), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["dropped"] == ["gallery_default_retired-model-00"] and pruned["galleries"] == []


def test_a_killed_writer_never_blocks_the_table_and_a_live_one_refuses_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys
    import textwrap

    from flows.writers import WriterBusy, writer_slot
    from tests.conftest import fake_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no server: the file lock alone
    settings = fake_settings(tmp_path, upkeep={"writer_wait_seconds": 0})
    store = gallery_store(str(tmp_path / "db"), "model-a-0123456789", 8)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from flows.writers import writer_slot
        from tests.conftest import fake_settings
        from tests.stores import gallery_store
        from pathlib import Path
        store = gallery_store({str(tmp_path / "db")!r}, "model-a-0123456789", 8)
        with writer_slot(store, fake_settings(Path({str(tmp_path)!r}))):
            print("held", flush=True)
            time.sleep(120)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WriterBusy, match="being written by another run.*not waiting"):
            with writer_slot(store, settings):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with writer_slot(store, settings):  # the kernel freed the dead writer's lock: no lease to wait out
        pass
