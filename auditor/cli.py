"""The `auditor` command line. Each area registers its subcommands from `auditor/commands/`.

Heavy libraries (torch, sentence-transformers, faiss) are imported inside the commands that need them, so
`auditor --help` and `auditor info` start in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from auditor import __version__
from auditor.store import StoreError

#: Modules under auditor.commands, each with `register(subparsers)`; order is the order in `--help`.
COMMAND_MODULES = ["ingest", "scoring", "review", "export", "app", "users"]


class UserError(Exception):
    """An error whose message is the whole story: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditor",
        description="Find, review and clean false negatives in retrieval / embedding training sets.",
    )
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"auditor.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `auditor queue | head`: the reader left, which is fine
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
