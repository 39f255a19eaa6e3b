"""What `benchmarks.serve` and `benchmarks.serve_load` share: caption galleries embedded once with MiniLM,
`r3 serve` in a child process, and plain HTTP clients (stdlib `http.client`, one connection per client).

Galleries: `rows` distinct captions from combinatorial templates, embedded by the `offline` preset's MiniLM
through the library indexing path (`key_items` -> `embed_batch` -> `GalleryStore.upsert`), written into a
data home under ``benchmarks/out/serve/`` that later runs reuse (its ``models`` links to the suite's shared
models folder, so Gemma 3 270M is converted once for every home).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.common import WORK_DIR

SERVE_DIR = WORK_DIR / "serve"
CAPTIONS_VERSION = 1  # bump when the caption templates change: cached galleries are rebuilt

# -- captions and queries ----------------------------------------------------------------------------
SUBJECTS = [
    "A young woman in a red coat",
    "An old man with a cane",
    "A boy in a yellow raincoat",
    "A girl with braids",
    "A chef in a white apron",
    "A cyclist in a blue helmet",
    "A nurse in green scrubs",
    "A tall man in a grey hoodie",
    "A teenager with headphones",
    "A farmer in overalls",
    "A mechanic in greasy gloves",
    "A dancer in a black dress",
    "A police officer",
    "A street musician",
    "A toddler in pyjamas",
    "A woman with a ponytail",
    "A man in a business suit",
    "A hiker with a backpack",
    "A waiter with a bow tie",
    "A painter in a paint-splashed shirt",
    "A fisherman in rubber boots",
    "A student with glasses",
    "A grandmother in a knitted shawl",
    "A delivery driver",
]
ACTIONS = [
    "carries",
    "picks up",
    "puts down",
    "cleans",
    "paints",
    "throws",
    "inspects",
    "pushes",
    "drops",
    "opens",
    "closes",
    "repairs",
    "lifts",
    "wraps",
    "shakes",
    "washes",
    "hides",
    "photographs",
    "points at",
    "holds up",
    "kicks",
    "polishes",
    "drags",
    "unpacks",
    "balances",
    "folds",
    "stacks",
    "hands over",
    "spins",
    "weighs",
]
OBJECTS = [
    "a wooden chair",
    "a red umbrella",
    "a cardboard box",
    "a glass vase",
    "a bicycle wheel",
    "a stack of books",
    "a metal bucket",
    "a guitar case",
    "a loaf of bread",
    "a potted plant",
    "a laptop",
    "a football",
    "a ladder",
    "a suitcase",
    "a kite",
    "a fishing net",
    "a birthday cake",
    "a traffic cone",
    "a toolbox",
    "a teapot",
]
PLACES = [
    "in a small kitchen",
    "on a sandy beach",
    "in a crowded train station",
    "on a snowy mountain path",
    "in an empty parking lot",
    "in a busy market",
    "on a rooftop terrace",
    "in a dim garage",
    "in a school classroom",
    "beside a river",
    "in a hospital corridor",
    "on a city bridge",
    "in a forest clearing",
    "in a hotel lobby",
    "on a farm field",
    "in a living room",
]
TIMES = [
    "at dawn",
    "at noon",
    "in the late afternoon",
    "at dusk",
    "at night",
    "in heavy rain",
    "in thick fog",
    "under a clear blue sky",
    "during a snowfall",
    "on a windy day",
    "under street lights",
    "in bright sunshine",
]
_RADIX = [len(SUBJECTS), len(ACTIONS), len(OBJECTS), len(PLACES), len(TIMES)]  # 2,764,800 combinations
_SPACE = 1
for _n in _RADIX:
    _SPACE *= _n
_STRIDE = 1_000_003  # prime, coprime with the space: i -> i * stride mod space is a bijection


def _digits(n: int, radix: list[int]) -> list[int]:
    out = []
    for base in radix:
        out.append(n % base)
        n //= base
    return out


def caption(i: int) -> str:
    """Caption of gallery item `i`: distinct for every i below 2.7M, neighbours differing in every slot."""
    s, a, o, p, t = _digits((i * _STRIDE + 17) % _SPACE, _RADIX)
    return f"{SUBJECTS[s]} {ACTIONS[a]} {OBJECTS[o]} {PLACES[p]} {TIMES[t]}."


def item_id(i: int) -> str:
    return f"cap-{i:06d}"


def text_query(n: int) -> str:
    """A search phrased unlike the captions (no article, no time), distinct for n below 230k."""
    s, a, o, p = _digits((n * 7919 + 101) % (_SPACE // len(TIMES)), _RADIX[:4])
    who = SUBJECTS[s].split(" ", 1)[1]
    return f"{who} who {ACTIONS[a]} {OBJECTS[o]} {PLACES[p]}"


def edit_text(n: int) -> str:
    """A short edit instruction, distinct for n below 3,840."""
    t, o, p = _digits(
        (n * 127 + 5) % (len(TIMES) * len(OBJECTS) * len(PLACES)), [len(TIMES), len(OBJECTS), len(PLACES)]
    )
    return f"make it {TIMES[t]} with {OBJECTS[o]}, {PLACES[p]}"


# -- galleries --------------------------------------------------------------------------------------
def new_home(folder: Path) -> Path:
    """A data home folder whose `models` is the suite's shared models folder (Gemma converted once)."""
    folder.mkdir(parents=True, exist_ok=True)
    models = WORK_DIR / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = folder / "models"
    if not link.exists():
        link.symlink_to(models, target_is_directory=True)
    return folder


