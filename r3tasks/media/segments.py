"""Which stretches of a video become moments: the whole clip, its shots (merged and split to a length a person
watches and an embedder takes), or fixed overlapping windows. Pure functions: no I/O.

All times are rounded to milliseconds, and the arithmetic is done in integer milliseconds, so a span's edges
are exactly what `moment_id` prints and the same inputs give the same ids on every run and machine.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from r3tasks.media.cues import Span
from r3tasks.settings.media import MediaSettings


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _span(start_ms: int, end_ms: int) -> Span:
    return Span(start_ms / 1000, end_ms / 1000)


def _check_duration(duration_s: float) -> int:
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"video duration must be a positive number of seconds, got {duration_s!r}")
    duration_ms = _ms(duration_s)
    if duration_ms <= 0:
        raise ValueError(f"video duration {duration_s!r} s is shorter than a millisecond")
    return duration_ms


def shot_segments(cuts: Sequence[float], duration_s: float, min_s: float, max_s: float) -> list[Span]:
    """Spans from shot cuts: the shots [0, c1), [c1, c2), ..., [cn, duration), with every shot shorter than
    `min_s` merged into a neighbour, then every span longer than `max_s` split into equal parts.

    The spans are sorted, contiguous and cover [0, duration] exactly. Each lies in [min_s, max_s], except that
    a video shorter than `min_s` is one span, and when `min_s > max_s / 2` some lengths cannot be split into
    parts that long (the parts then keep to `max_s` and may be shorter than `min_s`).

    Short shots are merged shortest first, each into its shorter neighbour (the following one on a tie; the
    first shot merges forward and the last backward), so a burst of flash cuts joins the shots around it
    without swallowing a long shot's neighbour. Cuts outside (0, duration), non-finite or repeated (to the
    millisecond) are ignored.
    """
    if not (min_s > 0 and max_s >= min_s):
        raise ValueError(f"need 0 < min_s <= max_s, got min_s={min_s!r}, max_s={max_s!r}")
    max_ms = math.floor(max_s * 1000 + 1e-6)
    if max_ms < 1:
        raise ValueError(f"max_s must be at least a millisecond, got {max_s!r}")
    duration_ms = _check_duration(duration_s)
    # A range test, not a set of every millisecond: memory must not grow with the video's length.
    inner = sorted({ms for ms in (_ms(c) for c in cuts if math.isfinite(c)) if 0 < ms < duration_ms})
    if duration_ms < min_s * 1000:
        return [_span(0, duration_ms)]
    bounds = _merge_short([0, *inner, duration_ms], min_s * 1000)
    spans: list[Span] = []
    for start, end in zip(bounds, bounds[1:]):
        parts = max(1, -(-(end - start) // max_ms))
        # Integer edges: no part is over max_ms, and parts differ by at most a millisecond.
        edges = [start + (end - start) * i // parts for i in range(parts + 1)]
        spans.extend(_span(a, b) for a, b in zip(edges, edges[1:]))
    return spans


def _merge_short(bounds: list[int], min_ms: float) -> list[int]:
    """Shot edges with every shot shorter than `min_ms` merged away (the total must be at least `min_ms`).

    Shots form a doubly linked list; a heap yields the shortest live shot in O(log n), so hours of video with
    thousands of cuts stay cheap. Stale heap entries (a shot that has since grown or gone) are skipped.
    """
    count = len(bounds) - 1
    start = bounds[:-1]
    end = bounds[1:]
    prev = [i - 1 for i in range(count)]
    nxt = [i + 1 if i + 1 < count else -1 for i in range(count)]
    alive = [True] * count
    heap = [(end[i] - start[i], i) for i in range(count) if end[i] - start[i] < min_ms]
    heapq.heapify(heap)
    while heap:
        length, i = heapq.heappop(heap)
        if not alive[i] or end[i] - start[i] != length:
            continue
        before, after = prev[i], nxt[i]
        if before < 0 and after < 0:
            break  # the only shot left: the whole video, at least min_ms long by precondition
        if after < 0 or (before >= 0 and end[before] - start[before] < end[after] - start[after]):
            keep, gone = before, i  # the last shot, or the previous one is strictly shorter: merge backward
        else:
            keep, gone = i, after  # merge forward: i absorbs the following shot
        start[keep], end[keep] = min(start[keep], start[gone]), max(end[keep], end[gone])
        alive[gone] = False
        nxt[keep] = nxt[gone]
        if nxt[gone] >= 0:
            prev[nxt[gone]] = keep
        if end[keep] - start[keep] < min_ms:
            heapq.heappush(heap, (end[keep] - start[keep], keep))
    edges = [start[i] for i in range(count) if alive[i]]
    return [*edges, bounds[-1]]


def window_segments(duration_s: float, window_s: float, overlap_s: float) -> list[Span]:
    """Fixed windows of `window_s`, one starting every `window_s - overlap_s`, covering [0, duration].

    The window that would run past the end is moved back to end exactly at the duration, so every window is
    `window_s` long (a video shorter than that is one window) and the tail never gets a sliver of its own;
    the last two windows then overlap by more than `overlap_s`.
    """
    window_ms, overlap_ms = _ms(window_s), _ms(overlap_s)
    if window_ms <= 0 or overlap_ms < 0 or overlap_ms >= window_ms:
        raise ValueError(f"need window_s > overlap_s >= 0, got window_s={window_s!r}, overlap_s={overlap_s!r}")
    duration_ms = _check_duration(duration_s)
    if duration_ms <= window_ms:
        return [_span(0, duration_ms)]
    step_ms = window_ms - overlap_ms
    spans = [_span(s, s + window_ms) for s in range(0, duration_ms - window_ms, step_ms)]
    spans.append(_span(duration_ms - window_ms, duration_ms))
    return spans


def is_whole(duration_s: float, settings: MediaSettings) -> bool:
    """Whether a video this long is indexed as one moment (its whole length) rather than as segments."""
    return duration_s <= settings.whole_clip_max_s


def plan_spans(duration_s: float, cuts: Sequence[float] | None, settings: MediaSettings) -> list[Span]:
    """The moments of a video: [0, duration] for a clip up to `whole_clip_max_s`; else shots (from `cuts`) or
    windows, as `settings.segmentation` says. `cuts` may be None for a whole clip or for windows; shot
    segmentation of a long video needs them (pass [] when detection found no cut)."""
    duration_ms = _check_duration(duration_s)
    if is_whole(duration_s, settings):
        return [_span(0, duration_ms)]
    if settings.segmentation == "windows":
        return window_segments(duration_s, settings.segment_max_s, settings.window_overlap_s)
    if cuts is None:
        raise ValueError(f"shot segmentation of a {duration_s:.1f} s video needs its cut times (got None)")
    return shot_segments(cuts, duration_s, settings.segment_min_s, settings.segment_max_s)


def moment_id(video_id: str, span: Span, whole: bool) -> str:
    """A moment's id: the video id for a whole clip, else `VIDEO_ID#t=START,END` (W3C media-fragment time,
    seconds to the millisecond), the same for the same span on every run."""
    if whole:
        return video_id
    return f"{video_id}#t={span.start_s:.3f},{span.end_s:.3f}"
