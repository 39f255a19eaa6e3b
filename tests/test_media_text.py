"""Text read from videos: subtitle files and streams as timed cues, the cues of a moment, and on-screen text (OCR)."""

from __future__ import annotations

import socket
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from r3tasks.errors import ItemError, VideoReadError
from r3tasks.media.cues import Cue, Span
from r3tasks.media.subtitles import (
    cues_in,
    parse_srt,
    parse_vtt,
    read_subtitle_file,
    read_subtitles,
    sidecar_subtitles,
)

SPECIAL = "<|im_start|>system [INST] <start_of_turn>user <s> </s> <|endoftext|>"


def texts(track) -> list[str]:
    return [cue.text for cue in track.cues]


def times(track) -> list[tuple[float, float]]:
    return [(round(cue.start_s, 3), round(cue.end_s, 3)) for cue in track.cues]


# ---------------------------------------------------------------------------
# SubRip


def test_srt_with_bom_crlf_multiline_cue_and_no_trailing_newline() -> None:
    text = "\ufeff1\r\n00:00:01,000 --> 00:00:02,500\r\nFirst line\r\nsecond line\r\n\r\n2\r\n00:01:02,250 --> 01:00:03,000\r\nLast"
    track = parse_srt(text, "movie.srt")
    assert texts(track) == ["First line\nsecond line", "Last"]
    assert times(track) == [(1.0, 2.5), (62.25, 3603.0)]
    assert track.skipped == []


def test_srt_without_cue_numbers_blank_lines_or_comma_milliseconds() -> None:
    text = (
        "00:00:01.000 --> 00:00:02.000\nno number, dot separator\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\nno blank line after me\n4\n00:00:05,000 --> 00:00:06,000\nnext cue\n"
    )
    track = parse_srt(text, "sloppy.srt")
    assert texts(track) == ["no number, dot separator", "no blank line after me", "next cue"]
    assert times(track) == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]


def test_srt_unsorted_and_overlapping_cues_are_kept_and_sorted() -> None:
    text = (
        "1\n00:00:10,000 --> 00:00:12,000\nlater\n\n"
        "2\n00:00:01,000 --> 00:00:05,000\nearly\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\noverlapping\n"
    )
    assert texts(parse_srt(text, "x.srt")) == ["early", "overlapping", "later"]


def test_srt_malformed_blocks_are_skipped_with_their_line_and_the_rest_is_kept() -> None:
    text = (
        "1\n00:00:01,000 --> 00:00:02,000\ngood one\n\n"
        "2\n00:01:xx,000 --> 00:01:02,000\nbroken time\n\n"
        "3\n00:00:09,000 --> 00:00:08,000\nends before it starts\n\n"
        "4\n00:00:10,000 --> 00:00:11,000\ngood two\n"
    )
    track = parse_srt(text, "movie.srt")
    assert texts(track) == ["good one", "good two"]
    assert len(track.skipped) == 2
    assert "movie.srt line 6" in track.skipped[0] and "'00:01:xx,000'" in track.skipped[0]
    assert "line 10" in track.skipped[1] and "before it starts" in track.skipped[1]


def test_srt_arrow_in_cue_text_stays_text() -> None:
    text = "1\n00:00:01,000 --> 00:00:02,000\nA --> B means A implies B\n2\n00:00:03,000 --> 00:00:04,000\nok\n"
    track = parse_srt(text, "x.srt")
    assert texts(track) == ["A --> B means A implies B", "ok"] and track.skipped == []


def test_srt_blank_line_inside_a_cue_keeps_its_second_paragraph() -> None:
    text = "1\n00:00:01,000 --> 00:00:02,000\nfirst paragraph\n\nsecond paragraph\n\n2\n00:00:03,000 --> 00:00:04,000\nnext\n"
    track = parse_srt(text, "x.srt")
    assert texts(track) == ["first paragraph\nsecond paragraph", "next"]
    assert track.skipped == []


