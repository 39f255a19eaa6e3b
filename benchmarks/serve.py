"""Warm query service (`r3 serve`) over HTTP: p50 / p95 latency and queries/s against the floor, and the CLI.

`r3 serve --preset offline` runs in a child process on 127.0.0.1 (uvicorn, real sockets); each concurrent client
is a thread with its own keep-alive `http.client` connection, sending one query per request (top_k 10) as soon
as its last was answered. Galleries: 10k and 100k distinct template captions embedded once by MiniLM and kept
under ``benchmarks/out/serve/`` (see `benchmarks.serve_common`). Cases: text and composed queries (source = a
random gallery item, edit = a short instruction), rerank off (`query.rerank_k=0`) and as shipped (the offline
preset's own settings: Gemma 3 270M likelihood rerank of up to 20 candidates), 1, 4 and 16 clients. Every query
text is new to the service (its stage caches are emptied before each start), so no answer comes from a cache.
`serve.max_pending` is 16 so that 16 clients are all admitted (the default 8 refuses the rest: measured apart).

Floor, in this process, with the service idle: one float32 product of a query vector with the gallery's unit
matrix (numpy, same size), and one MiniLM embedding of a query text (as the service embeds it).

CLI: `r3 demo --home H` once (kept between runs), then `r3 query Q --gallery demo --preset offline --home H`
for one text query (a fresh process, stage caches emptied first), with Prefect's temporary server and with
PREFECT_API_URL naming a server started by scripts/prefect-server.sh (the documented fast path), and
`r3 query Q --server URL` against `r3 serve` on the same home.

``python -m benchmarks.serve [--quick] [--cli-only]`` writes benchmarks/results/serve.json and regenerates
RESULTS.md; --cli-only measures the command line only and keeps the service figures of the last run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, Result, pct
from benchmarks.serve_common import (
    SERVE_DIR,
    Client,
    Service,
    caption,
    edit_text,
    item_id,
    offline_settings,
    post,
    run_clients,
    text_query,
)
from benchmarks.serve_extras import measure_cli, run_standalone
from benchmarks.serve_one_shot import measure_one_shot, summarise_one_shot

NAME = "serve"
TITLE = "Warm query service (r3 serve) over HTTP: latency and queries/s vs the floor, and the one-shot CLI"
SIZES_FULL = [10_000, 100_000]
SIZES_QUICK = [10_000]
CLIENTS = (1, 4, 16)
KINDS = ("text", "composed")
RERANK = ("off", "shipped")
# Requests per case: enough for a p95 where a request costs tens of ms, a minute per case where it costs ~1 s.
REQUESTS_FULL = {"off": {1: 60, 4: 120, 16: 240}, "shipped": {1: 15, 4: 24, 16: 48}}
REQUESTS_QUICK = {"off": {1: 20, 4: 32, 16: 48}, "shipped": {1: 4, 4: 8, 16: 16}}
TOP_K = 10
NO_RERANK_TARGET_S = 0.100  # warm text query, rerank off, p50, 100k rows
SHIPPED_TARGET_S = 1.5  # warm text query as shipped, p50, 100k rows
CLI_TARGET_S = 8.0  # one-shot `r3 query` of one text query on the demo gallery
TARGET_ROWS = 100_000


# -- floor --------------------------------------------------------------------------------------------
def measure_floor(home: Path, reps: int) -> dict[str, Any]:
    """Per-query costs no served query can avoid: the gallery product and the query embedding."""
    from r3tasks.gallery.pinned import pin
    from r3tasks.gallery.views import open_store
    from r3tasks.models.base import EmbedInput
    from r3tasks.models.registry import shared_embedder

    settings = offline_settings(home)
    embedder = shared_embedder(settings)
    matrix = pin(open_store(settings))._matrix().vectors  # the unit float32 matrix the service searches
    rng = np.random.default_rng(0)

    def embed(text: str, instruction: str) -> np.ndarray:
        return embedder.embed_queries([EmbedInput("floor", text=text)], instruction)[0]

    text_s: list[float] = []
    composed_s: list[float] = []

    def embeddings() -> None:
        embed("warm up", settings.query.text_query_instruction)
        for k in range(reps):
            started = time.perf_counter()
            embed(text_query(200_000 + k), settings.query.text_query_instruction)
            text_s.append(time.perf_counter() - started)
            j = int(rng.integers(len(matrix)))
            started = time.perf_counter()
            embed(f"{caption(j)}\n{edit_text(3000 + k)}", settings.query.query_instruction)  # a composed query's text
            composed_s.append(time.perf_counter() - started)

    # On a worker thread, as the service's model thread embeds (see benchmarks/torch_threads.py).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(embeddings).result()
    vector = embed(text_query(199_999), settings.query.text_query_instruction).astype(matrix.dtype)
    matmul_s = []
    for _ in range(max(reps * 4, 50)):
        started = time.perf_counter()
        scores = matrix @ vector
        matmul_s.append(time.perf_counter() - started)
        del scores
    out = {
        "rows": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "dtype": str(matrix.dtype),
        "matmul_s": {"p50": pct(matmul_s, 50), "min": min(matmul_s)},
        "embed_text_s": {"p50": pct(text_s, 50), "min": min(text_s)},
        "embed_composed_s": {"p50": pct(composed_s, 50), "min": min(composed_s)},
    }
    for kind in KINDS:
        out[f"{kind}_floor_s"] = out["matmul_s"]["p50"] + out[f"embed_{kind}_s"]["p50"]
    return out


# -- one case -----------------------------------------------------------------------------------------
class QueryMaker:
    """Request bodies of one query each, never repeated within a service's life (no stage-cache hits)."""

    def __init__(self, rows: int, seed: int) -> None:
        self.rows, self.n, self.rng = rows, 0, np.random.default_rng(seed)

    def body(self, kind: str) -> dict:
        self.n += 1
        if kind == "text":
            query = {"id": f"t{self.n}", "text": text_query(self.n)}
        else:
            query = {
                "id": f"c{self.n}",
                "source": item_id(int(self.rng.integers(self.rows))),
                "edit": edit_text(self.n),
            }
        return {"queries": [query], "top_k": TOP_K}


