"""Ingest's scratch space and its clean exit: nothing is left behind, even by a killed or terminated ingest.

A scratch folder (``auditor-ingest-<pid>-<random>`` in the temp directory) is made only when needed (a copy of an input
without its byte order mark, or the valid lines of a file read with --skip-bad) and removed when the ingest ends, also
on errors and on SIGTERM, which is turned into KeyboardInterrupt for the duration of an ingest so that the store's
transaction rolls back and cleanup runs. A process killed outright (SIGKILL) cannot clean up: the next ingest removes
such folders once they are older than STALE_TEMP_SECONDS and their process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from auditor.ingest.limits import STALE_TEMP_SECONDS

PREFIX = "auditor-ingest-"


class Scratch:
    """One ingest's scratch folder, created on first use."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._made = 0

    def file(self, name: str) -> Path:
        """A fresh path inside the scratch folder, ending in `name` (the folder is created now if needed)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self._made += 1
        return self._dir / f"{self._made}-{name}"

    def remove(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(root: Path | None = None, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove scratch folders older than `max_age` seconds whose process is gone; returns those removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    now = time.time()
    for folder in root.glob(f"{PREFIX}*"):
        try:
            if not folder.is_dir() or now - folder.stat().st_mtime < max_age:
                continue
        except OSError:
            continue
        pid = folder.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


@contextlib.contextmanager
def scratch_space() -> Iterator[Scratch]:
    """A Scratch for one ingest, swept clean of stale folders first and removed on any exit."""
    sweep_stale()
    scratch = Scratch()
    try:
        yield scratch
    finally:
        scratch.remove()
