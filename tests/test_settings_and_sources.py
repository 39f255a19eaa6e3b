"""Settings precedence and gallery discovery: what a user configures is what r3 does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from r3tasks.errors import SourceError, VideoReadError
from r3tasks.gallery.pinned import snapshot
from r3tasks.gallery.table import GalleryRow
from r3tasks.inputs.sources import GalleryItem, content_key, discover, file_fingerprint
from r3tasks.settings.tree import R3Settings, load_settings
from tests.stores import gallery_store

EXTS = [".mp4", ".avi"]


def test_reference_defaults_match_the_method() -> None:
    s = R3Settings()
    assert (s.frames.fps, s.frames.max_frames, s.frames.rerank_frames) == (1.0, 128, 16)
    assert (s.query.gate_threshold, s.query.fusion_weight, s.query.rrf_k) == (0.5, 0.5, 60)
    assert (s.query.recall_k, s.query.rerank_k) == (50, 50)
    assert (s.query.final_embedding_weight, s.query.final_reranker_weight) == (0.4, 0.6)
    assert s.query.base_template.format(edit="make it night") == "Reference video after edit instruction: make it night"


def test_every_setting_is_documented() -> None:
    s = R3Settings()
    for section in ("models", "frames", "gallery", "index", "query"):
        for name, field in type(getattr(s, section)).model_fields.items():
            assert field.description, f"{section}.{name} has no description"


def test_environment_toml_and_arguments_in_order_of_strength(tmp_path: Path, monkeypatch) -> None:
    toml = tmp_path / "r3.toml"
    toml.write_text('[query]\nrecall_k = 20\ngate_threshold = 0.7\n[models]\npreset = "tiny"\n')
    monkeypatch.setenv("R3_CONFIG", str(toml))
    monkeypatch.setenv("R3_QUERY__RECALL_K", "30")
    s = load_settings(preset="offline", home=tmp_path)
    assert s.query.gate_threshold == 0.7  # from the file
    assert s.query.recall_k == 30  # environment beats the file
    assert s.models.preset == "offline"  # the command line beats both
    assert s.gallery_uri == str(tmp_path / "lancedb")
    assert s.models.backend("embedder") == "minilm"


def test_bad_preset_and_unknown_setting_are_refused(monkeypatch) -> None:
    with pytest.raises(ValidationError):
        load_settings(preset="huge")
    with pytest.raises(ValidationError):
        R3Settings(query={"recal_k": 5})


def test_settings_hash_follows_only_the_named_sections() -> None:
    a = R3Settings()
    b = R3Settings(query={"recall_k": 10})
    assert a.settings_hash("frames", "models") == b.settings_hash("frames", "models")
    assert a.settings_hash("query") != b.settings_hash("query")


def test_folder_discovery_reads_caption_sidecars_and_nested_ids(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("  A dog runs.  \n")
    (tmp_path / "sub" / "b.AVI").write_bytes(b"y")
    (tmp_path / "notes.md").write_text("ignored")
    items = discover(tmp_path, EXTS)
    assert [(i.id, i.text) for i in items] == [("a", "A dog runs."), ("sub/b", None)]


def test_manifest_errors_name_the_file_and_row(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,path,text\na,,caption\n,x.mp4,\n")
    with pytest.raises(SourceError, match=r"m.csv:3: item has no `id`"):
        discover(csv_path, EXTS)
    dup = tmp_path / "d.jsonl"
    dup.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + json.dumps({"id": "a", "text": "y"}) + "\n")
    with pytest.raises(SourceError, match="duplicate item id 'a'"):
        discover(dup, EXTS)
    empty_item = tmp_path / "e.jsonl"
    empty_item.write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(SourceError, match="neither `path` nor `text`"):
        discover(empty_item, EXTS)
    with pytest.raises(SourceError, match="not found"):
        discover(tmp_path / "missing", EXTS)


def test_content_key_follows_bytes_and_text_not_the_path(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(b"abc")
    key = content_key(GalleryItem(id="v", path=video, text="t"))
    assert key == content_key(GalleryItem(id="other", path=copy, text="t"))
    assert key != content_key(GalleryItem(id="v", path=video, text="u"))
    video.write_bytes(b"abd")
    assert key != content_key(GalleryItem(id="v", path=video, text="t"))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.mkdir(), p)[1], "directory"),
    ],
)
def test_fingerprint_names_unusable_files(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path / "clip.mp4")
    with pytest.raises(VideoReadError, match=reason) as info:
        file_fingerprint(path)
    assert "clip.mp4" in str(info.value)


def _rows(ids: list[str], dim: int = 4) -> list[GalleryRow]:
    rng = np.random.default_rng(0)
    return [
        GalleryRow(
            id=i,
            path=None,
            text=f"text {i}",
            group=None,
            content_key=f"k-{i}",
            num_frames=None,
            vector=rng.standard_normal(dim).astype(np.float32),
        )
        for i in ids
    ]


def test_gallery_upsert_replaces_by_id_and_old_versions_stay_readable(tmp_path: Path) -> None:
    store = gallery_store(str(tmp_path / "db"), "fp-abc", 4)
    v1 = store.upsert(_rows(["a", "b"]))
    v2 = store.upsert(_rows(["b", "c"]))
    assert store.count() == 3
    assert sorted(store.content_keys()) == ["a", "b", "c"]
    assert sorted(snapshot(store, v1).ids) == ["a", "b"]
    assert snapshot(store, v2).ref.version == v2
    store.delete_ids(["a", "it's quoted"])
    assert sorted(store.content_keys()) == ["b", "c"]


def test_gallery_refuses_bad_vectors(tmp_path: Path) -> None:
    store = gallery_store(str(tmp_path / "db"), "fp", 4)
    bad = _rows(["a"])[0]
    with pytest.raises(Exception, match="shape"):
        store.upsert([GalleryRow(**{**bad.__dict__, "vector": np.zeros(3, np.float32)})])
    with pytest.raises(Exception, match="non-finite"):
        store.upsert([GalleryRow(**{**bad.__dict__, "vector": np.array([np.nan, 0, 0, 0], np.float32)})])
    assert store.count() == 0


def test_manifest_refuses_an_id_that_is_not_valid_unicode(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "caf\\udce9", "text": "x"}\n')
    with pytest.raises(SourceError, match="not valid Unicode"):
        discover(manifest, EXTS)


def test_fingerprint_names_a_pipe_as_not_a_regular_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoReadError, match="not a regular file"):
        file_fingerprint(fifo)


def test_offline_preset_uses_its_measured_defaults_unless_asked(monkeypatch) -> None:
    offline = load_settings(preset="offline")
    assert offline.models.rerank_rule == "edit_likelihood" and offline.query.rerank_k == 20
    assert offline.query.rerank_recall_window == 0.12  # the protected rerank chosen on dev data (#13)
    assert offline.query.rerank_recall_margin_gate is None and offline.query.final_reranker_scale == 0.04
    assert offline.query.use_reasoning is False and offline.query.edit_gate is True
    assert offline.query.copy_gate_threshold is None and offline.query.fusion_weight == 0.5  # R^3's
    assert load_settings(preset="offline", query={"use_reasoning": True}).query.use_reasoning is True
    assert load_settings(preset="offline", models={"rerank_rule": "yes_no_sigmoid"}).models.rerank_rule == (
        "yes_no_sigmoid"
    )
    reference = load_settings(preset="qwen3vl")
    assert reference.models.rerank_rule == "yes_no_sigmoid" and reference.query.edit_gate is False
    monkeypatch.setenv("R3_QUERY__COPY_GATE_THRESHOLD", "0.9")
    assert load_settings(preset="offline").query.copy_gate_threshold == 0.9
    monkeypatch.setenv("R3_QUERY__EDIT_GATE", "false")  # the reference: no edit gate
    assert load_settings(preset="offline").query.edit_gate is False


def test_a_relative_data_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reports link contact sheets by file URI, which a relative path cannot be.
    monkeypatch.chdir(tmp_path)
    assert load_settings(home=Path("rel/home")).home == tmp_path / "rel" / "home"
