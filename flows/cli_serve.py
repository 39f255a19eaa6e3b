"""`r3 serve` and `r3 query --server URL`: the warm query service's command line (docs/serving.md).

Neither starts Prefect: a served query is answered by the library's steps in the service's process.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_serve_command(
    sub: Any,
    add_common: Callable[[argparse.ArgumentParser], None],
    add_gallery: Callable[[argparse.ArgumentParser, str | None, str], None],
) -> None:
    serve = sub.add_parser("serve", help="answer queries over HTTP from models loaded once (docs/serving.md)")
    serve.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: serve.host, 127.0.0.1); any other needs a token (R3_SERVE__TOKEN)",
    )
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default: serve.port, 8765)")
    add_gallery(serve, "default", "the gallery a request searches unless it names another (default: default)")
    add_common(serve)


def _serve_settings(args: argparse.Namespace) -> Any:
    from r3tasks.settings.tree import load_settings

    listen = {name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None}
    return load_settings(
        preset=args.preset,
        home=Path(args.home) if args.home else None,
        gallery={"name": args.gallery},
        serve=listen,
    )


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one line and exit 2, not uvicorn's log."""
    from r3tasks.errors import R3Error

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: a response written as headers then body otherwise waits on the
        # client's delayed ACK, about 40 ms a request on a keep-alive connection (benchmarks/serve.py).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        raise R3Error(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    from r3tasks.inputs import preflight
    from r3tasks.models.qwen3vl import check_models
    from r3tasks.serve.service import check_binding

    settings = _serve_settings(args)
    check_binding(settings.serve)  # before anything loads: a public address without a token never listens
    preflight.gallery_indexed(settings)
    check_models(settings, ["embedder", "reranker", "reasoner"])  # a missing model: one line now, not per request

    import uvicorn

    from flows.common import code_version
    from r3tasks.serve.app import create_app
    from r3tasks.serve.service import QueryService

    sock = _listen(settings.serve.host, settings.serve.port)
    service = QueryService(settings, code_version())
    health = service.health()["gallery"]
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    started = {"url": url, "gallery": health["name"], "table": health["table"], "version": health["version"]}
    if args.json:
        print(json.dumps(started), flush=True)
    else:
        print(
            f"r3 serve: gallery {health['name']!r} version {health['version']} ({health['rows']} rows) on {url}",
            flush=True,
        )
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="info"))
    if threading.current_thread() is threading.main_thread():
        # uvicorn stops gracefully on SIGINT/SIGTERM, then re-sends the signal to the handler it found: a no-op
        # one, so a stopped service exits 0 instead of reporting an interrupted command.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)
    server.run(sockets=[sock])
    return 0


def query_via_server(args: argparse.Namespace, settings: Any) -> int:
    """`r3 query FILE --server URL`: the file checked here, answered by the service, written and printed as a
    local run does (without its report and contact sheets). Returns how many queries failed."""
    from r3tasks.inputs.queries import load_queries
    from r3tasks.query.output import write_whole
    from r3tasks.query.report import terminal_table
    from r3tasks.serve.client import ServiceClient

    queries = load_queries(args.queries)  # a malformed file: one line, exit 2, nothing sent
    client = ServiceClient(args.server, settings.serve)
    answered = client.query(queries, args.gallery, args.gallery_version, getattr(args, "where", None))
    payload = {**answered, "artifacts": None, "stage_seconds": None, "server": client.url}
    out = Path(args.out)
    write_whole(out, json.dumps(payload, indent=2))
    if args.format == "covrr":
        ranked = {r["id"]: [item["id"] for item in r["ranked"]] for r in payload["results"]}
        submission: dict[str, dict[str, list[str]]] = {}
        for query in queries:
            section = getattr(query, "section", None) or "default"
            submission.setdefault(section, {})[query.id] = ranked.get(query.id, [])
        write_whole(out.with_suffix(".covrr.json"), json.dumps(submission, indent=2))
    failed = [r for r in payload["results"] if r["error"]]
    if args.json:
        summary = {"out": str(out), "queries": len(payload["results"]), "failed": len(failed), "artifacts": None}
        print(json.dumps({**summary, "server": client.url}))
    else:
        shown = [item["id"] for r in payload["results"] for item in r["ranked"][: args.top]]
        version = payload["lineage"]["gallery"]["version"]
        print(terminal_table(payload["results"], client.item_texts(shown, args.gallery, version), top=args.top))
        print(f"results: {out}\nanswered by {client.url} (gallery version {version})")
    sys.stdout.flush()
    return len(failed)