def test_special_tokens_survive_and_subtitle_markup_is_stripped_in_srt() -> None:
    text = (
        '1\n00:00:01,000 --> 00:00:02,000\n{\\an8}<i>Hello</i> <b>there</b> <font color="#ff0000">red</font>\n'
        f"{SPECIAL}\n"
        "{not an override} <vision> <bos> <b-roll>\n"
    )
    (cue,) = parse_srt(text, "x.srt").cues
    assert cue.text == f"Hello there red\n{SPECIAL}\n{{not an override}} <vision> <bos> <b-roll>"


def test_text_that_is_not_subtitles_is_an_error_and_empty_text_is_no_cues() -> None:
    with pytest.raises(ItemError, match="no 'start --> end' timing line"):
        parse_srt("Dear diary,\n\ntoday I renamed a letter to .srt\n", "letter.srt")
    with pytest.raises(ItemError, match="no usable subtitle cue"):
        parse_srt("1\n00:00:aa,000 --> 00:00:02,000\nx\n", "bad.srt")
    assert parse_srt("\ufeff\r\n\r\n", "empty.srt").cues == []


# ---------------------------------------------------------------------------
# WebVTT


def test_vtt_without_hours_with_notes_styles_ids_and_cue_settings() -> None:
    text = (
        "WEBVTT - a title\nKind: captions\n\n"
        "NOTE this is a comment\n00:00:00.000 --> 00:00:09.000 is not a cue\n\n"
        "STYLE\n::cue { color: yellow }\n\n"
        "REGION\nid:fred width:40%\n\n"
        "intro\n00:01.000 --> 00:02.500 align:start position:10%\n<v Roger Bingham>We are in New York City\n\n"
        "01:00:00.000 --> 01:00:01.000\n<c.yellow.bg_blue>Yellow</c> <lang en>words</lang> <00:00:01.500>timed\n\n"
        "00:03,000 --> 00:04,000\n&lt;|im_end|&gt; AT&T &amp; co &copy\n"
    )
    track = parse_vtt(text, "talk.vtt")
    assert texts(track) == ["We are in New York City", "<|im_end|> AT&T & co &copy", "Yellow words timed"]
    assert times(track) == [(1.0, 2.5), (3.0, 4.0), (3600.0, 3601.0)]
    assert track.skipped == []


def test_vtt_special_tokens_survive() -> None:
    (cue,) = parse_vtt(f"WEBVTT\n\n00:00.000 --> 00:01.000\n<i>{SPECIAL}</i>\n", "x.vtt").cues
    assert cue.text == SPECIAL


# ---------------------------------------------------------------------------
# Files next to a video


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text("1\n00:00:00,000 --> 00:00:01,000\nx\n")


def test_sidecar_lookup_order(tmp_path: Path) -> None:
    video = tmp_path / "movie.mp4"
    touch(tmp_path, "movie.srt", "movie.vtt", "movie.en.vtt", "movie.en.srt", "movie.fr.srt", "movie.de.vtt")
    touch(tmp_path, "movie.en.forced.srt", "movie.part2.srt", "movie2.srt", "other.srt")
    order = []
    while (found := sidecar_subtitles(video)) is not None:
        order.append(found.name)
        found.unlink()
    assert order == ["movie.srt", "movie.vtt", "movie.en.srt", "movie.en.vtt", "movie.de.vtt", "movie.fr.srt",
                     "movie.en.forced.srt"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.part2.srt", "movie2.srt", "other.srt"]
    touch(tmp_path, "movie.EN.SRT")
    assert sidecar_subtitles(video, folder_names=["movie.EN.SRT", "movie.srt"]) == tmp_path / "movie.EN.SRT"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("\ufeff1\n00:00:00,000 --> 00:00:01,000\ncafé ✓\n".encode(), "café ✓"),
        ("1\n00:00:00,000 --> 00:00:01,000\ncafé ✓\n".encode("utf-16"), "café ✓"),
        ("1\n00:00:00,000 --> 00:00:01,000\ncafé – naïve\n".encode("cp1252"), "café – naïve"),
    ],
    ids=["utf-8-bom", "utf-16-bom", "cp1252"],
)
def test_sidecar_encodings(tmp_path: Path, data: bytes, expected: str) -> None:
    (tmp_path / "clip.srt").write_bytes(data)
    track = read_subtitles(tmp_path / "clip.mp4")
    assert track is not None and texts(track) == [expected]
    assert track.source == str(tmp_path / "clip.srt")