def offline_settings(home: Path, gallery: str = "default") -> Any:
    from r3tasks.settings.tree import load_settings

    return load_settings(preset="offline", home=home, gallery={"name": gallery})


def index_captions(home: Path, items: list[tuple[str, str]], chunk: int = 20_000) -> int:
    """Embed (id, caption) items with the offline MiniLM and upsert them into the home's `default` gallery
    through the library indexing path; returns the committed table version."""
    from r3tasks.gallery.indexing import batches, embed_batch, key_items
    from r3tasks.gallery.views import open_store
    from r3tasks.inputs.sources import GalleryItem
    from r3tasks.models.registry import shared_embedder

    settings = offline_settings(home)
    embedder = shared_embedder(settings)
    store = open_store(settings)
    keying = key_items([GalleryItem(id=i, text=t) for i, t in items], settings)
    if keying.failed:
        raise RuntimeError(f"{len(keying.failed)} items could not be keyed: {keying.failed[0]}")
    pending: list = []
    version = store.version() if store.exists() else 0
    for batch in batches(keying.keyed, 1024):
        embedded = embed_batch(batch, embedder, settings)
        if embedded.failed:
            raise RuntimeError(f"{len(embedded.failed)} items failed to embed: {embedded.failed[0]}")
        pending.extend(embedded.rows)
        if len(pending) >= chunk:
            version = store.upsert(pending)
            pending = []
    if pending:
        version = store.upsert(pending)
    return version


def ensure_gallery(rows: int, log: Callable[[str], None] = print) -> tuple[Path, float | None]:
    """The data home holding a `rows`-caption gallery, built now if no matching one is cached; returns the
    home and the build seconds (None when reused)."""
    from r3tasks.gallery.views import open_store
    from r3tasks.models.registry import shared_embedder

    home = new_home(SERVE_DIR / f"gallery-{rows}")
    settings = offline_settings(home)
    expected = {"rows": rows, "embedder": shared_embedder(settings).fingerprint, "captions": CAPTIONS_VERSION}
    marker = home / "serve-gallery.json"
    store = open_store(settings)
    if marker.is_file() and json.loads(marker.read_text()) == expected and store.exists() and store.count() == rows:
        return home, None
    log(f"  building the {rows:,}-caption gallery in {home} (MiniLM, once)")
    marker.unlink(missing_ok=True)
    shutil.rmtree(home / "lancedb", ignore_errors=True)
    started = time.perf_counter()
    # On a worker thread, as the indexing flow embeds: on this busy 2-core box torch's two OpenMP threads
    # called from the main thread were measured many times slower (see benchmarks/torch_threads.py).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(index_captions, home, [(item_id(i), caption(i)) for i in range(rows)]).result()
    built = time.perf_counter() - started
    count = open_store(settings).count()
    if count != rows:
        raise RuntimeError(f"built gallery has {count} rows, expected {rows}")
    marker.write_text(json.dumps(expected))
    log(f"  built in {built:.0f} s")
    return home, built


