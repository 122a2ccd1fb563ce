"""Parquet and CSV input: how DuckDB reads them, and, for CSV, which line a record starts on.

CSV is read with one fixed dialect (RFC 4180: comma, double quotes doubled inside quoted cells, a header row), never
sniffed: a sniffer that guesses a different delimiter for one odd file turns a short row into a one-column table.
Python's csv module, set to the same dialect, only locates things: the line a record starts on (a quoted cell may
span lines) and the first structurally broken record when DuckDB refuses the file.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

from auditor.ingest.errors import IngestError
from auditor.ingest.limits import MAX_RECORD_BYTES
from auditor.sql import ident, lit

#: Longest CSV line (record) DuckDB is told to read: the record limit, plus room for quoting (a cell's quotes are
#: doubled) and for columns ingest does not read. A longer record is refused by DuckDB, a record within it but over
#: MAX_RECORD_BYTES by the rule table, both naming its line. DuckDB's own default (2 MiB) broke README's promise.
MAX_CSV_LINE_BYTES = 2 * MAX_RECORD_BYTES + (1 << 20)


class _Dialect(csv.Dialect):
    delimiter = ","
    quotechar = '"'
    doublequote = True
    skipinitialspace = False
    lineterminator = "\n"
    quoting = csv.QUOTE_MINIMAL
    strict = True


class BrokenRecord(Exception):
    """A record the csv module cannot parse, with the line it starts on."""

    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


def _records(path: Path, ends: bool = False) -> Iterator[tuple[int, list[str]]] | Iterator[tuple[int, int, list[str]]]:
    """(first line, cells) of every CSV record (with `ends`: (first line, last line, cells)), blank lines skipped;
    raises BrokenRecord or UnicodeDecodeError."""
    if csv.field_size_limit() < MAX_CSV_LINE_BYTES:  # the csv module's default stops at 128 KiB cells
        csv.field_size_limit(MAX_CSV_LINE_BYTES)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, _Dialect)
        start = 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise BrokenRecord(start, str(exc)) from None
            if cells:
                yield (start, reader.line_num, cells) if ends else (start, cells)
            start = reader.line_num + 1


def _line_endings(path: Path) -> list[str]:
    """How each line of a text file ends: "\r\n", "\n", "\r" or "" (the last line, unterminated)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return [line[len(line.rstrip("\r\n")):] for line in fh]


def csv_header(path: Path) -> tuple[list[str], str]:
    """Column names of a CSV file (a blank name becomes ``column<i>``, as DuckDB names it) and where the header is."""
    where = f"{path}:line 1"
    try:
        first = next(_records(path), None)
    except UnicodeDecodeError as exc:
        raise IngestError(where, None, f"not valid UTF-8 ({exc.reason})") from None
    except BrokenRecord as exc:
        raise IngestError(where, None, f"malformed CSV header: {exc.reason}") from None
    if first is None:
        raise IngestError(str(path), None, "file is empty: no header and no records")
    line, names = first
    return [name or f"column{i}" for i, name in enumerate(names)], f"{path}:line {line}"


def tabular_source(path: Path, columns: list[str]) -> str:
    """The DuckDB table function that reads a Parquet or CSV file (CSV cells as text: types are checked, not guessed)."""
    if path.suffix.lower() == ".parquet":
        return f"read_parquet({lit(str(path))})"
    spec = ", ".join(f"{lit(c)}: 'VARCHAR'" for c in columns)
    return (
        f"read_csv({lit(str(path))}, header = true, auto_detect = false, columns = {{{spec}}}, delim = ',', "
        "quote = '\"', escape = '\"', strict_mode = true, null_padding = false, "
        f"max_line_size = {MAX_CSV_LINE_BYTES})"
    )


def record_lines(path: Path, rows: list[int]) -> dict[int, int] | None:
    """Line on which each of the given 0-based data records starts; None when Python and DuckDB disagree on records."""
    wanted = set(rows)
    out: dict[int, int] = {}
    try:
        for position, (line, _cells) in enumerate(_records(path), start=-1):  # position -1 is the header
            if position in wanted:
                out[position] = line
    except (BrokenRecord, UnicodeDecodeError):
        return None
    return out if len(out) == len(wanted) else None