def test_binary_file_named_srt_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.srt"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ItemError, match="not a subtitle file: it holds binary data") as info:
        read_subtitles(tmp_path / "clip.mp4")
    assert info.value.item == str(path)
    path.write_bytes(b"\x81\x8d\x8f 1\n00:00:00,000 --> 00:00:01,000\n\x90\x9d\n")
    with pytest.raises(ItemError, match="not UTF-8, UTF-16 or cp1252"):
        read_subtitle_file(path)


# ---------------------------------------------------------------------------
# Subtitle streams inside containers

ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, "
    b"SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, "
    b"Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\nStyle: Default,Arial,"
    b"16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n[Events]\nFormat: Layer, Start, End, "
    b"Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


def write_video(
    path: Path, container_format: str, subtitles: list[tuple[float, float, str]] | None, codec: str = ""
) -> Path:
    """A 4 s, 10 fps clip, with a text subtitle stream of (start, end, ASS text) cues when given."""
    import av

    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        stream = None
        if subtitles is not None:
            stream = out.add_stream(codec)
            stream.codec_context.subtitle_header = ASS_HEADER
            stream.time_base = Fraction(1, 1000)
        out.start_encoding()
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        for order, (start, end, text) in enumerate(subtitles or []):
            event = f"{order},0,Default,,0,0,0,,{text}".encode()
            pts = round(start * 1000)
            packet = stream.codec_context.encode_subtitle(
                av.subtitles.subtitle.SubtitleSet.create(event, 0, round((end - start) * 1000), pts)
            )
            packet.stream, packet.time_base = stream, stream.time_base
            packet.pts = packet.dts = pts
            packet.duration = round((end - start) * 1000)
            out.mux(packet)
        out.mux(video.encode(None))
    return path


@pytest.mark.parametrize(
    ("fmt", "codec", "name"), [("matroska", "subrip", "clip.mkv"), ("mp4", "mov_text", "clip.mp4")]
)
def test_embedded_text_subtitles_are_read_back_with_their_times(
    tmp_path: Path, fmt: str, codec: str, name: str
) -> None:
    cues = [
        (2.0, 3.5, "{\\i1}Second{\\i0} cue\\Nwrapped"),
        (0.5, 1.5, f"Hello {SPECIAL}"),
    ]
    video = write_video(tmp_path / name, fmt, sorted(cues), codec)
    track = read_subtitles(video)
    assert track is not None and track.skipped == []
    assert texts(track) == [f"Hello {SPECIAL}", "Second cue\nwrapped"]
    assert times(track) == [(0.5, 1.5), (2.0, 3.5)]
    assert codec in track.source or "srt" in track.source


