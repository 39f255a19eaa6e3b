"""Indexing one long video as moments with the offline preset: seconds of video per wall second, per stage.

Two lengths of the same generated video (10 and 60 minutes), each measured in a fresh child process
(`benchmarks.media_index_child`), stage by stage, the way the indexing flow runs them for one video:

- keying: `key_items` (sha256 of the file's bytes, the content key);
- shots: `find_spans` (probe, PySceneDetect ContentDetector over every frame, `plan_spans`);
- OCR: `read_screen_text` with RapidOCR; its two parts are timed apart inside the same call: *decode* (the
  frames OCR reads: `media.ocr_frames` per moment, 16 moments per `read_frames_per_span` pass, up to 960 px)
  and the OCR model (`ScreenTextReader.read`). MiniLM, the offline embedder, reads text only, so OCR's frames
  are the only frames decoded after shot detection: that is "decode" here;
- ASR: `read_speech` with the pocketsphinx recogniser, subtitles off (30 s chunks over the whole track);
- embedding: `embed_batch` of the item with its moments assembled (MiniLM over transcript + screen text);
- total = keying + shots + OCR + ASR + embedding (decode is inside OCR and not counted twice); "without ASR"
  leaves ASR out. Model loads are timed apart and not in the total (a worker loads them once).

Peak RSS per stage is the process's VmHWM, reset before each stage (``/proc/self/clear_refs``), so each stage's
figure is its own high-water mark with the models loaded; RSS is also sampled every 0.25 s for a timeline.

Extra children (the shortest length unless said): `media.ocr_frames=1`; OCR text detection at 480 px; shot
detection at 128 px and with PySceneDetect's `frame_skip=1`; OCR's frame reads alone, as the library does them and
from one decord reader per video (both lengths); ASR beside OCR in two threads (as the flow's thread runner
submits them) and with ASR in a spawned process; `plan_spans` alone at 10, 60 and 180 minutes.

Run time on the shared 2-core box: about 37 minutes (2,204 s in the stored run; the first run also generates the
videos, about 150 s). The 60-minute ASR stage alone is 14-18 minutes (pocketsphinx at 3.4-4.2x real time), so no
run that recognises an hour of speech fits a 15-minute budget; `--no-alternatives` saves about 8 minutes and
`--minutes 10` gives a 5-minute check.

The video (generated once and cached under ``$TMPDIR/r3-bench-media``, or ``--work``): 640x360 H.264 at 25 fps
(libx264 ultrafast, crf 20, a keyframe every 250 frames), scenes of 3-12 s in strongly different colours with a
small moving square, every third scene with words drawn large; and a mono AAC track of the five LibriVox
recordings in Debian's pocketsphinx-testdata repeated with 0.5-4 s of low noise between them over the whole
length (speech about 70 % of the time, so every 30 s chunk holds speech and ASR decodes the full duration).

    python -m benchmarks.media_index            # writes benchmarks/results/media_index.json and its
                                                # section at the end of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BENCH_DIR, REPO_ROOT, RESULTS_DIR, Result, machine_info, now_iso, write_json, write_wav

NAME = "media_index"
TITLE = "Indexing long videos as moments (offline preset)"
SIZE = (640, 360)
FPS = 25
SCENE_S = (3, 12)  # scene lengths, whole seconds, inclusive
WORDS_EVERY = 3  # every third scene has words on screen
AUDIO_RATE = 16_000
GAP_S = (0.5, 4.0)  # silence (low noise) between recordings
NOISE = 3e-4  # background noise level (about -70 dBFS): digital zeros are not what a real track holds
GENERATOR_VERSION = "1"
CHILD_TIMEOUT_S = 3600
TARGET_NO_ASR = 4.0
TARGET_WITH_ASR = 1.0
TARGET_RSS_RATIO = 1.10  # 60-minute peak within 10 % of the 10-minute one

PHRASES = [
    "HARBOR FESTIVAL 2026",
    "CHAPTER TWO\nTHE LIGHTHOUSE",
    "OPEN DAILY 9 TO 5",
    "BREAKING NEWS",
    "SALE 50% OFF",
    "WELCOME TO THE SHOW",
    "GARDEN TOUR\nNORTH PIER",
    "QUARTERLY RESULTS",
    "MOUNTAIN RAILWAY",
    "THANK YOU FOR WATCHING",
]


def work_dir(given: str | None) -> Path:
    folder = Path(given) if given else Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "r3-bench-media"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Test media


def scenes_for(minutes: float) -> list[Any]:
    """The same scenes for every length (a shorter video is a prefix of a longer one)."""
    from tests.media_factory import _PALETTE, Scene, _content_distance

    total = minutes * 60.0
    rng = np.random.default_rng(20260601)
    scenes, elapsed, colour = [], 0.0, _PALETTE[0]
    while elapsed < total - 1e-9:
        seconds = min(float(rng.integers(SCENE_S[0], SCENE_S[1] + 1)), total - elapsed)
        words = PHRASES[(len(scenes) // WORDS_EVERY) % len(PHRASES)] if len(scenes) % WORDS_EVERY == 1 else None
        scenes.append(Scene(seconds, colour, words))
        elapsed += seconds
        candidates = [c for c in _PALETTE if _content_distance(c, colour) >= 45]
        colour = candidates[int(rng.integers(len(candidates)))]
    return scenes


def speech_track(seconds: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Mono int16 samples at 16 kHz, `seconds` long: the recordings repeated with noisy gaps, and where each is."""
    from tests.media_factory import _read_audio, recorded_speech

    recordings = recorded_speech()
    if not recordings:
        raise SystemExit("no recordings: apt-get install pocketsphinx-testdata")
    clips = [(_read_audio(wav), text) for wav, text in recordings]
    total = int(seconds * AUDIO_RATE)
    rng = np.random.default_rng(7)
    track = (rng.standard_normal(total) * NOISE).astype(np.float32)
    placed, at, turn = [], round(1.0 * AUDIO_RATE), 0
    while True:
        samples, text = clips[turn % len(clips)]
        if at + len(samples) > total:
            break
        track[at : at + len(samples)] += samples
        placed.append({"start_s": at / AUDIO_RATE, "end_s": (at + len(samples)) / AUDIO_RATE, "text": text})
        at += len(samples) + round(rng.uniform(*GAP_S) * AUDIO_RATE)
        turn += 1
    return (np.clip(track, -1, 1) * 32767).astype("<i2"), placed


