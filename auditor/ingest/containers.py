"""Inputs in the containers other tools write, unpacked into one file the readers know, with errors translated back.

- ``-``: standard input (JSON lines), copied to a scratch file first: ingest reads its input more than once.
- ``.jsonl.gz`` / ``.json.gz``: decompressed (the line numbers stay those of the text inside).
- a JSON array of records (``[{...}, {...}]``, what ``json.dump(list)`` or ``df.to_json(orient="records")``
  writes): one record per line, each error naming the line where its record starts in the original.
- a folder of Parquet shards, or a Hugging Face ``datasets`` ``save_to_disk`` folder (``*.arrow`` files with
  ``dataset_info.json`` / ``state.json``): its tables concatenated into one Parquet file, in file-name order.

Error messages always name the user's file (or ``<stdin>``), never the scratch copy.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from auditor.ingest.errors import IngestError

STDIN = "-"
STDIN_NAME = "<stdin>"

Translate = Callable[[IngestError], IngestError]


def display_path(path: str | Path) -> Path:
    """How an input is named in messages and in the store's ingest log."""
    return Path(STDIN_NAME) if str(path) == STDIN else Path(path)


def logical_name(path: Path) -> Path:
    """The file name a compressed input stands for (train.jsonl.gz -> train.jsonl)."""
    return path.with_suffix("") if path.suffix.lower() == ".gz" else path


@contextlib.contextmanager
def unpacked(path: str | Path) -> Iterator[tuple[Path, Translate]]:
    """The file (or BEIR folder) to read for ``path``, and how to turn an error about it into one about ``path``."""
    shown = display_path(path)
    kind = _kind(path)
    if kind is None:
        yield Path(path), lambda exc: exc
        return
    with tempfile.TemporaryDirectory(prefix="auditor-unpack-") as folder:
        if kind == "tables":
            target = Path(folder) / f"{shown.name or 'data'}.parquet"
            _tables_to_parquet(Path(path), target)
            yield target, _translator(target, shown, None)
            return
        source = Path(path)
        if kind in ("stdin", "gzip"):  # the bytes first, as a file: its content may be JSON lines or an array
            source = Path(folder) / "raw"
            if kind == "stdin":
                with open(source, "wb") as out:
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
            else:
                _gunzip(Path(path), source, shown)
        target = Path(folder) / logical_name(shown).name
        starts = None
        if _starts_with_bracket(source):
            target = target.with_suffix(".jsonl")
            starts = _array_to_lines(source, target, shown)
        elif kind in ("stdin", "gzip"):
            source.rename(target)
        else:  # never the user's own file moved
            target = source
        yield target, _translator(target, shown, starts)


def _kind(path: str | Path) -> str | None:
    if str(path) == STDIN:
        return "stdin"
    p = Path(path)
    if p.is_dir():
        if (p / "corpus.jsonl").exists():
            return None  # BEIR
        if _table_files(p):
            return "tables"
        return None
    if p.suffix.lower() == ".gz":
        return "gzip"
    if p.suffix.lower() in (".json", ".jsonl") and p.is_file() and _starts_with_bracket(p):
        return "array"
    return None


def _table_files(folder: Path) -> list[Path]:
    parquet = sorted(folder.glob("*.parquet"))
    arrow = sorted(folder.glob("*.arrow"))
    return parquet or arrow


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _gunzip(path: Path, target: Path, shown: Path) -> None:
    try:
        with gzip.open(path, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, EOFError) as exc:
        raise IngestError(str(shown), None, f"cannot decompress: {exc}") from None


def _array_to_lines(source: Path, target: Path, shown: Path) -> list[int]:
    """Write each element of the JSON array in ``source`` as one line of ``target``; returns the line (in
    ``source``) where each element starts."""
    text = source.read_bytes()
    try:
        doc = text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text[: exc.start].count(b"\n") + 1
        raise IngestError(f"{shown}:{line}", None, f"not valid UTF-8 (byte {text[exc.start]:#04x})") from None
    decoder = json.JSONDecoder()
    pos = doc.index("[") + 1
    starts: list[int] = []
    line, counted = 1, 0
    with open(target, "w", encoding="utf-8") as out:
        while True:
            pos = _skip_space(doc, pos)
            if pos < len(doc) and doc[pos] == "]":
                break
            if starts:
                if pos >= len(doc) or doc[pos] != ",":
                    raise IngestError(f"{shown}:{_line_at(doc, pos)}", None, "malformed JSON array: expected ',' "
                                      "or ']' between records")
                pos = _skip_space(doc, pos + 1)
            line += doc.count("\n", counted, pos)
            counted = pos
            try:
                value, end = decoder.raw_decode(doc, pos)
            except json.JSONDecodeError as exc:
                raise IngestError(f"{shown}:{_line_at(doc, exc.pos)}", None, f"malformed JSON: {exc.msg}") from None
            starts.append(line)
            out.write(json.dumps(value, ensure_ascii=False) + "\n")
            pos = end
    if _skip_space(doc, pos + 1) != len(doc):
        raise IngestError(f"{shown}:{_line_at(doc, pos + 1)}", None, "text after the end of the JSON array")
    if not starts:
        raise IngestError(str(shown), None, "file is empty: no records (an empty JSON array)")
    return starts


def _skip_space(doc: str, pos: int) -> int:
    while pos < len(doc) and doc[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_at(doc: str, pos: int) -> int:
    return doc.count("\n", 0, pos) + 1


def _tables_to_parquet(folder: Path, target: Path) -> None:
    """The folder's Parquet shards or Arrow files (datasets' save_to_disk) as one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _table_files(folder)
    try:
        if files[0].suffix == ".parquet":
            tables = [pq.read_table(f) for f in files]
        else:
            tables = [_read_arrow(f) for f in files]
        table = pa.concat_tables(tables, promote_options="default")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for an unreadable file
        raise IngestError(str(folder), None, f"cannot read its tables as one: {str(exc).splitlines()[0][:300]}") \
            from None
    pq.write_table(table, target)


def _read_arrow(path: Path):
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()  # what datasets writes
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _translator(target: Path, shown: Path, starts: list[int] | None) -> Translate:
    def translate(exc: IngestError) -> IngestError:
        where = exc.where
        if not where.startswith(str(target)):
            return exc
        rest = where[len(str(target)):]
        m = re.match(r"^:(\d+)(.*)$", rest)
        if m and starts is not None:
            n = int(m.group(1))
            rest = f":{starts[n - 1] if 0 < n <= len(starts) else n}{m.group(2)}"
        return IngestError(f"{shown}{rest}", exc.field, exc.reason, exc.more)

    return translate