def run_case(service: Service, maker: QueryMaker, kind: str, clients: int, requests: int) -> dict[str, Any]:
    bodies = [post(maker.body(kind)) for _ in range(requests)]
    replies, wall = run_clients(service.host, service.port, bodies, clients)
    latencies, failed, hits, pairs, versions = [], [], 0, [], set()
    for reply in replies:
        if reply is None:
            failed.append("never sent")
            continue
        if reply.status != 200:
            failed.append(f"{reply.status} {reply.error or ''} {reply.body[:200]!r}")
            continue
        payload = reply.json()
        result = payload["results"][0]
        if result["error"] or not result["ranked"]:
            failed.append(f"query error: {result['error']}")
            continue
        latencies.append(reply.seconds)
        hits += sum(c.get("hits", 0) for c in payload["lineage"]["cache"].values())
        versions.add(payload["lineage"]["gallery"]["version"])
        if result["rerank"]:
            pairs.append(result["rerank"].get("pairs", 0))
    return {
        "kind": kind,
        "clients": clients,
        "requests": requests,
        "answered": len(latencies),
        "wall_s": wall,
        "qps": len(latencies) / wall if wall else None,
        "p50_s": pct(latencies, 50) if latencies else None,
        "p95_s": pct(latencies, 95) if latencies else None,
        "max_s": max(latencies) if latencies else None,
        "latencies_ms": [round(x * 1000, 2) for x in latencies],
        "failed": len(failed),
        "first_failure": failed[0] if failed else None,
        "cache_hits": hits,
        "rerank_pairs_mean": float(np.mean(pairs)) if pairs else None,
        "gallery_versions": sorted(versions),
    }


# Diagnostic service, rerank off, text queries only, at the largest size: one thread per math library instead of
# two each (torch's OpenMP pool and numpy's OpenBLAS pool, both sized to the 2 cores).
DIAGNOSTICS = {
    "off, 1 torch/BLAS thread": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
}


def http_floor(service: Service, n: int = 20) -> float:
    """p50 of `GET /openapi.json` on one keep-alive connection: HTTP with no model or gallery work."""
    client = Client(service.host, service.port)
    client.request("GET", "/openapi.json")
    seconds = [client.request("GET", "/openapi.json").seconds for _ in range(n)]
    client.close()
    return pct(seconds, 50)