def make_video(work: Path, minutes: float, say: Any = print) -> tuple[Path, dict[str, Any]]:
    """The video of `minutes` with its audio, generated once and cached in `work` with a JSON description."""
    from tests.media_factory import add_audio, cut_times, write_scenes_video

    stem = f"moments-{minutes:g}m-{SIZE[0]}x{SIZE[1]}-{FPS}fps-v{GENERATOR_VERSION}"
    video, meta_path = work / f"{stem}.mp4", work / f"{stem}.json"
    if video.is_file() and meta_path.is_file():
        return video, json.loads(meta_path.read_text())
    start = time.perf_counter()
    scenes = scenes_for(minutes)
    silent = work / f"{stem}-silent.mp4"
    write_scenes_video(silent, scenes, fps=FPS, size=SIZE)
    video_s = time.perf_counter() - start
    samples, placed = speech_track(minutes * 60.0 - 0.05)  # add_audio wants the speech inside the video
    wav = write_wav(work / f"{stem}.wav", samples.tobytes(), AUDIO_RATE)
    add_audio(silent, wav, 0.0, video)
    silent.unlink()
    wav.unlink()
    speech_s = sum(p["end_s"] - p["start_s"] for p in placed)
    meta = {
        "minutes": minutes,
        "size": list(SIZE),
        "fps": FPS,
        "scenes": len(scenes),
        "scenes_with_words": sum(1 for s in scenes if s.words),
        "cuts": len(cut_times(scenes, FPS)),
        "speech_recordings": len(placed),
        "speech_s": round(speech_s, 1),
        "speech_fraction": round(speech_s / (minutes * 60.0), 3),
        "bytes": video.stat().st_size,
        "generate_s": round(time.perf_counter() - start, 1),
        "generate_video_s": round(video_s, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    say(f"  generated {video.name}: {meta}")
    return video, meta


# ---------------------------------------------------------------------------------------------
# Children


def run_child(
    video: Path, minutes: float, label: str, stages: list[str], media: dict[str, Any], extra: dict[str, Any], work: Path
) -> dict[str, Any]:
    out = work / f"child-{label}-{minutes:g}m.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    command = [
        sys.executable,
        "-m",
        "benchmarks.media_index_child",
        "--video",
        str(video),
        "--home",
        str(work / "home"),
        "--stages",
        ",".join(stages),
        "--media-json",
        json.dumps(media),
        "--extra-json",
        json.dumps(extra),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, timeout=CHILD_TIMEOUT_S, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"child {label} {minutes:g} min failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    measured = json.loads(out.read_text())
    measured.update(label=label, minutes=minutes, media=media, extra=extra, child_wall_s=time.perf_counter() - started)
    return measured


DEFAULT_STAGES = ["keying", "shots", "ocr", "asr", "embedding"]
# Extra children, each measuring only the stages it names (the budget goes to the default run at every length):
# on the shortest length unless `all_lengths`. `media`: settings overrides; `extra`: benchmark knobs for what
# the library does not expose (see benchmarks.media_index_child).
ALTERNATIVES: list[dict[str, Any]] = [
    {"label": "ocr1", "stages": ["ocr"], "media": {"ocr_frames": 1}, "what": "media.ocr_frames=1 (default 2)"},
    {
        "label": "det480",
        "stages": ["ocr"],
        "extra": {"ocr_detect_max_side": 480},
        "what": "OCR text detection at 480 px (library: 960, not a setting)",
    },
    {
        "label": "shots128",
        "stages": ["shots"],
        "extra": {"shots_max_side": 128},
        "what": "shot detection at 128 px (library: 256 px, not a setting)",
    },
    {
        "label": "skip1",
        "stages": ["shots"],
        "extra": {"frame_skip": 1},
        "what": "shot detection with PySceneDetect frame_skip=1 (every 2nd frame)",
    },
    {
        "label": "decode",
        "stages": ["decode", "decode_one_reader"],
        "all_lengths": True,
        "what": "OCR's frame reads alone: as the library does them (a new decord reader per 16 moments), then "
        "from one reader opened once per video",
    },
    {
        "label": "overlap",
        "stages": ["overlap_threads", "overlap_process"],
        "what": "ASR and OCR at once, as the flow submits them: in two threads (Prefect's thread runner), then "
        "ASR in a spawned process of its own",
    },
    {"label": "plan", "stages": ["plan_spans"], "what": "plan_spans alone (synthetic cuts every 7.5 s)"},
]


def run(minutes: list[float], work: Path, alternatives: bool, say: Any = print) -> Result:
    result = Result(NAME, TITLE)
    videos = {}
    for length in sorted(minutes, reverse=True):
        videos[length] = make_video(work, length, say)
    runs = []
    for length in sorted(minutes):
        say(f"  child: default, {length:g} min")
        runs.append(run_child(videos[length][0], length, "default", DEFAULT_STAGES, {}, {}, work))
        say(f"    {_brief(runs[-1])}")
    if alternatives:
        for alt in ALTERNATIVES:
            for length in sorted(minutes) if alt.get("all_lengths") else [min(minutes)]:
                say(f"  child: {alt['label']}, {length:g} min")
                runs.append(
                    run_child(
                        videos[length][0],
                        length,
                        alt["label"],
                        alt["stages"],
                        alt.get("media", {}),
                        alt.get("extra", {}),
                        work,
                    )
                )
                say(f"    {_brief(runs[-1])}")
    for measured in runs:
        _score_cuts(measured)
    result.data = {"videos": {f"{k:g}": v for k, (_, v) in videos.items()}, "runs": runs}
    summarise(result, result.data)
    return result


def _score_cuts(measured: dict[str, Any]) -> None:
    """Detected cuts against the generated ones (within one frame); the list itself is dropped."""
    from tests.media_factory import cut_times

    found = measured["found"].pop("cuts", None)
    if found is None:
        return
    truth = cut_times(scenes_for(measured["minutes"]), FPS)
    tolerance = 1.0 / FPS + 1e-3
    hits = sum(1 for t in truth if any(abs(t - f) <= tolerance for f in found))
    measured["found"]["cuts_true"] = len(truth)
    measured["found"]["cuts_found"] = len(found)
    measured["found"]["cuts_hit"] = hits
    exact = sum(1 for t in truth if any(abs(t - f) <= 1e-3 for f in found))
    note = f"{hits}/{len(truth)} cuts within a frame ({exact} on the exact frame), {len(found) - hits} extra"
    if "shots" in measured["stages"]:
        measured["stages"]["shots"]["note"] = note


def _alternative_rows(r: dict[str, Any], base: dict[str, Any] | None) -> list[list[Any]]:
    """Rows of one alternative child, each beside what the default run measured for the same work."""
    what = next((a["what"] for a in ALTERNATIVES if a["label"] == r["label"]), r["label"])
    video_s, found = r["duration_s"], r["found"]
    stages = r["stages"]
    rows = []
    for stage, s in stages.items():
        if stage in ("ocr_decode", "ocr_model", "plan_spans"):
            continue
        default_s = None
        note = s.get("note", "")
        if base is not None:
            if stage in base["stages"]:
                default_s = base["stages"][stage]["wall_s"]
            elif stage in ("decode", "decode_one_reader"):
                default_s = base["stages"].get("ocr_decode", {}).get("wall_s")
            elif stage.startswith("overlap"):
                default_s = base["stages"]["ocr"]["wall_s"] + base["stages"]["asr"]["wall_s"]
        if stage == "ocr":
            note = (
                f"{found['ocr_frames']} frames, {found['moments_with_screen_text']} moments with screen text "
                f"(default: {base['found']['moments_with_screen_text'] if base else '?'}); model "
                f"{stages['ocr_model']['wall_s']:.1f} s, decode {stages['ocr_decode']['wall_s']:.1f} s"
            )
        elif stage in ("decode", "decode_one_reader"):
            note = f"{s.get('frames')} frames; default column: the decode part of the default run's OCR"
        elif stage.startswith("overlap"):
            each = ", ".join(f"{k} {v:.1f} s" for k, v in s.get("each_wall_s", {}).items())
            extra = s.get("asr_process")
            if extra:
                each += f" (recogniser load {extra['load_s']:.1f} s, {extra['words']} words)"
            note = f"each: {each}; default column: OCR + ASR one after the other"
        rows.append(
            [
                f"{r['minutes']:g} min",
                what,
                stage,
                f"{s['wall_s']:.1f}",
                f"{_speed(video_s, s['wall_s']):.1f}",
                f"{default_s:.1f}" if default_s is not None else "—",
                f"{_speed(video_s, default_s):.1f}" if default_s is not None else "—",
                note,
            ]
        )
    return rows


def _brief(measured: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in measured["stages"].items())


# ---------------------------------------------------------------------------------------------
# Report

MiB = 2**20


def _speed(video_s: float, wall_s: float) -> float:
    return video_s / wall_s if wall_s > 0 else float("inf")


def totals(measured: dict[str, Any]) -> dict[str, float]:
    stages = measured["stages"]
    with_asr = sum(stages[s]["wall_s"] for s in DEFAULT_STAGES if s in stages)
    return {"total": with_asr, "without_asr": with_asr - stages.get("asr", {}).get("wall_s", 0.0)}


def summarise(result: Result, data: dict[str, Any]) -> None:
    runs = [r for r in data["runs"] if r["label"] == "default"]
    by_length = {r["minutes"]: r for r in runs}
    for r in runs:
        video_s, t = r["duration_s"], totals(r)
        for what, key, target in (
            ("total without ASR (keying, shots, OCR, embedding)", "without_asr", TARGET_NO_ASR),
            ("total with ASR (pocketsphinx)", "total", TARGET_WITH_ASR),
        ):
            speed = _speed(video_s, t[key])
            result.row(
                f"{r['minutes']:g} min: {what}",
                speed,
                "x real time",
                target=f"≥ {target:g}x",
                passed=speed >= target,
                note=f"{t[key]:.0f} s for {video_s:.0f} s of video",
            )
    if len(by_length) >= 2:
        short, long = by_length[min(by_length)], by_length[max(by_length)]
        ratio = long["peak_rss"] / short["peak_rss"]
        result.row(
            f"peak RSS {max(by_length):g} min / {min(by_length):g} min",
            100 * ratio,
            "%",
            target=f"≤ {100 * TARGET_RSS_RATIO:.0f} % (flat in length)",
            passed=ratio <= TARGET_RSS_RATIO,
            note=f"{short['peak_rss'] / MiB:.0f} MiB -> {long['peak_rss'] / MiB:.0f} MiB",
        )

    rows = []
    for r in runs:
        video_s = r["duration_s"]
        for stage, label in [
            ("keying", "keying (file sha256)"),
            ("shots", "shots (find_spans)"),
            ("ocr_decode", "decode (OCR frames, inside OCR)"),
            ("ocr_model", "OCR model (inside OCR)"),
            ("ocr", "OCR (read_screen_text)"),
            ("asr", "ASR (read_speech, pocketsphinx)"),
            ("embedding", "embedding (embed_batch, MiniLM)"),
        ]:
            s = r["stages"].get(stage)
            if s is None:
                continue
            peak = f"{s['peak_rss'] / MiB:.0f}" if s.get("peak_rss") else "(in OCR)"
            cpu = f"{s['cpu_s']:.1f}" if "cpu_s" in s else "—"
            cpu_speed = f"{_speed(video_s, s['cpu_s']):.1f}" if "cpu_s" in s else "—"
            load = f"{s['load_average_after']:.1f}" if "load_average_after" in s else "—"
            rows.append(
                [f"{r['minutes']:g} min", label, f"{s['wall_s']:.1f}", f"{_speed(video_s, s['wall_s']):.1f}", peak,
                 cpu, cpu_speed, load]
            )  # fmt: skip
        t = totals(r)
        cpu_no_asr = sum(r["stages"][k].get("cpu_s", 0.0) for k in DEFAULT_STAGES if k in r["stages"] and k != "asr")
        cpu_all = cpu_no_asr + r["stages"].get("asr", {}).get("cpu_s", 0.0)
        rows.append([f"{r['minutes']:g} min", "**total without ASR**", f"{t['without_asr']:.1f}",
                     f"{_speed(video_s, t['without_asr']):.1f}", f"{r['peak_rss_no_asr'] / MiB:.0f}",
                     f"{cpu_no_asr:.1f}", f"{_speed(video_s, cpu_no_asr):.1f}", ""])  # fmt: skip
        rows.append([f"{r['minutes']:g} min", "**total**", f"{t['total']:.1f}", f"{_speed(video_s, t['total']):.1f}",
                     f"{r['peak_rss'] / MiB:.0f}", f"{cpu_all:.1f}", f"{_speed(video_s, cpu_all):.1f}", ""])  # fmt: skip
    result.table(
        "Stages, one video (default offline settings)",
        ["length", "stage", "s", "x real time", "peak RSS MiB", "CPU s", "x real time per CPU s", "load avg after"],
        rows,
    )

    alt = [r for r in data["runs"] if r["label"] != "default"]
    if alt:
        result.table(
            "Alternatives: stages measured with other settings or emulated fixes (one child each)",
            ["length", "what", "stage", "s", "x real time", "default: s", "default: x real time", "what it found"],
            [row for r in alt for row in _alternative_rows(r, by_length.get(r["minutes"]))],
        )
    plan = next((r["found"]["plan_spans"] for r in alt if r["found"].get("plan_spans")), None)
    if plan:
        result.table(
            "plan_spans on a cut every 7.5 s: seconds and added peak RSS, and the set(range(1, duration_ms)) inside",
            ["video length", "plan_spans s", "plan_spans peak +MiB", "set(range(...)) alone s", "its peak +MiB"],
            [
                [
                    f"{p['duration_s'] / 60:g} min",
                    f"{p['plan_spans_s']:.2f}",
                    f"{p['plan_spans_added_peak'] / MiB:.0f}",
                    f"{p['set_range_s']:.2f}",
                    f"{p['set_range_added_peak'] / MiB:.0f}",
                ]
                for p in plan
            ],
        )
    result.table(
        "Model loads (not in the totals)",
        ["length", "model", "s", "RSS after MiB"],
        [
            [f"{r['minutes']:g} min", name, f"{v['wall_s']:.1f}", f"{v['rss_after'] / MiB:.0f}"]
            for r in runs
            for name, v in r["loads"].items()
        ],
    )
    result.table(
        "RSS through each default run (MiB): before and after each stage, its own peak, and how often the RSS "
        "sampler thread (every 0.25 s) got to run",
        ["length", "stage", "RSS before", "RSS after", "peak (VmHWM)", "sampler ran, % of its rate in OCR"],
        [
            [
                f"{r['minutes']:g} min",
                stage,
                f"{s['rss_before'] / MiB:.0f}",
                f"{s['rss_after'] / MiB:.0f}",
                f"{s['peak_rss'] / MiB:.0f}",
                "—" if math.isnan(_sample_rate(r, stage)) else f"{_sample_rate(r, stage):.0f}",
            ]
            for r in runs
            for stage, s in r["stages"].items()
            if "rss_before" in s
        ],
    )
    _findings(result, data, by_length)
    for length, v in data["videos"].items():
        result.note(
            f"{length} min video: {v['size'][0]}x{v['size'][1]} H.264 at {v['fps']} fps, {v['scenes']} scenes "
            f"({v['scenes_with_words']} with words), {v['speech_recordings']} recordings = {v['speech_s']:.0f} s of "
            f"speech ({100 * v['speech_fraction']:.0f} % of the track), {v['bytes'] / MiB:.0f} MiB; generated in "
            f"{v['generate_s']:.0f} s"
        )
    for r in runs:
        found = r.get("found", {})
        if found:
            result.note(
                f"{r['minutes']:g} min: {found.get('moments')} moments, {found.get('ocr_frames')} OCR frames "
                f"({found.get('moments_with_screen_text')} moments with screen text), "
                f"{found.get('words_heard')} words heard ({found.get('moments_with_transcript')} moments with a "
                f"transcript), {found.get('rows')} rows embedded"
            )


def _sample_rate(measured: dict[str, Any], stage: str) -> float:
    """How often the RSS sampler thread ran during `stage`, in % of how often it ran during OCR (where it runs
    on time: ONNX Runtime releases the GIL). A ratio, so the stored samples' thinning cancels out."""
    samples = measured.get("samples") or []

    def per_s(name: str) -> float:
        wall = measured["stages"].get(name, {}).get("wall_s", 0.0)
        return sum(1 for _, _, tag in samples if tag == name) / wall if wall > 0 else 0.0

    ocr = per_s("ocr")
    if ocr <= 0 or measured["stages"][stage]["wall_s"] < 2.0:  # too short to say
        return float("nan")
    return 100 * per_s(stage) / ocr


def _findings(result: Result, data: dict[str, Any], by_length: dict[float, dict[str, Any]]) -> None:
    """Where the time and the memory go, from the figures above (no new measurement)."""
    if not by_length:
        return
    longest = by_length[max(by_length)]
    st = longest["stages"]
    total = totals(longest)
    frames = st["ocr"].get("frames") or 1
    result.note(
        f"Where the time goes ({longest['minutes']:g} min): ASR {100 * st['asr']['wall_s'] / total['total']:.0f} % of "
        f"the total; without ASR, the OCR model {100 * st['ocr_model']['wall_s'] / total['without_asr']:.0f} % "
        f"({st['ocr_model']['wall_s'] / frames:.2f} s per 640x360 frame, {frames} frames), OCR's frame decoding "
        f"{100 * st['ocr_decode']['wall_s'] / total['without_asr']:.0f} %, shot detection "
        f"{100 * st['shots']['wall_s'] / total['without_asr']:.0f} %, MiniLM "
        f"{100 * st['embedding']['wall_s'] / total['without_asr']:.0f} %."
    )
    base = by_length[min(by_length)]
    loads = base["loads"]
    ocr_added = ", ".join(
        f"{(r['stages']['ocr']['peak_rss'] - r['stages']['ocr']['rss_before']) / MiB:.0f} MiB at {m:g} min (keeps "
        f"{(r['stages']['ocr']['rss_after'] - r['stages']['ocr']['rss_before']) / MiB:.0f})"
        for m, r in sorted(by_length.items())
    )
    result.note(
        f"Memory: loading MiniLM (torch) leaves the child at {loads['MiniLM embedder']['rss_after'] / MiB:.0f} MiB, "
        f"RapidOCR adds {(loads['RapidOCR']['rss_after'] - loads['MiniLM embedder']['rss_after']) / MiB:.0f}, "
        f"pocketsphinx {(loads['pocketsphinx']['rss_after'] - loads['RapidOCR']['rss_after']) / MiB:.0f}, "
        f"MiniLM's first call {(loads['MiniLM first call']['rss_after'] - loads['pocketsphinx']['rss_after']) / MiB:.0f}"
        f": {base['stages']['keying']['rss_before'] / MiB:.0f} MiB before any stage. OCR's own peak is "
        f"{ocr_added} above its start (ONNX Runtime's buffers): the child's peak is OCR's at both lengths. The one "
        "stage whose own peak grows with the length is shots: "
        + ", ".join(
            f"{r['stages']['shots']['peak_rss'] / MiB:.0f} MiB at {m:g} min" for m, r in sorted(by_length.items())
        )
        + ", a transient at the end of find_spans (RSS after the stage is back to "
        + ", ".join(f"{r['stages']['shots']['rss_after'] / MiB:.0f}" for _, r in sorted(by_length.items()))
        + " MiB): `shot_segments` in r3tasks/media/segments.py filters the cuts through "
        "`set(range(1, duration_ms))`, one Python int per millisecond of video (see the plan_spans table)."
    )
    result.note(
        "pocketsphinx holds the GIL while it decodes an utterance (up to a 30 s chunk, several seconds): during "
        "ASR the RSS sampler thread ran at "
        + ", ".join(f"{_sample_rate(r, 'asr'):.0f} %" for _, r in sorted(by_length.items()))
        + f" ({', '.join(f'{m:g}' for m in sorted(by_length))} min) of its rate during OCR. So in the flow's "
        "thread runner whatever runs beside ASR (OCR of the same batch, other batches' stages) stalls while a "
        "chunk is decoded: see the overlap rows."
    )
    _levers(result, data, by_length)
    earlier = data.get("earlier_run")
    if earlier:
        result.note(
            "The same default stages, run once before on this box (same videos and stage code; "
            f"{earlier['started']}): "
            + "; ".join(
                f"{m} min: without ASR {v['without_asr_x']:.1f}x, with ASR {v['total_x']:.1f}x (ASR "
                f"{v['asr_s']:.0f} s, {v['asr_x']:.1f}x), peak RSS {v['peak_rss'] / MiB:.0f} MiB"
                for m, v in earlier["lengths"].items()
            )
            + ". The spread between the runs is the shared box (other jobs' load), mostly in ASR."
        )
    result.note(
        "Peak RSS is the child's VmHWM, reset before each stage (/proc/self/clear_refs), so each stage has its own "
        "figure; the child's peak is the largest of them (model loading peaks lower), which is what ru_maxrss "
        "would report without the resets. A fresh child per configuration; the sampled timeline is in the JSON "
        "(`samples`: seconds, RSS bytes, stage)."
    )


def _levers(result: Result, data: dict[str, Any], by_length: dict[float, dict[str, Any]]) -> None:
    """What the alternatives measured, as changes to the default figures."""
    alt = {(r["label"], r["minutes"]): r for r in data["runs"] if r["label"] != "default"}
    short = min(by_length)
    base = by_length[short]
    video_s, t = base["duration_s"], totals(base)
    found: list[str] = []
    ocr1 = alt.get(("ocr1", short))
    if ocr1:
        new_s = t["without_asr"] - base["stages"]["ocr"]["wall_s"] + ocr1["stages"]["ocr"]["wall_s"]
        found.append(
            f"media.ocr_frames=1 halves the OCR model's work: OCR {base['stages']['ocr']['wall_s']:.0f} -> "
            f"{ocr1['stages']['ocr']['wall_s']:.0f} s at {short:g} min, the total without ASR "
            f"{_speed(video_s, t['without_asr']):.1f}x -> {_speed(video_s, new_s):.1f}x, the same "
            f"{ocr1['found']['moments_with_screen_text']} moments with screen text (here words stay for a whole scene)"
        )
    decode = {m: r for (label, m), r in alt.items() if label == "decode"}
    if decode:
        found.append(
            "OCR's frame reads from one decord reader per video instead of a new one per 16 moments: "
            + ", ".join(
                f"{r['stages']['decode']['wall_s']:.1f} -> {r['stages']['decode_one_reader']['wall_s']:.1f} s at {m:g} "
                "min"
                for m, r in sorted(decode.items())
            )
            + " (each open indexes the whole file and a longer video has more groups of 16, so the difference grows "
            "faster than the length)"
        )
    overlap = alt.get(("overlap", short))
    if overlap:
        seq = base["stages"]["ocr"]["wall_s"] + base["stages"]["asr"]["wall_s"]
        threads, process = overlap["stages"]["overlap_threads"], overlap["stages"]["overlap_process"]
        found.append(
            f"ASR beside OCR at {short:g} min: {seq:.0f} s one after the other (default run), "
            f"{threads['wall_s']:.0f} s in two threads (OCR alone {base['stages']['ocr']['wall_s']:.0f} s took "
            f"{threads['each_wall_s']['ocr']:.0f} s beside pocketsphinx), {process['wall_s']:.0f} s with ASR in a "
            "process of its own; on 2 cores shared with other jobs the overlap buys little either way"
        )
    plan = next((r["found"]["plan_spans"] for r in alt.values() if r["found"].get("plan_spans")), None)
    if plan:
        found.append(
            "plan_spans' transient: "
            + ", ".join(f"+{p['plan_spans_added_peak'] / MiB:.0f} MiB at {p['duration_s'] / 60:g} min" for p in plan)
            + ", nearly all of it the set(range(1, duration_ms)); filtering the cuts with 0 < ms < duration_ms instead "
            "makes it flat"
        )
    shots = [alt.get((label, short)) for label in ("shots128", "skip1")]
    if all(shots):
        found.append(
            f"shot detection is already {_speed(video_s, base['stages']['shots']['wall_s']):.0f}x: at 128 px "
            f"{_speed(video_s, shots[0]['stages']['shots']['wall_s']):.0f}x ({shots[0]['stages']['shots']['note']}), "
            f"frame_skip=1 {_speed(video_s, shots[1]['stages']['shots']['wall_s']):.0f}x "
            f"({shots[1]['stages']['shots']['note']})"
        )
    if found:
        result.note("Measured levers: " + "; ".join(found) + ".")


# ---------------------------------------------------------------------------------------------
# RESULTS.md: this benchmark's section only, at the end of the file


def section(payload: dict[str, Any]) -> str:
    from benchmarks.report import render

    text = render([payload])
    return text[text.index(f"## {payload['title']}") :].rstrip() + "\n"


def append_section(path: Path, payload: dict[str, Any]) -> None:
    """Replace this benchmark's section (always the file's last) or append it; nothing else is touched."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    head = f"\n## {payload['title']}\n"
    at = text.find(head)
    body = text[:at] if at >= 0 else text
    path.write_text(body.rstrip("\n") + "\n\n" + section(payload), encoding="utf-8")


def render_only() -> int:
    path = RESULTS_DIR / f"{NAME}.json"
    payload = json.loads(path.read_text(encoding="utf-8"))
    result = Result(NAME, TITLE)
    result.data = payload["data"]
    summarise(result, result.data)
    payload.update(result.to_dict())
    write_json(path, payload)
    append_section(BENCH_DIR / "RESULTS.md", payload)
    print(section(payload))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.media_index", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--work", help="where the generated videos are cached (default $TMPDIR/r3-bench-media)")
    parser.add_argument("--no-alternatives", action="store_true", help="the default settings only")
    parser.add_argument("--no-write", action="store_true", help="print only: leave the result file and RESULTS.md")
    parser.add_argument(
        "--render-only", action="store_true", help="measure nothing: rebuild rows and notes from the stored result"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        return render_only()
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    machine, started, start = machine_info(), now_iso(), time.perf_counter()
    payload = run(args.minutes, work_dir(args.work), not args.no_alternatives, say).to_dict()
    payload.update(
        command=" ".join(["python -m benchmarks.media_index", *argv]),
        mode="full",
        started=started,
        duration_s=time.perf_counter() - start,
        machine=machine,
    )
    print(section(payload))
    if not args.no_write:
        write_json(RESULTS_DIR / f"{NAME}.json", payload)
        append_section(BENCH_DIR / "RESULTS.md", payload)
    return 0  # a missed target is a finding of the run, not a failure of the benchmark


if __name__ == "__main__":
    raise SystemExit(main())
