"""Writing files safely: a DuckDB COPY into a temporary file renamed over the destination only when complete,
temporary names that carry the writer's process id (a killed writer's leftovers are removed by the next write),
standard output through a private file, and the app's per-session export folders."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from auditor.signals import interrupt_on_signals
from auditor.sql import lit
from auditor.store import StoreError

FILE_TYPES = ("jsonl", "parquet")
STDOUT = "-"
#: Prefix of the temporary folders of app exports and of exports to standard output.
TEMP_FOLDER_PREFIX = "auditor-export-"
_STDOUT_PREFIX = f"{TEMP_FOLDER_PREFIX}stdout-"  #: then the writing process's id
#: Name of a temporary file written by temp_path_for: .<name>.<pid>-<8 hex digits>.tmp
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def file_type_for(out_path: str | Path, file_type: str | None = None) -> str:
    """``file_type`` when given, else from the extension: ``.parquet`` is Parquet, anything else JSONL."""
    if file_type is not None:
        if file_type not in FILE_TYPES:
            raise ValueError(f"unknown file type {file_type!r}: use one of {', '.join(FILE_TYPES)}")
        return file_type
    return "parquet" if Path(str(out_path)).suffix.lower() == ".parquet" else "jsonl"


# --- the rows of each layout ---------------------------------------------------------------------------------------


def temp_path_for(out_path: Path) -> Path:
    """A hidden temporary name in the destination folder (same file system, so os.replace is atomic)."""
    return out_path.with_name(f".{out_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.<pid>-<hex>.tmp``) that killed exports left in ``folder``.

    Only files whose writing process is gone are removed, so an export running beside this one keeps its file.
    Returns the files removed.
    """
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _pid_alive(int(match["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


#: COPY options per written file type; "lines" writes the one text column of each row as a line (JSON built in SQL)
_COPY_OPTIONS = {"jsonl": "FORMAT json", "parquet": "FORMAT parquet",
                 "lines": f"FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER {lit(chr(1))}"}


def copy_atomic(
    con: duckdb.DuckDBPyConnection, select_sql: str, out_path: str | Path, params: dict[str, Any] | None = None,
    file_type: str = "jsonl",
) -> None:
    """``COPY (select_sql) TO`` a temporary file beside ``out_path``, then rename it over ``out_path``.

    On any error or interruption the temporary file is removed and an existing ``out_path`` is left as it was.
    ``file_type`` "lines" writes a query of one JSON text column (:func:`_without_nulls`) as JSON lines.
    """
    out_path = Path(out_path)
    if not out_path.parent.exists():
        raise StoreError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    options = _COPY_OPTIONS["lines" if file_type == "lines" else file_type_for(out_path, file_type)]
    remove_stale_temp_files(out_path.parent)
    tmp = temp_path_for(out_path)
    with interrupt_on_signals(con):
        try:
            con.execute(f"COPY ({select_sql}) TO {lit(str(tmp))} ({options})", params or {})
            _finish(tmp, out_path)
        finally:
            tmp.unlink(missing_ok=True)


def _finish(tmp: Path, out_path: Path) -> None:
    """Make the written file durable, then move it into place (a separate step so tests can fail it)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out_path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- export ------------------------------------------------------------------------------------------------------



@contextlib.contextmanager
def to_stdout_through_file(name: str) -> Iterator[Path]:
    """A path in a private temporary folder whose file goes to standard output once the block succeeds.

    The folder carries the process id: one left by a killed process is removed by the next such write.
    """
    _remove_orphan_stdout_folders()
    with tempfile.TemporaryDirectory(prefix=f"{_STDOUT_PREFIX}{os.getpid()}-") as folder:
        tmp = Path(folder) / name
        yield tmp
        sys.stdout.flush()
        with open(tmp, "rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


def _remove_orphan_stdout_folders() -> None:
    for folder in Path(tempfile.gettempdir()).glob(f"{_STDOUT_PREFIX}*"):
        pid = folder.name[len(_STDOUT_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and not folder.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)



# --- for the app ---------------------------------------------------------------------------------------------------

_app_folders: set[Path] = set()
_app_folders_lock = threading.Lock()


def new_app_export_folder(previous: str | Path | None = None, max_age_s: float = 86_400) -> Path:
    """A fresh folder under the temp dir for one app session's export.

    Removes the session's ``previous`` folder (its last export), folders of app processes that died more than
    ``max_age_s`` ago (their exit cleanup never ran), and, at exit, every folder this process made.
    """
    if previous:
        _remove_app_folder(Path(previous))
    remove_old_temp_folders(max_age_s)
    folder = Path(tempfile.mkdtemp(prefix=TEMP_FOLDER_PREFIX))
    with _app_folders_lock:
        _app_folders.add(folder)
    return folder


def remove_old_temp_folders(max_age_s: float = 86_400, base: str | Path | None = None) -> list[Path]:
    """Remove export folders (``auditor-export-*``) in the temp dir not modified for ``max_age_s`` seconds."""
    base = Path(base or tempfile.gettempdir())
    cutoff = time.time() - max_age_s
    removed = []
    for folder in base.glob(f"{TEMP_FOLDER_PREFIX}*"):
        with contextlib.suppress(OSError):
            if folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _remove_app_folder(folder: Path) -> None:
    if folder.name.startswith(TEMP_FOLDER_PREFIX):  # never anything but an export folder
        shutil.rmtree(folder, ignore_errors=True)
    with _app_folders_lock:
        _app_folders.discard(folder)


def _remove_all_app_folders() -> None:
    for folder in list(_app_folders):
        _remove_app_folder(folder)


atexit.register(_remove_all_app_folders)