def measure_service(
    rows: int,
    home: Path,
    label: str,
    env: dict[str, str],
    counts: dict[int, int],
    kinds: tuple[str, ...],
    log: Any,
) -> dict[str, Any]:
    shutil.rmtree(home / "cache", ignore_errors=True)  # no stage-cache hits from an earlier run
    slug = label.replace(" ", "-").replace(",", "").replace("/", "-")
    service = Service(home, SERVE_DIR / "logs" / f"serve-{rows}-{slug}.log", env)
    entry: dict[str, Any] = {"rerank": label, "env": env, "start_s": service.start_s, "cases": []}
    try:
        maker = QueryMaker(rows, seed=rows)
        client = Client(service.host, service.port)
        # First requests: the matrix loads (and, as shipped, the reranker; converted on the very first use).
        for kind in KINDS:
            reply = client.query(maker.body(kind))
            entry[f"first_{kind}_s"] = reply.seconds
            if reply.status != 200:
                raise RuntimeError(f"warm-up {kind} answered {reply.status}: {reply.body[:300]!r}")
        for kind in KINDS:  # a few more, untimed
            for _ in range(3):
                client.query(maker.body(kind))
        client.close()
        entry["rss_after_warmup_bytes"] = service.rss_bytes()
        entry["http_floor_s"] = http_floor(service)
        for kind in kinds:
            for clients in CLIENTS:
                case = run_case(service, maker, kind, clients, counts[clients])
                entry["cases"].append(case)
                log(
                    f"  {rows:,} {kind:8s} rerank {label:7s} {clients:2d} clients: p50 "
                    f"{(case['p50_s'] or 0) * 1e3:7.1f} ms, p95 {(case['p95_s'] or 0) * 1e3:7.1f} ms, "
                    f"{case['qps'] or 0:6.1f} q/s, failed {case['failed']}, cache hits {case['cache_hits']}"
                )
        entry["rss_end_bytes"] = service.rss_bytes()
    finally:
        entry["exit_code"] = service.stop()
    return entry


def measure_size(rows: int, home: Path, quick: bool, log: Any, diagnose: bool) -> dict[str, Any]:
    counts = REQUESTS_QUICK if quick else REQUESTS_FULL
    out: dict[str, Any] = {"rows": rows, "floor": measure_floor(home, 10 if quick else 30), "services": []}
    f = out["floor"]
    log(
        f"  floor {rows:,}: matmul {f['matmul_s']['p50'] * 1e3:.2f} ms, embed text {f['embed_text_s']['p50'] * 1e3:.1f} ms, "
        f"composed {f['embed_composed_s']['p50'] * 1e3:.1f} ms"
    )
    for rerank in RERANK:
        env = {"R3_SERVE__MAX_PENDING": "16"}
        if rerank == "off":
            env["R3_QUERY__RERANK_K"] = "0"
        out["services"].append(measure_service(rows, home, rerank, env, counts[rerank], KINDS, log))
    out["diagnostics"] = []
    if diagnose:
        for label, extra in DIAGNOSTICS.items():
            env = {"R3_SERVE__MAX_PENDING": "16", "R3_QUERY__RERANK_K": "0", **extra}
            out["diagnostics"].append(measure_service(rows, home, label, env, counts["off"], ("text",), log))
    return out


