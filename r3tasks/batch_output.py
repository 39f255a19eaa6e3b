"""What a query batch leaves besides its results: contact sheets, and the CoVR-R submission layout."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from r3tasks import retrieval
from r3tasks.gallery import PinnedGallery
from r3tasks.report import contact_sheet
from r3tasks.retrieval import QueryState
from r3tasks.settings import R3Settings
from r3tasks.stagecache import StageCache


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
            state.warnings.append(f"no contact sheet: {retrieval.reason_of(error)}")
            logger.warning("%s: no contact sheet: %s", state.query.id, retrieval.reason_of(error))
    return sheets


def _contact_sheet(
    state: QueryState, gallery: PinnedGallery, settings: R3Settings, run_dir: Path, frame_cache: StageCache
) -> Path:
    source_frames: list = []
    source_label, source_caption = state.query.id, getattr(state.query, "text", None)
    if state.source is not None:
        source_caption = state.source.text
        if state.source.path is not None:
            sampled = retrieval.source_frames(state.source, "rerank", settings, frame_cache)
            if sampled is not None:
                step = max(1, len(sampled.frames) // 4)
                source_frames = list(sampled.frames[::step][:4])
    candidates = []
    for item in state.ranked[:5]:
        record = gallery.records[item.id]
        candidates.append((item.id, record.path, record.text, item.score))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in state.query.id)[:80]
    return contact_sheet(run_dir / f"{safe}.png", source_frames, source_label, source_caption, candidates)


def covrr_submission(states: Sequence[QueryState]) -> dict:
    """CoVR-R's submission layout: {section: {query id: [target ids best first]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for state in states:
        section = getattr(state.query, "section", None) or "default"
        out.setdefault(section, {})[state.query.id] = [item.id for item in state.ranked]
    return out
