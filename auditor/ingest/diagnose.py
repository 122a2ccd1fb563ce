"""Line-level reading of JSON-lines input in Python: what DuckDB's reader would refuse, and on which line.

The fast path reads a whole file with DuckDB. When DuckDB cannot read it, this module finds the line to blame; it
mirrors what makes DuckDB's ``read_json`` fail (bad UTF-8, malformed JSON, a lone surrogate, a line that is not an
object, a key given twice) and nothing else: field values are judged by the rule table alone
(`auditor.ingest.rules`), in SQL. Lines that Python's parser rejects but DuckDB's accepts (trailing commas, ``nan``,
very deep nesting, integers of thousands of digits) are handed to DuckDB's parser, so both agree on what is JSON.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from auditor.ingest.limits import MAX_RECORD_BYTES

#: A UTF-8 byte order mark: accepted at the start of a file and ignored (DuckDB's JSON reader would refuse it).
BOM = b"\xef\xbb\xbf"

#: Bytes that make a line blank (DuckDB's JSON reader skips such lines; so does ingest, in the same way).
_BLANK_BYTES = b" \t\r\n\x0b\x0c"

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Line:
    """One non-blank line: its number, its bytes, its keys in order (None when unreadable) and what is wrong."""

    number: int
    raw: bytes
    keys: list[str] | None
    problem: str | None


def is_blank(raw: bytes) -> bool:
    return not raw.strip(_BLANK_BYTES)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line, with a leading byte order mark removed from line 1."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not is_blank(raw):
                yield number, raw


def read_line(number: int, raw: bytes, read_keys: set[str] | None = None) -> Line:
    """Check one line as DuckDB's reader would; `read_keys` are the keys read as columns (a duplicate one fails)."""
    if len(raw) > MAX_RECORD_BYTES:
        return Line(number, raw, None, f"record is {len(raw):,} bytes, more than the limit of {MAX_RECORD_BYTES:,}")
    stripped = raw.strip(_BLANK_BYTES)
    try:
        text = stripped.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = exc.start + raw.index(stripped[:1]) + 1
        return Line(number, raw, None, f"not valid UTF-8 (byte {stripped[exc.start]:#04x} at column {column})")
    parsed = _parse(text)
    if isinstance(parsed, str):
        return Line(number, raw, None, f"malformed JSON: {parsed}")
    kind, pairs = parsed
    if kind != "object":
        return Line(number, raw, None, f"expected a JSON object, got {kind}")
    keys = [k for k, _ in pairs]
    if any(_SURROGATE.search(k) or in_value for k, in_value in pairs):
        return Line(number, raw, keys, "lone UTF-16 surrogate in a string (\\ud800-\\udfff without its pair)")
    if read_keys:
        seen: set[str] = set()
        for k in keys:
            if k in read_keys and k in seen:
                return Line(number, raw, keys, f"key {k!r} appears twice")
            seen.add(k)
    return Line(number, raw, keys, None)


def scan(path: Path, read_keys: set[str] | None = None) -> Iterator[Line]:
    """Every non-blank line of a JSON-lines file, checked (see `read_line`)."""
    for number, raw in iter_lines(path):
        yield read_line(number, raw, read_keys)


def first_keys(path: Path) -> tuple[list[str] | None, int, str | None]:
    """Keys of the first record (None if it is unreadable), its line number, and its problem; line 0 if no record."""
    for line in scan(path):
        return line.keys, line.number, line.problem
    return None, 0, None


def key_lines(path: Path, wanted: set[str]) -> dict[str, int]:
    """The first line on which each of `wanted` keys occurs (to point at a key a format would not read)."""
    found: dict[str, int] = {}
    for line in scan(path):
        for k in line.keys or []:
            if k in wanted and k not in found:
                found[k] = line.number
        if len(found) == len(wanted):
            break
    return found


def row_lines(path: Path, rows: list[int]) -> dict[int, int] | None:
    """Line numbers of the given 0-based record positions (DuckDB reads non-blank lines in order); None when the
    file's record count cannot be matched (then a row is named by its position instead)."""
    wanted = sorted(set(rows))
    out: dict[int, int] = {}
    position = -1
    i = 0
    for number, _raw in iter_lines(path):
        position += 1
        if i < len(wanted) and wanted[i] == position:
            out[position] = number
            i += 1
    return out if len(out) == len(wanted) else None


def lines_at(path: Path, numbers: set[int]) -> dict[int, bytes]:
    """The bytes of the given lines (for the --skip-bad report)."""
    out: dict[int, bytes] = {}
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number in numbers:
                out[number] = raw
                if len(out) == len(numbers):
                    break
    return out


# -- parsing -------------------------------------------------------------------------------------------------------

_JSON_KINDS = {dict: "object", list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}

_local = threading.local()


def _duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for parsing single lines, one per thread (the app ingests from several)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect()
    return con


def _parse(text: str) -> tuple[str, list[tuple[str, bool]]] | str:
    """(kind, [(key, value holds a lone surrogate)]) of a JSON text, or the parser's complaint.

    Python's parser first (fast, precise messages); what it refuses or cannot nest deep enough goes to DuckDB's, which
    is the one that decides in the end.
    """
    try:
        value = json.loads(text, object_pairs_hook=_Pairs)
    except RecursionError:
        return _parse_duckdb(text, None)
    except ValueError as exc:  # "Expecting ',' delimiter: line 1 column 18 (char 17)": the line is ours to name
        return _parse_duckdb(text, re.sub(r": line \d+ column (\d+) \(char \d+\)$", r" at column \1", str(exc)))
    if isinstance(value, _Pairs):
        return "object", [(k, _has_surrogate(v)) for k, v in value.pairs]
    if value is None:
        return "null", []
    return _JSON_KINDS.get(type(value), type(value).__name__), []


def _parse_duckdb(text: str, python_error: str | None) -> tuple[str, list[tuple[str, bool]]] | str:
    con = _duckdb()
    try:
        kind, keys = con.execute("SELECT json_type(j), json_keys(j) FROM (SELECT json(?) AS j)", [text]).fetchone()
    except duckdb.Error as exc:
        return python_error or str(exc).splitlines()[0].split("Error: ", 1)[-1].split("  Input:")[0][:200]
    names = {"OBJECT": "object", "ARRAY": "a list", "VARCHAR": "a string", "BOOLEAN": "true/false", "NULL": "null"}
    return names.get(kind, "a number"), [(k, False) for k in keys or []]


class _Pairs(dict):
    """A JSON object that remembers its key/value pairs in order, duplicates included."""

    def __init__(self, pairs: list[tuple[str, object]]):
        super().__init__(pairs)
        self.pairs = pairs


def _has_surrogate(value: object) -> bool:
    """Whether any string in a (parsed) JSON value holds a lone surrogate; iterative, any depth."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, _Pairs):
            for k, item in v.pairs:
                if _SURROGATE.search(k):
                    return True
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
    return False
