"""Child process of the media indexing benchmark: one video, the stages asked for, timed and with peak RSS.

Run by `benchmarks.media_index` as ``python -m benchmarks.media_index_child ...``; writes JSON to --out.
Before each stage the process's peak RSS (VmHWM) is reset through ``/proc/self/clear_refs`` ("5"), so the
VmHWM read after the stage is that stage's own peak (models loaded, earlier stages' garbage freed or not).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """RSS every `every_s`, tagged with the stage running."""

    def __init__(self, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.stage = "start"
        self.samples: list[tuple[float, int, str]] = []
        self._stop_event = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((round(time.perf_counter() - self._start, 2), _status()["VmRSS"], self.stage))
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class TimedReader:
    """The OCR reader, with the seconds spent inside `read` (the model) counted apart from decoding."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.seconds = 0.0
        self.frames = 0

    def read(self, frames: Any) -> list[str]:
        start = time.perf_counter()
        try:
            return self.reader.read(frames)
        finally:
            self.seconds += time.perf_counter() - start
            self.frames += len(frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--stages", required=True, help="comma-separated: keying,shots,ocr,asr,embedding")
    parser.add_argument("--media-json", default="{}", help="overrides of the `media` settings section")
    parser.add_argument("--extra-json", default="{}", help="benchmark-only knobs (shots_max_side, frame_skip)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stages = args.stages.split(",")
    media_overrides = json.loads(args.media_json)
    extra = json.loads(args.extra_json)
    logging.basicConfig(level=logging.WARNING)

    import r3tasks.media.speech  # noqa: F401  (r3tasks.media.moments first: speech imports it)
    from r3tasks.gallery.indexing import embed_batch, key_items
    from r3tasks.inputs.sources import GalleryItem, KeyedItem
    from r3tasks.media.moments import SpeechTrack, VideoMoments, find_spans, read_screen_text
    from r3tasks.media.speech import read_speech
    from r3tasks.models.registry import shared_embedder, shared_screen_text_reader, shared_speech_recognizer
    from r3tasks.settings.tree import load_settings

    media = {"subtitles": False, **media_overrides}
    settings = load_settings("offline", home=Path(args.home), media=media)
    item = GalleryItem(id="long-video", path=Path(args.video))

    sampler = Sampler()
    sampler.start()
    loads: dict[str, dict[str, float]] = {}

    def load(name: str, fn: Any) -> Any:
        sampler.stage = f"load {name}"
        start = time.perf_counter()
        value = fn()
        loads[name] = {"wall_s": time.perf_counter() - start, "rss_after": _status()["VmRSS"]}
        return value

    need = set(stages)
    # Everything a stage imports lazily is imported (and each model loaded, once) before any stage is timed.
    import av  # noqa: F401
    import cv2  # noqa: F401
    import decord  # noqa: F401
    import scenedetect  # noqa: F401

    embedder = load("MiniLM embedder", lambda: shared_embedder(settings)) if "embedding" in need else None
    if "ocr_detect_max_side" in extra:
        from r3tasks.media.ocr import load_screen_text_reader

        def ocr_reader() -> Any:
            return load_screen_text_reader(
                settings.media.ocr_min_confidence, detect_max_side=int(extra["ocr_detect_max_side"])
            )
    else:

        def ocr_reader() -> Any:
            return shared_screen_text_reader(settings)

    reader = load("RapidOCR", ocr_reader) if need & {"ocr", "overlap_threads", "overlap_process"} else None
    recognizer = (
        load("pocketsphinx", lambda: _warm_recognizer(shared_speech_recognizer(settings)))
        if need & {"asr", "overlap_threads"}
        else None
    )
    if embedder is not None:
        load("MiniLM first call", lambda: embedder.embed_documents(_warm_inputs(), settings.query.document_instruction))

    measured: dict[str, dict[str, Any]] = {}
    peak_reset = True

    def stage(name: str, fn: Any) -> Any:
        nonlocal peak_reset
        gc.collect()
        peak_reset = _reset_peak() and peak_reset
        before = _status()["VmRSS"]
        sampler.stage = name
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        sampler.stage = "between"
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        measured[name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "rss_before": before,
            "rss_after": _status()["VmRSS"],
            "peak_rss": _status()["VmHWM"],
            "load_average_after": os.getloadavg()[0],
        }
        return value

    duration = None
    spans = None
    if "keying" in need:
        keying = stage("keying", lambda: key_items([item], settings))
        keyed = keying.keyed[0]
    else:
        keyed = KeyedItem(item=item, content_key="benchmark", file_key="benchmark")
    if need & {"shots", "ocr", "embedding", "decode", "decode_one_reader", "overlap_threads", "overlap_process"}:
        # OCR and embedding need the moments: found untimed when shots are not measured here.
        if "shots" in need:
            spans = stage("shots", lambda: _find_spans(item, settings.media, extra, find_spans))
        else:
            spans = _find_spans(item, settings.media, {}, find_spans)
        duration = spans.duration_s
    screen: tuple[str | None, ...] = ()
    if "ocr" in need:
        timed = TimedReader(reader)
        screen = tuple(stage("ocr", lambda: read_screen_text(item, spans, settings.media, timed)))
        measured["ocr_model"] = {"wall_s": timed.seconds}
        measured["ocr_decode"] = {"wall_s": measured["ocr"]["wall_s"] - timed.seconds}
        measured["ocr"]["frames"] = timed.frames
    if "decode" in need:
        measured_frames = stage("decode", lambda: _decode_library(item.path, spans.spans, settings.media.ocr_frames))
        measured["decode"]["frames"] = measured_frames
    if "decode_one_reader" in need:
        measured_frames = stage(
            "decode_one_reader", lambda: _decode_one_reader(item.path, spans.spans, settings.media.ocr_frames)
        )
        measured["decode_one_reader"]["frames"] = measured_frames
    if "overlap_threads" in need:
        # As the flow's thread task runner runs them: speech and screen text at once, in two threads.
        threads_out = stage(
            "overlap_threads",
            lambda: _in_threads(
                {
                    "asr": lambda: read_speech(item, settings, recognizer),
                    "ocr": lambda: read_screen_text(item, spans, settings.media, reader),
                }
            ),
        )
        measured["overlap_threads"]["each_wall_s"] = threads_out
    if "overlap_process" in need:
        # The same with speech recognition in a process of its own (spawned: it loads its recogniser itself).
        process_out = stage(
            "overlap_process",
            lambda: _asr_in_process(
                args.video, args.home, media, lambda: read_screen_text(item, spans, settings.media, reader)
            ),
        )
        measured["overlap_process"].update(process_out)
    plan_micro = _plan_spans_micro(settings.media, _reset_peak) if "plan_spans" in need else None
    speech = SpeechTrack()
    if "asr" in need:
        speech = stage("asr", lambda: read_speech(item, settings, recognizer))
    rows = None
    if "embedding" in need:
        video = VideoMoments(spans=spans, speech=speech, screen_text=screen)
        embedded = stage("embedding", lambda: embed_batch([keyed], embedder, settings, {item.id: video}))
        if embedded.failed:
            raise RuntimeError(f"embedding failed: {embedded.failed}")
        rows = embedded.rows
    sampler.stop()

    if duration is None:
        from r3tasks.inputs.frames import probe_video

        duration = probe_video(item.path).duration_s
    no_asr = [v["peak_rss"] for k, v in measured.items() if k != "asr" and "peak_rss" in v]
    found = {
        "moments": len(spans.spans) if spans is not None else None,
        # Scenes here are 3-12 s (no merge under segment_min_s, no split over segment_max_s): moment starts
        # after the first are exactly the detected cuts.
        "cuts": [span.start_s for span in spans.spans[1:]] if spans is not None and "shots" in need else None,
        "ocr_frames": measured.get("ocr", {}).get("frames"),
        "moments_with_screen_text": sum(1 for t in screen if t) if screen else None,
        "screen_text_sample": [t for t in screen if t][:5] if screen else [],
        "words_heard": len(speech.cues) if "asr" in need else None,
        "speech_source": speech.source,
        "transcript_sample": " ".join(c.text for c in speech.cues[:40]) if speech.cues else "",
        "rows": len(rows) if rows is not None else None,
        "plan_spans": plan_micro,
        "moments_with_transcript": sum(1 for r in rows if r.transcript) if rows else None,
    }
    Path(args.out).write_text(
        json.dumps(
            {
                "video": args.video,
                "duration_s": duration,
                "stages": measured,
                "loads": loads,
                "peak_rss": max((v["peak_rss"] for v in measured.values() if "peak_rss" in v), default=0),
                "peak_rss_no_asr": max(no_asr, default=0),
                "peak_is_per_stage": peak_reset,
                # After the resets, ru_maxrss is the high-water mark since the last reset (or the process's).
                "ru_maxrss_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "found": found,
                "samples": sampler.samples[:: max(1, len(sampler.samples) // 600)],
            }
        )
    )


def _decode_library(path: Path, spans: Any, per_span: int) -> int:
    """OCR's frame reads alone: `read_frames_per_span` over 16 moments at a time, as `read_screen_text` calls it."""
    from r3tasks.media.clips import read_frames_per_span
    from r3tasks.media.moments import OCR_MAX_SIDE, OCR_SPANS_PER_DECODE

    count = 0
    for start in range(0, len(spans), OCR_SPANS_PER_DECODE):
        for frames in read_frames_per_span(path, spans[start : start + OCR_SPANS_PER_DECODE], per_span, OCR_MAX_SIDE):
            count += len(frames)
    return count


def _decode_one_reader(path: Path, spans: Any, per_span: int) -> int:
    """The same frames, 16 moments at a time, from ONE decord reader opened once for the video (what
    `read_frames_per_span` does, less opening the file again for every 16 moments)."""
    import decord

    from r3tasks.inputs.frames import SamplingPolicy, probe_video, target_size
    from r3tasks.media.clips import span_indices
    from r3tasks.media.moments import OCR_MAX_SIDE, OCR_SPANS_PER_DECODE

    meta = probe_video(path)
    width, height = target_size(meta.width, meta.height, OCR_MAX_SIDE)
    reader = decord.VideoReader(str(path), width=width, height=height, fault_tol=1e-9)
    total, fps = len(reader), float(reader.get_avg_fps())
    policy = SamplingPolicy(fps=None, num_frames=per_span, min_frames=1, frame_factor=1)
    count = 0
    for start in range(0, len(spans), OCR_SPANS_PER_DECODE):
        part = spans[start : start + OCR_SPANS_PER_DECODE]
        indices = sorted({i for span in part for i in span_indices(total, fps, policy, span)})
        count += len(reader.get_batch(indices).asnumpy())
    return count


def _in_threads(work: dict[str, Any]) -> dict[str, float]:
    """Run each callable in its own thread, all at once; each one's own wall seconds."""
    walls: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str, fn: Any) -> None:
        start = time.perf_counter()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        walls[name] = time.perf_counter() - start

    threads = [threading.Thread(target=run, args=(name, fn)) for name, fn in work.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return walls


def _asr_in_process(video: str, home: str, media: dict[str, Any], screen: Any) -> dict[str, Any]:
    """`read_speech` in a spawned process (recogniser loaded there) while `screen()` runs here."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.perf_counter()
    process = context.Process(target=_speech_worker, args=(video, home, media, queue))
    process.start()
    ocr_start = time.perf_counter()
    screen()
    ocr_wall = time.perf_counter() - ocr_start
    answer = queue.get(timeout=3600)
    process.join()
    return {
        "each_wall_s": {"ocr": ocr_wall, "asr (process, load included)": time.perf_counter() - start},
        "asr_process": answer,
    }


def _speech_worker(video: str, home: str, media: dict[str, Any], queue: Any) -> None:
    from r3tasks.inputs.sources import GalleryItem
    from r3tasks.media.speech import read_speech
    from r3tasks.models.registry import shared_speech_recognizer
    from r3tasks.settings.tree import load_settings

    start = time.perf_counter()
    settings = load_settings("offline", home=Path(home), media=media)
    recognizer = shared_speech_recognizer(settings)
    loaded = time.perf_counter()
    track = read_speech(GalleryItem(id="long-video", path=Path(video)), settings, recognizer)
    queue.put(
        {
            "load_s": loaded - start,
            "asr_s": time.perf_counter() - loaded,
            "words": len(track.cues),
            "peak_rss": _status()["VmHWM"],
        }
    )


def _plan_spans_micro(media: Any, reset: Any) -> list[dict[str, float]]:
    """`plan_spans` on a cut every 7.5 s at three lengths: seconds and added peak RSS; and the same for the
    `set(range(1, duration_ms))` that `shot_segments` builds to filter the cuts."""
    from r3tasks.media.segments import plan_spans

    out = []
    for duration in (600.0, 3600.0, 10800.0):
        cuts = [7.5 * i for i in range(1, int(duration / 7.5))]
        row: dict[str, float] = {"duration_s": duration}
        for name, fn in [
            ("plan_spans", lambda: plan_spans(duration, cuts, media)),
            ("set_range", lambda: len(set(range(1, round(duration * 1000))))),
        ]:
            gc.collect()
            reset()
            before = _status()["VmRSS"]
            start = time.perf_counter()
            fn()
            row[f"{name}_s"] = time.perf_counter() - start
            row[f"{name}_added_peak"] = _status()["VmHWM"] - before
        out.append(row)
    return out


def _find_spans(item: Any, media: Any, extra: dict[str, Any], default: Any) -> Any:
    """`find_spans`, or with shot detection's frame size / frame skip changed (benchmark knobs, not settings)."""
    if not ({"shots_max_side", "frame_skip"} & set(extra)):
        return default(item, media)
    from r3tasks.inputs.frames import probe_video
    from r3tasks.media.moments import VideoSpans
    from r3tasks.media.segments import plan_spans

    duration = probe_video(item.path).duration_s
    cuts = _detect_cuts(item.path, media.shot_threshold, extra.get("shots_max_side", 256), extra.get("frame_skip", 0))
    spans = [span for span in plan_spans(duration, cuts, media) if span.duration_s > 0]
    return VideoSpans(item.id, duration, tuple(spans), whole=False)


def _detect_cuts(path: Path, threshold: float, max_side: int, frame_skip: int) -> list[float]:
    """`r3tasks.media.shots.detect_cuts`'s detection (same backend, detector and downscale rule) with
    PySceneDetect's `frame_skip`, which the library does not expose."""
    import math

    from scenedetect import ContentDetector, SceneManager

    from r3tasks.media.shots import MIN_SHOT_S, _open

    video = _open(path)
    manager = SceneManager()
    manager.auto_downscale = False
    manager.downscale = max(1, math.ceil(max(video.frame_size) / max_side))
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=MIN_SHOT_S))
    manager.detect_scenes(video, frame_skip=frame_skip)
    return [round(start.seconds, 3) for start, _ in manager.get_scene_list()[1:]]


def _warm_recognizer(recognizer: Any) -> Any:
    import numpy as np

    recognizer.transcribe(np.full(recognizer.sample_rate // 10, 0.01, dtype=np.float32), recognizer.sample_rate)
    return recognizer


def _warm_inputs() -> list[Any]:
    from r3tasks.models.base import EmbedInput

    return [EmbedInput(item_id="warm", text="a warm-up sentence")]


if __name__ == "__main__":
    main()
