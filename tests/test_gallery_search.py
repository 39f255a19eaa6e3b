"""PinnedGallery search: the in-memory exact path gives LanceDB's flat-search answers, on one pinned version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from r3tasks.errors import R3Error
from r3tasks.gallery import pinned as pinned_module
from r3tasks.gallery.matrix import read_vectors
from r3tasks.gallery.pinned import PinnedGallery, pin
from r3tasks.gallery.table import GalleryRow, GalleryStore
from r3tasks.settings.tree import GallerySettings
from tests.stores import gallery_store

DIM = 24
ROWS = 300
GROUPS = ["kitchen", "garden", None]


def _rows(rng: np.random.Generator, n: int, prefix: str = "v") -> list[GalleryRow]:
    # Random norms: cosine must not depend on a stored vector's length.
    vectors = rng.standard_normal((n, DIM)).astype(np.float32) * rng.uniform(0.2, 5.0, (n, 1)).astype(np.float32)
    return [
        GalleryRow(f"{prefix}{i}", f"/videos/{prefix}{i}.mp4", None, GROUPS[i % 3], f"key-{prefix}{i}", 8, vectors[i])
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> GalleryStore:
    return gallery_store(str(tmp_path / "db"), "fp-search", DIM, _rows(np.random.default_rng(7), ROWS))


def _queries(n: int = 5, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _lance_flat(store: GalleryStore, query: np.ndarray, limit: int, group: str | None) -> dict[str, float]:
    """What LanceDB's own exact search answers on the latest version."""
    search = store.table().search(query).distance_type("cosine").bypass_vector_index()
    search = search.limit(limit if limit > 0 else ROWS)
    if group is not None:
        search = search.where(f"`group` = '{group}'", prefilter=True)
    hits = search.select(["id", "_distance"]).to_arrow()
    return {i: 1.0 - float(d) for i, d in zip(hits.column("id").to_pylist(), hits.column("_distance").to_pylist())}


def _assert_same(got: dict[str, float], expected: dict[str, float]) -> None:
    assert list(got) == list(expected)  # same ids, same order (best first)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-5)


@pytest.mark.parametrize("limit", [10, 0])
@pytest.mark.parametrize("group", [None, "kitchen"])
def test_in_memory_search_matches_lancedb_flat_search(store: GalleryStore, limit: int, group: str | None) -> None:
    pinned = pin(store)
    assert pinned.route(limit) == "memory"
    for query in _queries():
        got = pinned.search(query, limit, group)
        _assert_same(got, _lance_flat(store, query, limit, group))
        expected_size = 10 if limit else (ROWS // 3 if group else ROWS)
        assert len(got) == expected_size
        if group is not None:
            assert {pinned.records[i].group for i in got} == {group}


@pytest.mark.parametrize("chunk_floats", [2**24, 2 * ROWS])
def test_search_many_is_one_search_per_row(store: GalleryStore, chunk_floats: int, monkeypatch) -> None:
    # A small score budget makes the batch go through in chunks of two queries.
    monkeypatch.setattr(pinned_module, "_SCORE_CHUNK_FLOATS", chunk_floats)
    pinned = pin(store)
    queries = _queries(7)
    for limit, group in [(10, None), (0, "garden"), (5, "kitchen")]:
        batch = pinned.search_many(queries, limit, group)
        assert len(batch) == len(queries)
        for query, got in zip(queries, batch):
            _assert_same(got, _lance_flat(store, query, limit, group))


def test_unknown_group_finds_nothing(store: GalleryStore) -> None:
    for settings in (None, GallerySettings(exact_search_max_bytes=1)):
        pinned = pin(store, settings=settings)
        assert pinned.search(_queries(1)[0], 10, "no-such-group") == {}
        assert pinned.search_many(_queries(2), 0, "no-such-group") == [{}, {}]


def test_over_the_memory_budget_lancedb_answers_the_same(store: GalleryStore) -> None:
    in_memory = pin(store)
    tiny_budget = pin(store, settings=GallerySettings(exact_search_max_bytes=1))
    assert tiny_budget.route(10) == "flat" and tiny_budget.route(0) == "flat"
    for limit, group in [(10, None), (0, None), (10, "garden")]:
        for query in _queries(3):
            _assert_same(tiny_budget.search(query, limit, group), in_memory.search(query, limit, group))
    assert tiny_budget._exact is None  # the matrix was never loaded


def test_store_settings_reach_pinned_views(tmp_path: Path) -> None:
    rows = _rows(np.random.default_rng(1), 20)
    store = gallery_store(str(tmp_path / "db"), "fp", DIM, rows, settings=GallerySettings(exact_search_max_bytes=1))
    assert pin(store).route(0) == "flat"
    assert pin(store, settings=GallerySettings()).route(0) == "memory"


def test_pinned_gallery_does_not_see_later_upserts(store: GalleryStore) -> None:
    query = _queries(1)[0]
    before = _lance_flat(store, query, 0, None)
    pinned = pin(store)
    # After the pin: one new row that would rank first, and an existing row changed to rank last.
    store.upsert(
        [
            GalleryRow("new", None, None, "kitchen", "key-new", 8, query * 3),
            GalleryRow("v5", None, None, "kitchen", "key-v5b", 8, -query),
        ]
    )
    latest = pin(store)
    assert latest.search(query, 1) == {"new": pytest.approx(1.0, abs=1e-5)}
    assert latest.search(-query, 1) == {"v5": pytest.approx(1.0, abs=1e-5)}
    # The pinned view loads its vectors lazily, on this first search: still the pinned version.
    got = pinned.search(query, 0)
    assert "new" not in got and "new" not in pinned.records
    _assert_same(got, before)
    assert pinned.search_many(query[None, :], 0, "kitchen")[0].keys() == {
        i for i, r in pinned.records.items() if r.group == "kitchen"
    }


def test_zero_vectors_give_no_nan(store: GalleryStore) -> None:
    store.upsert([GalleryRow("zero", None, None, "kitchen", "key-zero", 8, np.zeros(DIM, np.float32))])
    for settings in (None, GallerySettings(exact_search_max_bytes=1)):
        pinned = pin(store, settings=settings)
        assert pinned.search(np.zeros(DIM, np.float32), 10) == {}
        batch = pinned.search_many(np.stack([np.zeros(DIM, np.float32), _queries(1)[0]]), 0, "kitchen")
        assert batch[0] == {}
        # A zero row has no cosine: left out (as LanceDB does), every other score finite.
        assert "zero" not in batch[1] and len(batch[1]) == ROWS // 3
        assert np.all(np.isfinite(list(batch[1].values())))


def test_bad_query_vectors_are_typed_errors(store: GalleryStore) -> None:
    pinned = pin(store)
    with pytest.raises(R3Error, match="expected"):
        pinned.search(np.ones(DIM + 1, np.float32))
    with pytest.raises(R3Error, match="expected"):
        pinned.search_many(np.ones(DIM, np.float32))
    with pytest.raises(R3Error, match="non-finite"):
        pinned.search(np.full(DIM, np.nan, np.float32))


def test_ann_index_is_used_only_for_top_k_above_the_row_threshold(store: GalleryStore) -> None:
    from lancedb.index import IvfFlat

    store.table().create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=2))
    assert pin(store, settings=GallerySettings(ann_min_rows=100)).route(10) == "memory"  # off unless asked for
    settings = GallerySettings(ann_min_rows=100, use_ann_index=True, ann_nprobes=2, ann_refine_factor=2)
    pinned = pin(store, settings=settings)
    assert pinned.route(10) == "ann"
    assert pinned.route(0) == "memory"  # every row's score is always exact
    hits = pinned.search(_queries(1)[0], 10)
    assert len(hits) == 10 and set(hits) <= set(pinned.records)
    assert list(hits.values()) == sorted(hits.values(), reverse=True)
    # Every partition probed and refined: the index gives the exact top 10.
    assert list(hits) == list(pin(store, settings=GallerySettings()).search(_queries(1)[0], 10))
    assert pin(store, settings=GallerySettings(ann_min_rows=ROWS, use_ann_index=True)).route(10) == "memory"


