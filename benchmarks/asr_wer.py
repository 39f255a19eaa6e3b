"""Speech recognition accuracy and speed: pocketsphinx's word error rate on real recorded speech.

Every recording in Debian's pocketsphinx-testdata (/usr/share/pocketsphinx/test/data) that has a reference
transcription (a `transcription` / `*.transcription` / `*.lsn` file of ``words (file-id)`` lines, with the
file-id's .wav, or .raw 16 kHz 16-bit mono, beside it) is decoded the way r3 reads a video's sound
(`r3tasks.media.audio.read_audio`, PyAV) and recognised by the `pocketsphinx` backend with the model its wheel
ships (US English, general trigram language model; the sets' own grammars and language models are not used,
so the `cards` set, recorded for a card-name grammar, is recognised as open speech).

- WER = (substitutions + deletions + insertions) / reference words, from a word-level Levenshtein alignment,
  per recording and pooled per set and over everything (pooled: total edits / total reference words).
  Both sides are normalised the same way: lower case, punctuation and sentence marks (<s>, </s>) removed,
  and the few spellings the dictionary and the transcripts write differently made one (`mr` -> `mister`).
- Speed: seconds of audio recognised per wall second of `transcribe` ("x real time", higher is faster), the
  decoder loaded beforehand (its load is its own row), and PyAV decoding timed apart.

Whisper is not measured here: no Whisper weights are on this machine and the hub is not reachable from it.

    python -m benchmarks.asr_wer   # writes benchmarks/results/asr_wer.json
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, Context, Result, machine_info, now_iso, write_json, write_wav

NAME = "asr_wer"
TITLE = "Speech recognition: pocketsphinx word error rate and speed on pocketsphinx-testdata"
TESTDATA = Path("/usr/share/pocketsphinx/test/data")
RATE = 16_000
# Spellings the CMU dictionary and the transcripts disagree on; both sides are mapped.
_SPELLINGS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}
_LINE = re.compile(r"^(?P<words>.*)\((?P<id>[^()\s]+)\)\s*$")


@dataclass(frozen=True)
class Recording:
    set_name: str
    file_id: str
    audio: Path
    reference: str


@dataclass(frozen=True)
class Alignment:
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.edits / self.reference_words if self.reference_words else float(self.edits > 0)


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation, sentence marks or fillers, spellings made one."""
    words = []
    for token in text.lower().split():
        if token.startswith(("<", "[", "++")):
            continue
        token = re.sub(r"[^a-z0-9']", "", token).strip("'")
        if token:
            words.append(_SPELLINGS.get(token, token))
    return words


