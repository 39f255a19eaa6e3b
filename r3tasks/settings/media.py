"""How videos become moments, and what is read from them: shots, subtitles, speech, on-screen text."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from r3tasks.settings.section import Section

Segmentation = Literal["shots", "windows"]


class MediaSettings(Section):
    # A moment is what a person watches: well under a minute. Clips up to `whole_clip_max_s` (WebVid/CoVR and
    # EgoCVR clips are all shorter) stay one moment, so galleries of clips and the evals keep whole-clip rows.
    whole_clip_max_s: float = Field(
        30.0,
        gt=0,
        description="A video at most this long is one moment (0 to its duration); a longer one is indexed as segments.",
    )
    segmentation: Segmentation = Field(
        "shots",
        description="How a long video is cut: `shots` (PySceneDetect cuts, merged and split into "
        "[segment_min_s, segment_max_s]) or `windows` (fixed windows of segment_max_s with overlap).",
    )
    segment_min_s: float = Field(
        2.0, gt=0, description="Shortest segment: shorter shots are merged with their neighbours."
    )
    segment_max_s: float = Field(
        16.0, gt=0, description="Longest segment: longer shots are split evenly (Vertex AI embeds 16 s intervals)."
    )
    window_overlap_s: float = Field(
        2.0, ge=0, description="Overlap of consecutive windows when segmentation is `windows`."
    )
    shot_threshold: float = Field(
        27.0, gt=0, description="PySceneDetect ContentDetector threshold (its default); lower finds more cuts."
    )
    subtitles: bool = Field(
        True,
        description="Read subtitles: a sidecar NAME.srt / NAME.vtt first, else a subtitle stream in the container; "
        "speech recognition runs only for a video without them.",
    )
    ocr: bool = Field(True, description="Read text written on screen (RapidOCR) in each moment.")
    ocr_frames: int = Field(2, ge=1, description="Frames per moment that OCR reads (evenly spaced inside it).")
    ocr_min_confidence: float = Field(
        0.6, ge=0, le=1, description="OCR lines below this recognition confidence are dropped."
    )
    embed_text: bool = Field(
        True,
        description="Embed a moment's transcript and on-screen text with it (a frames embedder gets frames and text "
        "in one input; a text embedder reads caption + transcript + on-screen text).",
    )
    max_text_chars: int = Field(
        2000, ge=1, description="Characters of a moment's transcript and of its on-screen text that are kept."
    )

    @model_validator(mode="after")
    def _check_lengths(self) -> MediaSettings:
        if self.segment_min_s > self.segment_max_s:
            raise ValueError("media.segment_min_s must be at most media.segment_max_s")
        if self.window_overlap_s >= self.segment_max_s:
            raise ValueError("media.window_overlap_s must be shorter than media.segment_max_s")
        return self
