"""The `r3` command: index a gallery, query it, run the demo, evaluate, show settings."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_ITEM_FAILURES, EXIT_BAD_INPUT = 0, 1, 2


def _quiet_prefect_defaults() -> None:
    # Offline machines: Prefect's telemetry would only log an error on every run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=["tiny", "offline", "qwen3vl"],
        default=None,
        help="model preset (default: R3_MODELS__PRESET, r3.toml, else qwen3vl)",
    )
    parser.add_argument("--home", default=None, help="data home (default: R3_HOME or the user data dir)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r3", description="Reasoning-guided video retrieval (R^3) on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="index a folder of videos or a manifest into the LanceDB gallery")
    index.add_argument("source", help="folder of videos (NAME.txt beside a video is its caption) or CSV/JSONL manifest")
    index.add_argument("--strict", action="store_true", help="exit non-zero when any item failed")
    _add_common(index)

    settings = sub.add_parser("settings", help="print the effective settings with their descriptions")
    _add_common(settings)
    return parser


def _print_index_summary(summary: dict[str, Any]) -> None:
    print(
        f"gallery {summary['table']['name']} (version {summary['version']}) at {summary['table']['uri']}\n"
        f"  added {summary['added']}, updated {summary['updated']}, unchanged {summary['unchanged']}, "
        f"removed {summary['removed']}, failed {len(summary['failed'])}"
    )
    for failure in summary["failed"]:
        print(f"  FAILED {failure['id']} ({failure['path']}): {failure['reason']}")


def cmd_index(args: argparse.Namespace) -> int:
    from flows.index_flow import index_gallery

    summary = index_gallery(source=str(Path(args.source).resolve()), preset=args.preset, home=args.home)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_index_summary(summary)
    return EXIT_ITEM_FAILURES if (args.strict and summary["failed"]) else EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    from r3tasks.settings import load_settings

    settings = load_settings(preset=args.preset, home=Path(args.home) if args.home else None)
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


COMMANDS = {"index": cmd_index, "settings": cmd_settings}


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect_defaults()
    args = build_parser().parse_args(argv)
    from r3tasks.errors import ModelNotAvailableError, SourceError
    from pydantic import ValidationError

    try:
        return COMMANDS[args.command](args)
    except (SourceError, ModelNotAvailableError, ValidationError) as error:
        print(f"r3 {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
