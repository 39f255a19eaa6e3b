"""Filters on the gallery's stored columns (`r3 query --where SQL`): applied before the top-K on every route."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main as cli_main
from r3tasks.errors import FilterError
from r3tasks.gallery import pinned as pinned_module
from r3tasks.gallery.filters import check_where
from r3tasks.gallery.pinned import PinnedGallery, pin
from r3tasks.gallery.table import GalleryRow, GalleryStore
from r3tasks.gallery.views import open_store
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.models.base import Reasoning
from r3tasks.query.recall import recall
from r3tasks.query.state import QueryState, SourceInfo
from r3tasks.settings.tree import GallerySettings, load_settings
from tests.conftest import fake_settings
from tests.stores import gallery_store

DIM = 16
ROWS = 90
GROUPS = ["holiday", "work", None]
K = 5
HOLIDAY = "`group` = 'holiday'"
IN_2024 = "path LIKE '%/2024/%'"
NOTHING = "`group` = 'no-such-group'"


def _rows(n: int = ROWS, seed: int = 3) -> list[GalleryRow]:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    vectors[7] = vectors[4]  # a tie, which must rank the same filtered or not
    # Ids whose written order is not their sorted order; groups and years interleaved differently.
    return [
        GalleryRow(
            f"{'zam'[i % 3]}{i:03d}",
            f"/videos/{2023 + i % 2}/clip{i}.mp4",
            f"clip {i}",
            GROUPS[i % 3],
            f"k{i}",
            8,
            vectors[i],
        )
        for i in range(n)
    ]


def _matching(where: str) -> set[str]:
    """What the filter keeps, worked out here from the rows themselves."""
    keep = {
        HOLIDAY: lambda r: r.group == "holiday",
        IN_2024: lambda r: "/2024/" in (r.path or ""),
        NOTHING: lambda r: False,
    }[where]
    return {r.id for r in _rows() if keep(r)}


@pytest.fixture
def store(tmp_path: Path) -> GalleryStore:
    rows = _rows()
    return gallery_store(str(tmp_path / "db"), "fp-filters", DIM, rows[40:], rows[:40])  # two commits


def _states(gallery: PinnedGallery, groups: tuple[str | None, ...] = (None,)) -> list[QueryState]:
    """Text queries and composed ones (two base vectors, a reasoning vector, a gallery source)."""
    rng = np.random.default_rng(5)
    states = []
    for i in range(8):
        group = groups[i % len(groups)]
        if i % 2:
            state = QueryState(query=TextQuery(id=f"t{i}", text="x", gallery_group=group))
            state.base_vectors = rng.standard_normal((1, DIM)).astype(np.float32)
        else:
            source = sorted(gallery.records)[3 * i]
            record = gallery.records[source]
            query = ComposedQuery(id=f"c{i}", source=source, edit="e", gallery_group=group)
            state = QueryState(query=query, source=SourceInfo(source, None, record.text, record.content_key))
            state.base_vectors = rng.standard_normal((2, DIM)).astype(np.float32)
            state.reasoning = Reasoning(text=f"reasoning {i}", raw="")
            state.reasoning_vector = (state.base_vectors[0] + 0.3 * rng.standard_normal(DIM)).astype(np.float32)
        states.append(state)
    return states


def _recalled(gallery: PinnedGallery, where: str | None, k: int, **query) -> list[QueryState]:
    settings = load_settings(preset="tiny", query={"recall_k": k, "copy_gate_threshold": None, **query})
    states = _states(gallery)
    recall(states, gallery, settings, where)
    assert all(s.error is None for s in states)
    return states


@pytest.mark.parametrize("where", [HOLIDAY, IN_2024])
def test_a_filter_keeps_the_unfiltered_ranking_of_the_matching_items_and_fills_all_k(
    store: GalleryStore, where: str
) -> None:
    gallery = pin(store)
    everything = _recalled(gallery, None, ROWS)  # the whole unfiltered ranking of each query
    filtered = _recalled(gallery, where, K)
    kept = _matching(where)
    for full, got in zip(everything, filtered):
        expected = [(i, s) for i, s in full.recalled if i in kept][:K]
        assert [i for i, _ in got.recalled] == [i for i, _ in expected]
        assert [s for _, s in got.recalled] == pytest.approx([s for _, s in expected], abs=1e-6)
        assert len(got.recalled) == K  # 30 or 45 rows match: the filter never leaves a place empty
        assert got.warnings == []


def test_a_filter_and_a_query_group_both_apply(store: GalleryStore) -> None:
    gallery = pin(store)
    settings = load_settings(preset="tiny", query={"recall_k": ROWS, "copy_gate_threshold": None})
    states = _states(gallery, groups=("work",))
    recall(states, gallery, settings, IN_2024)
    work_2024 = {r.id for r in _rows() if r.group == "work"} & _matching(IN_2024)
    for state in states:
        assert state.recalled and {i for i, _ in state.recalled} <= work_2024
        if state.source is not None:
            assert state.source.item_id not in {i for i, _ in state.recalled}  # the source stays excluded


@pytest.mark.parametrize("candidate_pool", [0, 20])
@pytest.mark.parametrize(
    "where", [HOLIDAY, IN_2024, "id IN ('z000', 'a001', 'm002', 'z003')", "`group` = 'holiday' -- a trailing comment"]
)
def test_in_memory_and_lancedb_flat_search_give_the_same_filtered_top_k(
    store: GalleryStore, where: str, candidate_pool: int
) -> None:
    in_memory = pin(store)
    flat = pin(store, settings=GallerySettings(exact_search_max_bytes=1))
    assert in_memory.route(K) == "memory" and flat.route(K) == "flat"
    memory_states = _recalled(in_memory, where, K, candidate_pool=candidate_pool)
    flat_states = _recalled(flat, where, K, candidate_pool=candidate_pool)
    for a, b in zip(memory_states, flat_states):
        assert [i for i, _ in a.recalled] == [i for i, _ in b.recalled]
        np.testing.assert_allclose([s for _, s in a.recalled], [s for _, s in b.recalled], atol=1e-5)
    query = np.random.default_rng(9).standard_normal(DIM).astype(np.float32)
    for group in (None, "work"):
        a, b = in_memory.search(query, K, group, where), flat.search(query, K, group, where)
        assert list(a) == list(b)
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-5)
    assert flat._exact is None  # the flat route never loaded the matrix


def test_a_narrow_filter_on_an_ann_index_still_fills_k(tmp_path: Path) -> None:
    from lancedb.index import IvfFlat

    rows = [GalleryRow(r.id, r.path, r.text, "rare" if i % 50 == 0 else "common", r.content_key, 8, r.vector)
            for i, r in enumerate(_rows(1000, seed=4))]  # fmt: skip
    store = gallery_store(str(tmp_path / "db"), "fp-ann", DIM, rows)
    store.table().create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=32))
    ann = pin(store, settings=GallerySettings(use_ann_index=True, ann_min_rows=0, ann_nprobes=1))
    assert ann.route(K) == "ann"
    query = np.random.default_rng(2).standard_normal(DIM).astype(np.float32)
    hits = ann.search(query, K, where="`group` = 'rare'")
    assert len(hits) == K and {ann.records[i].group for i in hits} == {"rare"}  # 20 rare rows, in few partitions


def test_a_filter_that_matches_nothing_answers_empty_with_a_warning(store: GalleryStore) -> None:
    for gallery in (pin(store), pin(store, settings=GallerySettings(exact_search_max_bytes=1))):
        states = _recalled(gallery, NOTHING, K)
        for state in states:
            assert state.recalled == [] and state.error is None
            assert len(state.warnings) == 1 and "matched no gallery row" in state.warnings[0]


def test_a_filter_is_evaluated_once_per_version_however_many_threads_search(
    store: GalleryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = pinned_module.evaluate

    def counting(table, where, row_ids):
        calls.append(where)
        return real(table, where, row_ids)

    monkeypatch.setattr(pinned_module, "evaluate", counting)
    gallery = pin(store)
    queries = np.random.default_rng(1).standard_normal((16, DIM)).astype(np.float32)
    start = threading.Barrier(8)

    def search(query: np.ndarray) -> dict[str, float]:
        start.wait(timeout=10)  # all at once: the first search of each thread finds no filter evaluated yet
        return gallery.search(query, K, where=HOLIDAY)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(search, queries[:8]))
    answers += [gallery.search(q, K, where=HOLIDAY) for q in queries[8:]]
    recall(_states(gallery), gallery, load_settings(preset="tiny", query={"recall_k": K}), HOLIDAY)
    assert calls == [HOLIDAY]
    assert all(len(a) == K and set(a) <= _matching(HOLIDAY) for a in answers)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("nonsense =", "sql parser error"),
        ("no_such_column = 'x'", "No field named no_such_column"),
        ("id", "does not return a boolean"),
        ("`group` = 'holiday'; path LIKE '%x%'", "one expression only"),
        ("CAST(text AS INT) > 3", "Cannot cast string"),  # refused only when rows are read
    ],
)
def test_check_where_refuses_a_bad_filter_in_one_line(store: GalleryStore, where: str, reason: str) -> None:
    with pytest.raises(FilterError) as refused:
        check_where(pin(store), where)
    assert reason in str(refused.value) and str(refused.value).startswith("--where: ")
    assert "\n" not in str(refused.value) and ".rs:" not in str(refused.value)
    for fine in (HOLIDAY, "indexed_at > timestamp '2000-01-01'", "id = 'a;b' -- a comment; not a statement", None):
        check_where(store.table(), fine)
    with pytest.raises(FilterError, match=r"^where: "):  # a web form names its own field
        check_where(store.table(), where, label="where")


# -- what `r3 query` shows ---------------------------------------------------------------------------
FAKES = {"embedder": "fake-text", "reasoner": "fake", "reranker": "fake"}


@pytest.fixture
def home(r3_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data home whose default gallery holds the rows above, written without any flow."""
    for role, name in FAKES.items():
        monkeypatch.setenv(f"R3_MODELS__{role.upper()}", name)
    open_store(fake_settings(r3_home, models=FAKES)).upsert(_rows())
    return r3_home


