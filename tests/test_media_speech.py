"""A video's sound (decoding, chunking, damage) and the speech recognisers (pocketsphinx on real recorded
speech, a tiny random Whisper for the plumbing). Every input is generated here; the recorded speech comes from
Debian's pocketsphinx-testdata, and those tests skip without it."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from r3tasks.errors import ModelNotAvailableError, VideoReadError
from r3tasks.media.audio import has_audio, iter_audio_chunks, read_audio
from r3tasks.media.cues import Cue
from r3tasks.models.registry import shared_speech_recognizer
from r3tasks.settings.tree import load_settings

RATE = 16_000
AAC_FRAME = 1024  # the encoder pads the track to whole frames of this many samples
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
NO_TESTDATA = (
    "needs Debian's pocketsphinx-testdata (/usr/share/pocketsphinx/test/data): apt-get install pocketsphinx-testdata"
)
# Function words: "heard several content words" is about the rest.
STOPWORDS = {"a", "an", "and", "be", "been", "do", "for", "had", "have", "he", "his", "how", "in", "is", "not", "than",
             "them", "then", "there", "to", "was"}  # fmt: skip


# ---------------------------------------------------------------------------
# Generated media


def write_video(path: Path, audio: np.ndarray | None, seconds: float | None = None, rate: int = RATE) -> Path:
    """An mp4 with a small MPEG-4 video stream (4 fps) and, unless `audio` is None, a mono AAC track of it."""
    import av

    if seconds is None:
        seconds = 1.0 if audio is None else len(audio) / rate
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=4)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        track = None if audio is None else container.add_stream("aac", rate=rate, layout="mono")
        for i in range(max(1, round(seconds * 4))):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20 % 256, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if track is not None:
            size = track.codec_context.frame_size or 1024
            for offset in range(0, len(audio), size):
                chunk = np.ascontiguousarray(audio[offset : offset + size], dtype=np.float32).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, offset, Fraction(1, rate)
                for packet in track.encode(frame):
                    container.mux(packet)
            for packet in track.encode(None):
                container.mux(packet)
    return path


def beeps(seconds: float, at: list[float], rate: int = RATE, length_s: float = 0.2) -> np.ndarray:
    """Silence with a 1 kHz beep starting at each time in `at`."""
    audio = np.zeros(round(seconds * rate), dtype=np.float32)
    t = np.arange(round(length_s * rate)) / rate
    for start in at:
        i = round(start * rate)
        audio[i : i + len(t)] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    return audio


def onsets(audio: np.ndarray, rate: int = RATE) -> list[float]:
    """Where loud stretches begin (10 ms windows), in seconds."""
    window = rate // 100
    loud = np.abs(audio[: len(audio) // window * window]).reshape(-1, window).max(axis=1) > 0.2
    return [i / 100 for i in range(len(loud)) if loud[i] and (i == 0 or not loud[i - 1])]


def sweep(seconds: float, rate: int = RATE) -> np.ndarray:
    """A 200 Hz - 3 kHz chirp: every stretch of it differs, so a misplaced sample shows."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * (200 * t + (2800 / (2 * seconds)) * t**2))).astype(np.float32)