# -- the service in a child process ------------------------------------------------------------------
def r3_command() -> list[str]:
    script = Path(sys.executable).parent / "r3"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `r3` children: none of the user's R3_* settings, a Prefect home of the benchmark's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_") and not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(SERVE_DIR / "prefect-home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra or {})
    return env


class Service:
    """`r3 serve --preset offline --port 0 --json` as a child process (its own pid: RSS, SIGKILL)."""

    def __init__(
        self, home: Path, log_path: Path, settings_env: dict[str, str] | None = None, gallery: str = "default"
    ):
        self.home, self.log_path = home, log_path
        args = ["serve", "--preset", "offline", "--home", str(home), "--gallery", gallery, "--port", "0", "--json"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        started = time.perf_counter()
        # stdout to a file, not a pipe: uvicorn's access log would fill a pipe nobody reads and block the service.
        self.proc = subprocess.Popen(
            [*r3_command(), *args], stdout=self._log, stderr=subprocess.STDOUT, env=child_env(settings_env)
        )
        self.url = self._wait_ready(timeout=600)
        self.start_s = time.perf_counter() - started
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", int(parts.port or 80)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"url"' in line:
                    return json.loads(line)["url"]
            if self.proc.poll() is not None:
                raise RuntimeError(f"r3 serve exited {self.proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"r3 serve not ready in {timeout:.0f} s: {self.tail()}")

    def tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def rss_bytes(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (graceful), SIGKILL after `timeout`; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def rss_sampler(service: Service, every_s: float = 0.1) -> Iterator[list[tuple[float, int]]]:
    """(monotonic seconds, RSS bytes) of the service, sampled on a thread while the block runs."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            rss = service.rss_bytes()
            if rss is not None:
                samples.append((time.monotonic(), rss))
            stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


# -- HTTP ---------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int | None  # None: no answer (connection refused, reset, timed out)
    body: bytes
    sent_at: float  # monotonic
    seconds: float
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP connection, as one client holds (reopened after an error or a closed connection)."""

    def __init__(self, host: str, port: int, timeout: float = 900) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Any = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> Reply:
        headers = {"Content-Type": "application/json", **(headers or {})}
        sent_at = time.monotonic()
        started = time.perf_counter()
        conn = self._connection()
        try:
            try:
                conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (413) and closed before taking the whole body: read its answer
            response = conn.getresponse()
            data = response.read()
            seconds = time.perf_counter() - started
            reply = Reply(response.status, data, sent_at, seconds, headers=dict(response.getheaders()))
            if response.will_close:
                self.close()
            return reply
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return Reply(None, b"", sent_at, time.perf_counter() - started, f"{type(error).__name__}: {error}")

    def query(self, payload: dict) -> Reply:
        return self.request("POST", "/v1/query", json.dumps(payload).encode())


def run_clients(
    host: str,
    port: int,
    bodies: list[tuple[str, str, Any, dict]],
    clients: int,
    on_reply: Callable[[int, Reply], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[Reply | None], float]:
    """Send `bodies` ((method, path, body, options) each) from `clients` threads, each with its own connection,
    taking the next body as soon as its last is answered; replies in body order and the wall seconds."""
    replies: list[Reply | None] = [None] * len(bodies)
    lock = threading.Lock()
    next_index = [0]

    def worker() -> None:
        client = Client(host, port)
        try:
            while stop is None or not stop.is_set():
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(bodies):
                    return
                method, path, body, options = bodies[index]
                if options.get("fresh"):
                    client.close()
                reply = client.request(method, path, body, options.get("headers"), options.get("chunked", False))
                replies[index] = reply
                if on_reply is not None:
                    on_reply(index, reply)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies, time.perf_counter() - started


def post(payload: dict) -> tuple[str, str, bytes, dict]:
    return ("POST", "/v1/query", json.dumps(payload).encode(), {})


def ranking(result: dict) -> list[tuple]:
    return [(x["id"], x["score"], x["embedding_score"], x["reranker_score"]) for x in result["ranked"]]