def first_broken_record(path: Path, n_columns: int) -> tuple[int, str] | None:
    """(line, what is wrong) of the first record DuckDB cannot read: bad UTF-8, broken quoting, wrong cell count."""
    with open(path, "rb") as fh:  # bad UTF-8 first, by line, since the csv module cannot say where it is
        for number, raw in enumerate(fh, start=1):
            try:
                (raw[3:] if number == 1 and raw.startswith(codecs.BOM_UTF8) else raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
    try:
        records = list(_records(path, ends=True))
    except BrokenRecord as exc:
        return exc.line, f"malformed CSV: {exc.reason}"
    for line, _end, cells in records:
        if len(cells) != n_columns:
            return line, f"expected {n_columns} cells, as in the header, got {len(cells)}"
    endings = _line_endings(path)  # DuckDB reads one line-end style per file
    style = endings[records[0][1] - 1] if records else ""
    for line, end, _cells in records[1:]:
        if endings[end - 1] not in (style, ""):
            names = {"\r\n": "CRLF", "\n": "LF", "\r": "CR"}
            return line, (f"line ends with {names[endings[end - 1]]} but the header with {names.get(style, style)}: "
                          "one file, one line-end style")
    return None


def parquet_columns_sql(path: Path, keys: list[str], present: set[str]) -> dict[str, str]:
    """How each read column of a Parquet file becomes the JSON the rule table checks, for the columns whose Parquet
    type is not JSON-ready: binary (``datasets`` and other writers store texts as bytes) is decoded as UTF-8, and a
    value that is not UTF-8 is refused naming its row; a date, time or timestamp column where ingest reads texts or
    scores is refused (DuckDB would otherwise store ``caf\\xC3\\xA9`` or ``2024-05-01 12:00:00`` as a text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    out: dict[str, str] = {}
    for key in keys:
        if key not in present:
            continue
        typ = schema.field(key).type
        inner = typ.value_type if pa.types.is_list(typ) or pa.types.is_large_list(typ) else typ
        if pa.types.is_temporal(inner):
            row = _first_non_null_row(path, key)
            raise IngestError(f"{path}:row {row}", key, f"a {inner} value where a text is expected: write the column "
                                                        "as strings")
        if pa.types.is_binary(inner) or pa.types.is_large_binary(inner) or pa.types.is_fixed_size_binary(inner):
            _refuse_non_utf8(path, key)
            col = ident(key)
            out[key] = (f"to_json(decode({col}))" if inner is typ
                        else f"to_json(list_transform({col}, lambda x: decode(x)))")
    return out


def _first_non_null_row(path: Path, key: str) -> int:
    import pyarrow.parquet as pq

    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[key]):
        column = batch.column(0)
        if column.null_count < len(column):
            return offset + next(i for i, v in enumerate(column.is_valid().to_pylist()) if v) + 1
        offset += len(column)
    return 1


def _refuse_non_utf8(path: Path, key: str) -> None:
    """The first value of binary column `key` (or item of a binary list) that is not UTF-8, refused with its row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[key]):
        column = batch.column(0)
        flat = column.flatten() if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) else column
        try:
            flat.cast(pa.large_string())
        except pa.ArrowInvalid:
            for i, value in enumerate(column.to_pylist()):
                items = value if isinstance(value, list) else [value]
                for n, item in enumerate(items, start=1):
                    if item is None:
                        continue
                    try:
                        item.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        what = f"item {n} is " if isinstance(value, list) else ""
                        raise IngestError(f"{path}:row {offset + i + 1}", key,
                                          f"{what}not valid UTF-8 (byte {item[exc.start]:#04x} at byte "
                                          f"{exc.start + 1}): binary texts must be UTF-8") from None
        offset += len(column)
