"""The `pocketsphinx` speech recogniser: CMU PocketSphinx with the US English model its wheel ships (acoustic
model, CMU dictionary, trigram language model), so it runs on a CPU with nothing to download.

One cue per recognised word, with the word's start and end from the decoder's segmentation (frames of
10 ms). Silence, breath and noise "words" (``<sil>``, ``<s>``, ``[NOISE]``, ...) are dropped, and the
dictionary's alternate-pronunciation marks (``been(2)``) are stripped. Inaudible audio (a silent chunk of a
long video) gives no words without being decoded.

Long audio: callers stream a file through `r3tasks.media.audio.iter_audio_chunks` (30 s chunks) and shift
each chunk's words by its offset (`r3tasks.media.speech`). An array longer than `UTTERANCE_S` handed to
`transcribe` is cut here the same way, into overlapping utterances, each word kept once (from the utterance
where it starts before the middle of the overlap), because one search over a long utterance grows in memory
and a mid-utterance mistake costs more the longer it runs.

Measured on Debian's pocketsphinx-testdata (`python -m benchmarks.asr_wer`, benchmarks/results/asr_wer.json):
word error rate 27 % on LibriVox read speech, 5 % on short card names, 22 % pooled (92 words); 3.5-5x real
time on a shared 2-core machine (4.2x in the stored run, load average 3).
"""

from __future__ import annotations

import re
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from r3tasks.errors import ModelNotAvailableError
from r3tasks.media.cues import Cue
from r3tasks.settings.tree import R3Settings

BACKEND = "pocketsphinx"
SAMPLE_RATE = 16_000
UTTERANCE_S = 30.0
OVERLAP_S = 2.0
_LANGUAGES = {"en", "en-us", "english"}
# Peak below -60 dBFS: nothing audible. The decoder "hears" a word in digital silence (all-zero samples give
# it no energy to normalise: 2 s of zeros came out as "dog"), so such an utterance is not decoded at all.
SILENCE_PEAK = 1e-3
_ALTERNATE = re.compile(r"\(\d+\)$")
_HOW_TO = (
    "install the `pocketsphinx` package (pip install pocketsphinx; its wheel ships the US English model), "
    "or set models.asr = 'whisper' or 'none'"
)


def package_version() -> str:
    try:
        return version("pocketsphinx")
    except PackageNotFoundError:
        return "unknown"


def model_dir() -> Path:
    """The wheel's US English acoustic model and the folder with its dictionary and language model."""
    try:
        import pocketsphinx
    except ImportError:
        raise ModelNotAvailableError("pocketsphinx en-us", _HOW_TO) from None
    folder = Path(pocketsphinx.get_model_path())
    for needed in ("en-us", "en-us.lm.bin", "cmudict-en-us.dict"):
        if not (folder / "en-us" / needed).exists():
            raise ModelNotAvailableError(
                "pocketsphinx en-us", f"{folder / 'en-us' / needed} is missing; reinstall: " + _HOW_TO
            )
    return folder / "en-us"


def word_text(word: str) -> str | None:
    """The word as written, or None for what is not a word: ``<s>``, ``</s>``, ``<sil>``, ``[NOISE]``,
    ``++BREATH++`` (fillers of older models). ``been(2)`` (second pronunciation) is ``been``."""
    if not word or word[0] in "<[+":
        return None
    return _ALTERNATE.sub("", word) or None


class PocketsphinxRecognizer:
    """`SpeechRecognizer` over one PocketSphinx decoder, made on the first `transcribe` (about 0.3 s) and
    shared by the calls of one process; a lock keeps one utterance at a time in it."""

    def __init__(self, hmm: Path) -> None:
        self._folder = hmm
        self._decoder: Any = None
        self._lock = threading.Lock()
        self._fingerprint = f"{BACKEND}-{package_version()}-en-us"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> list[Cue]:
        """One cue per word, seconds from the start of `audio` (mono float32 in [-1, 1] at 16 kHz)."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"pocketsphinx hears {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: decode at its sample_rate"
            )
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        window = round(UTTERANCE_S * SAMPLE_RATE)
        if len(audio) <= window:
            return self._utterance(audio)
        step = window - round(OVERLAP_S * SAMPLE_RATE)
        cues: list[Cue] = []
        for start in range(0, len(audio) - (window - step), step):
            offset = start / SAMPLE_RATE
            # Same rule as the file-level chunking in r3tasks.media.speech: a word belongs to the utterance
            # in which it starts before the middle of the overlap, and the later one hears it whole.
            middle = offset + OVERLAP_S / 2 if start else float("-inf")
            cues = [cue for cue in cues if cue.start_s < middle]
            for cue in self._utterance(audio[start : start + window]):
                if cue.start_s + offset >= middle:
                    cues.append(Cue(cue.start_s + offset, cue.end_s + offset, cue.text))
        return cues

    def _utterance(self, audio: np.ndarray) -> list[Cue]:
        if len(audio) == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
            return []
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        with self._lock:
            decoder = self._load()
            frame_rate = float(decoder.config["frate"])
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            segments = [(s.word, s.start_frame, s.end_frame) for s in decoder.seg()]
        cues = []
        for word, start, end in segments:
            text = word_text(word)
            if text is not None:
                # end_frame is the word's last frame: the word lasts until that frame ends.
                cues.append(Cue(start / frame_rate, (end + 1) / frame_rate, text))
        return cues

    def _load(self) -> Any:
        if self._decoder is None:
            from pocketsphinx import Decoder

            folder = self._folder
            self._decoder = Decoder(
                hmm=str(folder / "en-us"),
                lm=str(folder / "en-us.lm.bin"),
                dict=str(folder / "cmudict-en-us.dict"),
                samprate=SAMPLE_RATE,
                loglevel="FATAL",
            )
        return self._decoder


def load_recognizer(settings: R3Settings) -> PocketsphinxRecognizer:
    """The wheel's US English model (`models.asr_language` must be English: it is the only model shipped)."""
    language = settings.models.asr_language.strip().lower()
    if language not in _LANGUAGES:
        raise ModelNotAvailableError(
            f"pocketsphinx {language}",
            "the pocketsphinx backend has only the US English model its wheel ships; set models.asr_language = "
            "'en', or models.asr = 'whisper' for other languages",
        )
    return PocketsphinxRecognizer(model_dir())


__all__ = ["PocketsphinxRecognizer", "load_recognizer", "model_dir", "word_text"]
