"""Reading one input file into a checked temporary table, and naming the line of anything wrong with it.

DuckDB reads the file and evaluates the rule table (`auditor.ingest.rules`) in the same pass; every record gets a
``_problem`` column (NULL when valid). Only when something is wrong does Python look at lines: to map the bad rows to
line numbers, or, when DuckDB cannot read the file at all, to find the lines it chokes on (`auditor.ingest.diagnose`)
and read the rest from a copy. Without --skip-bad the first problem stops the ingest; with it, bad records are
reported and dropped.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from auditor.ingest import diagnose, tabular
from auditor.ingest.errors import IngestError
from auditor.ingest.limits import MAX_RECORD_BYTES
from auditor.ingest.rules import Field, problem_sql, split_problem
from auditor.ingest.scratch import Scratch
from auditor.sql import ident, lit


@dataclass(frozen=True)
class Problem:
    """Something wrong with one record: its line (row for Parquet; None when only its position is known)."""

    line: int | None
    field: str | None
    message: str
    position: int = 0  # 0-based record position, for naming a record whose line is unknown


@dataclass
class Source:
    """An input file as DuckDB reads it: the file itself, a copy without its byte order mark, or a copy of its
    readable lines (then `line_of` holds each copied record's line in the input, and `left_out` the other lines)."""

    path: Path
    read_path: Path
    line_of: list[int] | None = None
    left_out: list[Problem] = field(default_factory=list)

    @property
    def kind(self) -> str:
        suffix = self.path.suffix.lower()
        return {".csv": "csv", ".parquet": "parquet"}.get(suffix, "jsonl")

    def where(self, problem: Problem) -> str:
        if self.kind == "parquet":
            return f"{self.path}:row {problem.position + 1}"
        if problem.line is None:
            return f"{self.path}:record {problem.position + 1}"
        return f"{self.path}:line {problem.line}" if self.kind == "csv" else f"{self.path}:{problem.line}"

    def lines(self, rows: list[int]) -> dict[int, int]:
        """Input line of each given 0-based record position (positions it cannot place are left out)."""
        if self.line_of is not None:
            return {r: self.line_of[r] for r in rows if r < len(self.line_of)}
        if self.kind == "parquet":
            return {r: r + 1 for r in rows}
        found = tabular.record_lines(self.path, rows) if self.kind == "csv" else diagnose.row_lines(self.read_path, rows)
        return found or {}


class Rejects:
    """The --skip-bad report: one JSON line per rejected input line, with file, line, field and reason."""

    def __init__(self, path: Path):
        self.path, self.count, self._fh = path, 0, None

    def add(self, file: Path, line: int | None, field: str | None, reason: str, raw: bytes | None) -> None:
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")
        record = {"file": str(file), "line": line, "field": field, "reason": reason}
        if raw is not None:
            record["text"] = raw.decode("utf-8", errors="replace").rstrip("\r\n")[:2000]
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None




def _short(exc: Exception, path: Path) -> str:
    """DuckDB's first line of complaint, without its own (often off-by-one) file and line references."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"^[A-Za-z ]*Error: ", "", text)
    text = re.sub(r' in file "[^"]*"(, in line \d+|, at byte \d+ in line \d+)?', "", text)
    return text.replace(str(path), path.name)[:300]


def _execute(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    """Run a query that reads input; returns its rows. An interrupted query (Ctrl-C, SIGTERM) stays an interruption,
    and an error whose message DuckDB cannot hand over (it quotes input cut inside a UTF-8 character) is still a
    duckdb.Error."""
    try:
        return con.execute(sql).fetchall()
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None
    except UnicodeDecodeError:
        raise duckdb.InvalidInputException("the input cannot be read (DuckDB's message quotes it unreadably)") from None


def cannot_read(src: Source, exc: Exception) -> IngestError:
    what = {"csv": " as CSV", "parquet": " as Parquet"}.get(src.kind, "")
    if isinstance(exc, duckdb.OutOfMemoryException):
        from auditor.config import STORE_MEMORY_LIMIT

        return IngestError(str(src.path), None, f"cannot read{what}: out of memory under the {STORE_MEMORY_LIMIT} "
                                                "ceiling; its records are too large together (raise AUDITOR_MEMORY_LIMIT)")
    return IngestError(str(src.path), None, f"cannot read{what}: {_short(exc, src.read_path)}")


# -- JSON lines ------------------------------------------------------------------------------------------------------


def jsonl_source(path: Path, scratch: Scratch) -> Source:
    """The file as DuckDB can read it: a copy without the byte order mark if it starts with one."""
    with open(path, "rb") as fh:
        head = fh.read(len(diagnose.BOM))
        if head != diagnose.BOM:
            return Source(path, path)
        copy = scratch.file(path.name)
        with open(copy, "wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)
    return Source(path, copy)


def readable_copy(src: Source, scratch: Scratch, read_keys: set[str] | None = None) -> tuple[Source, set[str]]:
    """The lines of `src` that DuckDB can read, copied to a scratch file, the others kept as problems; and the keys
    found in the copied lines."""
    out_path = scratch.file(f"readable-{src.path.name}")
    line_of: list[int] = []
    left_out = list(src.left_out)
    keys: set[str] = set()
    with open(out_path, "wb") as out:
        for line in diagnose.scan(src.read_path, read_keys):
            original = src.line_of[line.number - 1] if src.line_of is not None else line.number
            if line.problem:
                left_out.append(Problem(original, None, line.problem))
            else:
                out.write(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n")
                line_of.append(original)
                keys.update(line.keys or [])
    return Source(src.path, out_path, line_of, left_out), keys


def jsonl_keys(con: duckdb.DuckDBPyConnection, src: Source, scratch: Scratch) -> tuple[Source, set[str]]:
    """Every key of every record (a key first seen on a late line counts), in one DuckDB pass over the file."""
    try:
        rows = _execute(
            con,
            f"SELECT DISTINCT unnest(json_keys(json)) FROM read_json_objects({lit(str(src.read_path))}, "
            f"format = 'newline_delimited', maximum_object_size = {MAX_RECORD_BYTES})",
        )
        return src, {r[0] for r in rows}
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise cannot_read(src, exc) from None
        copy, keys = readable_copy(src, scratch)
        if len(copy.left_out) == len(src.left_out):
            raise cannot_read(src, exc) from None
        return copy, keys


def refuse_unreadable(src: Source, rejects: Rejects | None) -> None:
    """When no line of `src` could be read at all: its first bad line (or, with --skip-bad, all of them reported)."""
    if not src.left_out or src.line_of is None or src.line_of:
        return
    if rejects is None:
        first = src.left_out[0]
        raise IngestError(src.where(first), first.field, first.message, more=len(src.left_out) - 1)
    for p in src.left_out:
        rejects.add(src.path, p.line, p.field, p.message, None)
    raise IngestError(str(src.path), None, f"no valid records: all {len(src.left_out):,} were rejected "
                                           f"(reasons in {rejects.path})")


def _jsonl_sql(path: Path, keys: list[str]) -> str:
    spec = ", ".join(f"{lit(k)}: 'JSON'" for k in keys)
    return (
        f"read_json({lit(str(path))}, format = 'newline_delimited', columns = {{{spec}}}, "
        f"maximum_object_size = {MAX_RECORD_BYTES})"
    )


# -- reading and checking -----------------------------------------------------------------------------------------


def _read(con, table: str, src: Source, fields: list[Field], same_length, projection: str, columns) -> None:
    keys = [f.name for f in fields]
    if src.kind == "jsonl":
        cols, from_ = "*", _jsonl_sql(src.read_path, keys)
    else:
        present = set(columns)
        special = tabular.parquet_columns_sql(src.read_path, keys, present) if src.kind == "parquet" else {}
        cols = ", ".join(f"{special.get(k, f'to_json({ident(k)})')} AS {ident(k)}" if k in present
                         else f"NULL::JSON AS {ident(k)}" for k in keys)
        from_ = tabular.tabular_source(src.read_path, columns)
    _execute(
        con,
        f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {projection}, {problem_sql(fields, same_length)} AS _problem "
        f"FROM (SELECT {cols} FROM {from_})",
    )


def load_checked(
    con: duckdb.DuckDBPyConnection,
    src: Source,
    table: str,
    fields: list[Field],
    scratch: Scratch,
    rejects: Rejects | None,
    same_length: list[tuple[str, str]] | None = None,
    projection: str = "*",
    columns: list[str] | None = None,
) -> tuple[Source, int]:
    """Read `src` into temp `table` (its `projection` plus `_problem`) and deal with bad records: the first one is
    raised as an IngestError, or, with `rejects`, all are reported and deleted. Returns the Source actually read
    and the number of valid records kept."""
    try:
        _read(con, table, src, fields, same_length, projection, columns)
    except duckdb.Error as exc:
        if src.kind == "csv":
            broken = tabular.first_broken_record(src.read_path, len(columns or []))
            if broken:
                raise IngestError(f"{src.path}:line {broken[0]}", None, broken[1]) from None
        if src.kind != "jsonl" or isinstance(exc, duckdb.OutOfMemoryException):
            raise cannot_read(src, exc) from None
        copy, _keys = readable_copy(src, scratch, {f.name for f in fields})
        if len(copy.left_out) == len(src.left_out):
            raise cannot_read(src, exc) from None
        src = copy
        if src.line_of:
            try:
                _read(con, table, src, fields, same_length, projection, columns)
            except duckdb.Error as exc2:
                raise cannot_read(src, exc2) from None
        else:
            _execute(con, f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {projection}, NULL::VARCHAR AS _problem "
                          f"FROM (SELECT {', '.join(f'NULL::JSON AS {ident(f.name)}' for f in fields)}) WHERE false")
    n_rows, n_bad = con.execute(f"SELECT count(*), count(_problem) FROM {table}").fetchone()
    if n_rows == 0 and not src.left_out:
        raise IngestError(str(src.path), None, "file is empty: no records")
    limit = "" if rejects else "LIMIT 1"
    bad = con.execute(
        f"SELECT rowid, _problem FROM {table} WHERE _problem IS NOT NULL ORDER BY rowid {limit}"
    ).fetchall()
    lines = src.lines([row for row, _ in bad])
    problems = [Problem(lines.get(row), *split_problem(text), position=row) for row, text in bad]
    problems = sorted(src.left_out + problems, key=lambda p: (p.line is None, p.line or 0, p.position))
    if problems and rejects is None:
        first = problems[0]
        more = len(src.left_out) + n_bad - 1
        raise IngestError(src.where(first), first.field, first.message, more=more)
    if problems:
        raws = diagnose.lines_at(src.path, {p.line for p in problems if p.line}) if src.kind == "jsonl" else {}
        for p in problems:
            line = p.line if p.line is not None else p.position + 1
            rejects.add(src.path, line, p.field, p.message, raws.get(p.line))
        con.execute(f"DELETE FROM {table} WHERE _problem IS NOT NULL")
    if n_rows - n_bad == 0:
        raise IngestError(str(src.path), None, f"no valid records: all {len(problems):,} were rejected"
                          + (f" (reasons in {rejects.path})" if rejects else ""))
    return src, n_rows - n_bad


def unique_ids(con: duckdb.DuckDBPyConnection, src: Source, table: str, text_sql: str) -> None:
    """Refuse an id given twice with different texts in one file, naming both lines."""
    dup = con.execute(
        f"""
        SELECT id, rows[1], rows[2] FROM (
            SELECT json_extract_string(_id, '$') AS id, list(rowid ORDER BY rowid) AS rows
            FROM {table} GROUP BY 1 HAVING count(DISTINCT {text_sql}) > 1
        ) ORDER BY rows[2] LIMIT 1
        """
    ).fetchone()
    if dup:
        lines = src.lines([dup[1], dup[2]])
        first, second = lines.get(dup[1]), lines.get(dup[2])
        where = src.where(Problem(second, "_id", "", position=dup[2]))
        seen = f" (first seen on line {first})" if first else ""
        raise IngestError(where, "_id", f"duplicate id {dup[0]!r} with different text{seen}")


def one_prompt_per_query(con: duckdb.DuckDBPyConnection, src: Source, field: str, rejects: Rejects | None) -> int:
    """A query is stored once (its id is the hash of its text) with one prompt: a record giving the same query text
    another prompt than its first record with one is refused (with `rejects`: reported and left out), naming its line
    and the line of the first prompt; so is a prompt for a query the store already holds with another prompt (or
    none). A record without a prompt takes the query's prompt. Returns the records left out."""
    bad = con.execute(
        """
        SELECT rowid, first_row FROM (
            SELECT rowid, prompt, first(prompt ORDER BY rowid) OVER w AS first_prompt,
                   first(rowid ORDER BY rowid) OVER w AS first_row
            FROM recs WHERE prompt IS NOT NULL WINDOW w AS (PARTITION BY q_hash)
        ) WHERE prompt <> first_prompt ORDER BY rowid
        """
    ).fetchall()
    stored = con.execute(  # the store's own copy of the query (an earlier ingest) has its prompt already
        """
        SELECT r.rowid, q.prompt, q.dataset FROM recs r JOIN queries q ON q.query_id = substr(r.q_hash, 1, 16)
        WHERE r.prompt IS NOT NULL AND q.prompt IS DISTINCT FROM r.prompt ORDER BY r.rowid
        """
    ).fetchall()
    if not bad and not stored:
        return 0
    lines = src.lines(sorted({r for row in bad for r in row} | {row for row, _, _ in stored}))
    problems = []
    for row, first_row in bad:
        first = lines.get(first_row)
        seen = f"line {first}" if first else f"record {first_row + 1}"
        problems.append(Problem(lines.get(row), field, f"the same query was given another prompt on {seen}: a query "
                                                       "is stored once, with one prompt", position=row))
    for row, prompt, dataset in stored:
        held = f"prompt {prompt[:80]!r}" if prompt is not None else "no prompt"
        problems.append(Problem(lines.get(row), field, f"the store already holds this query (dataset {dataset!r}) "
                                                       f"with {held}: a query is stored once, with one prompt",
                                position=row))
    problems = list({p.position: p for p in sorted(problems, key=lambda p: p.position, reverse=True)}.values())
    problems.sort(key=lambda p: p.position)  # one problem per record
    return _refuse_or_drop(con, src, field, problems, rejects)


def _refuse_or_drop(con: duckdb.DuckDBPyConnection, src: Source, field: str, problems: list[Problem],
                    rejects: Rejects | None) -> int:
    """Records of `recs` found bad after the rule table: refuse the file naming the first (and counting the rest),
    or, with `rejects`, report each and leave them out. Returns the records left out."""
    if rejects is None:
        raise IngestError(src.where(problems[0]), field, problems[0].message, more=len(problems) - 1)
    raws = diagnose.lines_at(src.path, {p.line for p in problems if p.line}) if src.kind == "jsonl" else {}
    for p in problems:
        rejects.add(src.path, p.line if p.line is not None else p.position + 1, p.field, p.message, raws.get(p.line))
    con.execute(f"DELETE FROM recs WHERE rowid IN ({', '.join(str(p.position) for p in problems)})")
    if not con.execute("SELECT count(*) FROM recs").fetchone()[0]:
        raise IngestError(str(src.path), None, f"no valid records (reasons in {rejects.path})")
    return len(problems)


def every_query_has_a_positive(con: duckdb.DuckDBPyConnection, src: Source, field: str, rejects: Rejects | None) -> int:
    """Labeled inputs: a query none of whose documents is labelled 1 has nothing to audit its negatives against; its
    records are refused (with `rejects`: reported and left out), naming its first line. Returns the records left out."""
    bad = con.execute(
        "SELECT rowid FROM recs WHERE q_hash IN (SELECT q_hash FROM recs GROUP BY q_hash HAVING sum(len(pos)) = 0) "
        "ORDER BY rowid"
    ).fetchall()
    if not bad:
        return 0
    rows = [r for (r,) in bad]
    lines = src.lines(rows)
    message = "no positive: none of this query's documents is labelled 1 in this file"
    return _refuse_or_drop(con, src, field, [Problem(lines.get(r), field, message, position=r) for r in rows], rejects)
