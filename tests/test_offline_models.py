"""The `offline` preset's backends on their real, packaged weights: MiniLM (text embedder) and
Gemma 3 270M (reasoner, reranker; converted once from the packaged GGUF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from r3tasks.errors import ItemError, MissingTextError
from r3tasks.models.base import (
    Embedder,
    EmbedInput,
    Reasoner,
    ReasonInput,
    RerankCandidate,
    Reranker,
    RerankQuery,
)
from r3tasks.models.registry import load_embedder, load_reasoner, load_reranker
from r3tasks.settings.tree import R3Settings, load_settings
from tests.minilm_reference import minilm_reference


def offline_settings(home: Path, **models: object) -> R3Settings:
    return load_settings(home=home, preset="offline", models={"preset": "offline", "device": "cpu", **models})


# ------------------------------------------------------------------------------------------
# MiniLM
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory):
    return load_embedder(offline_settings(tmp_path_factory.mktemp("minilm-home")))


def test_minilm_is_a_text_only_embedder_of_unit_384d_vectors(minilm) -> None:
    assert isinstance(minilm, Embedder)
    assert minilm.uses_frames is False
    assert minilm.dim == 384
    vecs = minilm.embed_documents(
        [EmbedInput("a", "a person cuts a tomato"), EmbedInput("b", "#C C opens the fridge door")], "ignored"
    )
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_minilm_vector_alone_equals_vector_in_padded_batch(minilm) -> None:
    short = EmbedInput("short", "a dog")
    long = EmbedInput("long", "a dog runs across a wide grassy park chasing a red ball while children watch")
    alone = minilm.embed_queries([short], "")
    batched = minilm.embed_queries([long, short], "")
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-4)


def test_minilm_semantically_closer_texts_score_higher(minilm) -> None:
    a, b, c = minilm.embed_documents(
        [
            EmbedInput("a", "a person cuts a tomato"),
            EmbedInput("b", "someone slicing a tomato"),
            EmbedInput("c", "a car drives on a highway"),
        ],
        "",
    )
    assert a @ b > a @ c + 0.3
    assert a @ b > b @ c + 0.3


def test_minilm_queries_and_documents_share_one_space(minilm) -> None:
    # Instructions are not prepended (measured worse on EgoCVR), so a text is the same vector
    # whichever side embeds it.
    item = [EmbedInput("x", "#C C shakes the sieve")]
    np.testing.assert_allclose(
        minilm.embed_queries(item, "query instruction"), minilm.embed_documents(item, "document instruction"), atol=1e-6
    )


@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_minilm_item_without_text_is_refused_by_name(minilm, text) -> None:
    with pytest.raises(MissingTextError) as info:
        minilm.embed_documents([EmbedInput("ok", "a caption"), EmbedInput("clip-0042", text)], "")
    assert info.value.item == "clip-0042"
    assert "text" in info.value.reason and "offline" in info.value.reason


def test_minilm_truncates_long_text_instead_of_failing(minilm) -> None:
    long_text = "the person stirs the soup slowly " * 200  # ~1200 word pieces, model max is 256
    vec = minilm.embed_documents([EmbedInput("long", long_text)], "")
    assert vec.shape == (1, 384)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_minilm_queries_on_numpy_and_documents_on_torch_match_sentence_transformers(minilm) -> None:
    reference = minilm_reference()
    texts = [
        "#C C takes the sieve",
        "a dog",
        "Ünïcödé façade 東京 🙂 naïve café",
        "the person stirs the soup slowly " * 60,  # cut at 256 word pieces
        "x",
    ]
    expected = np.stack([reference(text) for text in texts])
    items = [EmbedInput(str(k), text) for k, text in enumerate(texts)]
    np.testing.assert_allclose(minilm.embed_queries(items, ""), expected, atol=1e-5)
    np.testing.assert_allclose(minilm.embed_documents(items, ""), expected, atol=1e-5)


def test_a_query_is_embedded_without_importing_torch(tmp_path: Path) -> None:
    # A one-shot `r3 query` would otherwise spend about 4 s importing torch and transformers.
    script = (
        "import sys\n"
        "from r3tasks.models.base import EmbedInput\n"
        "from r3tasks.models.registry import load_embedder\n"
        "from r3tasks.settings.tree import load_settings\n"
        f"embedder = load_embedder(load_settings(home={str(tmp_path)!r}, preset='offline'))\n"
        "vector = embedder.embed_queries([EmbedInput('q', 'a rabbit in a green meadow')], '')\n"
        "print(vector.shape, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 384) []"


def test_minilm_fingerprint_is_stable_across_loads(minilm, tmp_path: Path) -> None:
    again = load_embedder(offline_settings(tmp_path))
    assert again.fingerprint == minilm.fingerprint
    assert len(minilm.fingerprint) == 16


def test_minilm_empty_batch_gives_empty_matrix(minilm) -> None:
    assert minilm.embed_documents([], "").shape == (0, 384)


# ------------------------------------------------------------------------------------------
# Gemma 3 270M: fast checks that need no weights
# ------------------------------------------------------------------------------------------


def test_yes_no_rules_follow_their_formulas() -> None:
    from r3tasks.models.gemma3 import yes_no_score

    logits = np.array([[2.0, 0.5, -1.0, 1.0], [0.0, 3.0, 2.0, -2.0]])
    sig = yes_no_score(logits, "yes_no_sigmoid", yes_id=0, no_id=1, yes_ids=[0, 3], no_ids=[1, 2])
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-(logits[:, 0] - logits[:, 1]))))
    lse = yes_no_score(logits, "rankvideo_logsumexp", yes_id=0, no_id=1, yes_ids=[0, 3], no_ids=[1, 2])
    expected = np.log(np.exp(logits[:, [0, 3]]).sum(1)) - np.log(np.exp(logits[:, [1, 2]]).sum(1))
    np.testing.assert_allclose(lse, expected)
    assert sig[0] > sig[1] and lse[0] > lse[1]


def test_a_foreign_or_stale_checkpoint_is_not_taken_as_converted(tmp_path: Path) -> None:
    from r3tasks.models.gemma3 import MARKER, is_converted

    folder = tmp_path / "gemma3-270m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not really")
    assert not is_converted(folder)  # no marker: an interrupted or hand-made copy
    (folder / MARKER).write_text(json.dumps({"gguf_sha256": "0" * 64, "converter": 1}))
    assert not is_converted(folder)  # converted from other weights


# ------------------------------------------------------------------------------------------
# Gemma 3 270M on real weights: one data home, one conversion (~1 min) for the module
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gemma-home")


@pytest.fixture(scope="module")
def reasoner(gemma_home: Path):
    return load_reasoner(offline_settings(gemma_home))


@pytest.fixture(scope="module")
def reranker(gemma_home: Path, reasoner):
    # Depends on `reasoner` so the conversion has happened before the second load.
    return load_reranker(offline_settings(gemma_home, rerank_rule="yes_no_sigmoid"))


@pytest.fixture(scope="module")
def reranker_lse(gemma_home: Path, reasoner):
    return load_reranker(offline_settings(gemma_home, rerank_rule="rankvideo_logsumexp"))


@pytest.mark.slow
def test_gemma_converts_once_and_later_loads_reuse_the_copy(gemma_home: Path, reasoner) -> None:
    from r3tasks.models.gemma3 import MARKER

    models_dir = offline_settings(gemma_home).models_dir
    checkpoint = models_dir / "gemma3-270m"
    weights = checkpoint / "model.safetensors"
    assert weights.is_file() and (checkpoint / MARKER).is_file()
    assert (checkpoint / "tokenizer.json").is_file()
    # Only the checkpoint remains: no temp dirs, no assembled GGUF.
    assert [p.name for p in models_dir.iterdir()] == ["gemma3-270m"]
    assert not list(models_dir.rglob("*.gguf"))
    before = (weights.stat().st_mtime_ns, (checkpoint / MARKER).stat().st_mtime_ns)
    load_reranker(offline_settings(gemma_home)).load()
    assert (weights.stat().st_mtime_ns, (checkpoint / MARKER).stat().st_mtime_ns) == before


@pytest.mark.slow
def test_gemma_reasoner_writes_a_one_line_target_description(reasoner) -> None:
    assert isinstance(reasoner, Reasoner)
    out = reasoner.reason(
        [
            ReasonInput("q1", "Close it.", source_text="#C C opens the kitchen drawer"),
            ReasonInput("q2", "Make it a cat.", source_text="A dog sleeps on a red sofa in a living room."),
        ]
    )
    assert len(out) == 2
    for reasoning in out:
        assert reasoning.text.strip() and "\n" not in reasoning.text
        assert reasoning.thinking is None
        assert reasoning.raw.strip().startswith(reasoning.text)
    assert len(reasoner.prompt_version) == 12


@pytest.mark.slow
def test_gemma_reasoner_needs_the_source_text(reasoner) -> None:
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(MissingTextError) as info:
        reasoner.reason([ReasonInput("query-7", "Close it.", frames=frames, source_text=None)])
    assert info.value.item == "query-7" and "source" in info.value.reason


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["yes_no_sigmoid", "rankvideo_logsumexp"])
def test_gemma_reranker_score_is_the_rule_applied_to_unpadded_logits(request, rule: str) -> None:
    import torch

    from r3tasks.models.gemma3 import rerank_prompt

    reranker = request.getfixturevalue("reranker" if rule == "yes_no_sigmoid" else "reranker_lse")
    assert reranker.rule == rule
    assert isinstance(reranker, Reranker) and reranker.uses_frames is False
    query = RerankQuery("a person slices an onion", "Judge whether the candidate video is relevant to the query.")
    candidates = [
        RerankCandidate("long", "#C C cuts the onion on the chopping board with a knife in the kitchen"),
        RerankCandidate("short", "a boat"),
        RerankCandidate("mid", "someone chops vegetables"),
    ]
    scores = reranker.score(query, candidates)  # one left-padded batch
    assert scores.shape == (3,) and scores.dtype == np.float64
    for cand, got in zip(candidates, scores):
        enc = reranker.tokenizer(rerank_prompt(query.instruction, query.text, cand.text), return_tensors="pt")
        with torch.inference_mode():
            logits = reranker.model(**enc).logits[0, -1].double().numpy()
        if rule == "yes_no_sigmoid":
            expected = 1 / (1 + np.exp(-(logits[reranker.yes_id] - logits[reranker.no_id])))
        else:
            logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
            expected = np.log(np.exp(logp[reranker.yes_ids]).sum()) - np.log(np.exp(logp[reranker.no_ids]).sum())
        assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_gemma_reranker_yes_no_variants_are_read_from_the_vocabulary(reranker) -> None:
    tok = reranker.tokenizer
    assert reranker.yes_id in reranker.yes_ids and reranker.no_id in reranker.no_ids
    assert {tok.decode([i]).strip().lower() for i in reranker.yes_ids} == {"yes"}
    assert {tok.decode([i]).strip().lower() for i in reranker.no_ids} == {"no"}
    assert len(reranker.yes_ids) >= 4 and len(reranker.no_ids) >= 4


@pytest.mark.slow
def test_gemma_reranker_prefers_a_relevant_caption_to_an_unrelated_one(reranker) -> None:
    query = RerankQuery("a person cuts a tomato", "Judge whether the candidate video is relevant to the query.")
    relevant, unrelated = reranker.score(
        query, [RerankCandidate("r", "someone slicing a tomato"), RerankCandidate("u", "a car drives on a highway")]
    )
    assert relevant > unrelated


@pytest.fixture(scope="module")
def reranker_likelihood(gemma_home: Path, reasoner):
    return load_reranker(offline_settings(gemma_home, rerank_rule="edit_likelihood"))


@pytest.mark.slow
def test_gemma_likelihood_reranker_finds_the_caption_that_explains_the_edit(reranker_likelihood) -> None:
    source = "The camera wearer puts a phone on the table"
    query = RerankQuery("unused", "", source_text=source, edit="Pick it up.")
    captions = ["The camera wearer types on the keyboard", source, "The camera wearer picks a phone from the table"]
    scores = reranker_likelihood.score(query, [RerankCandidate(str(i), c) for i, c in enumerate(captions)])
    assert int(np.argmax(scores)) == 2 and np.all(scores < 0)  # mean log-probabilities
    # One candidate alone scores as it does in a padded batch.
    alone = reranker_likelihood.score(query, [RerankCandidate("2", captions[2])])
    assert alone[0] == pytest.approx(scores[2], abs=1e-3)


@pytest.mark.slow
def test_gemma_queries_share_one_computed_few_shot_head_and_score_as_the_whole_prompt(reranker_likelihood) -> None:
    from r3tasks.models.gemma3 import likelihood_prompt_parts

    reranker_likelihood._head_caches.clear()
    captions = ["The camera wearer picks a phone from the table", "The camera wearer opens the fridge"]
    candidates = [RerankCandidate(str(i), c) for i, c in enumerate(captions)]
    for source, edit in [
        ("The camera wearer puts a phone on the table", "Pick it up."),
        ("C closes a door", "Open it"),
    ]:
        query = RerankQuery("unused", "", source_text=source, edit=edit)
        scores = reranker_likelihood.score(query, candidates)
        whole = reranker_likelihood.target_log_likelihood(*likelihood_prompt_parts("", captions, source, edit))
        np.testing.assert_allclose(scores, whole, atol=1e-4)
    assert len(reranker_likelihood._head_caches) == 1  # the second query reused the first one's head
    # A head whose tokens do not open the prompt's own is not used: the prompt runs whole, same scores.
    prefix, suffixes, target = likelihood_prompt_parts("", captions, "C closes a door", "Open it")
    np.testing.assert_allclose(
        reranker_likelihood.target_log_likelihood(prefix, suffixes, target, head=prefix[:-3]), whole, atol=1e-4
    )


@pytest.mark.slow
def test_gemma_likelihood_reranker_scores_text_queries_by_query_likelihood(reranker_likelihood, reranker) -> None:
    query = RerankQuery("a cat sleeping", "")
    scores = reranker_likelihood.score(
        query, [RerankCandidate("d", "a dog runs in a park"), RerankCandidate("c", "a cat sleeps on a sofa")]
    )
    assert scores[1] > scores[0]
    assert reranker_likelihood.fingerprint != reranker.fingerprint  # its scores never mix with yes/no ones in caches


@pytest.mark.slow
def test_gemma_reranker_refuses_a_candidate_without_text(reranker) -> None:
    with pytest.raises(MissingTextError) as info:
        reranker.score(
            RerankQuery("a person cuts a tomato", ""),
            [RerankCandidate("fine", "a caption"), RerankCandidate("clip-9", None)],
        )
    assert info.value.item == "clip-9" and "text" in info.value.reason


@pytest.mark.slow
def test_a_gemma_rerank_cache_key_needs_no_weights(gemma_home: Path, reasoner) -> None:
    from r3tasks.cache.keys import rerank_key

    settings = offline_settings(gemma_home, rerank_rule="edit_likelihood")
    reranker = load_reranker(settings)
    query = RerankQuery(text="a dog\nmake it night", instruction="i", source_text="a dog", edit="make it night")
    key = rerank_key(reranker, query, None, "caption-1", settings)
    assert not reranker.is_loaded  # a batch whose pairs are all cached stops here: no weights read
    [score] = reranker.score(query, [RerankCandidate("c1", text="a dog at night")])
    assert reranker.is_loaded and np.isfinite(score)
    # The fingerprint computed without the weights is the loaded model's, so the key is the same after loading.
    assert reranker.load().fingerprint == reranker.fingerprint
    assert rerank_key(reranker.load(), query, None, "caption-1", settings) == key


@pytest.mark.slow
def test_gemma_fingerprints_change_with_what_changes_scores(reasoner, reranker, reranker_lse) -> None:
    assert reranker_lse.fingerprint != reranker.fingerprint
    assert reasoner.fingerprint != reranker.fingerprint


def test_documents_embedded_from_several_threads_at_once_load_one_model(tmp_path: Path) -> None:
    # Indexing embeds batches on a thread pool: the first batches ask for the embedder together, and
    # transformers' lazy module fails a second thread that imports it at the same time.
    from concurrent.futures import ThreadPoolExecutor

    from r3tasks.models.registry import shared_embedder

    settings = offline_settings(tmp_path)
    batches = [[EmbedInput(f"{k}-{i}", f"#C C picks item {k} {i}") for i in range(3)] for k in range(4)]

    def embed(batch: list[EmbedInput]) -> tuple[int, np.ndarray]:
        embedder = shared_embedder(settings)
        return id(embedder), embedder.embed_documents(batch, "")

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(embed, batches))
    assert len({instance for instance, _ in done}) == 1
    assert [vectors.shape for _, vectors in done] == [(3, 384)] * 4
    np.testing.assert_allclose(done[2][1], shared_embedder(settings).embed_queries(batches[2], ""), atol=1e-5)


def test_minilm_refuses_text_that_is_not_unicode_by_item(minilm) -> None:
    # A JSON "\udce9" escape arrives as a lone surrogate: that query's error, in words, never a tokenizer's TypeError.
    with pytest.raises(ItemError) as info:
        minilm.embed_queries([EmbedInput("q-ok", "a dog"), EmbedInput("q-broken", "\udce9 broken")], "")
    assert info.value.item == "q-broken"
    assert "not valid Unicode" in info.value.reason and "surrogates not allowed at character 0" in info.value.reason
