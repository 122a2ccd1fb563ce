"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse


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
