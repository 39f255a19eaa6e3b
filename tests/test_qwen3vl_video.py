"""Qwen3-VL inputs pinned against the official preprocessing (qwen-vl-utils 0.0.14 + the processor with
do_resize=False, as QwenLM/Qwen3-VL-Embedding's embedder and reranker call them), on the tiny checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("qwen_vl_utils")
from qwen_vl_utils.vision_process import fetch_video, process_vision_info  # noqa: E402

from r3tasks.inputs.frames import read_frames, sampling_policy
from r3tasks.models import qwen3vl  # noqa: E402
from r3tasks.models.base import EmbedInput, RerankCandidate, RerankQuery  # noqa: E402
from r3tasks.settings.tree import R3Settings, load_settings
from tests.qwen3vl_helpers import _one_torch_thread  # noqa: F401
from tests.qwen3vl_helpers import tiny_settings as _settings  # noqa: E402
from tests.videos import write_indexed_video  # noqa: E402

INSTRUCTION = "Represent this candidate target video for composed video retrieval."
# (frames, fps, (height, width)): below the 128-token floor, 16:9 and portrait at r3's old 448 px decode size.
CLIPS = {
    "small": (20, 8, (64, 64)),
    "16x9": (24, 8, (252, 448)),
    "portrait": (24, 8, (448, 252)),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qwen3vl-video-home")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    out = {
        name: write_indexed_video(root / f"{name}.mp4", n, fps=fps, size=size) for name, (n, fps, size) in CLIPS.items()
    }
    # Long: 200 s at 1 fps, 640x360, sampled to 200 frames under a 20,000-token budget (the budget bites).
    out["long"] = write_indexed_video(root / "long.mp4", 200, fps=1, size=(360, 640))
    return out


@pytest.fixture(scope="module")
def embedder(home: Path) -> qwen3vl.Qwen3VLEmbedder:
    return qwen3vl.load_embedder(_settings(home))


@pytest.fixture(scope="module")
def reranker(home: Path) -> qwen3vl.Qwen3VLReranker:
    return qwen3vl.load_reranker(_settings(home))


def _r3_item(path: Path, settings: R3Settings, purpose: str = "gallery", text: str | None = None) -> EmbedInput:
    sampled = read_frames(path, sampling_policy(settings.frames, purpose), settings.frames.max_side)  # type: ignore[arg-type]
    return EmbedInput(path.stem, text=text, frames=sampled.frames, fps=sampled.sample_fps)


def _video_element(path: Path, max_frames: int, **extra: object) -> dict:
    return {"type": "video", "video": f"file://{path}", "fps": 1.0, "max_frames": max_frames, **extra}


def _official_inputs(processor, conversation: list[dict]) -> dict:
    """Qwen3-VL-Embedding's `_preprocess_inputs` (no truncation needed here), for one conversation."""
    text = processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
    _, videos, kwargs = process_vision_info(
        [conversation], image_patch_size=16, return_video_metadata=True, return_video_kwargs=True
    )
    videos, metadata = zip(*videos)
    return processor(
        text=text,
        videos=list(videos),
        video_metadata=list(metadata),
        padding=True,
        do_resize=False,
        return_tensors="pt",
        **kwargs,
    )


def _official_embedding(embedder: qwen3vl.Qwen3VLEmbedder, path: Path, max_frames: int) -> np.ndarray:
    loaded = embedder._loaded
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": INSTRUCTION}]},
        {"role": "user", "content": [_video_element(path, max_frames)]},
    ]
    inputs = _official_inputs(loaded.processor, conversation)
    with torch.inference_mode():
        hidden = loaded.model(**inputs).last_hidden_state
    vector = torch.nn.functional.normalize(
        hidden[:, -1].float(), dim=-1
    )  # one row: the last token is the last real one
    return vector[0].numpy()


def _official_rerank_score(reranker: qwen3vl.Qwen3VLReranker, query_text: str, instruction: str, path: Path) -> float:
    """Qwen3-VL-Reranker's `format_mm_instruction` + `tokenize` + `compute_scores` for one pair."""
    loaded = reranker._loaded
    pair = [
        {"role": "system", "content": [{"type": "text", "text": qwen3vl.prompts.RERANK_SYSTEM}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<Instruct>: " + instruction},
                {"type": "text", "text": "<Query>:"},
                {"type": "text", "text": query_text},
                {"type": "text", "text": "\n<Document>:"},
                _video_element(path, 16),
            ],
        },
    ]
    inputs = _official_inputs(loaded.processor, pair)
    lm = loaded.model
    weight = lm.lm_head.weight
    vocab = loaded.processor.tokenizer.get_vocab()
    head = weight[vocab["yes"]] - weight[vocab["no"]]
    with torch.inference_mode():
        last = lm.model(**inputs).last_hidden_state[:, -1]
        return float(torch.sigmoid(last @ head)[0])