def test_an_index_for_another_distance_is_not_used(store: GalleryStore) -> None:
    from lancedb.index import IvfFlat

    store.table().create_index("vector", config=IvfFlat(distance_type="l2", num_partitions=2))
    assert pin(store, settings=GallerySettings(ann_min_rows=0, use_ann_index=True)).route(10) == "memory"


def test_read_vectors_handles_chunks_slices_and_nulls() -> None:
    values = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    whole = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 3)
    with_null = pa.array([None, [9.0, 9.0, 9.0]], pa.list_(pa.float32(), 3))
    column = pa.chunked_array([whole.slice(1, 3), with_null])
    expected = np.vstack([values[1:4], np.zeros((1, 3)), np.full((1, 3), 9.0)]).astype(np.float32)
    np.testing.assert_array_equal(read_vectors(column, 3), expected)
    out = np.full((7, 3), -1.0, np.float32)
    read_vectors(column, 3, out=out[2:])
    np.testing.assert_array_equal(out[2:], expected)
    assert np.all(out[:2] == -1.0)


def test_empty_gallery_searches_to_nothing(tmp_path: Path) -> None:
    store = gallery_store(str(tmp_path / "db"), "fp", DIM)
    store.table()  # an indexed gallery whose rows were all removed (a never-indexed one refuses to pin)
    pinned: PinnedGallery = pin(store)
    assert len(pinned) == 0
    assert pinned.search(_queries(1)[0], 0) == {}
    assert pinned.search_many(_queries(2), 10) == [{}, {}]


def test_gallery_without_groups_matches_lancedb(tmp_path: Path) -> None:
    rows = _rows(np.random.default_rng(3), ROWS)
    ungrouped = [GalleryRow(r.id, r.path, r.text, None, r.content_key, r.num_frames, r.vector) for r in rows]
    store = gallery_store(str(tmp_path / "db"), "fp", DIM, ungrouped)
    pinned = pin(store)
    for query in _queries(3):
        _assert_same(pinned.search(query, 0), _lance_flat(store, query, 0, None))
    assert pinned.search(_queries(1)[0], 5, "kitchen") == {}
