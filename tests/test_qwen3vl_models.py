"""The Qwen3-VL backends on the `tiny` preset: real code path, tiny random weights, CPU."""

from __future__ import annotations

import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from r3tasks.errors import ItemError, ModelNotAvailableError, R3Error
from r3tasks.models import qwen3vl
from r3tasks.models.base import (
    Embedder,
    EmbedInput,
    Reasoner,
    ReasonInput,
    RerankCandidate,
    Reranker,
    RerankQuery,
)
from r3tasks.models.qwen3vl.tiny import build_tiny_checkpoint, ensure_tiny_checkpoint
from r3tasks.settings.tree import load_settings
from tests.qwen3vl_helpers import _one_torch_thread  # noqa: F401
from tests.qwen3vl_helpers import random_frames as _frames
from tests.qwen3vl_helpers import tiny_settings as _settings

INSTRUCTION = "Represent this candidate target video for composed video retrieval."


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qwen3vl-home")


@pytest.fixture(scope="module")
def embedder(home: Path) -> qwen3vl.Qwen3VLEmbedder:
    return qwen3vl.load_embedder(_settings(home, embed_batch_size=4))


@pytest.fixture(scope="module")
def reranker(home: Path) -> qwen3vl.Qwen3VLReranker:
    return qwen3vl.load_reranker(_settings(home, rerank_batch_size=4))


# --- embedder -----------------------------------------------------------------------------------


def test_embedder_vectors_are_unit_length_with_the_model_dim(embedder: qwen3vl.Qwen3VLEmbedder) -> None:
    assert isinstance(embedder, Embedder) and embedder.uses_frames
    items = [
        EmbedInput("both", text="a person cuts bread", frames=_frames(1), fps=1.0),
        EmbedInput("text", text="a person cuts bread"),
        EmbedInput("video", frames=_frames(2, count=1), fps=2.0),  # a single frame is padded to a temporal patch
    ]
    vectors = embedder.embed_documents(items, INSTRUCTION)
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dim) == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Text, video and both are different inputs: they must not collapse to one vector.
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3 and np.abs(vectors[0] - vectors[2]).max() > 1e-3
    assert embedder.embed_queries([], INSTRUCTION).shape == (0, 64)


@pytest.mark.parametrize("kind", ["text", "video"])
def test_item_alone_equals_item_in_a_padded_batch(embedder: qwen3vl.Qwen3VLEmbedder, kind: str) -> None:
    if kind == "text":
        short = EmbedInput("short", text="a dog")
        long = EmbedInput("long", text="a much longer query about a dog that runs across a wide green field at dusk")
    else:
        short = EmbedInput("short", text="clip", frames=_frames(3, count=2), fps=1.0)
        long = EmbedInput("long", text="a longer clip with more frames", frames=_frames(4, count=6), fps=1.0)
    alone = embedder.embed_queries([short], INSTRUCTION)[0]
    # The short item comes first, so it is the one padded (right padding) in the batch.
    batched = embedder.embed_queries([short, long], INSTRUCTION)
    np.testing.assert_allclose(alone, batched[0], atol=1e-4)
    np.testing.assert_allclose(embedder.embed_queries([long], INSTRUCTION)[0], batched[1], atol=1e-4)


def test_last_token_pool_handles_left_and_right_padding() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert qwen3vl.last_token_pool(hidden, right)[:, 0].tolist() == [1.0, 7.0]
    assert qwen3vl.last_token_pool(hidden, left)[:, 0].tolist() == [3.0, 7.0]


def test_mrl_truncation_keeps_the_leading_dims_renormalised(home: Path, embedder: qwen3vl.Qwen3VLEmbedder) -> None:
    small = qwen3vl.load_embedder(_settings(home, embedding_dim=16))
    items = [EmbedInput("x", text="a red car", frames=_frames(5), fps=1.0), EmbedInput("y", text="snow")]
    truncated = small.embed_documents(items, INSTRUCTION)
    full = embedder.embed_documents(items, INSTRUCTION)
    assert small.dim == 16 and truncated.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(truncated, axis=1), 1.0, atol=1e-5)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(truncated, expected, atol=1e-5)
    assert small.fingerprint != embedder.fingerprint


def test_embedder_rejects_bad_items_by_name(embedder: qwen3vl.Qwen3VLEmbedder) -> None:
    with pytest.raises(ItemError, match="clip-7.*uint8"):
        embedder.embed_documents([EmbedInput("clip-7", frames=_frames(1).astype(np.float32))], INSTRUCTION)
    with pytest.raises(ItemError, match="blank.*nothing to embed"):
        embedder.embed_documents([EmbedInput("ok", text="fine"), EmbedInput("blank", text="  ")], INSTRUCTION)