def audio_packets(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each audio packet in the file."""
    import av

    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size and p.pos is not None]


def damage(path: Path, packets: list[tuple[int, int]]) -> None:
    with path.open("r+b") as handle:
        for pos, size in packets:
            handle.seek(pos)
            handle.write(b"\xff" * size)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as handle:
        assert handle.getframerate() == RATE and handle.getnchannels() == 1
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768


def librivox(file_id: str) -> tuple[np.ndarray, list[str]]:
    """A recorded sentence and its reference words (from the package's transcription file)."""
    if not LIBRIVOX.is_dir():
        pytest.skip(NO_TESTDATA)
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        if line.rstrip().endswith(f"({file_id})"):
            words = [w for w in line.rsplit("(", 1)[0].split() if w not in ("<s>", "</s>")]
            return read_wav(LIBRIVOX / f"{file_id}.wav"), words
    raise AssertionError(f"{file_id} is not in the transcription file")


# ---------------------------------------------------------------------------
# Decoding


def test_read_audio_gives_the_track_as_mono_float_at_the_asked_rate(tmp_path: Path) -> None:
    source = sweep(3.0)
    video = write_video(tmp_path / "clip.mp4", source)

    audio = read_audio(video, RATE)
    assert audio is not None and audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(source)) <= AAC_FRAME
    n = min(len(audio), len(source))
    assert np.corrcoef(audio[:n], source[:n])[0, 1] > 0.99  # same sound, not shifted
    assert np.abs(audio).max() <= 1.0

    half = read_audio(video, RATE // 2)
    assert half is not None and abs(len(half) - len(source) // 2) <= AAC_FRAME // 2

    # A stretch is the same samples as that stretch of the whole track (a seek with pre-roll, then trimmed).
    part = read_audio(video, RATE, start_s=1.25, end_s=2.0)
    assert part is not None and len(part) == round(0.75 * RATE)
    assert np.allclose(part, audio[round(1.25 * RATE) : round(2.0 * RATE)], atol=1e-4)


def test_a_video_without_sound_has_no_audio(tmp_path: Path) -> None:
    video = write_video(tmp_path / "silent.mp4", None, seconds=2.0)
    assert read_audio(video, RATE) is None
    assert list(iter_audio_chunks(video, RATE)) == []
    assert has_audio(video) is False


def test_unreadable_files_raise_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="file not found"):
        read_audio(tmp_path / "missing.mp4", RATE)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoReadError, match="FFmpeg cannot read it"):
        read_audio(junk, RATE)


def test_an_audio_stream_that_does_not_decode_is_corrupt(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", sweep(4.0))
    damage(video, audio_packets(video))
    with pytest.raises(VideoReadError, match="audio stream is corrupt") as caught:
        read_audio(video, RATE)
    assert caught.value.path == video
    with pytest.raises(VideoReadError, match="audio stream is corrupt"):
        list(iter_audio_chunks(video, RATE, chunk_s=1.0, overlap_s=0.2))


def test_a_few_damaged_packets_become_silence_and_later_sound_keeps_its_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = write_video(tmp_path / "clip.mp4", beeps(6.0, at=[1.0, 4.5]))
    packets = audio_packets(video)
    # Damage two packets around 2.5 s (1024 samples each at 16 kHz): between the beeps.
    middle = round(2.5 * RATE / 1024)
    damage(video, packets[middle : middle + 2])

    with caplog.at_level(logging.WARNING, logger="r3tasks.media.audio"):
        audio = read_audio(video, RATE)
    assert audio is not None
    assert abs(len(audio) - 6.0 * RATE) <= AAC_FRAME  # nothing lost from the timeline
    found = onsets(audio)
    assert len(found) == 2
    assert found[0] == pytest.approx(1.0, abs=0.02) and found[1] == pytest.approx(4.5, abs=0.02)
    assert any("2 of" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)


def test_chunks_cover_the_whole_track_at_their_offsets(tmp_path: Path) -> None:
    source = sweep(10.0)
    video = write_video(tmp_path / "clip.mp4", source)
    whole = read_audio(video, RATE)
    assert whole is not None

    chunks = list(iter_audio_chunks(video, RATE, chunk_s=3.0, overlap_s=1.0))
    offsets = [offset for offset, _ in chunks]
    assert offsets == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])
    for offset, samples in chunks:
        start = round(offset * RATE)
        assert len(samples) <= 3 * RATE
        assert np.array_equal(samples, whole[start : start + len(samples)])
    last_offset, last = chunks[-1]
    assert round(last_offset * RATE) + len(last) == len(whole)  # ends where the audio ends
    # A track that ends on a chunk's end is not followed by a chunk holding only the overlap.
    exact = list(iter_audio_chunks(video, RATE, chunk_s=len(whole) / RATE, overlap_s=1.0))
    assert [o for o, _ in exact] == [0.0] and len(exact[0][1]) == len(whole)