@pytest.mark.parametrize("clip", ["small", "16x9", "portrait", "long"])
def test_frame_sizes_indices_and_tokens_match_qwen_vl_utils(
    home: Path, embedder: qwen3vl.Qwen3VLEmbedder, clips: dict[str, Path], clip: str
) -> None:
    if clip == "long":
        settings = load_settings(
            home=home,
            models={"preset": "tiny", "device": "cpu", "video_total_tokens": 20_000},
            frames={"max_frames": 200},
        )
        backend = qwen3vl.load_embedder(settings)
        element = _video_element(clips[clip], 200, total_pixels=20_000 * 32 * 32)
    else:
        settings, backend = embedder._settings, embedder
        element = _video_element(clips[clip], settings.frames.max_frames)
    prompt = backend.prompt(_r3_item(clips[clip], settings), INSTRUCTION)
    (plan,) = prompt.videos
    (video, metadata), _ = fetch_video(
        element, image_patch_size=16, return_video_sample_fps=True, return_video_metadata=True
    )
    assert (len(plan.positions), plan.height, plan.width) == tuple(video.shape[:1] + video.shape[2:])
    assert plan.indices == list(metadata["frames_indices"]) and plan.fps == pytest.approx(metadata["fps"])
    grid_t, grid_h, grid_w = plan.grid
    assert prompt.ids.count(backend._loaded.processor.video_token_id) == plan.tokens == grid_t * grid_h * grid_w // 4
    assert plan.tokens // grid_t >= 128 and plan.height % 32 == 0 and plan.width % 32 == 0
    if clip == "long":
        # 20,000 tokens over 200 frames: at most 204,800 px a frame, not the 768-token ceiling.
        assert plan.height * plan.width <= 20_000 * 1024 / 200 * 2 < 640 * 352


def test_prompt_ids_and_timestamps_equal_the_official_for_a_file(
    embedder: qwen3vl.Qwen3VLEmbedder, clips: dict[str, Path]
) -> None:
    path = clips["small"]  # 20 frames at 8 fps: frames 0, 6, 13, 19 sampled
    inputs = embedder.build_inputs([_r3_item(path, embedder._settings, text="a person cuts bread ")], INSTRUCTION)
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": INSTRUCTION}]},
        {"role": "user", "content": [_video_element(path, 128), {"type": "text", "text": "a person cuts bread "}]},
    ]
    official = _official_inputs(embedder._loaded.processor, conversation)
    text = embedder._loaded.processor.tokenizer.decode(inputs["input_ids"][0])
    # True times: (0 + 6) / 2 / 8 fps and (13 + 19) / 2 / 8 fps; r3 on main said 0.3 and 1.6 s.
    assert re.findall(r"<([0-9.]+) seconds>", text) == ["0.4", "2.0"]
    assert text.endswith("a person cuts bread <|im_end|>\n<|im_start|>assistant\n")  # not stripped
    assert inputs["input_ids"].tolist() == official["input_ids"].tolist()
    assert inputs["video_grid_thw"].tolist() == official["video_grid_thw"].tolist()
    torch.testing.assert_close(inputs["pixel_values_videos"], official["pixel_values_videos"])


@pytest.mark.parametrize("clip", ["small", "16x9", "portrait"])
def test_video_embedding_and_rerank_score_equal_the_official(
    embedder: qwen3vl.Qwen3VLEmbedder, reranker: qwen3vl.Qwen3VLReranker, clips: dict[str, Path], clip: str
) -> None:
    path = clips[clip]
    ours = embedder.embed_documents([_r3_item(path, embedder._settings)], INSTRUCTION)[0]
    official = _official_embedding(embedder, path, embedder._settings.frames.max_frames)
    assert float(ours @ official) >= 0.999 and np.abs(ours - official).max() <= 1e-3

    candidate = _r3_item(path, reranker._settings, purpose="rerank")
    query = RerankQuery(text="make the cup red", instruction="Score the candidate.")
    (score,) = reranker.score(query, [RerankCandidate(path.stem, frames=candidate.frames, fps=candidate.fps)])
    assert abs(score - _official_rerank_score(reranker, "make the cup red", "Score the candidate.", path)) <= 1e-3
