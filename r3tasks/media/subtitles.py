"""Subtitles as timed cues: sidecar SubRip (.srt) and WebVTT (.vtt) files, and text subtitle streams in containers.

Subtitle text is data. Strings such as ``<|im_start|>``, ``<start_of_turn>`` or ``[INST]`` come through
unchanged; only the markup of known subtitle tags is removed: ``<i> <b> <u> <font ...> <c.x> <v Name> <lang x>
<ruby> <rt> <span>``, WebVTT timestamp tags (``<00:01.500>``) and ASS override blocks (``{\\an8}``). ``<s>`` is
left alone on purpose: it is also a model token, and strikethrough in subtitles is rare.

Parsing is lenient where real files are sloppy (BOM, CRLF, no trailing blank line, missing cue numbers, ``.`` or
``,`` before milliseconds, hours omitted, no blank line between cues, a blank line inside a cue's text) and loud
where content would be lost: a malformed block is skipped and its reason is kept in `SubtitleTrack.skipped`; a
file that is not subtitles at all (binary, undecodable, no valid cue in non-empty text) raises `ItemError`.
"""

from __future__ import annotations

import codecs
import html
import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from r3tasks.errors import ItemError, VideoReadError
from r3tasks.inputs.containers import ffmpeg_reason
from r3tasks.media.cues import Cue, Span, cut_at_word

__all__ = ["SubtitleTrack", "cues_in", "parse_srt", "parse_vtt", "read_subtitles", "sidecar_subtitles"]

logger = logging.getLogger(__name__)

# A real subtitle file is a few hundred KB; anything far bigger is a mislabelled video or dump.
MAX_SUBTITLE_BYTES = 20 * 1024 * 1024
# A cue whose container gives no end is shown until the next cue, or for this long when it is the last.
DEFAULT_CUE_S = 3.0

# FFmpeg decoders that turn packets into text (ASS events); bitmap ones (dvd_subtitle, hdmv_pgs_subtitle,
# dvb_subtitle, xsub) are not listed and so never chosen.
TEXT_SUBTITLE_CODECS = frozenset(
    {
        "ass", "ssa", "srt", "subrip", "mov_text", "webvtt", "text", "microdvd", "mpl2", "jacosub",
        "pjs", "realtext", "sami", "stl", "subviewer", "subviewer1", "vplayer", "eia_608",
    }
)  # fmt: skip


@dataclass
class SubtitleTrack:
    """Cues sorted by start; `skipped` says, one line each, what could not be used and why."""

    cues: list[Cue]
    skipped: list[str] = field(default_factory=list)
    source: str = ""


# ---------------------------------------------------------------------------
# Markup

_KNOWN_TAG = re.compile(r"</?(?:i|b|u|font|c|v|lang|ruby|rt|span)(?:[.\s][^<>]*)?>", re.IGNORECASE)
_TIMESTAMP_TAG = re.compile(r"<(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}>")
_ASS_OVERRIDE = re.compile(r"\{\\[^{}]*\}")
# Only the entities WebVTT defines, so "AT&T" or "&copy" stay as typed.
_VTT_ENTITY = re.compile(r"&(?:amp|lt|gt|nbsp|lrm|rlm|quot|apos|#\d{1,7}|#[xX][0-9a-fA-F]{1,6});")
_BIDI_MARKS = str.maketrans("", "", "\u200e\u200f")


def _clean(text: str, *, vtt: bool = False) -> str:
    text = _ASS_OVERRIDE.sub("", text)
    text = _TIMESTAMP_TAG.sub("", text)
    text = _KNOWN_TAG.sub("", text)
    if vtt:
        # After the tags are gone, so an escaped "&lt;i&gt;" stays visible text.
        text = _VTT_ENTITY.sub(lambda m: html.unescape(m.group(0)), text).translate(_BIDI_MARKS)
    lines = (line.strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _ass_event_text(event: str) -> str:
    """The Text field of an ASS event as FFmpeg's decoders give it (ReadOrder, Layer, Style, Name, MarginL,
    MarginR, MarginV, Effect, Text), with ASS line breaks made plain."""
    parts = event.split(",", 8)
    text = parts[8] if len(parts) == 9 else event
    return _clean(text.replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " "))


