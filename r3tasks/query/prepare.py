"""The first query step: check each query and resolve a composed query's source (gallery item or file).

Every model stage goes through a `StageCache` keyed by content and model
fingerprints, so a repeated query calls no model. The flow wires these steps
into Prefect tasks; nothing here imports Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from r3tasks.cache.stages import StageCache, stage_key
from r3tasks.errors import ItemError, R3Error
from r3tasks.gallery.pinned import ItemRecord, PinnedGallery
from r3tasks.inputs.frames import SampledFrames, read_frames, sampling_policy
from r3tasks.inputs.queries import ComposedQuery, Query, check_query, resolve_source_path
from r3tasks.inputs.sources import file_fingerprint
from r3tasks.media.clips import read_span_frames
from r3tasks.media.cues import Span
from r3tasks.media.moments import moment_text
from r3tasks.query.isolation import reason_of
from r3tasks.query.state import QueryState, SourceInfo
from r3tasks.settings.tree import R3Settings

log = logging.getLogger(__name__)
# Seconds between two rerank progress lines (and one at the end of each call).
PROGRESS_EVERY_S = 10.0


# -- validation and sources ----------------------------------------------------------------------
def prepare(queries: Sequence[Query], gallery: PinnedGallery, settings: R3Settings) -> list[QueryState]:
    """Check every query and resolve composed sources; a bad query carries its error, the rest go on."""
    states = []
    for query in queries:
        state = QueryState(query=query, error=check_query(query, settings.query.max_edit_chars))
        if state.ok and isinstance(query, ComposedQuery):
            try:
                state.source = resolve_source(query, gallery, settings)
            except (ValueError, ItemError) as error:
                state.error = error.reason if isinstance(error, ItemError) else str(error)
            except Exception as error:  # noqa: BLE001 - an unreadable sidecar or source costs only this query
                state.error = f"source lookup failed: {reason_of(error)}"
        states.append(state)
    return states


def resolve_source(query: ComposedQuery, gallery: PinnedGallery, settings: R3Settings) -> SourceInfo:
    record = gallery.records.get(query.source)
    moments = gallery.moments_of(query.source) if record is None or query.start_s is not None else []
    if moments:
        return _source_moment(query, moments, settings)
    if record is not None:
        path = Path(record.path) if record.path else None
        span = Span(record.start_s, record.end_s) if record.start_s is not None and record.end_s is not None else None
        return SourceInfo(
            item_id=record.id,
            path=path,
            text=query.source_text or moment_text(record.text, [record]),
            content_key=record.content_key,
            span=span if record.id != record.video else None,
        )
    if not settings.gallery.roots:
        raise ValueError(f"unknown source id {query.source!r}: not in gallery table version {gallery.ref.version}")
    path = resolve_source_path(query.source, settings.gallery.roots)
    sidecar = path.with_suffix(".txt")
    text = query.source_text or (
        sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else None
    )
    return SourceInfo(
        item_id=None, path=path, text=text or None, content_key=file_fingerprint(path, settings.frames.fingerprint)
    )


def _source_moment(query: ComposedQuery, moments: list[ItemRecord], settings: R3Settings) -> SourceInfo:
    """A source named by its video id: the whole video, or the moment start_s..end_s of it. Its own rows
    overlapping that stretch are never results."""
    first = moments[0]
    if query.start_s is None or query.end_s is None:
        span = None
        overlapping = moments
    else:
        span = Span(float(query.start_s), float(query.end_s))
        ends = [m.end_s for m in moments if m.end_s is not None]
        if ends and span.start_s >= max(ends):
            raise ValueError(
                f"source moment starts at {span.start_s:g} s, after the end of {first.video!r} ({max(ends):g} s)"
            )
        overlapping = [
            m for m in moments if m.start_s is None or m.end_s is None or Span(m.start_s, m.end_s).overlap_s(span) > 0
        ]
    return SourceInfo(
        item_id=None,
        path=Path(first.path) if first.path else None,
        text=query.source_text or moment_text(first.text, overlapping),
        content_key=first.content_key,
        span=span,
        exclude=frozenset(m.id for m in overlapping),
    )


def source_frames(source: SourceInfo, purpose: str, settings: R3Settings, cache: StageCache) -> SampledFrames | None:
    """Sampled frames of a source video (of its moment, when it is one), decoded once per (content, span,
    sampling) and cached."""
    if source.path is None:
        return None
    policy = sampling_policy(settings.frames, purpose)  # type: ignore[arg-type]
    span = (source.span.start_s, source.span.end_s) if source.span is not None else None
    key = stage_key("frames", source.content_key, purpose, settings.settings_hash("frames"), *([span] if span else []))
    frames = cache.get(key)
    if frames is None:
        if source.span is None:
            frames = read_frames(source.path, policy, settings.frames.max_side)
        else:
            frames = read_span_frames(source.path, policy, source.span, settings.frames.max_side)
        cache.put(key, frames)
    return frames


def ensure_gallery_not_empty(gallery: PinnedGallery) -> None:
    if len(gallery) == 0:
        raise R3Error(
            f"gallery table {gallery.ref.table} at {gallery.ref.uri} is empty: run `r3 index` with this preset first"
        )
