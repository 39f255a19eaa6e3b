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


def cut_at_word(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` at a word boundary (mid-word only when one word is longer)."""
    if max_chars <= 0:
        return ""
    if len(text) <= max_chars:
        return text
    boundary = text.rfind(" ", 0, max_chars + 1)
    return text[:boundary].rstrip() if boundary > 0 else text[:max_chars]