# --- reranker -----------------------------------------------------------------------------------


def _pairs() -> tuple[RerankQuery, list[RerankCandidate]]:
    query = RerankQuery(text="make the cup red", instruction="Score the candidate.", frames=_frames(10), fps=1.0)
    candidates = [
        RerankCandidate("c-video", frames=_frames(11, count=6), fps=1.0),
        RerankCandidate("c-text", text="a red cup on a wooden table"),
        RerankCandidate("c-both", text="a blue cup", frames=_frames(12, count=2), fps=2.0),
    ]
    return query, candidates


@pytest.mark.parametrize("rule", ["yes_no_sigmoid", "rankvideo_logsumexp"])
def test_reranker_score_is_the_formula_on_raw_logits(home: Path, rule: str) -> None:
    reranker = qwen3vl.load_reranker(_settings(home, rerank_rule=rule, rerank_batch_size=2))
    assert isinstance(reranker, Reranker)
    query, candidates = _pairs()
    scores = reranker.score(query, candidates)
    assert scores.dtype == np.float64 and scores.shape == (3,)

    tokenizer = reranker._loaded.processor.tokenizer
    if rule == "yes_no_sigmoid":
        assert reranker.yes_ids == [tokenizer.convert_tokens_to_ids("yes")]
        assert reranker.no_ids == [tokenizer.convert_tokens_to_ids("no")]
    else:
        # yes, Yes, YES with and without a leading space are single tokens in the tiny vocabulary.
        assert len(reranker.yes_ids) == 6 and len(reranker.no_ids) == 6
    inputs = reranker.build_inputs(query, candidates)
    with torch.inference_mode():
        logits = reranker.model(**inputs).logits
    last = inputs["attention_mask"].sum(dim=1) - 1  # right padding
    log_probs = torch.log_softmax(logits[torch.arange(3), last].double(), dim=-1)
    if rule == "yes_no_sigmoid":
        expected = torch.sigmoid(log_probs[:, reranker.yes_ids[0]] - log_probs[:, reranker.no_ids[0]])
    else:
        expected = torch.logsumexp(log_probs[:, reranker.yes_ids], 1) - torch.logsumexp(
            log_probs[:, reranker.no_ids], 1
        )
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)


def test_reranker_scores_do_not_depend_on_batching(home: Path, reranker: qwen3vl.Qwen3VLReranker) -> None:
    query, candidates = _pairs()
    one_by_one = qwen3vl.load_reranker(_settings(home, rerank_batch_size=1)).score(query, candidates)
    np.testing.assert_allclose(reranker.score(query, candidates), one_by_one, atol=1e-5)
    assert reranker.score(query, []).shape == (0,)


def test_reranker_prompt_carries_timestamps_and_caps_frames(home: Path, reranker: qwen3vl.Qwen3VLReranker) -> None:
    query = RerankQuery(text="q", instruction="i", frames=_frames(20), fps=0.5)
    inputs = reranker.build_inputs(query, [RerankCandidate("long", frames=_frames(21, count=40), fps=1.0)])
    text = reranker._loaded.processor.tokenizer.decode(inputs["input_ids"][0])
    # Frames 0,1 and 2,3 at 0.5 fps sit at 0-2 s and 4-6 s: each temporal patch is stamped with its mean.
    assert "<1.0 seconds>" in text and "<5.0 seconds>" in text
    assert "<Instruct>: i" in text and "<Query>:" in text and "<Document>:" in text
    # The 40-frame candidate is cut to frames.rerank_frames = 16, i.e. 8 temporal patches.
    assert inputs["video_grid_thw"][:, 0].tolist() == [2, 8]


def test_video_max_tokens_caps_each_frame(home: Path, reranker: qwen3vl.Qwen3VLReranker) -> None:
    big = RerankCandidate("big", frames=_frames(30, count=2, height=480, width=640), fps=1.0)
    query = RerankQuery(text="q", instruction="i")
    capped = qwen3vl.load_reranker(_settings(home, video_max_tokens=130, video_min_tokens=16))
    _, h, w = capped.build_inputs(query, [big])["video_grid_thw"][0].tolist()
    assert h * w // 4 <= 130
    _, h_full, w_full = reranker.build_inputs(query, [big])["video_grid_thw"][0].tolist()
    assert (h_full * 16, w_full * 16) == (480, 640)  # within the default 128-768 tokens: native size, rounded


