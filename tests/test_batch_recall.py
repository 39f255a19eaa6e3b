"""Batch recall (one matrix product per chunk of query vectors) ranks and scores as the per-query path did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3tasks.gallery.pinned import pin
from r3tasks.gallery.table import GalleryRow, GalleryStore
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.models.base import Reasoning
from r3tasks.query import recall as recall_module
from r3tasks.query.state import QueryState, SourceInfo
from r3tasks.settings.tree import load_settings
from tests.stores import gallery_store

DIM = 16
GROUPS = ["kitchen", "garden", None]


@pytest.fixture
def store(tmp_path: Path) -> GalleryStore:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((120, DIM)).astype(np.float32)
    vectors[10:20] = vectors[0]  # exact duplicates: tied scores, which must rank the same on both paths
    vectors[30] = vectors[40] * 3.0  # same direction, other norm: a tie once normalised
    vectors[50] = 0.0  # no cosine: never returned
    # Ids whose written order is not their sorted order (z..., a..., m...), groups interleaved.
    ids = [f"{'zam'[i % 3]}{i:03d}" for i in range(120)]
    rows = [GalleryRow(ids[i], None, f"item {i}", GROUPS[i % 3], f"k{i}", None, vectors[i]) for i in range(120)]
    # Two commits: the stored order is not the id order either.
    return gallery_store(str(tmp_path / "db"), "fp-batch", DIM, rows[60:], rows[:60])


def _states(store: GalleryStore, with_bad: bool = False) -> list[QueryState]:
    rng = np.random.default_rng(5)
    pinned = pin(store)
    dup = store.table().search().where("id = 'z000'").to_arrow().column("vector").to_pylist()[0]
    states = []
    for i in range(14):
        group = [None, "kitchen", "garden"][i % 3]
        if i % 2:
            query = TextQuery(id=f"t{i}", text="x", gallery_group=group)
            state = QueryState(query=query)
            state.base_vectors = rng.standard_normal((1, DIM)).astype(np.float32)
        else:
            source_id = sorted(pinned.records)[i]
            record = pinned.records[source_id]
            query = ComposedQuery(id=f"c{i}", source=source_id, edit="e", gallery_group=group)
            state = QueryState(query=query, source=SourceInfo(source_id, None, record.text, record.content_key))
            state.base_vectors = rng.standard_normal((2, DIM)).astype(np.float32)
            state.reasoning = Reasoning(text=f"reasoning {i}", raw="")
            state.reasoning_vector = (state.base_vectors[0] + 0.3 * rng.standard_normal(DIM)).astype(np.float32)
        states.append(state)
    states[2].base_vectors[0] = np.asarray(dup, dtype=np.float32)  # ties at the very top
    states[3].base_vectors[0] = 0.0  # a zero query vector scores nothing
    if with_bad:
        states[5].base_vectors[0, 0] = np.nan
        states[7].base_vectors = np.zeros((1, DIM + 1), np.float32)
    return states


def _answers(states: list[QueryState]) -> list[tuple]:
    return [
        (s.query.id, s.error, [i for i, _ in s.recalled], s.gate_used, s.agreement, s.source_similarity) for s in states
    ]


def _scores(states: list[QueryState]) -> list[float]:
    return [score for s in states for _, score in s.recalled]


@pytest.mark.parametrize("fusion", ["gated_residual", "rrf", "max"])
def test_batch_recall_gives_the_per_query_rankings_and_scores_ties_included(
    store: GalleryStore, fusion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(preset="tiny", query={"recall_k": 40, "fusion": fusion, "copy_gate_threshold": None})
    pinned = pin(store)
    batch, alone = _states(store), _states(store)
    monkeypatch.setattr(recall_module, "SCORE_CHUNK_FLOATS", 3 * 120)  # several chunks, three vectors each
    recall_module.recall(batch, pinned, settings)
    for state in alone:
        recall_module._recall_one(state, pinned, settings)
    assert _answers(batch) == _answers(alone)  # same ids in the same order, ties included
    # Same scores up to float32 rounding: a matrix-matrix product may round a last bit unlike matrix-vector.
    np.testing.assert_allclose(_scores(batch), _scores(alone), rtol=0, atol=1e-6)
    tied = [(a, b) for s in batch for (a, x), (b, y) in zip(s.recalled, s.recalled[1:]) if x == y]
    assert len(tied) >= 3 and all(a < b for a, b in tied)  # the copies tie, and rank in id order
    assert all(i != "a050" and not i.endswith("050") for s in batch for i, _ in s.recalled)
    assert all(s.query.source not in [i for i, _ in s.recalled] for s in batch if isinstance(s.query, ComposedQuery))


def test_one_bad_query_vector_errors_only_its_query(store: GalleryStore) -> None:
    settings = load_settings(preset="tiny", query={"recall_k": 10})
    states = _states(store, with_bad=True)
    recall_module.recall(states, pin(store), settings)
    errors = {s.query.id: s.error for s in states if s.error}
    assert set(errors) == {"t5", "t7"}
    assert "non-finite" in errors["t5"] and "shape (17,)" in errors["t7"]
    assert all(len(s.recalled) == 10 for s in states if s.ok and s.query.id != "t3")


def test_sampled_top_k_equals_the_full_sort_on_large_rows_with_ties_exclusions_and_dead_rows() -> None:
    from r3tasks.query.topk import top_k

    rng = np.random.default_rng(7)
    n = 100_000
    ids = np.array([f"i{j:06d}" for j in range(n)], dtype=object)
    rows = [rng.standard_normal(n).astype(np.float32) for _ in range(6)]
    rows[1] = np.round(rows[1], 1)  # thousands of ties at every score, the k-th included
    rows[2][:] = 0.25  # one tie across the whole row
    rows[3][:] = -np.inf  # a zero query vector: nothing comes back
    rows[4][rng.choice(n, 500, replace=False)] = 9.0  # more top values than k
    rows[5] = np.sort(rows[5])  # the best at the end, a strided sample misses most of them
    for row in rows:
        for k, exclude in ((1, set()), (50, {"i000123"}), (50, {str(ids[int(np.argmax(row))])}), (300, set())):
            got = recall_module._top(row, ids, k, exclude)
            want = top_k(row.astype(np.float64), list(ids), k, exclude=exclude)
            assert [i for i, _ in got] == [i for i, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


def test_top_k_over_fused_scores_with_non_finite_values_keeps_the_full_sort_order() -> None:
    from r3tasks.query.topk import top_k

    rng = np.random.default_rng(11)
    n = 50_000
    ids = [f"i{j:05d}" for j in range(n)]
    scores = np.round(rng.standard_normal(n), 2)
    scores[rng.choice(n, 40, replace=False)] = np.inf  # never returned
    scores[rng.choice(n, 40, replace=False)] = np.nan
    finite = [(i, float(s)) for i, s in zip(ids, scores) if np.isfinite(s) and i != "i00007"]
    want = sorted(finite, key=lambda x: -x[1])[:60]  # a stable sort: ties in id order
    assert top_k(scores, ids, 60, exclude={"i00007"}) == want