def align(reference: list[str], hypothesis: list[str]) -> Alignment:
    """Word-level Levenshtein alignment: the fewest edits, then counted by kind along one best path."""
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    cost = np.zeros((rows, cols), dtype=np.int64)
    cost[:, 0] = np.arange(rows)
    cost[0, :] = np.arange(cols)
    for i in range(1, rows):
        for j in range(1, cols):
            same = reference[i - 1] == hypothesis[j - 1]
            cost[i, j] = min(cost[i - 1, j - 1] + (not same), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    subs = dels = ins = 0
    i, j = rows - 1, cols - 1
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            subs += reference[i - 1] != hypothesis[j - 1]
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            dels, i = dels + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return Alignment(subs, dels, ins, len(reference))


def find_recordings(root: Path = TESTDATA) -> tuple[list[Recording], list[str]]:
    """Recordings with a reference transcription and an audio file; and what was passed over, and why."""
    found: list[Recording] = []
    skipped: list[str] = []
    listings = sorted({*root.rglob("transcription"), *root.rglob("*.transcription"), *root.rglob("*.lsn")})
    for listing in listings:
        folder = listing.parent
        without_audio = []
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _LINE.match(line.strip())
            if not match:
                continue
            file_id = match["id"]
            audio = next(
                (folder / f"{file_id}{ext}" for ext in (".wav", ".raw") if (folder / f"{file_id}{ext}").is_file()), None
            )
            if audio is None:
                without_audio.append(file_id)
                continue
            found.append(Recording(folder.name, file_id, audio, match["words"]))
        if without_audio:
            skipped.append(
                f"{listing.relative_to(root)}: {len(without_audio)} transcripts without an audio file "
                f"(features only, e.g. {without_audio[0]}.mfc)"
            )
    return found, skipped


def _wav_of_raw(raw: Path, work: Path) -> Path:
    """A .raw file (16 kHz 16-bit mono, the testdata's convention) as a WAV that PyAV can open."""
    return write_wav(work / f"{raw.stem}.wav", raw.read_bytes(), RATE)


def run(ctx: Context | None = None) -> Result:
    """The measurement; `ctx` (unused) lets `benchmarks.run` call it like its other modules."""
    from r3tasks.media.audio import read_audio
    from r3tasks.models.asr.pocketsphinx import load_recognizer
    from r3tasks.settings.tree import load_settings

    result = Result(NAME, TITLE)
    recordings, skipped = find_recordings()
    if not recordings:
        result.note(f"no recordings found under {TESTDATA}: apt-get install pocketsphinx-testdata")
        return result
    work = Path(tempfile.mkdtemp(prefix="r3-bench-asr-"))
    try:
        recognizer = load_recognizer(load_settings(home=work / "home"))
        start = time.perf_counter()
        recognizer.transcribe(np.zeros(RATE // 10, dtype=np.float32) + 0.01, RATE)  # loads the decoder
        load_s = time.perf_counter() - start

        per_file = []
        for rec in recordings:
            source = _wav_of_raw(rec.audio, work) if rec.audio.suffix == ".raw" else rec.audio
            start = time.perf_counter()
            audio = read_audio(source, recognizer.sample_rate)
            decode_s = time.perf_counter() - start
            assert audio is not None, f"{source}: no audio stream"
            start = time.perf_counter()
            cues = recognizer.transcribe(audio, recognizer.sample_rate)
            transcribe_s = time.perf_counter() - start
            hypothesis = " ".join(c.text for c in cues)
            alignment = align(normalise(rec.reference), normalise(hypothesis))
            per_file.append(
                {
                    "set": rec.set_name,
                    "file": rec.file_id,
                    "audio_s": round(len(audio) / recognizer.sample_rate, 3),
                    "decode_s": round(decode_s, 4),
                    "transcribe_s": round(transcribe_s, 4),
                    "reference": " ".join(normalise(rec.reference)),
                    "hypothesis": " ".join(normalise(hypothesis)),
                    "substitutions": alignment.substitutions,
                    "deletions": alignment.deletions,
                    "insertions": alignment.insertions,
                    "reference_words": alignment.reference_words,
                    "wer": round(alignment.wer, 4),
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result.data = {
        "fingerprint": recognizer.fingerprint,
        "decoder_load_s": load_s,
        "files": per_file,
        "skipped": skipped,
    }
    summarise(result, result.data)
    return result


def _pooled(rows: list[dict]) -> tuple[float, int, float]:
    edits = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    words = sum(r["reference_words"] for r in rows)
    speed = sum(r["audio_s"] for r in rows) / max(sum(r["transcribe_s"] for r in rows), 1e-9)
    return edits / max(words, 1), words, speed


def summarise(result: Result, data: dict) -> None:
    rows = data["files"]
    wer, words, speed = _pooled(rows)
    audio_s = sum(r["audio_s"] for r in rows)
    result.row("WER, all recordings (pooled)", 100 * wer, "%", note=f"{len(rows)} recordings, {words} reference words")
    for set_name in sorted({r["set"] for r in rows}):
        subset = [r for r in rows if r["set"] == set_name]
        set_wer, set_words, _ = _pooled(subset)
        result.row(f"WER, {set_name} (pooled)", 100 * set_wer, "%", note=f"{len(subset)} recordings, {set_words} words")
    result.row("Recognition speed (audio s per wall s)", speed, "x real time", note=f"{audio_s:.1f} s of audio")
    decode = audio_s / max(sum(r["decode_s"] for r in rows), 1e-9)
    result.row("PyAV decode + resample speed", decode, "x real time")
    result.row("Decoder load", data["decoder_load_s"], "s")
    result.table(
        "Per recording",
        ["set", "file", "audio s", "ref words", "S", "D", "I", "WER %", "x real time", "hypothesis"],
        [
            [
                r["set"],
                r["file"],
                r["audio_s"],
                r["reference_words"],
                r["substitutions"],
                r["deletions"],
                r["insertions"],
                round(100 * r["wer"], 1),
                round(r["audio_s"] / max(r["transcribe_s"], 1e-9), 1),
                r["hypothesis"],
            ]
            for r in rows
        ],
    )
    result.note(f"recogniser: {data['fingerprint']} (the wheel's US English model and general language model)")
    result.note("the cards set was recorded for a small card-name grammar; here it is recognised as open speech")
    result.note("whisper is not measured: no Whisper weights on this machine and no hub access")
    for line in data["skipped"]:
        result.note(f"skipped {line}")


def main() -> int:
    machine, started, start = machine_info(), now_iso(), time.perf_counter()
    payload = run().to_dict()
    payload.update(
        command="python -m benchmarks.asr_wer",
        mode="full",
        started=started,
        duration_s=time.perf_counter() - start,
        machine=machine,
    )
    write_json(RESULTS_DIR / f"{NAME}.json", payload)
    for row in payload["rows"]:
        print(f"{row['name']}: {row['measured']:.3g} {row['unit']}  {row['note']}", flush=True)
    for table in payload["tables"]:
        print(f"\n{table['title']}")
        print(" | ".join(table["columns"]))
        for values in table["rows"]:
            print(" | ".join(str(v) for v in values))
    for note in payload["notes"]:
        print(f"note: {note}")
    return 0 if payload["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
