"""`r3 galleries` (list, `--prune` retired embedders' tables) and `r3 watch INBOX`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable


def add_upkeep_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    galleries = sub.add_parser("galleries", help="list this gallery's tables (one per embedder), prune retired ones")
    galleries.add_argument("--prune", action="store_true",
                           help="drop the tables of embedders other than the current preset's")
    add_common(galleries)
    watch = sub.add_parser("watch", help="emit a Prefect event for each queries file that lands in INBOX")
    watch.add_argument("inbox", help="folder to watch (not recursive)")
    watch.add_argument("--out-dir", default=None, help="where the triggered batches write (default: INBOX/results)")
    watch.add_argument("--polls", type=int, default=None, help="stop after N listings (default: run until stopped)")
    add_common(watch)


def _settings(args: argparse.Namespace) -> Any:
    from r3tasks.settings import load_settings

    return load_settings(preset=args.preset, home=Path(args.home) if args.home else None)


def cmd_galleries(args: argparse.Namespace) -> int:
    from flows.index_flow import open_store
    from r3tasks.upkeep import drop_tables, gallery_tables, retired_tables

    store = open_store(_settings(args))
    retired = retired_tables(store)
    dropped = drop_tables(store, retired) if args.prune else []
    if args.json:
        print(json.dumps({"current": store.name, "tables": gallery_tables(store), "retired": retired,
                          "dropped": dropped}))
        return 0
    for name in sorted(set(retired) | ({store.name} if store.exists() else set())):
        state = "current" if name == store.name else ("dropped" if name in dropped else "retired")
        print(f"{name}\t{state}")
    if retired and not args.prune:
        print(f"{len(retired)} retired table(s): r3 galleries --prune drops them")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from flows.watch import drain_events, watch

    try:
        watch(Path(args.inbox).resolve(), _settings(args).watch, Path(args.out_dir) if args.out_dir else None,
              polls=args.polls)
    except KeyboardInterrupt:
        pass
    finally:
        drain_events()
    return 0


UPKEEP_COMMANDS = {"galleries": cmd_galleries, "watch": cmd_watch}
