"""`r3 watch INBOX`: the watcher's command line (`r3 galleries --prune` lives in flows/cli.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_upkeep_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    watch = sub.add_parser("watch", help="emit a Prefect event for each queries file that lands in INBOX")
    watch.add_argument("inbox", help="folder to watch (not recursive)")
    watch.add_argument("--out-dir", default=None, help="where the triggered batches write (default: INBOX/results)")
    watch.add_argument("--polls", type=int, default=None, help="stop after N listings (default: run until stopped)")
    add_common(watch)


def _settings(args: argparse.Namespace) -> Any:
    from r3tasks.settings.tree import load_settings

    return load_settings(preset=args.preset, home=Path(args.home) if args.home else None)


def cmd_watch(args: argparse.Namespace) -> int:
    from flows.watch import drain_events, watch

    try:
        watch(
            Path(args.inbox).resolve(),
            _settings(args).watch,
            Path(args.out_dir) if args.out_dir else None,
            polls=args.polls,
        )
    except KeyboardInterrupt:
        pass
    finally:
        drain_events()
    return 0


UPKEEP_COMMANDS = {"watch": cmd_watch}
