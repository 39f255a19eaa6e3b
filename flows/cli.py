"""The `r3` command: index a gallery, query it, run the demo, evaluate, show settings."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_ITEM_FAILURES, EXIT_BAD_INPUT = 0, 1, 2


def _quiet_prefect_defaults() -> None:
    # Offline machines: Prefect's telemetry would only log an error on every run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a server configured, each command starts Prefect's own; on a busy machine its start took
    # longer than Prefect's 20 s default and the command died before doing anything.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=["tiny", "offline", "qwen3vl"],
        default=None,
        help="model preset (default: R3_MODELS__PRESET, r3.toml, else qwen3vl)",
    )
    parser.add_argument("--home", default=None, help="data home (default: R3_HOME or the user data dir)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _gallery_name(value: str) -> str:
    from r3tasks.settings.tree import check_gallery_name

    try:
        return check_gallery_name(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_gallery(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    parser.add_argument("--gallery", type=_gallery_name, default=default, metavar="NAME", help=what)


def _version_or_tag(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r3", description="Reasoning-guided video retrieval (R^3) on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="index a folder of videos or a manifest into the LanceDB gallery")
    index.add_argument("source", help="folder of videos (NAME.txt beside a video is its caption) or CSV/JSONL manifest")
    index.add_argument("--strict", action="store_true", help="exit non-zero when any item failed")
    _add_gallery(
        index,
        "default",
        "which gallery of the data home this source becomes (default: default); other galleries keep their rows",
    )
    _add_common(index)

    query = sub.add_parser("query", help="answer a batch of composed and text queries")
    query.add_argument("queries", help="JSONL, JSON or CSV queries (composed: id, source, edit; text: id, text)")
    query.add_argument("--out", required=True, help="where to write the results JSON")
    query.add_argument("--format", choices=["r3", "covrr"], default="r3", help="covrr also writes OUT.covrr.json")
    query.add_argument(
        "--gallery-version",
        type=_version_or_tag,
        default=None,
        help="pin this table version or tag, e.g. refresh-12 (default: latest)",
    )
    query.add_argument("--top", type=int, default=5, help="rows per query in the printed table")
    query.add_argument(
        "--where",
        default=None,
        metavar="SQL",
        help="search only the gallery rows this filter keeps, in LanceDB's SQL syntax on the stored columns "
        "(id, path, text, `group`, content_key, num_frames, indexed_at), e.g. \"`group` = 'holiday'\"",
    )
    query.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="have a running `r3 serve` at URL answer (e.g. http://127.0.0.1:8765): no local models, no Prefect",
    )
    _add_gallery(query, None, "the gallery to search (default: default; with --server, the gallery the service serves)")
    _add_common(query)

    demo = sub.add_parser("demo", help="build the demo gallery, index it, answer a demo batch, print the results")
    demo.add_argument("--top", type=int, default=5, help="rows per query in the printed table")
    _add_gallery(demo, "demo", "the gallery the demo clips are indexed into (default: demo)")
    _add_common(demo)
    demo.set_defaults(preset="offline")

    evaluate = sub.add_parser("eval", help="ablation (base, +reasoning, +reasoning+rerank) on a benchmark")
    evaluate.add_argument(
        "dataset",
        help="egocvr, egocvr-local, egocvr-swap, egocvr-swap2, egocvr-swap-sparse, egocvr-swap-redraw, generated, a WebVid-CoVR CSV, a CoVR-R JSON or a folder",
    )
    evaluate.add_argument("--out", required=True, help="report JSON (a PNG plot is written beside it)")
    evaluate.add_argument("--limit", type=int, default=None, help="first N queries only")
    evaluate.add_argument(
        "--skip", type=int, default=0, help="leave out the first N queries (a held-out split for tuning settings)"
    )
    evaluate.add_argument(
        "--rerank-k",
        type=int,
        default=None,
        help="rerank depth K of every rerank arm (default: the settings' own, and R^3's 50 for "
        "+rerank (reference)); 0 leaves the rerank arms out",
    )
    evaluate.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms to run (default: base, +rerank, +reasoning, +reasoning+rerank, each "
        "with the settings as they are); +rerank (reference) adds R^3's fixed-depth rerank, whose stored "
        "scores replay other rerank policies",
    )
    evaluate.add_argument(
        "--fusion-grid",
        action="store_true",
        help="also run +reasoning under a grid of fusion settings (tau, w, rrf/max/mean)",
    )
    _add_gallery(
        evaluate,
        None,
        "the gallery the benchmark is indexed into (default: eval-<benchmark>-<setting>, "
        "so an evaluation never touches your own galleries)",
    )
    _add_common(evaluate)

    galleries = sub.add_parser("galleries", help="list the galleries of the data home with row counts and versions")
    galleries.add_argument(
        "--prune",
        action="store_true",
        help="drop GALLERY's tables of embedders other than the current preset's (retired models)",
    )
    _add_gallery(galleries, "default", "the gallery --prune works on (default: default)")
    _add_common(galleries)

    settings = sub.add_parser("settings", help="print the effective settings with their descriptions")
    _add_common(settings)

    from flows.cli_watch import add_upkeep_commands

    add_upkeep_commands(sub, _add_common)
    from flows.cli_serve import add_serve_command

    add_serve_command(sub, _add_common, _add_gallery)
    return parser


NOTES_SHOWN = 5  # notes printed after an index run; --json has them all


def _print_index_summary(summary: dict[str, Any]) -> None:
    print(
        f"gallery {summary['table']['gallery']!r}: table {summary['table']['name']} (version {summary['version']}) "
        f"at {summary['table']['uri']}\n"
        f"  added {summary['added']}, updated {summary['updated']}, unchanged {summary['unchanged']}, "
        f"removed {summary['removed']}, failed {len(summary['failed'])}"
    )
    moments, left_out = summary.get("moments", 0), summary.get("nothing_to_read", 0)
    if moments != summary["added"] + summary["updated"] or left_out:
        print(f"  moments stored {moments}, left out with nothing to read {left_out}")
    notes = summary.get("notes", [])
    for note in notes[:NOTES_SHOWN]:
        print(f"  note: {note}")
    if len(notes) > NOTES_SHOWN:
        print(f"  ... and {len(notes) - NOTES_SHOWN} more notes (`r3 index --json` lists them)")
    for failure in summary["failed"]:
        print(f"  FAILED {failure['id']} ({failure['path']}): {failure['reason']}")


def _settings(args: argparse.Namespace) -> Any:
    """The settings of this command, validated before any flow starts (an error is one line, exit 2)."""
    from r3tasks.settings.tree import load_settings

    extra = {"gallery": {"name": args.gallery}} if getattr(args, "gallery", None) else {}
    return load_settings(preset=args.preset, home=Path(args.home) if args.home else None, **extra)


def cmd_index(args: argparse.Namespace) -> int:
    from r3tasks.inputs import preflight
    from r3tasks.models.qwen3vl import check_models

    source = str(Path(args.source).resolve())
    settings = _settings(args)
    preflight.gallery_source(source, settings)  # a malformed source: one line, before Prefect starts
    # A missing model: one clear line here, not a flow run's tracebacks after a server start.
    check_models(settings, ["embedder"])

    from flows.index_flow import index_gallery

    summary = index_gallery(source=source, preset=args.preset, home=args.home, gallery=args.gallery)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_index_summary(summary)
    return EXIT_ITEM_FAILURES if (args.strict and summary["failed"]) else EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.json:
        print(settings.model_dump_json(indent=2))
        return EXIT_OK
    for section, value in settings.model_dump(mode="json").items():
        if not isinstance(value, dict):
            print(f"{section} = {value!r}")
            continue
        fields = type(getattr(settings, section)).model_fields
        for name, field_value in value.items():
            print(f"{section}.{name} = {field_value!r}    # {fields[name].description}")
    return EXIT_OK


def _run_queries(queries: Path, out: Path, args: argparse.Namespace, covrr_out: Path | None = None) -> dict:
    from flows.query_flow import query_batch

    return query_batch(
        queries=str(queries.resolve()),
        out=str(out.resolve()),
        preset=args.preset,
        home=args.home,
        gallery_version=getattr(args, "gallery_version", None),
        covrr_out=str(covrr_out.resolve()) if covrr_out else None,
        gallery=args.gallery,
        where=getattr(args, "where", None),
    )


def _item_texts(payload: dict, args: argparse.Namespace) -> dict[str, str | None]:
    from r3tasks.gallery.pinned import pin
    from r3tasks.gallery.views import open_store

    gallery = pin(open_store(_settings(args)), payload["lineage"]["gallery"]["version"])
    return {item_id: record.text for item_id, record in gallery.records.items()}


def cmd_query(args: argparse.Namespace) -> int:
    from r3tasks.inputs import preflight
    from r3tasks.models.qwen3vl import check_models

    if args.server:  # the service has the gallery and the models: nothing here to check or load
        from flows.cli_serve import query_via_server

        # No --gallery: the request names none, and the service answers from the gallery it serves.
        return EXIT_ITEM_FAILURES if query_via_server(args, _settings(args)) else EXIT_OK
    if args.gallery is None:
        from r3tasks.settings.tree import DEFAULT_GALLERY

        args.gallery = DEFAULT_GALLERY
    settings = _settings(args)
    preflight.query_file(args.queries, settings)  # a bad file or an unindexed gallery: one line, no server
    preflight.where_filter(args.where, settings)  # a filter LanceDB cannot run: `--where: reason`, exit 2
    check_models(settings, ["embedder", "reranker", "reasoner"])  # as in cmd_index

    from r3tasks.query.report import terminal_table

    out = Path(args.out)
    covrr_out = out.with_suffix(".covrr.json") if args.format == "covrr" else None
    payload = _run_queries(Path(args.queries), out, args, covrr_out)
    failed = [r for r in payload["results"] if r["error"]]
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(out),
                    "queries": len(payload["results"]),
                    "failed": len(failed),
                    "artifacts": payload["artifacts"],
                }
            )
        )
    else:
        print(terminal_table(payload["results"], _item_texts(payload, args), top=args.top))
        print(f"results: {out}\nreport and contact sheets: {payload['artifacts']}")
    return EXIT_ITEM_FAILURES if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.index_flow import index_gallery
    from r3tasks.demo import build_demo, stages_report, target_stages
    from r3tasks.query.report import terminal_table

    settings = _settings(args)
    demo = build_demo(settings.home / "demo", settings.data.opencv_samples_dir)
    print(
        f"demo gallery {args.gallery!r}: {demo.gallery} "
        f"(sample videos found: {', '.join(demo.samples_found) or 'none'})"
    )
    summary = index_gallery(source=str(demo.gallery), preset=args.preset, home=args.home, gallery=args.gallery)
    _print_index_summary(summary)
    out = settings.home / "demo" / "results.json"
    payload = _run_queries(demo.queries, out, args)
    expected = {row["id"]: row.get("expected") for row in map(json.loads, demo.queries.read_text().splitlines()) if row}
    print()
    print(terminal_table(payload["results"], _item_texts(payload, args), top=args.top))
    stages = [target_stages(r, expected[r["id"]]) for r in payload["results"] if expected.get(r["id"])]
    print(stages_report(stages))
    print(f"results: {out}\nreport and contact sheets: {payload['artifacts']}")
    return EXIT_OK if not any(r["error"] for r in payload["results"]) else EXIT_ITEM_FAILURES


def cmd_eval(args: argparse.Namespace) -> int:
    _settings(args)  # bad settings: one line, before Prefect starts

    from flows.eval_flow import evaluate_benchmark
    from r3tasks.evaluation.tables import markdown_table

    report = evaluate_benchmark(
        dataset=args.dataset,
        out=str(Path(args.out).resolve()),
        preset=args.preset,
        home=args.home,
        limit=args.limit,
        rerank_k=args.rerank_k,
        skip=args.skip,
        fusion_grid=args.fusion_grid,
        gallery=args.gallery,
        arm_names=[n.strip() for n in args.arms.split(",")] if args.arms else None,
    )
    print(json.dumps(report, indent=2) if args.json else markdown_table(report))
    return EXIT_OK


def cmd_galleries(args: argparse.Namespace) -> int:
    from r3tasks.gallery.catalog import LEGACY, REINDEX_HINT, list_galleries

    settings = _settings(args)
    dropped: list[str] = []
    if args.prune:
        from r3tasks.gallery.upkeep import drop_tables, retired_tables
        from r3tasks.gallery.views import open_store

        store = open_store(
            settings.model_copy(update={"gallery": settings.gallery.model_copy(update={"name": args.gallery})})
        )
        dropped = drop_tables(store, retired_tables(store))
    found = list_galleries(settings)
    if args.json:
        print(
            json.dumps(
                {"uri": settings.gallery_uri, "galleries": [g.to_dict() for g in found], "dropped": dropped}, indent=2
            )
        )
        return EXIT_OK
    if not found:
        print(f"no galleries in {settings.gallery_uri}: `r3 index SOURCE --gallery NAME` makes one")
        return EXIT_OK
    print(f"galleries in {settings.gallery_uri}")
    width = max(len(g.gallery) for g in found)
    for g in found:
        print(f"  {g.gallery:<{width}}  {g.rows:>8} rows  version {g.version:<5} {g.table}")
    if any(g.gallery == LEGACY for g in found):
        print(f"  {LEGACY}: {REINDEX_HINT}")
    for name in dropped:
        print(f"  dropped retired table {name}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.cli_serve import cmd_serve as serve

    return serve(args)


COMMANDS = {
    "eval": cmd_eval,
    "index": cmd_index,
    "query": cmd_query,
    "demo": cmd_demo,
    "settings": cmd_settings,
    "galleries": cmd_galleries,
    "serve": cmd_serve,
}


def _one_line(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"setting {where}: {first['msg']}{more}"
    return " ".join(str(error).split("\n"))


def _command(name: str) -> Any:
    from flows.cli_watch import UPKEEP_COMMANDS

    return COMMANDS.get(name) or UPKEEP_COMMANDS[name]


class _Interrupted(BaseException):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt (a scheduler's stop, `timeout`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _signal_number(error: BaseException) -> int:
    # Prefect's flow engine turns SIGTERM into its own TerminationSignal, which carries the number.
    return int(getattr(error, "signum", getattr(error, "signal", signal.SIGINT)))


def _end_interrupted(command: str, signum: int) -> NoReturn:
    """One line, then exit 128 + the signal number at once. What the process was doing (a flow run, Prefect's
    temporary server, its log and event threads) is cut off: left to run, each would print a page of
    connection errors about a server that is already gone."""
    name = signal.Signals(signum).name
    print(
        f"r3 {command}: interrupted by {name}; nothing half-written (a results file is whole or absent)",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    logging.disable(logging.CRITICAL)
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is not None:  # Prefect's temporary server is a child process: stop it, not orphan it
        for server in list(server_module.SubprocessASGIServer._instances.values()):
            with contextlib.suppress(Exception):
                server.stop()
    os._exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect_defaults()
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from r3tasks.errors import R3Error

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if on_main_thread else None
    try:
        return _command(args.command)(args)
    except (R3Error, ValidationError) as error:
        print(f"r3 {args.command}: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | _Interrupted) or type(error).__name__ == "TerminationSignal":
            _end_interrupted(args.command, _signal_number(error))
        raise
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def run() -> NoReturn:
    """The `r3` console command: `main`, then an exit that a late SIGINT or SIGTERM cannot turn into a traceback
    (the work is done and written; what is left is Prefect's shutdown)."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The interpreter's teardown ends with a garbage collection over every object torch, transformers and Prefect
    # made: about a second spent finding cycles in memory the process is about to hand back anyway. Frozen
    # objects are not walked; exit handlers (Prefect's log and event flushes) still run.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
