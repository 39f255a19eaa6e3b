"""Text written on screen, read with RapidOCR (PP-OCRv6 small detection and recognition, ONNX Runtime on CPU).

Offline by construction: the detection and recognition models are the ONNX files inside the rapidocr wheel,
passed by path (``Det.model_path``/``Rec.model_path``), so RapidOCR never takes its download branch (which it
also takes when a file in its model folder fails its SHA-256 check). The recognition model carries its character
set in its ONNX metadata, so no dictionary is fetched; frames are passed as arrays, never as URLs; and the
visualisation font (the one other thing rapidocr can fetch) is only used by ``.vis()``, which is never called.
All models are loaded in `load_screen_text_reader`, so a missing file fails there and not in the middle of a run.

Choices, measured on this box (2 shared CPU cores, ONNX Runtime 1.32, one intra-op thread; a 640x360 title
frame "HARBOR FESTIVAL 2026" and a second, 18 px line, scaled to 448x252):

- Loading (`load_screen_text_reader`: importing rapidocr and ONNX Runtime, its two sessions, hashing the
  models for the fingerprint): 0.6 s. The first frame after that: 0.21 s.
- Per frame at 448x252 with two text lines: 0.18 s (a frame without text: 0.10 s, detection only). Measured
  with the box's load average at 2-4, so these are upper figures. RapidOCR's default detector setting ("min
  side at least 736") upscales such a frame to 1309x736 first and took 0.9-1.0 s per frame for the same text;
  it is replaced by "longest side at most `detect_max_side`" (960): smaller frames are detected as they are.
- Frames are not downscaled before OCR. Recognition reads each text line's crop from the frame as given and
  resizes it to 48 px high itself, so resolution only helps legibility; detection cost is capped by
  `detect_max_side` instead. On a 1920x1080 frame that is 0.6-0.7 s (0.26 s with 640, which then missed lines
  under 16 px high; 960 found 10 px ones). At 448 px, text drawn 8 px high is still read (34 px in
  a 1080p frame); a 1080p frame's 20 px fine print shrunk to 448 px came back as garbage
  ("Tickeei ot the sorth pier fram 9 em", confidence 0.86), so callers who care about fine print should
  decode OCR frames larger than the embedder's.
- No orientation classifier: on-screen text in video is upright, and the classifier turned that same
  shrunk line into "un ad" by flipping it.
- The threshold is not a cure for gibberish: a blurred, barely visible line reads at about 0.25 and is dropped
  at 0.6, but mirrored or upside-down text came back as wrong words at 0.7-0.95.
- One ONNX Runtime thread by default: two threads were slower on this box (0.4-1.1 s vs 0.2-0.6 s), and OCR
  runs beside decoding and embedding anyway.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r3tasks.errors import ModelNotAvailableError

__all__ = ["ScreenTextReader", "load_screen_text_reader"]

# Bump when reading order, merging or de-duplication change: cached OCR text depends on them too.
POSTPROCESS_VERSION = "2"
# A lone character is what the recogniser "reads" in a shape or a texture (a white square came out as '口' at
# confidence over 0.6): a line needs at least this many letters or digits to be kept.
MIN_LINE_CHARS = 2
DETECT_MAX_SIDE = 960
_DET_MODEL = "PP-OCRv6_det_small.onnx"
_REC_MODEL = "PP-OCRv6_rec_small.onnx"


@dataclass(frozen=True)
class _Line:
    text: str
    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def height(self) -> float:
        return max(1.0, self.y1 - self.y0)


class ScreenTextReader:
    """One loaded RapidOCR engine and how its lines are filtered; create it with `load_screen_text_reader`.

    Not meant to be shared between threads: give each worker its own reader.
    """

    def __init__(self, engine: Any, min_confidence: float, model_fingerprint: str) -> None:
        self._engine = engine
        self.min_confidence = float(min_confidence)
        self._model_fingerprint = model_fingerprint

    @property
    def fingerprint(self) -> str:
        """What the lines read depend on (engine version, models, settings, post-processing): a cache key part."""
        return f"{self._model_fingerprint}; min_confidence={self.min_confidence:g}; postprocess={POSTPROCESS_VERSION}"

    def with_min_confidence(self, min_confidence: float) -> ScreenTextReader:
        """The same loaded engine with another confidence threshold (no second load)."""
        return ScreenTextReader(self._engine, min_confidence, self._model_fingerprint)

    def read(self, frames: np.ndarray) -> list[str]:
        """Lines of text on `frames` (uint8 RGB, shape (T, H, W, 3)).

        Per frame, lines at or above `min_confidence` in reading order (rows top to bottom, each row left to
        right; words of one row that are close together form one line). Across frames each line is kept once,
        where it first appeared: lines equal once case, whitespace and punctuation are ignored are one line,
        a line contained in a kept line is dropped, and a line containing a kept one replaces it in place.
        Lines with fewer than `MIN_LINE_CHARS` letters or digits (symbols, a lone character) are dropped.
        """
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            shape = getattr(frames, "shape", None)
            raise ValueError(f"frames must be a uint8 array of shape (T, H, W, 3), got {shape}")
        kept: list[tuple[str, str]] = []  # (key, text)
        for frame in frames:
            for text in self._read_frame(frame):
                _keep(kept, text)
        return [text for _, text in kept]

    def _read_frame(self, frame: np.ndarray) -> list[str]:
        bgr = np.ascontiguousarray(frame[:, :, ::-1])  # RapidOCR takes arrays as OpenCV's BGR
        result = self._engine(bgr)
        boxes, texts, scores = (getattr(result, name, None) for name in ("boxes", "txts", "scores"))
        if boxes is None or texts is None or scores is None:
            return []
        lines = []
        for box, text, score in zip(boxes, texts, scores, strict=True):
            text = " ".join(str(text).split())
            if not text or float(score) < self.min_confidence:
                continue
            points = np.asarray(box, dtype=np.float32).reshape(-1, 2)
            x0, y0 = points.min(axis=0)
            x1, y1 = points.max(axis=0)
            lines.append(_Line(text, float(x0), float(x1), float(y0), float(y1)))
        return _reading_order(lines)


def _reading_order(lines: list[_Line]) -> list[str]:
    """Group boxes into rows (vertical overlap of at least half the shorter box), order rows top to bottom and
    boxes left to right; join neighbours in a row whose gap is under 1.5 line heights."""
    rows: list[list[_Line]] = []
    for line in sorted(lines, key=lambda item: (item.y0, item.x0)):
        if rows:
            row = rows[-1]
            top, bottom = min(b.y0 for b in row), max(b.y1 for b in row)
            overlap = min(bottom, line.y1) - max(top, line.y0)
            if overlap >= 0.5 * min(line.height, min(b.height for b in row)):
                row.append(line)
                continue
        rows.append([line])
    out: list[str] = []
    for row in rows:
        row.sort(key=lambda item: item.x0)
        current = row[0]
        for nxt in row[1:]:
            if nxt.x0 - current.x1 < 1.5 * max(current.height, nxt.height):
                current = _Line(f"{current.text} {nxt.text}", current.x0, max(current.x1, nxt.x1),
                                min(current.y0, nxt.y0), max(current.y1, nxt.y1))  # fmt: skip
            else:
                out.append(current.text)
                current = nxt
        out.append(current.text)
    return out


_NOT_ALNUM = re.compile(r"[\W_]+")


def _key(text: str) -> str:
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


def _keep(kept: list[tuple[str, str]], text: str) -> None:
    key = _key(text)
    if len(key) < MIN_LINE_CHARS:
        return
    if any(key in other for other, _ in kept):
        return
    inside = [i for i, (other, _) in enumerate(kept) if other in key]
    if inside:
        kept[inside[0]] = (key, text)
        for i in reversed(inside[1:]):
            del kept[i]
        return
    kept.append((key, text))


def _package_models() -> tuple[str, dict[str, Path]]:
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("rapidocr")
    if spec is None or spec.origin is None:
        raise ImportError("No module named 'rapidocr'")
    folder = Path(spec.origin).resolve().parent / "models"
    return importlib.metadata.version("rapidocr"), {"det": folder / _DET_MODEL, "rec": folder / _REC_MODEL}


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_screen_text_reader(
    min_confidence: float, *, detect_max_side: int = DETECT_MAX_SIDE, threads: int = 1
) -> ScreenTextReader:
    """Load RapidOCR from the models packaged in its wheel (never downloading anything) into a reader.

    `detect_max_side` caps the longest side the text detector sees (recognition still reads full-resolution
    crops); `threads` is ONNX Runtime's intra-op thread count.
    """
    try:
        version, models = _package_models()
    except ImportError as exc:
        raise ModelNotAvailableError("rapidocr", f"install the rapidocr package ({exc})") from None
    missing = [str(path) for path in models.values() if not path.is_file()]
    if missing:
        raise ModelNotAvailableError(
            "rapidocr PP-OCRv6 small", f"{', '.join(missing)} missing: reinstall a rapidocr 3.x wheel that ships them"
        )
    from rapidocr import RapidOCR

    params = {
        "Det.model_path": str(models["det"]),
        "Rec.model_path": str(models["rec"]),
        "Global.use_cls": False,
        # Lines are filtered by the reader, so one engine serves every threshold.
        "Global.text_score": 0.0,
        # "error": it warns "The text detection result is empty" for every frame without text.
        "Global.log_level": "error",
        "Det.limit_type": "max",
        "Det.limit_side_len": int(detect_max_side),
        "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    engine = RapidOCR(params=params)
    # RapidOCR loads sessions on first use; loading here makes a broken install fail now, not mid-run.
    for loader in ("_load_det_model", "_load_rec_model"):
        if callable(getattr(engine, loader, None)):
            getattr(engine, loader)()
    digests = ", ".join(f"{path.name} {_sha256(path)[:12]}" for path in models.values())
    fingerprint = f"rapidocr {version} ({digests}; no cls; detect_max_side={int(detect_max_side)})"
    return ScreenTextReader(engine, min_confidence, fingerprint)
