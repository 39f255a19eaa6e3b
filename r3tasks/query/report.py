"""Human-facing outputs of a query batch: a markdown report, contact sheets, a terminal table."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from r3tasks.cache.stages import StageCache
from r3tasks.errors import ItemError
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.media.clips import moment_label, moment_thumbnail
from r3tasks.query.isolation import reason_of
from r3tasks.query.prepare import source_frames as sampled_source_frames
from r3tasks.query.state import QueryState
from r3tasks.settings.tree import R3Settings

TILE = (160, 120)  # width, height of one contact-sheet tile


def _tile_from_frame(frame: np.ndarray | None, label: str, caption: str | None):
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (TILE[0], TILE[1] + 36), (24, 24, 24))
    if frame is not None:
        image = Image.fromarray(frame)
        image.thumbnail(TILE)
        tile.paste(image, ((TILE[0] - image.width) // 2, (TILE[1] - image.height) // 2))
    else:
        # A text-only item has no pixels: show its caption instead of pretending to have a frame.
        wrapped = textwrap.fill(caption or "(no video, no caption)", width=24)
        ImageDraw.Draw(tile).multiline_text((6, 6), wrapped, fill=(220, 220, 220))
    draw = ImageDraw.Draw(tile)
    draw.text((4, TILE[1] + 4), label[:26], fill=(255, 255, 255))
    if caption and frame is not None:
        draw.text((4, TILE[1] + 19), caption[:26], fill=(170, 170, 170))
    return tile


def _frame_or_none(path: str | None, start_s: float | None = None, end_s: float | None = None) -> np.ndarray | None:
    if not path:
        return None
    try:
        return moment_thumbnail(path, start_s, end_s, max_side=max(TILE))
    except ItemError:
        return None


def contact_sheet(
    out_path: Path,
    source_frames: Sequence[np.ndarray],
    source_label: str,
    source_caption: str | None,
    candidates: Sequence[tuple[str, str | None, str | None, float, tuple[float | None, float | None]]],
) -> Path:
    """Source frames on the first row, then the top candidates (label, path, caption, score, moment times) on the
    second: a moment shows its middle frame."""
    from PIL import Image

    first_row = [_tile_from_frame(f, f"{source_label} #{i}", None) for i, f in enumerate(source_frames[:5])]
    if not first_row:
        first_row = [_tile_from_frame(None, source_label, source_caption)]
    second_row = [
        _tile_from_frame(_frame_or_none(path, *times), f"{rank + 1}. {score:.3f} {label}", caption)
        for rank, (label, path, caption, score, times) in enumerate(candidates[:5])
    ]
    width = TILE[0] * max(len(first_row), len(second_row), 1)
    height = (TILE[1] + 36) * 2
    sheet = Image.new("RGB", (width, height), (0, 0, 0))
    for col, tile in enumerate(first_row):
        sheet.paste(tile, (col * TILE[0], 0))
    for col, tile in enumerate(second_row):
        sheet.paste(tile, (col * TILE[0], TILE[1] + 36))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path


def markdown_report(results: Sequence[dict], sheets: dict[str, Path], top: int = 5) -> str:
    lines = ["# r3 query batch", ""]
    for result in results:
        lines.append(f"## {result['id']} ({result['kind']})")
        if result["error"]:
            lines += [f"**error:** {result['error']}", ""]
            continue
        gate = result["gate"]
        if result["reasoning"] is not None:
            agreement = f"{gate['agreement']:.3f}" if gate["agreement"] is not None else "n/a"
            lines += [f"*reasoning* (agreement {agreement}, used: {gate['used']}):", "", f"> {result['reasoning']}", ""]
        lines += [
            "| rank | item | moment | score | embedding | reranker | said / on screen |",
            "|---:|---|---|---:|---:|---:|---|",
        ]
        for rank, item in enumerate(result["ranked"][:top], start=1):
            reranker = f"{item['reranker_score']:.3f}" if item["reranker_score"] is not None else "-"
            moment = _moment(item)
            read = " / ".join(_cell(item.get(key)) for key in ("transcript", "screen_text") if item.get(key))
            lines.append(
                f"| {rank} | {_cell(item['id'])} | {_cell(moment)} | {item['score']:.3f} | "
                f"{item['embedding_score']:.3f} | {reranker} | {read} |"
            )
        if result.get("warnings"):
            lines += [""] + [f"- warning: {warning}" for warning in result["warnings"]]
        if result["id"] in sheets:
            lines += ["", f"![contact sheet]({sheets[result['id']].as_uri()})"]
        lines.append("")
    return "\n".join(lines)


def _moment(item: dict) -> str:
    """Where a segment of a long video is (`video 1:05-1:21`); "" for a whole clip or a text item."""
    if item.get("video_id") in (None, item["id"]):
        return ""
    return moment_label(item["video_id"], item.get("start_s"), item.get("end_s"))


def _cell(text: str | None, limit: int = 80) -> str:
    # Stored text is data: a pipe or a newline must not break the table.
    return (text or "")[:limit].replace("|", "\\|").replace("\n", " ")


def terminal_table(results: Sequence[dict], texts: dict[str, str | None], top: int = 5) -> str:
    lines = []
    for result in results:
        head = f"{result['id']} [{result['kind']}]"
        if result["error"]:
            lines += [f"{head}: ERROR {result['error']}", ""]
            continue
        gate = result["gate"]
        if result["reasoning"] is not None:
            agreement = f"{gate['agreement']:.2f}" if gate["agreement"] is not None else "n/a"
            head += f"  reasoning {'used' if gate['used'] else 'gated off'} (agreement {agreement})"
        lines.append(head)
        for rank, item in enumerate(result["ranked"][:top], start=1):
            caption = (texts.get(item["id"]) or item.get("transcript") or item.get("screen_text") or "")[:60]
            where = _moment(item) or item["id"]
            lines.append(f"  {rank}. {item['score']:6.3f}  {where[:40]:40s}  {caption}")
        lines.append("")
    return "\n".join(lines)


def contact_sheets(
    states: Sequence[QueryState],
    gallery: PinnedGallery,
    settings: R3Settings,
    run_dir: Path,
    frame_cache: StageCache,
    logger: logging.Logger | logging.LoggerAdapter,
) -> dict[str, Path]:
    """One picture per answered query (its source and top-5), for the first `query.contact_sheets` answered
    queries; one that fails becomes the query's warning."""
    sheets: dict[str, Path] = {}
    wanted = settings.query.contact_sheets
    for state in states:
        if not state.ok:
            continue
        if wanted <= 0:
            break
        wanted -= 1
        try:
            sheets[state.query.id] = _contact_sheet(state, gallery, settings, run_dir, frame_cache)
        except Exception as error:  # noqa: BLE001 - a picture must never cost the batch its results
            state.warnings.append(f"no contact sheet: {reason_of(error)}")
            logger.warning("%s: no contact sheet: %s", state.query.id, reason_of(error))
    return sheets


def _contact_sheet(
    state: QueryState, gallery: PinnedGallery, settings: R3Settings, run_dir: Path, frame_cache: StageCache
) -> Path:
    source_frames: list = []
    source_label, source_caption = state.query.id, getattr(state.query, "text", None)
    if state.source is not None:
        source_caption = state.source.text
        if state.source.path is not None:
            sampled = sampled_source_frames(state.source, "rerank", settings, frame_cache)
            if sampled is not None:
                step = max(1, len(sampled.frames) // 4)
                source_frames = list(sampled.frames[::step][:4])
    candidates = []
    for item in state.ranked[:5]:
        record = gallery.records[item.id]
        label = _moment(asdict(item)) or item.id
        caption = record.text or item.transcript or item.screen_text
        candidates.append((label, record.path, caption, item.score, (item.start_s, item.end_s)))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in state.query.id)[:80]
    return contact_sheet(run_dir / f"{safe}.png", source_frames, source_label, source_caption, candidates)