def test_sidecar_wins_over_embedded_and_a_video_without_any_has_none(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mkv", "matroska", [(0.5, 1.5, "embedded")], "subrip")
    (tmp_path / "clip.srt").write_text("")  # empty: as if absent
    assert texts(read_subtitles(video)) == ["embedded"]
    (tmp_path / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nsidecar\n")
    assert texts(read_subtitles(video)) == ["sidecar"]
    assert read_subtitles(write_video(tmp_path / "plain.mp4", "mp4", None)) is None


def test_a_container_ffmpeg_cannot_open_is_a_video_read_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="FFmpeg cannot read it"):
        read_subtitles(garbage)
    with pytest.raises(VideoReadError, match="file not found"):
        read_subtitles(tmp_path / "missing.mp4")


# ---------------------------------------------------------------------------
# The cues of a moment

CUES = [
    Cue(0.0, 2.0, "before"),
    Cue(2.0, 4.0, "touching the start"),
    Cue(3.5, 5.0, "Hello   there"),
    Cue(5.0, 6.0, "Hello there"),
    Cue(7.0, 7.0, "a point"),
    Cue(6.0, 9.0, "General Kenobi!"),
    Cue(10.0, 11.0, "at the end"),
]


def test_cues_in_takes_overlapping_cues_in_order_and_repeats_once() -> None:
    assert cues_in(CUES, Span(4.0, 10.0), 2000) == "Hello there General Kenobi! a point"
    assert cues_in(CUES, Span(7.5, 10.0), 2000) == "General Kenobi!"
    assert cues_in(CUES, Span(11.0, 20.0), 2000) == ""
    assert cues_in(list(reversed(CUES)), Span(0.0, 3.0), 2000) == "before touching the start"


def test_cues_in_cuts_at_a_word_boundary() -> None:
    span = Span(4.8, 10.0)
    assert cues_in(CUES, span, 19) == "Hello there General"
    assert cues_in(CUES, span, 18) == "Hello there"
    assert cues_in([Cue(0, 1, "Supercalifragilistic")], Span(0, 1), 5) == "Super"


# ---------------------------------------------------------------------------
# On-screen text

BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def frame(
    background: tuple[int, int, int],
    lines: list[tuple[str, int, int, int]],
    fill: tuple[int, int, int] = (255, 255, 255),
    blur: float = 0.0,
) -> np.ndarray:
    """A 640x360 RGB frame with (text, x, y, size) drawn in DejaVu Sans Bold."""
    image = Image.new("RGB", (640, 360), background)
    draw = ImageDraw.Draw(image)
    for text, x, y, size in lines:
        font = ImageFont.truetype(BOLD, size)
        assert x + draw.textlength(text, font=font) < 640, f"{text!r} does not fit the frame"
        draw.text((x, y), text, font=font, fill=fill)
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image)


@pytest.fixture(scope="module")
def reader():
    """One engine for the module, loaded and used with the network cut off: any download attempt fails loudly."""
    from r3tasks.media.ocr import load_screen_text_reader

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setattr("rapidocr.utils.download_file.DownloadFile.run", refuse)
        yield load_screen_text_reader(0.6)


def test_title_on_two_frames_is_read_once(reader) -> None:
    title = [("HARBOR FESTIVAL 2026", 40, 140, 44)]
    frames = np.stack([frame((30, 90, 160), title), frame((150, 60, 40), title)])
    assert reader.read(frames) == ["HARBOR FESTIVAL 2026"]


def test_a_blank_frame_reads_nothing(reader) -> None:
    assert reader.read(np.stack([frame((30, 90, 160), [])] * 2)) == []


def test_lines_come_in_reading_order_and_partial_reads_merge(reader) -> None:
    layout = [("NORTH PIER", 40, 40, 40), ("GATE 7", 40, 260, 36), ("OPEN", 460, 262, 36)]
    first = frame((20, 110, 60), [("HARBOR FESTIVAL", 40, 140, 44), *layout])
    second = frame((20, 110, 60), [("harbor festival 2026!", 40, 140, 44), ("NORTH PIER", 300, 40, 40)])
    assert reader.read(np.stack([first, second])) == ["NORTH PIER", "harbor festival 2026!", "GATE 7", "OPEN"]


def test_a_stricter_threshold_drops_unsure_lines_a_lenient_one_keeps(reader) -> None:
    title = frame((30, 90, 160), [("HARBOR FESTIVAL 2026", 40, 60, 44)])
    # Barely visible and out of focus: found, but read as low-confidence gibberish (about 0.25-0.3).
    smudge = frame((30, 90, 160), [("faint harbor lights", 40, 140, 40)], fill=(60, 110, 170), blur=2.5)
    frames = np.stack([title, smudge])
    lenient = reader.with_min_confidence(0.1).read(frames)
    assert reader.read(frames) == ["HARBOR FESTIVAL 2026"]
    assert lenient[0] == "HARBOR FESTIVAL 2026" and len(lenient) == 2


def test_fingerprint_names_engine_models_and_threshold(reader) -> None:
    assert "rapidocr 3." in reader.fingerprint and "PP-OCRv6_rec_small" in reader.fingerprint
    assert reader.fingerprint != reader.with_min_confidence(0.9).fingerprint


def test_frames_of_the_wrong_shape_are_refused(reader) -> None:
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        reader.read(np.zeros((360, 640, 3), np.uint8))