# -- summary ------------------------------------------------------------------------------------------
def summarise(result: Result, data: dict[str, Any], quick: bool) -> None:
    table = []
    for size in data["sizes"]:
        rows, floor = size["rows"], size["floor"]
        result.row(
            f"floor, {rows:,} x {floor['dim']}: one query vector x gallery matrix (numpy {floor['dtype']}), p50",
            floor["matmul_s"]["p50"] * 1e3,
            "ms",
            note=f"min {floor['matmul_s']['min'] * 1e3:.2f} ms",
        )
        if rows == data["sizes"][0]["rows"]:
            for kind in KINDS:
                e = floor[f"embed_{kind}_s"]
                result.row(
                    f"floor: MiniLM embedding of one {kind} query's text, p50",
                    e["p50"] * 1e3,
                    "ms",
                    note=f"min {e['min'] * 1e3:.1f} ms",
                )
        for service in size["services"]:
            for case in service["cases"]:
                kind, clients = case["kind"], case["clients"]
                fl = floor[f"{kind}_floor_s"]
                p50 = case["p50_s"]
                table.append(
                    [
                        f"{rows:,}",
                        kind,
                        service["rerank"],
                        clients,
                        f"{case['answered']}/{case['requests']}",
                        _ms(p50),
                        _ms(case["p95_s"]),
                        f"{case['qps']:.1f}" if case["qps"] else "—",
                        _ms(fl),
                        f"{p50 / fl:.1f}" if p50 else "—",
                        f"{case['rerank_pairs_mean']:.1f}" if case["rerank_pairs_mean"] is not None else "—",
                        case["failed"],
                        case["cache_hits"],
                    ]
                )
                if clients == 1 and kind == "text" and rows == TARGET_ROWS:
                    target, label = (
                        (NO_RERANK_TARGET_S, "rerank off")
                        if service["rerank"] == "off"
                        else (SHIPPED_TARGET_S, "as shipped (Gemma rerank)")
                    )
                    result.row(
                        f"warm text query, {label}, {rows:,} rows, 1 client: p50",
                        p50 * 1e3 if p50 else None,
                        "ms",
                        f"≤ {target * 1e3:,.0f} ms",
                        p50 is not None and p50 <= target,
                        note=f"p95 {_ms(case['p95_s'])} ms, {case['qps']:.1f} q/s; floor {_ms(fl)} ms",
                    )
            result.row(
                f"service start to listening, {rows:,} rows, rerank {service['rerank']} (r3 serve: embedder, pin)",
                service["start_s"],
                "s",
                note=f"first text query {service['first_text_s']:.2f} s, first composed "
                f"{service['first_composed_s']:.2f} s (matrix load"
                + (", reranker load)" if service["rerank"] == "shipped" else ")")
                + f"; RSS after warm-up {(service['rss_after_warmup_bytes'] or 0) / 2**20:,.0f} MiB",
            )
        result.row(
            f"HTTP alone: `GET /openapi.json` p50 on a keep-alive connection to r3 serve, {rows:,} rows",
            size["services"][0]["http_floor_s"] * 1e3,
            "ms",
            note="no model or gallery work: what every response pays for the socket and HTTP; "
            + ", ".join(f"rerank {s['rerank']}: {s['http_floor_s'] * 1e3:.1f} ms" for s in size["services"]),
        )
        diag = []
        shipped_off = next((s for s in size["services"] if s["rerank"] == "off"), None)
        for service in ([shipped_off] if shipped_off and size.get("diagnostics") else []) + size.get("diagnostics", []):
            for case in service["cases"]:
                if case["kind"] != "text":
                    continue
                diag.append(
                    [
                        f"{rows:,}",
                        "off, default threads (2 + 2)" if service is shipped_off else service["rerank"],
                        case["clients"],
                        _ms(case["p50_s"]),
                        _ms(case["p95_s"]),
                        f"{case['qps']:.1f}" if case["qps"] else "—",
                        _ms(service["http_floor_s"]),
                        case["failed"],
                    ]
                )
        if diag:
            result.table(
                f"Diagnostics, {rows:,} rows, text queries, rerank off: r3 serve with one torch and one BLAS thread "
                "(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1)",
                ["rows", "service", "clients", "p50 ms", "p95 ms", "q/s", "GET /openapi.json p50 ms", "failed"],
                diag,
            )
    result.table(
        f"Per case: one query per request (top_k {TOP_K}), each client a keep-alive connection",
        [
            "rows",
            "query",
            "rerank",
            "clients",
            "answered",
            "p50 ms",
            "p95 ms",
            "q/s",
            "floor ms",
            "p50 / floor",
            "rerank pairs / query",
            "failed",
            "cache hits",
        ],
        table,
    )
    cli = data.get("cli") or {}
    summarise_one_shot(result, cli, CLI_TARGET_S)
    if cli.get("via_server_without_gallery"):
        r = cli["via_server_without_gallery"]
        result.row(
            "`r3 query Q --server URL` without --gallery, service started with --gallery demo: exit code",
            r["rc"],
            "",
            note="answered from the gallery the service serves: the request names none"
            if r["rc"] == 0
            else r["said"].split("r3 query: ", 1)[-1][:200],
        )
    if cli.get("via_server"):
        times = [r["seconds"] for r in cli["via_server"]]
        result.row(
            "`r3 query Q --server URL --gallery demo` (one text query, service warm, as shipped), median",
            float(np.median(times)),
            "s",
            note=f"runs {', '.join(f'{t:.2f}' for t in times)} s; exit codes {[r['rc'] for r in cli['via_server']]}",
        )
    if cli.get("demo"):
        result.row(
            "`r3 demo --home H` (builds and indexes the demo gallery, answers its batch)", cli["demo"]["seconds"], "s"
        )
    if cli.get("burst"):
        b = cli["burst"]
        result.row(
            f"{b['clients']} requests at once, default serve.max_pending 8: answered 200",
            b["statuses"].get("200", 0),
            "requests",
            note=f"statuses {b['statuses']}; Retry-After {b['retry_after']}",
        )
    result.note(
        "Machine shared with other work (2 cores): the client threads, the service and other processes share the "
        "cores, so latencies include CPU contention; the load average at the start is in this section's header."
    )
    result.note(
        "The service answers on one model thread, so concurrent clients queue and p50 grows with their number "
        "(16 clients: about 16 service times)."
    )
    result.note(
        "Until commit cf81e84 the listening socket had no TCP_NODELAY: on a keep-alive connection every response "
        "(headers, then body) waited about 44 ms for the client's delayed ACK. Measured by this benchmark before "
        "it: `GET /openapi.json` p50 44.0 ms (0.4 ms on a socket with TCP_NODELAY), warm text query without "
        "rerank at 100k rows p50 72.0 ms (39.4 ms)."
    )
    result.note(
        "Floor: numpy product of one float32 unit query vector with the gallery matrix (no top-k), and MiniLM "
        "embedding of one text (text query) or of source caption + edit (composed query), measured in the "
        "benchmark process with the service idle; p50 of repeated calls. A served query also pays HTTP, JSON, "
        "validation, the top-k and the results' assembly; as shipped, also the Gemma reranker's pairs."
    )
    if quick:
        result.note("Quick mode: 10k rows only and fewer requests; the 100k targets are not judged.")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.1f}"


