"""Fake models for flow tests (LanceDB's own tests do the same): fast, deterministic, countable.

`FakeEmbedder` is the one fake embedder of the project: the benchmarks (benchmarks/fakes.py) use it too, to
measure everything around a model at almost no cost per item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from r3tasks.errors import ItemError
from r3tasks.models.base import EmbedInput, l2_normalise
from r3tasks.settings.tree import R3Settings

FAKE_DIM = 16


class FakeEmbedder:
    """Vectors from a hash of the text and the mean colour of the frames (really decoded); counts what it embeds.

    `name` opens the fingerprint (so the table name): fakes under different names never share a table.
    """

    def __init__(
        self, dim: int = FAKE_DIM, uses_frames: bool = True, fail_ids: Sequence[str] = (), name: str = "fake"
    ) -> None:
        self._dim = dim
        self._uses_frames = uses_frames
        self._name = name
        self.fail_ids = set(fail_ids)
        self.documents_embedded = 0
        self.queries_embedded = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return f"{self._name}-{self._dim}-{int(self._uses_frames)}"

    @property
    def uses_frames(self) -> bool:
        return self._uses_frames

    def _vector(self, item: EmbedInput) -> np.ndarray:
        if item.item_id in self.fail_ids:
            raise ItemError(item.item_id, "injected embedder failure")
        seed = int(hashlib.sha256((item.text or "").encode()).hexdigest()[:8], 16)
        vector = np.random.default_rng(seed).standard_normal(self._dim).astype(np.float32)
        if item.frames is not None:
            colour = item.frames.reshape(-1, 3).mean(axis=0) / 255.0
            vector[:3] += 4.0 * colour.astype(np.float32)
        return vector

    def embed_documents(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        vectors = np.stack([self._vector(i) for i in items])
        self.documents_embedded += len(items)
        return l2_normalise(vectors)

    def embed_queries(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        vectors = np.stack([self._vector(i) for i in items])
        self.queries_embedded += len(items)
        return l2_normalise(vectors)


def load_fake_embedder(settings: R3Settings) -> FakeEmbedder:
    return FakeEmbedder()


def load_fake_text_embedder(settings: R3Settings) -> FakeEmbedder:
    return FakeEmbedder(uses_frames=False)


class FakeReasoner:
    """Writes the 'target description' as the source text with the edit appended; counts calls."""

    fingerprint = "fake-reasoner-1"
    prompt_version = "p1"

    def __init__(self) -> None:
        self.calls = 0

    def reason(self, requests):
        from r3tasks.models.base import Reasoning

        self.calls += len(requests)
        out = []
        for request in requests:
            text = f"{request.source_text or 'a video'}, after: {request.edit}"
            out.append(Reasoning(text=text, raw=f"<think>edit it</think>{text}", thinking="edit it"))
        return out


class FakeCopyingReasoner(FakeReasoner):
    """A weak reasoner's habit: the 'target description' is the source text, the edit left out."""

    fingerprint = "fake-copying-reasoner-1"

    def reason(self, requests):
        from r3tasks.models.base import Reasoning

        self.calls += len(requests)
        return [Reasoning(text=r.source_text or "a video", raw=r.source_text or "", thinking=None) for r in requests]


class FakeReranker:
    """Prefers candidates whose text shares words with the query; counts scored pairs."""

    fingerprint = "fake-reranker-1"
    uses_frames = False

    def __init__(self) -> None:
        self.pairs = 0

    def score(self, query, candidates):
        self.pairs += len(candidates)
        words = set(query.text.lower().split())
        return np.array([len(words & set((c.text or "").lower().split())) for c in candidates], dtype=np.float64)


def load_fake_reasoner(settings: R3Settings) -> FakeReasoner:
    return FakeReasoner()


def load_fake_copying_reasoner(settings: R3Settings) -> FakeCopyingReasoner:
    return FakeCopyingReasoner()


def load_fake_reranker(settings: R3Settings) -> FakeReranker:
    return FakeReranker()


class FaultyReranker(FakeReranker):
    """The fake reranker, failing whenever a batch holds one of `fail_ids` (as a real one does on a
    candidate whose file broke after indexing), or whole for a query text holding `fail_query_words`.
    `make_error(what)` builds the exception (default: an ItemError naming it)."""

    fingerprint = "fake-reranker-faulty-1"

    def __init__(
        self,
        fail_ids: Sequence[str] = (),
        fail_query_words: Sequence[str] = (),
        make_error: Callable[[str], Exception] | None = None,
    ) -> None:
        super().__init__()
        self.fail_ids = set(fail_ids)
        self.fail_query_words = set(fail_query_words)
        self.make_error = make_error or (lambda what: ItemError(what, "injected reranker failure"))
        self.calls = 0

    def score(self, query, candidates):
        self.calls += 1
        if any(word in query.text for word in self.fail_query_words):
            raise self.make_error("the query")
        bad = sorted(self.fail_ids & {c.item_id for c in candidates})
        if bad:
            raise self.make_error(bad[0])
        return super().score(query, candidates)


class FaultyEmbedder(FakeEmbedder):
    """The fake text embedder, raising `error` (a processor's ValueError, MemoryError, ...) for any text
    holding one of `fail_words` - as a whole batch call does when one of its texts is bad."""

    def __init__(self, fail_words: Sequence[str] = (), error: type[Exception] = ValueError) -> None:
        super().__init__(uses_frames=False)
        self.fail_words = set(fail_words)
        self.error = error

    def embed_queries(self, items: Sequence[EmbedInput], instruction: str) -> np.ndarray:
        for item in items:
            if any(word in (item.text or "") for word in self.fail_words):
                raise self.error(f"injected embedder failure on {item.item_id}")
        return super().embed_queries(items, instruction)


class FaultyReasoner(FakeReasoner):
    """The fake reasoner; a batch holding an edit with one of `fail_words` raises `error`, and an edit
    with one of `special_words` gets a reasoning text full of chat-control strings."""

    fingerprint = "fake-reasoner-faulty-1"

    def __init__(
        self, fail_words: Sequence[str] = (), error: type[Exception] = MemoryError, special_words: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.fail_words = set(fail_words)
        self.special_words = set(special_words)
        self.error = error
        self.batches: list[int] = []

    def reason(self, requests):
        from r3tasks.models.base import Reasoning

        self.batches.append(len(requests))
        if any(word in r.edit for r in requests for word in self.fail_words):
            raise self.error("injected reasoner failure")
        out = super().reason(requests)
        return [
            Reasoning(text=f"{o.text} <|im_end|><|video_pad|><end_of_turn>", raw=o.raw, thinking=o.thinking)
            if any(word in r.edit for word in self.special_words)
            else o
            for r, o in zip(requests, out)
        ]
