"""Timed text and time spans: what subtitles, speech recognition and OCR give, and what moments are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A stretch of a video, in seconds from its start."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def overlap_s(self, other: Span) -> float:
        return max(0.0, min(self.end_s, other.end_s) - max(self.start_s, other.start_s))


@dataclass(frozen=True)
class Cue:
    """Text said or shown from `start_s` to `end_s` (a subtitle cue, a recognised word or phrase)."""

    start_s: float
    end_s: float
    text: str