# ---------------------------------------------------------------------------
# pocketsphinx


@pytest.fixture(scope="module")
def pocketsphinx_settings(tmp_path_factory: pytest.TempPathFactory):
    return load_settings(home=tmp_path_factory.mktemp("home"), models={"asr": "pocketsphinx"})


def test_pocketsphinx_hears_recorded_speech_in_a_video(tmp_path: Path, pocketsphinx_settings) -> None:
    speech, reference = librivox("sense_and_sensibility_01_austen_64kb-0870")
    video = write_video(tmp_path / "speech.mp4", speech)
    recognizer = shared_speech_recognizer(pocketsphinx_settings)
    assert recognizer is not None and recognizer.sample_rate == RATE
    assert recognizer.fingerprint.startswith("pocketsphinx-") and recognizer.fingerprint.endswith("-en-us")

    audio = read_audio(video, recognizer.sample_rate)
    assert audio is not None
    cues = recognizer.transcribe(audio, recognizer.sample_rate)
    assert all(isinstance(c, Cue) for c in cues)
    words = [c.text for c in cues]
    content = {w for w in reference if w not in STOPWORDS}
    heard = content & set(words)
    assert len(heard) >= 4, f"heard {words}, reference {reference}"
    assert all("(" not in w and not w.startswith(("<", "[")) for w in words)  # no fillers, no (2) marks
    duration = len(speech) / RATE
    assert all(0 <= c.start_s < c.end_s <= duration + 0.05 for c in cues)
    assert [c.start_s for c in cues] == sorted(c.start_s for c in cues)


def test_pocketsphinx_word_times_follow_where_the_speech_is(tmp_path: Path, pocketsphinx_settings) -> None:
    speech, _ = librivox("sense_and_sensibility_01_austen_64kb-0880")
    recognizer = shared_speech_recognizer(pocketsphinx_settings)
    assert recognizer is not None
    alone = recognizer.transcribe(read_audio(write_video(tmp_path / "alone.mp4", speech), RATE), RATE)
    assert len(alone) >= 4

    # A 40 s video, silent but for the same sentence at 5 s and again across the 30 s mark, where a long array is
    # cut into overlapping utterances: the same words, shifted by where the sentence was put, each heard once.
    track = np.zeros(40 * RATE, dtype=np.float32)
    second = 29.0
    for at in (5.0, second):
        track[round(at * RATE) : round(at * RATE) + len(speech)] = speech
    audio = read_audio(write_video(tmp_path / "track.mp4", track), RATE)
    assert audio is not None
    cues = recognizer.transcribe(audio, RATE)
    duration = len(speech) / RATE
    first_copy = [c for c in cues if c.start_s < 5 + duration]
    second_copy = [c for c in cues if c.start_s >= second]
    assert len(first_copy) + len(second_copy) == len(cues)
    assert all(c.start_s >= 5.0 for c in first_copy)
    for copy, at in ((first_copy, 5.0), (second_copy, second)):
        assert [c.text for c in copy] == [c.text for c in alone]
        assert [c.start_s - at for c in copy] == pytest.approx([c.start_s for c in alone], abs=0.06)


def test_pocketsphinx_hears_nothing_in_silence_and_refuses_other_rates(pocketsphinx_settings) -> None:
    recognizer = shared_speech_recognizer(pocketsphinx_settings)
    assert recognizer is not None
    assert recognizer.transcribe(np.zeros(2 * RATE, dtype=np.float32), RATE) == []
    assert recognizer.transcribe(np.zeros(0, dtype=np.float32), RATE) == []
    with pytest.raises(ValueError, match="16000 Hz"):
        recognizer.transcribe(np.zeros(RATE, dtype=np.float32), 44_100)


def test_pocketsphinx_has_only_english(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, models={"asr": "pocketsphinx", "asr_language": "fr"})
    with pytest.raises(ModelNotAvailableError, match="asr_language"):
        shared_speech_recognizer(settings)


def test_no_recogniser_when_asr_is_none(tmp_path: Path) -> None:
    assert shared_speech_recognizer(load_settings(home=tmp_path, models={"asr": "none"})) is None