def test_reranker_rejects_an_empty_candidate_by_name(reranker: qwen3vl.Qwen3VLReranker) -> None:
    query, _ = _pairs()
    with pytest.raises(ItemError, match="c-empty"):
        reranker.score(query, [RerankCandidate("c-ok", text="fine"), RerankCandidate("c-empty")])


# --- reasoner -----------------------------------------------------------------------------------


def test_parse_thinking_output_present_absent_unterminated() -> None:
    closed = qwen3vl.parse_thinking_output(
        "<think>\nthe cup turns red\n</think>\n\nA red cup sits on a table.<|im_end|>"
    )
    assert closed.text == "A red cup sits on a table." and closed.thinking == "the cup turns red"
    # The answer follows the LAST </think>.
    twice = qwen3vl.parse_thinking_output("<think>a</think>draft</think> final answer")
    assert twice.text == "final answer" and twice.thinking == "a</think>draft"
    # Thinking templates put <think> in the prompt: the output starts inside the block.
    no_open = qwen3vl.parse_thinking_output("planning the scene</think>The scene.")
    assert no_open.text == "The scene." and no_open.thinking == "planning the scene"

    instruct = qwen3vl.parse_thinking_output("  A blue cup on a table.<|endoftext|>")
    assert instruct.text == "A blue cup on a table." and instruct.thinking is None
    assert not qwen3vl.is_unterminated(instruct)

    cut = qwen3vl.parse_thinking_output("<think>\nfirst the cup, then the table, then")
    assert cut.text == "" and cut.thinking == "first the cup, then the table, then"
    assert cut.raw.startswith("<think>") and qwen3vl.is_unterminated(cut)


def test_reasoner_returns_text_within_a_small_token_budget(home: Path) -> None:
    reasoner = qwen3vl.load_reasoner(_settings(home, reasoning_max_new_tokens=8))
    assert isinstance(reasoner, Reasoner)
    requests = [
        ReasonInput("q-video", edit="make the cup red", frames=_frames(40), fps=1.0),
        ReasonInput("q-caption", edit="remove the dog", source_text="a dog runs on a beach"),
    ]
    results = reasoner.reason(requests)
    assert len(results) == 2
    for result in results:
        assert isinstance(result.text, str) and result.text and result.thinking is None
    assert reasoner.prompt_version == qwen3vl.prompt_version() and len(reasoner.prompt_version) == 12
    with pytest.raises(ItemError, match="q-bare"):
        reasoner.reason([ReasonInput("q-bare", edit="make it red")])


def test_thinking_reasoner_cut_off_inside_think_gives_no_answer(home: Path, tmp_path: Path) -> None:
    # A Thinking-style checkpoint (prompt opens <think>), loaded as a local path on the production preset.
    path = build_tiny_checkpoint(tmp_path / "thinking-reasoner", "reasoner", thinking=True)
    settings = load_settings(
        home=home,
        models={"preset": "qwen3vl", "device": "cpu", "reasoner_model": str(path), "reasoning_max_new_tokens": 6},
    )
    (result,) = qwen3vl.load_reasoner(settings).reason(
        [ReasonInput("q1", edit="make it red", frames=_frames(41), fps=1.0)]
    )
    assert result.raw.startswith("<think>")
    assert result.text == "" and qwen3vl.is_unterminated(result)


# --- model availability and fingerprints ----------------------------------------------------------


