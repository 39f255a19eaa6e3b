"""Child process of the memory benchmark: index one gallery, report peak RSS and threads as JSON.

Run by `benchmarks.memory` as ``python -m benchmarks.memory_child ...``. The peak is the
process's VmHWM (peak RSS of this process image), read at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

_INDEX_KEYS = ("batch_size", "max_batches_in_flight", "commit_seconds", "commit_max_rows")


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _status() -> tuple[int, int]:
    """(VmRSS bytes, threads) of this process."""
    fields = _proc_status()
    return fields["VmRSS"], fields["Threads"]


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                number = int(value.split()[0])
                out[key] = number * 1024 if key != "Threads" else number
    return out


class Sampler(threading.Thread):
    def __init__(self, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop_event = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, threads = _status()
            self.samples.append((time.perf_counter() - self._start, rss, threads))
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--mode", choices=["flow", "plain"], required=True)
    parser.add_argument("--embedder", required=True)
    parser.add_argument(
        "--index-json",
        type=_json_object,
        default={},
        help="overrides of the `index` settings section, as a JSON object",
    )
    parser.add_argument(
        "--models-json",
        type=_json_object,
        default={},
        help="overrides of the `models` section besides the embedder, as a JSON object",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from benchmarks.fakes import register
    from benchmarks.indexing_common import (
        index_plain,
        index_with_flow,
        preload,
        settings_for,
    )

    register()
    overrides = {"models": {**args.models_json, "embedder": args.embedder}, "index": dict(args.index_json)}
    home = Path(args.home)
    preload(home, overrides)
    settings = settings_for(home, overrides)
    # What was in force, defaults included, so the report says what each run measured.
    effective = {
        "index": {k: getattr(settings.index, k) for k in _INDEX_KEYS},
        "embed_batch_size": settings.models.embed_batch_size,
    }
    # Everything indexing imports lazily is imported before the baseline, so "added" is data, not code.
    import av  # noqa: F401
    import decord  # noqa: F401
    import lancedb  # noqa: F401
    import pyarrow  # noqa: F401

    import flows.index_flow  # noqa: F401

    baseline_rss, _ = _status()
    baseline_peak = _proc_status()["VmHWM"]
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    if args.mode == "flow":
        summary = index_with_flow(Path(args.source), home, overrides)
        written = summary["added"] + summary["updated"]
        failed = len(summary["failed"])
    else:
        summary = index_plain(Path(args.source), home, overrides)
        written, failed = summary["written"], summary["failed"]
    wall = time.perf_counter() - start
    sampler.stop()
    # VmHWM is this process image's own high-water mark; ru_maxrss also carries the parent's RSS at
    # fork time across exec (Linux keeps the larger), so a big parent would mask the child's figure.
    peak = _proc_status()["VmHWM"]
    rusage_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.out).write_text(
        json.dumps(
            {
                "mode": args.mode,
                "embedder": args.embedder,
                "overrides": overrides,
                "settings": effective,
                "written": written,
                "failed": failed,
                "wall_s": wall,
                "baseline_rss": baseline_rss,
                "baseline_peak": baseline_peak,
                "peak_rss": peak,
                "rusage_maxrss": rusage_peak,
                "max_threads": max((s[2] for s in sampler.samples), default=0),
                "samples": sampler.samples[:: max(1, len(sampler.samples) // 400)],
            }
        )
    )


if __name__ == "__main__":
    main()
