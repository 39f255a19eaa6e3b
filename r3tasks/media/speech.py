"""What is said in a video: its subtitles when it has any (a sidecar file, then a stream in the container),
else what a speech recogniser hears, read in overlapping chunks so memory stays flat in the video's length."""

from __future__ import annotations

from r3tasks.errors import ItemError, VideoReadError
from r3tasks.inputs.sources import GalleryItem
from r3tasks.media.cues import Cue
from r3tasks.media.moments import SpeechTrack
from r3tasks.models.base import SpeechRecognizer
from r3tasks.settings.tree import R3Settings

# Recogniser chunks: long enough for context, short enough to hold a few seconds of memory; the overlap
# lets a word cut by one chunk's end be heard whole in the next.
CHUNK_S = 30.0
OVERLAP_S = 2.0


def read_speech(item: GalleryItem, settings: R3Settings, recognizer: SpeechRecognizer | None) -> SpeechTrack:
    assert item.path is not None
    notes: list[str] = []
    if settings.media.subtitles:
        from r3tasks.media.subtitles import read_subtitles

        try:
            track = read_subtitles(item.path)
        except ItemError as error:
            # Unreadable subtitles cost the video its subtitles only: said, and the recogniser listens instead.
            track = None
            notes.append(f"subtitles not read: {error.reason}")
        if track is not None:
            notes += [f"subtitles {track.source}: {reason}" for reason in track.skipped]
            if track.cues:
                return SpeechTrack(tuple(track.cues), f"subtitles ({track.source})", tuple(notes))
    if recognizer is None:
        return SpeechTrack(notes=tuple(notes))
    try:
        cues = transcribe_file(item.path, recognizer)
    except VideoReadError as error:
        # A damaged sound track costs the video its speech, not its pictures and on-screen text: said, not failed.
        return SpeechTrack(source="none", notes=(*notes, f"{error.reason} (nothing said is read)"))
    if cues is None:
        return SpeechTrack(source="none", notes=(*notes, "no audio stream (nothing said is read)"))
    return SpeechTrack(tuple(cues), f"speech ({recognizer.fingerprint})", tuple(notes))


def transcribe_file(path: object, recognizer: SpeechRecognizer) -> list[Cue] | None:
    """Every word the recogniser hears in the file's first audio stream, with times from the file's start;
    None when the file has no audio stream."""
    from r3tasks.media.audio import iter_audio_chunks

    cues: list[Cue] = []
    heard_audio = False
    for offset, samples in iter_audio_chunks(path, recognizer.sample_rate, chunk_s=CHUNK_S, overlap_s=OVERLAP_S):
        # Chunks overlap: a word starting before the middle of an overlap is the earlier chunk's, after it the
        # later one's (which hears it whole), so each word is kept once.
        middle = offset + OVERLAP_S / 2 if heard_audio else float("-inf")
        heard_audio = True
        cues = [cue for cue in cues if cue.start_s < middle]
        for cue in recognizer.transcribe(samples, recognizer.sample_rate):
            if cue.start_s + offset >= middle:
                cues.append(Cue(cue.start_s + offset, cue.end_s + offset, cue.text))
    return cues if heard_audio else None
