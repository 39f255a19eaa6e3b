"""Procedural clips with known attributes, and a composed-retrieval benchmark built from them.

A clip shows 1-3 coloured shapes moving one way over a plain background. Its
attributes give a caption, a stable id and, between two clips, an edit
instruction, so tests, the demo gallery and a generated benchmark all have
exact ground truth. Clips are tiny (96x128, 2 s, 8 fps, MPEG-4 Part 2 in
.mp4, which decord reads) so hundreds write in seconds.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 70),
    "blue": (40, 80, 235),
    "yellow": (245, 215, 35),
    "white": (245, 245, 245),
}
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
# Background colours are chosen far from every shape colour so a shape never vanishes.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "day": (150, 200, 250),
    "night": (15, 20, 45),
    "grass": (70, 115, 40),
    "sand": (195, 170, 120),
}
COUNTS: tuple[int, ...] = (1, 2, 3)
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "motion", "background", "count")

_BACKGROUND_PHRASE = {
    "day": "a bright daytime sky background",
    "night": "a dark night background",
    "grass": "a green grass background",
    "sand": "a sandy beige background",
}
_MOTION_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
_NUMBER = {1: "one", 2: "two", 3: "three"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass(frozen=True)
class ClipSpec:
    """The attributes of one generated clip."""

    shape: str
    colour: str
    motion: str
    background: str
    count: int = 1

    def __post_init__(self) -> None:
        choices = _choices()
        for name in ATTRIBUTES:
            value = getattr(self, name)
            if value not in choices[name]:
                raise ValueError(f"unknown {name} {value!r}: expected one of {list(choices[name])}")

    def noun(self, count: int | None = None) -> str:
        n = self.count if count is None else count
        return self.shape if n == 1 else _PLURAL[self.shape]

    def caption(self) -> str:
        """E.g. "Two red circles move to the right over a dark night background." """
        subject = (
            f"A {self.colour} {self.shape}"
            if self.count == 1
            else (f"{_NUMBER[self.count].capitalize()} {self.colour} {_PLURAL[self.shape]}")
        )
        if self.motion == "still":
            verb = "stays still" if self.count == 1 else "stay still"
        else:
            verb = ("moves " if self.count == 1 else "move ") + _MOTION_PHRASE[self.motion]
        return f"{subject} {verb} over {_BACKGROUND_PHRASE[self.background]}."

    def clip_id(self) -> str:
        """Stable id, e.g. ``red-circle-x2-right-night``."""
        return f"{self.colour}-{self.shape}-x{self.count}-{self.motion}-{self.background}"

    @classmethod
    def from_id(cls, clip_id: str) -> ClipSpec:
        """Inverse of `clip_id`."""
        parts = clip_id.split("-")
        if len(parts) != 5 or not parts[2].startswith("x") or not parts[2][1:].isdigit():
            raise ValueError(f"not a synthetic clip id: {clip_id!r}")
        colour, shape, count, motion, background = parts
        return cls(shape=shape, colour=colour, motion=motion, background=background, count=int(count[1:]))


def _choices() -> dict[str, Sequence[object]]:
    return {
        "shape": SHAPES,
        "colour": tuple(COLOURS),
        "motion": MOTIONS,
        "background": tuple(BACKGROUNDS),
        "count": COUNTS,
    }


def differing_attributes(a: ClipSpec, b: ClipSpec) -> list[str]:
    return [f.name for f in fields(ClipSpec) if getattr(a, f.name) != getattr(b, f.name)]


def all_specs(
    shapes: Iterable[str] = SHAPES,
    colours: Iterable[str] = tuple(COLOURS),
    motions: Iterable[str] = MOTIONS,
    backgrounds: Iterable[str] = tuple(BACKGROUNDS),
    counts: Iterable[int] = COUNTS,
) -> list[ClipSpec]:
    """Every combination of the given attribute values, in a fixed order."""
    return [
        ClipSpec(shape=s, colour=c, motion=m, background=b, count=n)
        for s, c, m, b, n in itertools.product(shapes, colours, motions, backgrounds, counts)
    ]


# ---------------------------------------------------------------------------
# Edit instructions


def edit_instruction(source: ClipSpec, target: ClipSpec) -> str:
    """A templated instruction turning `source` into `target`, e.g. "make it night".

    One clause per differing attribute, joined with "and"; raises ValueError
    when the two specs are identical.
    """
    changed = differing_attributes(source, target)
    if not changed:
        raise ValueError(f"no edit: source and target are the same clip ({source.clip_id()})")
    pronoun = "it" if source.count == 1 else "them"
    clauses: list[str] = []
    for name in changed:
        if name == "background":
            clauses.append(
                {
                    "day": "make it daytime",
                    "night": "make it night",
                    "grass": "put the scene on grass",
                    "sand": "put the scene on sand",
                }[target.background]
            )
        elif name == "shape":
            if source.count == 1:
                clauses.append(f"change the {source.shape} to a {target.shape}")
            else:
                clauses.append(f"change the {_PLURAL[source.shape]} to {_PLURAL[target.shape]}")
        elif name == "motion":
            if target.motion == "still":
                clauses.append(f"make {pronoun} stay still instead")
            else:
                clauses.append(f"make {pronoun} move {target.motion} instead")
        elif name == "colour":
            clauses.append(f"make {pronoun} {target.colour}")
        elif name == "count":
            shape = target.shape
            clauses.append(
                f"show {_NUMBER[target.count]} {shape if target.count == 1 else _PLURAL[shape]} "
                f"instead of {_NUMBER[source.count]}"
            )
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


# ---------------------------------------------------------------------------
# Rendering and writing


def render_frames(spec: ClipSpec, *, num_frames: int, size: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """The clip's frames, ``uint8 (T, H, W, 3)`` RGB, before encoding."""
    height, width = size
    rng = np.random.default_rng(seed)
    radius = max(3, min(height, width) // 8)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.array(BACKGROUNDS[spec.background], dtype=np.uint8)
    colour = np.array(COLOURS[spec.colour], dtype=np.uint8)
    horizontal = spec.motion in ("left", "right", "still")
    # Objects are spread across the axis perpendicular to the motion; the seed jitters them.
    across = height if horizontal else width
    along = width if horizontal else height
    slots = [(j + 1) * across / (spec.count + 1) for j in range(spec.count)]
    jitter = rng.uniform(-radius / 3, radius / 3, size=(spec.count, 2))
    lo, hi = 0.2 * along, 0.8 * along
    direction = {"right": 1, "down": 1, "left": -1, "up": -1, "still": 0}[spec.motion]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        if direction == 0:
            pos = 0.5 * along
        else:
            pos = lo + (hi - lo) * (progress if direction > 0 else 1 - progress)
        frame = frames[t]
        frame[:] = background
        for j, slot in enumerate(slots):
            a = pos + jitter[j, 0]
            b = slot + jitter[j, 1]
            cx, cy = (a, b) if horizontal else (b, a)
            frame[_shape_mask(spec.shape, xx, yy, cx, cy, radius)] = colour
    return frames


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    # Upward triangle: the half-width grows linearly from the apex to the base.
    top = cy - r
    rel = (yy - top) / (2 * r)
    return (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * r)


def write_clip(
    path: Path,
    spec: ClipSpec,
    *,
    seconds: float = 2.0,
    fps: int = 8,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    caption_sidecar: bool = False,
    codec: str = "mpeg4",
) -> Path:
    """Encode the clip to `path` (MPEG-4 in .mp4 by default); optionally write ``NAME.txt`` with its caption.

    `size` is (height, width), both even. The same arguments give the same bytes.
    """
    import av

    path = Path(path)
    height, width = size
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"clip size must be even and at least 16x16, got {height}x{width}")
    if fps < 1 or seconds <= 0:
        raise ValueError(f"need fps >= 1 and seconds > 0, got fps={fps}, seconds={seconds}")
    num_frames = max(1, round(seconds * fps))
    frames = render_frames(spec, num_frames=num_frames, size=size, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Flat colours at a fixed quantiser: small files, no visible ringing, deterministic bytes.
        stream.codec_context.options = {"qscale": "3"} if codec == "mpeg4" else {}
        stream.codec_context.thread_count = 1
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if caption_sidecar:
        path.with_suffix(".txt").write_text(spec.caption() + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# Generated composed-retrieval benchmark


@dataclass(frozen=True)
class GeneratedQuery:
    id: str
    source: str  # gallery item id
    target: str  # gallery item id (also in qrels.json)
    edit: str
    attribute: str  # the attribute the edit changes


@dataclass(frozen=True)
class GeneratedBenchmark:
    """Files written by `generate_benchmark`, and what they contain."""

    folder: Path
    manifest: Path
    queries_path: Path
    qrels_path: Path
    items: dict[str, ClipSpec]
    queries: list[GeneratedQuery]

    @property
    def qrels(self) -> dict[str, dict[str, int]]:
        return {q.id: {q.target: 1} for q in self.queries}


def _change(spec: ClipSpec, attribute: str, rng: random.Random, avoid: Sequence[object] = ()) -> ClipSpec | None:
    current = getattr(spec, attribute)
    options = [v for v in _choices()[attribute] if v != current and v not in avoid]
    if not options:
        return None
    return replace(spec, **{attribute: rng.choice(options)})


def clip_seed(clip_id: str, seed: int = 0) -> int:
    """Per-clip render seed: depends on the id, not on generation order, so a clip's bytes are stable."""
    return (zlib.crc32(clip_id.encode("utf-8")) + seed) % (2**31)


def generate_benchmark(
    folder: Path,
    n_queries: int,
    seed: int = 0,
    *,
    seconds: float = 2.0,
    fps: int = 8,
    size: tuple[int, int] = (96, 128),
) -> GeneratedBenchmark:
    """Write clips, ``manifest.csv`` (id,path,text), ``queries.jsonl`` and ``qrels.json`` under `folder`.

    Each query's target differs from its source in exactly one attribute. For
    each query the gallery also holds two hard distractors: the source with the
    same attribute changed to a third value (the wrong edit), and the target
    with one other attribute changed (the edit done, the context lost).
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    rng = random.Random(seed)
    specs = all_specs()
    folder = Path(folder)
    gallery: dict[str, ClipSpec] = {}
    queries: list[GeneratedQuery] = []
    seen_pairs: set[tuple[str, str]] = set()
    attempts = 0
    while len(queries) < n_queries:
        attempts += 1
        if attempts > 100 * n_queries:
            raise ValueError(f"cannot make {n_queries} distinct queries from the attribute space")
        source = rng.choice(specs)
        attribute = rng.choice(ATTRIBUTES)
        target = _change(source, attribute, rng)
        assert target is not None  # every attribute has at least two values
        pair = (source.clip_id(), target.clip_id())
        if pair in seen_pairs:
            continue
        seen_pairs.add(pair)
        wrong_edit = _change(source, attribute, rng, avoid=(getattr(target, attribute),))
        other = rng.choice([a for a in ATTRIBUTES if a != attribute])
        lost_context = _change(target, other, rng)
        for spec in (source, target, wrong_edit, lost_context):
            if spec is not None:
                gallery.setdefault(spec.clip_id(), spec)
        queries.append(
            GeneratedQuery(
                id=f"q{len(queries):04d}",
                source=source.clip_id(),
                target=target.clip_id(),
                edit=edit_instruction(source, target),
                attribute=attribute,
            )
        )

    clips = folder / "clips"
    rows = []
    for clip_id in sorted(gallery):
        spec = gallery[clip_id]
        write_clip(clips / f"{clip_id}.mp4", spec, seconds=seconds, fps=fps, size=size, seed=clip_seed(clip_id, seed))
        rows.append({"id": clip_id, "path": f"clips/{clip_id}.mp4", "text": spec.caption()})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "path", "text"])
        writer.writeheader()
        writer.writerows(rows)
    queries_path = folder / "queries.jsonl"
    with queries_path.open("w", encoding="utf-8") as handle:
        for q in queries:
            handle.write(json.dumps({"id": q.id, "source": q.source, "edit": q.edit}) + "\n")
    bench = GeneratedBenchmark(folder, manifest, queries_path, folder / "qrels.json", gallery, queries)
    bench.qrels_path.write_text(json.dumps(bench.qrels, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return bench


__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "COUNTS",
    "MOTIONS",
    "SHAPES",
    "ClipSpec",
    "GeneratedBenchmark",
    "GeneratedQuery",
    "all_specs",
    "clip_seed",
    "differing_attributes",
    "edit_instruction",
    "generate_benchmark",
    "render_frames",
    "write_clip",
]