def _queries_file(folder: Path) -> Path:
    path = folder / "q.jsonl"
    texts = ["a clip", "another clip", "a third clip"]
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _no_flow(**kwargs):
    raise AssertionError("the query-batch flow must not start")


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("nonsense =", "sql parser error"),
        ("no_such_column = 1", "No field named no_such_column"),
        ("num_frames + 1", "does not return a boolean"),
    ],
)
def test_r3_query_refuses_a_bad_filter_with_one_line_before_any_flow(
    tmp_path: Path,
    home: Path,
    where: str,
    reason: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("flows.query_flow.query_batch", _no_flow)
    out = tmp_path / "r.json"
    code = cli_main(["query", str(_queries_file(tmp_path)), "--out", str(out), "--home", str(home), "--where", where])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("r3 query: --where: ") and reason in err and err.count("\n") == 1
    assert not out.exists()  # nothing was answered or written


def test_r3_query_hands_its_filter_to_the_flow(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict = {}

    def fake_batch(**kwargs):
        asked.update(kwargs)
        return {"results": [], "artifacts": str(tmp_path)}

    monkeypatch.setattr("flows.query_flow.query_batch", fake_batch)
    args = ["query", str(_queries_file(tmp_path)), "--out", str(tmp_path / "r.json"), "--home", str(home)]
    assert cli_main([*args, "--where", HOLIDAY, "--json"]) == 0
    assert asked["where"] == HOLIDAY
    assert cli_main([*args, "--json"]) == 0 and asked["where"] is None


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_with_a_filter_answers_within_it_and_records_it(tmp_path: Path, home: Path) -> None:
    from flows.query_flow import query_batch

    queries = str(_queries_file(tmp_path))
    overrides = {"models": FAKES, "query": {"rerank_k": 0, "recall_k": ROWS}}
    everything = query_batch(queries=queries, home=str(home), overrides=overrides)["results"]
    overrides["query"]["recall_k"] = K
    out = tmp_path / "r.json"
    filtered = query_batch(queries=queries, out=str(out), home=str(home), overrides=overrides, where=IN_2024)
    assert json.loads(out.read_text())["results"] == filtered["results"]
    for full, got in zip(everything, filtered["results"]):
        expected = [r["id"] for r in full["ranked"] if r["id"] in _matching(IN_2024)][:K]
        assert got["error"] is None and [r["id"] for r in got["ranked"]] == expected and len(expected) == K
        assert got["lineage"]["where"] == IN_2024 and full["lineage"]["where"] is None

    nothing = query_batch(queries=queries, home=str(home), overrides=overrides, where=NOTHING)["results"]
    for result in nothing:
        assert result["ranked"] == [] and result["error"] is None
        assert any("matched no gallery row" in w for w in result["warnings"])

    state = query_batch(queries=queries, home=str(home), overrides=overrides, where="nonsense =", return_state=True)
    # A deployment run fails in the flow's own preflight, with the line the CLI prints.
    assert state.is_failed() and "FilterError: --where: Error parsing statement" in state.message
