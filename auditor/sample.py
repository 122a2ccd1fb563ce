"""The shipped sample store: Cranfield ingested, mined with the default model, banded — ready to review.

`auditor app` builds it on first start when no --db is given. It is built into a temporary file next to the target
and renamed at the end, so an interrupted build never leaves a half store that would be taken for a finished one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from auditor.config import DEFAULT_MODEL, SAMPLE_CRANFIELD, MineConfig

Progress = Callable[[int, int], None]

#: Progress units of the build: ingest takes the first _INGEST_UNITS of _TOTAL_UNITS, mining the rest.
_TOTAL_UNITS = 1000
_INGEST_UNITS = 50


def describe_progress(done: int, total: int) -> str:
    """Words for a progress report of build_sample_store (which step it is in)."""
    pct = 100 * done // total if total else 0
    if done >= total:
        return "sample store ready"
    step = "ingesting the Cranfield sample" if done < _INGEST_UNITS else "embedding, mining and banding (one time)"
    return f"{step}: {pct}%"


def build_sample_store(
    path: str | Path,
    progress: Progress | None = None,
    *,
    model: str = DEFAULT_MODEL,
    depth: int = MineConfig.depth,
    source: str | Path = SAMPLE_CRANFIELD,
) -> Path:
    """Create a store at ``path`` from the shipped Cranfield sample (ingest, mine, default bands); return the path.

    ``progress(done, total)`` is called with one overall scale for the whole build. Raises StoreError when ``path``
    already exists (it is never overwritten).
    """
    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.store import StoreError, open_store

    path = Path(path)
    if path.exists():
        raise StoreError(f"{path} already exists; the sample store is only built where there is none")
    if not path.parent.exists():
        raise StoreError(f"cannot build the sample store: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.building-{os.getpid()}")
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)

    def scaled(offset: int, span: int) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total: progress(offset + (span * done // total if total else 0), _TOTAL_UNITS)

    try:
        con = open_store(tmp)
        try:
            ingest_path(con, source, progress=scaled(0, _INGEST_UNITS))
            mine(con, model, depth, progress=scaled(_INGEST_UNITS, _TOTAL_UNITS - _INGEST_UNITS))
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
    if progress is not None:
        progress(_TOTAL_UNITS, _TOTAL_UNITS)
    return path