def run(quick: bool, log: Any = print, skip_cli: bool = False, cli_only: bool = False) -> Result:
    result = Result(NAME, TITLE)
    from benchmarks.serve_common import ensure_gallery

    sizes = []
    sizes_to_run = [] if cli_only else SIZES_QUICK if quick else SIZES_FULL
    for rows in sizes_to_run:
        home, built = ensure_gallery(rows, log)
        size = measure_size(rows, home, quick, log, diagnose=rows == sizes_to_run[-1])
        size["build_s"] = built
        sizes.append(size)
    if cli_only:  # the service figures of the last run that measured them, said where they come from
        earlier = json.loads((RESULTS_DIR / f"{NAME}.json").read_text())
        sizes, load = earlier["data"]["sizes"], earlier["machine"].get("load_average_at_start")
        since = earlier["data"].get("sizes_from") or f"{earlier['started']} (`{earlier['command']}`, load {load})"
        result.data["sizes_from"] = since
        result.note(f"--cli-only: the service figures are those of the run of {since}; this run measured the CLI.")
    result.data["sizes"] = sizes
    result.data["cli"] = {} if skip_cli else measure_cli(quick, log)
    if not skip_cli:
        result.data["cli"]["one_shot_modes"] = measure_one_shot(quick, log)
    summarise(result, result.data, quick)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k rows only, fewer requests, one CLI run each")
    parser.add_argument("--skip-cli", action="store_true", help="leave out the CLI timings")
    parser.add_argument("--cli-only", action="store_true", help="the CLI timings only (service figures kept)")
    args = parser.parse_args(argv)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    run_standalone(NAME, argv, args.quick, lambda: run(args.quick, say, args.skip_cli, args.cli_only))
    return 0  # a missed target is a finding of the run, not a failure of the benchmark


if __name__ == "__main__":
    raise SystemExit(main())
