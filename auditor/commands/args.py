"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


def existing_store(path: str, read_only: bool = False) -> "duckdb.DuckDBPyConnection":
    """Open a store that must already exist: only `ingest` and `users add` create one, so a mistyped --db is an
    error rather than a new, empty store written beside the real one."""
    from auditor.cli import UserError
    from auditor.store import open_store

    if not Path(path).exists():
        raise UserError(f"no store at {path}: create it with `auditor ingest PATH --db {path}`")
    return open_store(path, read_only=read_only)


def opt_float(text: str) -> float | None:
    """A number, or 'off' / 'none' to switch a setting off."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def opt_int(text: str) -> int | None:
    """An integer, or 'off' / 'none'."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'off', got {text!r}") from None
