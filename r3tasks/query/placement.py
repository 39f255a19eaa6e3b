"""Where each result is: its video and times, and one entry per stretch of a video.

Recall with `query.unit = "video"` keeps the best moment of each video; a final ranking then gets each
entry's video id, times and text, and (`query.merge_gap_s`) hits of one video that overlap or nearly
touch become one moment spanning them, at the best one's rank and score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.query.state import RankedItem
from r3tasks.settings.query import QuerySettings

# With `unit = video`, recall looks this many times deeper so that K distinct videos remain after keeping
# the best moment of each.
VIDEO_UNIT_DEPTH = 8


def best_per_video(pairs: Sequence[tuple[str, float]], gallery: PinnedGallery, k: int) -> list[tuple[str, float]]:
    """The first (best) moment of each video in best-first `pairs`, at most `k` of them."""
    seen: set[str] = set()
    kept: list[tuple[str, float]] = []
    for item_id, score in pairs:
        record = gallery.records.get(item_id)
        video = record.video if record is not None else item_id
        if video in seen:
            continue
        seen.add(video)
        kept.append((item_id, score))
        if len(kept) == k:
            break
    return kept


def place(ranked: Sequence[RankedItem], gallery: PinnedGallery, settings: QuerySettings) -> list[RankedItem]:
    """Each entry with its video, times, transcript and on-screen text; nearby hits of a video merged."""
    timed = []
    for item in ranked:
        record = gallery.records.get(item.id)
        if record is None:
            timed.append(item)
            continue
        timed.append(
            replace(
                item,
                video_id=record.video,
                start_s=record.start_s,
                end_s=record.end_s,
                transcript=record.transcript,
                screen_text=record.screen_text,
            )
        )
    if settings.merge_gap_s is None or settings.unit == "video":
        return timed
    return merge_nearby(timed, settings.merge_gap_s, settings.merge_score_window)


def merge_nearby(ranked: Sequence[RankedItem], gap_s: float, score_window: float) -> list[RankedItem]:
    """Best first: a hit whose span overlaps or lies within `gap_s` of a kept hit of the same video, with an
    embedding score within `score_window` of that hit's, widens it instead of taking a rank of its own. Hits
    without times are never merged."""
    kept: list[RankedItem] = []
    for item in ranked:
        if item.start_s is None or item.end_s is None:
            kept.append(item)
            continue
        for at, other in enumerate(kept):
            if (
                other.video_id == item.video_id
                and other.start_s is not None
                and other.end_s is not None
                and item.start_s <= other.end_s + gap_s
                and other.start_s <= item.end_s + gap_s
                and item.embedding_score >= other.embedding_score - score_window
            ):
                kept[at] = replace(other, start_s=min(other.start_s, item.start_s), end_s=max(other.end_s, item.end_s))
                break
        else:
            kept.append(item)
    return kept
