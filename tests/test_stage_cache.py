"""Query stage caches: keys from what each backend reads, a size bound, hits in lineage, expiring index results."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from r3tasks.cache import keys as cachekeys
from r3tasks.cache.stages import StageCache, prune_older_than, stage_key
from r3tasks.models.base import RerankQuery
from r3tasks.models.gemma3.reranker import Gemma3Reranker
from r3tasks.settings.tree import load_settings
from tests.test_query_flow import FAKES, QUERIES, run, write_gallery, write_queries

FRAMES_A, FRAMES_B = {"frames": {"max_side": 224}}, {"frames": {"max_side": 448}}


class _TextOnly:
    fingerprint = "text-backend"
    prompt_version = "p1"
    uses_frames = False


class _Video(_TextOnly):
    fingerprint = "video-backend"
    uses_frames = True


def _likelihood_reranker() -> Gemma3Reranker:
    reranker = object.__new__(Gemma3Reranker)  # the key reads only the rule and the fingerprint
    reranker.rule, reranker._fingerprint = "edit_likelihood", "gemma-fp"
    return reranker


def test_text_only_backends_do_not_key_on_frame_settings_and_video_backends_do() -> None:
    a, b = load_settings(preset="tiny", **FRAMES_A), load_settings(preset="tiny", **FRAMES_B)
    for backend, same in ((_TextOnly(), True), (_Video(), False)):
        assert (
            cachekeys.embedding_key(backend, ["t"], "i", "content", a)
            == cachekeys.embedding_key(backend, ["t"], "i", "content", b)
        ) is same
        assert (
            cachekeys.reasoning_key(backend, "cap", "content", "edit", a)
            == cachekeys.reasoning_key(backend, "cap", "content", "edit", b)
        ) is same
    # A text-only embedder sees the caption, not the video: another video with the same caption is a hit.
    assert cachekeys.embedding_key(_TextOnly(), ["t"], "i", "video-1", a) == cachekeys.embedding_key(
        _TextOnly(), ["t"], "i", "video-2", a
    )


def test_edit_likelihood_rerank_key_ignores_the_reasoning_but_not_the_edit() -> None:
    settings = load_settings(preset="offline")
    reranker = _likelihood_reranker()
    with_reasoning = RerankQuery(
        text="make it night\n\nReasoned: dark park", instruction="i", source_text="a dog", edit="make it night"
    )
    plain = RerankQuery(text="make it night", instruction="i", source_text="a dog", edit="make it night")
    other_edit = RerankQuery(text="make it night", instruction="i", source_text="a dog", edit="make it rain")
    key = lambda q: cachekeys.rerank_key(reranker, q, "src", "cand", settings)  # noqa: E731
    assert key(with_reasoning) == key(plain)
    assert key(plain) != key(other_edit)
    reranker.rule = "yes_no_sigmoid"
    assert key(with_reasoning) != key(plain)  # the yes/no rule reads the whole query text


def test_a_bounded_stage_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, "query-embedding", max_bytes=40_000)
    keys = [stage_key("k", i) for i in range(12)]
    for i, key in enumerate(keys):
        cache.put(key, np.full(1000, i, np.float32))  # about 4 kB each
        path = cache._path(key)
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
        if i == 2:
            cache.get(keys[0])  # used again: younger than 1 and 2
    assert cache.evicted > 0
    size = sum(p.stat().st_size for p in (tmp_path / "query-embedding").rglob("*.pkl"))
    assert size <= 40_000 * 1.1  # a sweep runs once the folder is 10 % over its bound
    assert cache.get(keys[0]) is not None and cache.get(keys[1]) is None
    assert cache.get(keys[-1])[0] == 11
    assert StageCache(tmp_path, "other", max_bytes=0).get(keys[0]) is None


def test_expired_index_results_are_deleted(tmp_path: Path) -> None:
    old, new = tmp_path / "a" / "old", tmp_path / "new"
    old.parent.mkdir()
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert prune_older_than(tmp_path, 600) == 1
    assert not old.exists() and new.exists()
    assert prune_older_than(tmp_path, None) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_cache_hits_and_misses_are_in_the_results_lineage(tmp_path: Path, r3_home: Path) -> None:
    from flows.index_flow import index_gallery

    index_gallery(source=str(write_gallery(tmp_path / "g")), home=str(r3_home), overrides=FAKES)
    queries = write_queries(tmp_path, QUERIES)
    first = run(queries, r3_home)["lineage"]["cache"]
    second = run(queries, r3_home)["lineage"]["cache"]
    assert first["reasoning"]["misses"] == 2 and first["reasoning"]["hits"] == 0
    assert second["reasoning"] == {"hits": 2, "misses": 0, "evicted": 0}
    assert second["query-embedding"]["hits"] == 3 and second["query-embedding"]["misses"] == 0
    assert second["rerank"]["misses"] == 0 and second["rerank"]["hits"] > 0