class HubCalls:
    """What resolving a model asked of the network: TCP connects (host, port, timeout) and hub downloads.

    The network is blackholed (a connect times out) and the hub cache is empty (an offline lookup finds
    nothing), so no test here depends on the machine's network.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.connects: list[tuple[str, int, float | None]] = []
        self.downloads: list[str] = []  # online snapshot_download calls (offline cache lookups are not network)

        def create_connection(address, timeout=None, *args, **kwargs):
            self.connects.append((address[0], address[1], timeout))
            raise TimeoutError("timed out (blackholed network, injected)")

        def snapshot_download(repo_id, *args, local_files_only=False, **kwargs):
            if not local_files_only:
                self.downloads.append(repo_id)
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache (injected)")

        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)  # behind a proxy r3 leaves the reachability check to HTTP


def test_missing_local_path_fails_fast_and_says_how_to_supply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fast: a path that is not there is refused before any network or hub call (each could wait on a timeout).
    calls = HubCalls(monkeypatch)
    missing = tmp_path / "no-such-model"
    settings = load_settings(home=tmp_path, models={"preset": "qwen3vl", "embedding_model": str(missing)})
    with pytest.raises(ModelNotAvailableError) as info:
        qwen3vl.load_embedder(settings)
    assert (calls.connects, calls.downloads) == ([], [])
    assert info.value.model == str(missing)
    message = str(info.value)
    assert str(missing) in message and "download" in message and "R3_MODELS__EMBEDDING_MODEL" in message


@pytest.mark.parametrize("local_files_only", [True, False])
def test_missing_hub_model_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_files_only: bool) -> None:
    # Fast: with local_files_only nothing reaches the network; without it, one connect to the hub with a short
    # timeout decides, and a hub that does not answer it never gets a (slow, retried) download.
    calls = HubCalls(monkeypatch)
    model_id = "r3-tests/no-such-reranker"
    settings = load_settings(
        home=tmp_path,
        models={"preset": "qwen3vl", "reranker_model": model_id, "local_files_only": local_files_only},
    )
    with pytest.raises(ModelNotAvailableError) as info:
        qwen3vl.load_reranker(settings)
    assert calls.downloads == []
    if local_files_only:
        assert calls.connects == [] and "local_files_only" in str(info.value)
    else:
        from huggingface_hub import constants

        [(host, _port, timeout)] = calls.connects
        assert host == urlparse(constants.ENDPOINT).hostname and timeout is not None and timeout <= 5
        assert "cannot be reached" in str(info.value)
    assert info.value.model == model_id
    assert model_id in str(info.value) and "R3_MODELS__RERANKER_MODEL" in str(info.value)


def test_a_directory_without_a_checkpoint_is_not_a_model(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, models={"preset": "qwen3vl", "reasoner_model": str(tmp_path)})
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        qwen3vl.load_reasoner(settings)


def test_fingerprints_follow_the_model_and_the_settings_that_change_vectors(
    home: Path, tmp_path: Path, embedder: qwen3vl.Qwen3VLEmbedder
) -> None:
    def fp(**models: object) -> str:
        return qwen3vl.model_fingerprint(_settings(home, **models), "embedding")

    base = fp()
    assert embedder.fingerprint == base == fp(embed_batch_size=1, rerank_rule="rankvideo_logsumexp")
    assert fp(dtype="bfloat16") != base
    assert fp(embedding_dim=32) != base
    assert fp(video_max_tokens=256) != base and fp(embed_max_length=4096) != base

    copy_a = shutil.copytree(embedder.model_path, tmp_path / "a")
    copy_b = shutil.copytree(embedder.model_path, tmp_path / "b")

    def fp_path(path: Path) -> str:
        settings = load_settings(home=home, models={"preset": "qwen3vl", "embedding_model": str(path)})
        return qwen3vl.model_fingerprint(settings, "embedding")

    assert fp_path(copy_a) == fp_path(copy_a) != fp_path(copy_b)
    assert fp_path(copy_a) != base
    # Different weights at the same path change it too, even at the same size.
    before = fp_path(copy_a)
    weights = copy_a / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == (copy_b / "model.safetensors").stat().st_size
    assert fp_path(copy_a) != before
    weights.write_bytes(b"0" * 10)
    assert fp_path(copy_a) != fp_path(copy_b)
    # The roles are told apart even on one checkpoint.
    assert qwen3vl.model_fingerprint(_settings(home), "reranker") != qwen3vl.model_fingerprint(
        _settings(home), "reasoner"
    )


def test_tiny_checkpoint_build_is_idempotent_and_race_safe(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_checkpoint(models_dir, "reranker"), range(2)))
    assert paths[0] == paths[1] == models_dir / "tiny" / "reranker"
    weights = paths[0] / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.read_bytes())
    assert ensure_tiny_checkpoint(models_dir, "reranker") == paths[0]
    assert (weights.stat().st_mtime_ns, weights.read_bytes()) == before
    # Nothing half-built is left beside it, and a fresh build has the same weights (fixed seed).
    assert sorted(p.name for p in (models_dir / "tiny").iterdir()) == ["reranker"]
    again = build_tiny_checkpoint(tmp_path / "again", "reranker")
    assert (again / "model.safetensors").read_bytes() == before[1]


def test_qwen3vl_reranker_refuses_the_gemma_only_likelihood_rule(tmp_path: Path) -> None:
    with pytest.raises(R3Error, match="edit_likelihood"):
        qwen3vl.load_reranker(_settings(tmp_path, rerank_rule="edit_likelihood"))