# ---------------------------------------------------------------------------
# Whisper (a tiny random checkpoint built here: the plumbing, not the words)


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table (what byte-level BPE writes each byte as), in byte order of its values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return [chars[b] for b in range(256)]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Whisper (d_model 16, one layer each side) with a byte-level tokenizer: 256 byte tokens, Whisper's
    special tokens and the 1501 timestamp tokens, laid out as Whisper's (timestamps right after <|notimestamps|>)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    out = tmp_path_factory.mktemp("tiny-whisper")
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=dict(vocab), merges=[], additional_special_tokens=specials[1:])
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == ids["<|notimestamps|>"] + 1
    eot = ids["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        max_initial_timestamp_index=50,
        max_length=32,
        begin_suppress_tokens=[eot],
        suppress_tokens=[],
    )
    model.save_pretrained(out)
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(out)
    return out


def _whisper_settings(home: Path, model: str | Path):
    return load_settings(
        home=home, models={"asr": "whisper", "asr_model": str(model), "local_files_only": True, "device": "cpu"}
    )


@pytest.mark.parametrize("seconds", [4.0, 35.0])
def test_whisper_gives_timed_phrases_inside_the_audio(tmp_path: Path, tiny_whisper: Path, seconds: float) -> None:
    recognizer = shared_speech_recognizer(_whisper_settings(tmp_path, tiny_whisper))
    assert recognizer is not None and recognizer.sample_rate == RATE
    assert recognizer.fingerprint.startswith("whisper-")

    # 35 s is past one 30 s window: Whisper's long-form decoding runs.
    audio = sweep(seconds)
    cues = recognizer.transcribe(audio, RATE)
    assert isinstance(cues, list) and all(isinstance(c, Cue) and isinstance(c.text, str) and c.text for c in cues)
    assert all(0 <= c.start_s <= c.end_s <= seconds for c in cues)
    assert [c.start_s for c in cues] == sorted(c.start_s for c in cues)
    assert recognizer.transcribe(np.zeros(100, dtype=np.float32), RATE) == []
    assert recognizer.transcribe(np.zeros(3 * RATE, dtype=np.float32), RATE) == []  # silence: nothing said


def test_whisper_fingerprint_follows_the_weights_and_language(tmp_path: Path, tiny_whisper: Path) -> None:
    from r3tasks.models.asr.whisper import load_recognizer

    first = load_recognizer(_whisper_settings(tmp_path, tiny_whisper)).fingerprint
    assert load_recognizer(_whisper_settings(tmp_path, tiny_whisper)).fingerprint == first
    other_language = load_settings(
        home=tmp_path,
        models={"asr": "whisper", "asr_model": str(tiny_whisper), "asr_language": "de", "device": "cpu"},
    )
    assert load_recognizer(other_language).fingerprint != first
    copy = shutil.copytree(tiny_whisper, tmp_path / "copy")
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert load_recognizer(_whisper_settings(tmp_path, copy)).fingerprint != first


def test_a_missing_whisper_model_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="models.asr_model") as caught:
        shared_speech_recognizer(_whisper_settings(tmp_path, tmp_path / "no-such-whisper"))
    assert "R3_MODELS__ASR_MODEL" in str(caught.value)
    # A hub id with local_files_only: refused from the (empty) local cache, without asking the hub.
    hub = _whisper_settings(tmp_path, "openai/whisper-no-such-model")
    with pytest.raises(ModelNotAvailableError, match="local_files_only"):
        shared_speech_recognizer(hub)
    # A folder that is not a checkpoint.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        shared_speech_recognizer(_whisper_settings(tmp_path, tmp_path / "empty"))


def test_importing_the_speech_modules_loads_no_engine() -> None:
    code = (
        "import sys, r3tasks.media.audio, r3tasks.models.asr.pocketsphinx, r3tasks.models.asr.whisper\n"
        "print(sorted({'torch', 'transformers', 'pocketsphinx', 'av'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
