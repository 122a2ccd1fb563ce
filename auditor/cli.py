"""The `auditor` command line. Each area registers its subcommands from `auditor/commands/`.

Heavy libraries (torch, sentence-transformers, faiss) are imported inside the commands that need them, so
`auditor --help` and `auditor info` start in well under a second.
"""

from __future__ import annotations

import argparse
import errno
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


#: Exit codes, documented in README ("Exit codes") and `auditor --help`: scripts and pipelines branch on them.
EXIT_OK = 0
EXIT_USAGE = 2  #: bad arguments or a request that cannot be carried out (argparse uses 2 as well)
EXIT_BAD_DATA = 3  #: an input file was refused (file, line and field in the message); nothing was stored
EXIT_STORE_BUSY = 4  #: another process holds the store (the app, a running command)
EXIT_NO_SPACE = 5  #: no space left on device; nothing half-written was kept
EXIT_INTERRUPTED = 130  #: Ctrl-C

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_USAGE}    bad arguments, or a request that cannot be carried out
  {EXIT_BAD_DATA}    an input file was refused (the message names file, line and field); nothing was stored
  {EXIT_STORE_BUSY}    the store is in use by another process (the app, another command)
  {EXIT_NO_SPACE}    no space left on device; nothing half-written was kept
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


def _no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: OSError ENOSPC, or DuckDB's IO error saying so."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def exit_code(exc: BaseException) -> int | None:
    """The exit code for an error the command line explains in one line, or None for a bug (traceback)."""
    from auditor.accounts import AccountError
    from auditor.ingest.errors import IngestError
    from auditor.store import StoreLockedError
    from auditor.review.io import VerdictFileError

    if _no_space(exc):
        return EXIT_NO_SPACE
    if isinstance(exc, StoreLockedError):
        return EXIT_STORE_BUSY
    if isinstance(exc, (IngestError, VerdictFileError)):
        return EXIT_BAD_DATA
    if isinstance(exc, (UserError, StoreError, AccountError)):
        return EXIT_USAGE
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditor",
        description="Find, review and clean false negatives in retrieval / embedding training sets.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars and no warnings from libraries: results and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"auditor.commands.{name}").register(sub)
    from auditor.commands.examples import attach

    attach(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.quiet:
        from auditor.commands import progress

        progress.quiet = True
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import warnings

        warnings.simplefilter("ignore")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `auditor queue | head`: the reader left, which is fine
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - mapped to an exit code below, or re-raised as a bug
        code = exit_code(exc)
        if code is None:
            raise
        if code == EXIT_NO_SPACE:
            print(f"error: no space left on device ({exc}); nothing half-written was kept. Free some space "
                  "(or set TMPDIR / --out elsewhere) and run the command again.", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