# ---------------------------------------------------------------------------
# SRT / WebVTT text

_TIMING = re.compile(r"^\s*(\S+?)\s*-->\s*(\S+)(?:\s.*)?$")
_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?$")
_CUE_NUMBER = re.compile(r"^\s*\d+\s*$")
_VTT_SKIP_BLOCK = re.compile(r"^(?:NOTE|STYLE|REGION)(?:\s|$)")


def parse_srt(text: str, name: str) -> SubtitleTrack:
    """Cues of a SubRip file's text; `name` (the file) is what errors and skipped reasons cite."""
    return _parse(text, name, vtt=False)


def parse_vtt(text: str, name: str) -> SubtitleTrack:
    """Cues of a WebVTT file's text; NOTE, STYLE and REGION blocks are ignored, cue settings dropped."""
    return _parse(text, name, vtt=True)


def _seconds(stamp: str) -> float | None:
    match = _TIMESTAMP.match(stamp)
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    if int(minutes) > 59 or int(seconds) > 59:
        return None
    # "1,5" is read as a decimal fraction (0.5 s): the writers that drop zeros drop trailing ones.
    frac = int(fraction) / 10 ** len(fraction) if fraction else 0.0
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + frac


def _check_is_text(text: str, name: str) -> None:
    if "\x00" in text:
        raise ItemError(name, "not a subtitle file: it holds binary data (NUL bytes)")
    controls = sum(1 for ch in text[:100_000] if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > max(8, len(text[:100_000]) // 100):
        raise ItemError(name, f"not a subtitle file: it holds binary data ({controls} control characters)")


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Runs of non-blank lines with the 1-based line number of their first line."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            out.append((start, current))
            current = []
    if current:
        out.append((start, current))
    return out


def _parse(text: str, name: str, *, vtt: bool) -> SubtitleTrack:
    _check_is_text(text, name)
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    track = SubtitleTrack(cues=[], source=name)
    if not text.strip():
        return track
    blocks = _blocks(text.split("\n"))
    fmt = "HH:MM:SS.mmm" if vtt else "HH:MM:SS,mmm"
    where = f"subtitle file {name} line"
    if vtt:
        if blocks and blocks[0][1][0].lstrip().startswith("WEBVTT"):
            blocks = blocks[1:]
        else:
            track.skipped.append(f"{where} 1: no WEBVTT header (read as WebVTT anyway)")
    timing_lines = 0
    last_cue: int | None = None  # index in track.cues of a cue ending the previous block
    for first, lines in blocks:
        if vtt and _VTT_SKIP_BLOCK.match(lines[0]):
            last_cue = None
            continue
        timings = [i for i, line in enumerate(lines) if _is_timing(i, line)]
        if not timings:
            if last_cue is not None and not _CUE_NUMBER.match(lines[0]):
                # A blank line inside a cue's text: the paragraph after it belongs to that cue.
                previous = track.cues[last_cue]
                extra = _clean("\n".join(lines), vtt=vtt)
                track.cues[last_cue] = Cue(previous.start_s, previous.end_s, f"{previous.text}\n{extra}".strip())
            else:
                track.skipped.append(f"{where} {first}: block without a 'start --> end' timing line")
            continue
        timing_lines += len(timings)
        if timings[0] > 1:
            stray = " / ".join(line.strip() for line in lines[: timings[0] - 1])
            track.skipped.append(f"{where} {first}: text outside any cue: {stray[:80]!r}")
        last_cue = None
        for k, t in enumerate(timings):
            end_at = timings[k + 1] if k + 1 < len(timings) else len(lines)
            if end_at < len(lines) and end_at - 1 > t and _CUE_NUMBER.match(lines[end_at - 1]):
                end_at -= 1  # no blank line before the next cue: that line is its number
            last_cue = _add_cue(track, lines[t], lines[t + 1 : end_at], f"{where} {first + t}", fmt, vtt)
    if not track.cues and (timing_lines or track.skipped):
        if not timing_lines:
            raise ItemError(name, "not a subtitle file: no 'start --> end' timing line anywhere")
        last_reason = track.skipped[-1] if track.skipped else "every cue is empty"
        raise ItemError(name, f"no usable subtitle cue ({len(track.skipped)} skipped; last: {last_reason})")
    track.cues.sort(key=lambda c: (c.start_s, c.end_s))
    return track


def _is_timing(index: int, line: str) -> bool:
    """Whether a block's line is a timing line: where a timing line belongs (first or after the cue number), or
    elsewhere when it starts with one stamp-like word, so a cue saying "a --> b" keeps that as text."""
    if "-->" not in line:
        return False
    left = line.split("-->", 1)[0].strip()
    return index <= 1 or (bool(left) and " " not in left and any(ch.isdigit() for ch in left))


def _add_cue(track: SubtitleTrack, timing: str, body: list[str], where: str, fmt: str, vtt: bool) -> int | None:
    """Append the cue of one timing line and its text; return its index, or None when it was not kept."""
    match = _TIMING.match(timing)
    if match is None:
        track.skipped.append(f"{where}: timing line {timing.strip()[:60]!r} is not 'start --> end'")
        return None
    start, end = _seconds(match.group(1)), _seconds(match.group(2))
    for stamp, value in ((match.group(1), start), (match.group(2), end)):
        if value is None:
            track.skipped.append(f"{where}: timestamp {stamp[:30]!r} is not {fmt}")
            return None
    assert start is not None and end is not None
    if end < start:
        track.skipped.append(f"{where}: cue ends ({match.group(2)}) before it starts ({match.group(1)})")
        return None
    text = _clean("\n".join(body), vtt=vtt)
    if not text:
        return None  # a cue with nothing to show: nothing is lost by leaving it out
    track.cues.append(Cue(start, end, text))
    return len(track.cues) - 1


# ---------------------------------------------------------------------------
# Files

_SUBTITLE_EXTS = {".srt": 0, ".vtt": 1}
_LANG_TAG = re.compile(r"^[a-z]{2,3}(?:[-_][a-z0-9]{2,8})*(?:\.(?:forced|sdh|cc|hi|default|full))?$", re.IGNORECASE)


def sidecar_subtitles(video: Path, folder_names: Collection[str] | None = None) -> Path | None:
    """The subtitle file next to `video`, or None.

    Candidates are ``NAME.srt``/``NAME.vtt`` and ``NAME.<lang>.srt``/``.vtt`` where ``<lang>`` looks like a
    language tag (``en``, ``eng``, ``pt-BR``, optionally ``.forced``/``.sdh``/``.cc``/``.hi``). Order: the exact
    name first; then English (``en``, ``eng``, ``en-*``); then other languages by tag; forced tracks (which only
    cover foreign-language lines) last; ``.srt`` before ``.vtt`` for the same tag. The stem must match exactly;
    the language tag and the extension may be in any case.

    `folder_names` (the names in the video's folder) saves a directory listing per video when the caller looks
    up many videos of one folder.
    """
    stem = video.stem
    if folder_names is None:
        try:
            folder_names = os.listdir(video.parent)
        except OSError:
            return None
    candidates: list[tuple[tuple[bool, bool, bool, str, int, str], str]] = []
    for name in folder_names:
        if not name.startswith(stem):
            continue
        rest = name[len(stem) :]
        ext = rest[-4:].lower()
        if ext not in _SUBTITLE_EXTS:
            continue
        if len(rest) == 4:
            tag = ""
        elif rest.startswith(".") and _LANG_TAG.match(rest[1:-4]):
            tag = rest[1:-4].lower()
        else:
            continue
        forced = tag.endswith(".forced")
        english = re.split(r"[-_.]", tag)[0] in ("en", "eng")
        candidates.append(((tag != "", forced, not english, tag, _SUBTITLE_EXTS[ext], name), name))
    for _, name in sorted(candidates):
        path = video.parent / name
        if path.is_file():
            return path
    return None


def read_subtitles(video: Path) -> SubtitleTrack | None:
    """Subtitles of `video`: its sidecar file (`sidecar_subtitles`) first, else the first text subtitle stream
    in the container (an English-tagged one if there is one), else None.

    A sidecar is decoded as UTF-8 (a BOM is allowed), as UTF-16 when it starts with a UTF-16 BOM, else as
    cp1252; bytes that are none of these raise `ItemError`. An empty sidecar counts as absent (the container is
    read next). Bitmap subtitle streams (DVD, PGS) are not text and are ignored. A container FFmpeg cannot open
    raises `VideoReadError`.
    """
    sidecar = sidecar_subtitles(video)
    if sidecar is not None:
        track = read_subtitle_file(sidecar)
        if track.cues:
            return track
        logger.warning("subtitle file %s has no cues; looking for subtitles inside %s", sidecar, video.name)
    return _read_embedded(video)


def read_subtitle_file(path: Path) -> SubtitleTrack:
    """Cues of one .srt or .vtt file (decoded as `read_subtitles` says)."""
    try:
        size = path.stat().st_size
        if size > MAX_SUBTITLE_BYTES:
            raise ItemError(str(path), f"not a subtitle file: {size / 2**20:.0f} MB is far larger than subtitles")
        data = path.read_bytes()
    except OSError as exc:
        raise ItemError(str(path), f"cannot read subtitle file ({exc.strerror or exc})") from None
    text = _decode(data, str(path))
    if path.suffix.lower() == ".vtt":
        return parse_vtt(text, str(path))
    return parse_srt(text, str(path))


def _decode(data: bytes, name: str) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ItemError(name, "not a subtitle file: it starts with a UTF-16 mark but is not UTF-16") from None
    if b"\x00" in data:
        raise ItemError(name, "not a subtitle file: it holds binary data (NUL bytes; UTF-16 needs a BOM)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise ItemError(name, "not a subtitle file: the bytes are not UTF-8, UTF-16 or cp1252 text") from None


# ---------------------------------------------------------------------------
# Subtitle streams inside a container


def _read_embedded(video: Path) -> SubtitleTrack | None:
    import av

    try:
        container = av.open(str(video))
    except FileNotFoundError:
        raise VideoReadError(video, "file not found") from None
    except PermissionError:
        raise VideoReadError(video, "permission denied") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure to parse means "unreadable"
        raise VideoReadError(video, f"not a video: FFmpeg cannot read it ({ffmpeg_reason(exc)})") from None
    with container:
        texts = [s for s in container.streams.subtitles if _codec_name(s) in TEXT_SUBTITLE_CODECS]
        if not texts:
            return None
        english = [s for s in texts if (s.language or "").lower() in ("eng", "en")]
        stream = (english or texts)[0]
        source = f"{video}#{stream.index} ({_codec_name(stream)}{', ' + stream.language if stream.language else ''})"
        return _decode_stream(container, stream, source)


def _codec_name(stream: object) -> str:
    try:
        return str(stream.codec_context.name)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a stream FFmpeg has no decoder for has no usable name
        return ""


def _packet_text(payload: bytes, codec: str) -> str:
    """Text of a SubRip, WebVTT or 3GPP timed text packet, read from its bytes.

    FFmpeg's SubRip decoder drops tags it does not know (``<start_of_turn>``, ``<s>``), which would change the
    data; these payloads are plain text (3GPP's after a 16-bit length, style boxes after the text), so they are
    cleaned here with the same known-tag rules as sidecar files.
    """
    if codec == "mov_text":
        size = int.from_bytes(payload[:2], "big")
        raw = payload[2 : 2 + size]
        text = raw.decode("utf-16") if raw.startswith(codecs.BOM_UTF16_BE) else raw.decode("utf-8", "replace")
        return _clean(text)
    return _clean(payload.decode("utf-8", "replace").replace("\r\n", "\n"), vtt=codec == "webvtt")


_RAW_TEXT_CODECS = frozenset({"srt", "subrip", "webvtt", "mov_text"})


def _rect_text(rect: object) -> str:
    kind = getattr(rect, "type", b"")
    if kind == b"ass":
        return _ass_event_text(rect.ass.decode("utf-8", "replace"))  # type: ignore[attr-defined]
    if kind == b"text":
        return _clean(rect.text.decode("utf-8", "replace"))  # type: ignore[attr-defined]
    return ""  # a bitmap: not text


def _decode_stream(container: object, stream: object, source: str) -> SubtitleTrack:
    import av

    track = SubtitleTrack(cues=[], source=source)
    timed: list[tuple[float, float | None, str]] = []
    time_base = stream.time_base  # type: ignore[attr-defined]
    codec = _codec_name(stream)
    try:
        for packet in container.demux(stream):  # type: ignore[attr-defined]
            if packet.size == 0 or packet.pts is None:
                continue
            start = float(packet.pts * time_base)
            end = start + float(packet.duration * time_base) if packet.duration else None
            if codec in _RAW_TEXT_CODECS:
                text = _packet_text(bytes(packet), codec)
            else:
                try:
                    subtitle_set = stream.decode2(packet)  # type: ignore[attr-defined]
                except av.error.FFmpegError as exc:
                    track.skipped.append(f"{source}: cue at {start:.3f} s cannot be decoded ({ffmpeg_reason(exc)})")
                    continue
                if subtitle_set is None:
                    continue
                text = "\n".join(_rect_text(rect) for rect in subtitle_set)
                start += subtitle_set.start_display_time / 1000
                shown_ms = subtitle_set.end_display_time - subtitle_set.start_display_time
                if 0 < shown_ms < 0xFFFFFFFF - subtitle_set.start_display_time:
                    end = start + shown_ms / 1000
            if text.strip():
                timed.append((start, end, text.strip()))
    except (av.error.FFmpegError, OSError) as exc:
        track.skipped.append(f"{source}: stopped reading after {len(timed)} cues ({ffmpeg_reason(exc)})")
    timed.sort(key=lambda t: t[0])
    for i, (start, end, text) in enumerate(timed):
        if end is None:
            later = [s for s, _, _ in timed[i + 1 :] if s > start]
            end = later[0] if later else start + DEFAULT_CUE_S
        track.cues.append(Cue(start, max(start, end), text))
    return track


# ---------------------------------------------------------------------------
# Cues of a moment


def cues_in(cues: Sequence[Cue], span: Span, max_chars: int) -> str:
    """The text of the cues that overlap `span`, in time order, joined by spaces.

    A cue counts when it overlaps the span by any time (a zero-length cue when it lies inside it). A cue with
    the same text as the one before it (rolling captions, repeats across a cut) is kept once. The result is cut
    to at most `max_chars` at a word boundary (mid-word only when one word alone is longer).
    """
    parts: list[str] = []
    for cue in sorted(cues, key=lambda c: (c.start_s, c.end_s)):
        inside = span.start_s <= cue.start_s < span.end_s if cue.end_s == cue.start_s else False
        if not inside and span.overlap_s(Span(cue.start_s, cue.end_s)) <= 0:
            continue
        text = " ".join(cue.text.split())
        if text and (not parts or parts[-1] != text):
            parts.append(text)
    return cut_at_word(" ".join(parts), max_chars)
