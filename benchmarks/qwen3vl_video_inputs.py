"""Visual tokens and timestamps per clip shape: r3 (the code on PYTHONPATH) vs qwen-vl-utils + the official
processor call (do_resize=False). Run: PYTHONPATH=$PWD python benchmarks/qwen3vl_video_inputs.py [embed_max_length]
(pass 20000 to see the long clip's timestamps: at 8,192 its 9,216 visual tokens leave no room for text)."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import torch

from r3tasks.inputs.frames import read_frames, sampling_policy
from r3tasks.models import qwen3vl
from r3tasks.models.base import EmbedInput
from r3tasks.settings.tree import load_settings
from tests.videos import write_indexed_video

CLIPS = {
    "small 64x64": dict(num_frames=20, fps=8, size=(64, 64)),  # 2.5 s
    "16:9 640x360": dict(num_frames=75, fps=25, size=(360, 640)),  # 3 s
    "portrait 360x640": dict(num_frames=75, fps=25, size=(640, 360)),  # 3 s
    "long 320x180 600s": dict(num_frames=1200, fps=2, size=(180, 320)),
}


def make(dest: Path) -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, kw in CLIPS.items():
        p = dest / (name.split()[0].replace(":", "x") + ".mp4")
        if not p.exists():
            write_indexed_video(p, **kw)
        out[name] = p
    return out


torch.set_num_threads(1)
work = Path(tempfile.mkdtemp(prefix="r3-qwen3vl-inputs-"))
home, clips = work / "home", make(work / "clips")
models = {"preset": "tiny", "device": "cpu"}
if len(sys.argv) > 1:
    models["embed_max_length"] = int(sys.argv[1])
s = load_settings(home=home, models=models)
emb = qwen3vl.load_embedder(s)
proc = emb._loaded.processor


def stamps(ids):
    text = proc.tokenizer.decode(ids)
    return [float(x) for x in re.findall(r"<([0-9.]+) seconds>", text)]


def r3_inputs(path):
    sampled = read_frames(path, sampling_policy(s.frames, "gallery"), s.frames.max_side)
    item = EmbedInput("x", text=None, frames=sampled.frames, fps=sampled.sample_fps)
    if hasattr(emb, "build_inputs"):
        inputs = emb.build_inputs([item], "Represent the video.")
    else:  # main before the qwen3vl package
        conv, video = emb._prepare(item, "Represent the video.")
        text = proc.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        inputs = qwen3vl._processor_inputs(emb._loaded, [text], [video])
    return sampled, inputs


def official(path):
    from qwen_vl_utils.vision_process import process_vision_info

    conv = [
        {"role": "system", "content": [{"type": "text", "text": "Represent the video."}]},
        {"role": "user", "content": [{"type": "video", "video": "file://" + str(path), "fps": 1.0, "max_frames": 128}]},
    ]
    text = proc.apply_chat_template([conv], add_generation_prompt=True, tokenize=False)
    images, videos, kw = process_vision_info(
        [conv], image_patch_size=16, return_video_metadata=True, return_video_kwargs=True
    )
    videos, meta = zip(*videos)
    return videos[0], proc(
        text=text,
        videos=list(videos),
        video_metadata=list(meta),
        padding=True,
        do_resize=False,
        return_tensors="pt",
        **kw,
    )


rows = []
for name, path in clips.items():
    sampled, ours = r3_inputs(path)
    t, h, w = ours["video_grid_thw"][0].tolist()
    ov, off = official(path)
    ot, oh, ow = off["video_grid_thw"][0].tolist()
    st, ost = stamps(ours["input_ids"][0]), stamps(off["input_ids"][0])
    rows.append(
        dict(
            clip=name,
            decoded=f"{sampled.frames.shape[2]}x{sampled.frames.shape[1]}",
            frames=len(sampled.indices),
            r3_frame=f"{w * 16}x{h * 16}",
            r3_tokens_per_group=h * w // 4,
            r3_tokens=t * h * w // 4,
            off_frame=f"{ow * 16}x{oh * 16}",
            off_tokens_per_group=oh * ow // 4,
            off_tokens=ot * oh * ow // 4,
            r3_stamps=st[:3] + ["..."] + st[-1:],
            off_stamps=ost[:3] + ["..."] + ost[-1:],
            stamps_equal=st == ost,
        )
    )
for r in rows:
    print(json.dumps(r))
