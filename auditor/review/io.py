"""Verdicts in and out as JSONL: from another annotator, a script or an LLM judge, and back out as an audit trail.

Import lines are ``{"query_id", "doc_id", "verdict", "annotator"?, "note"?}``; ``verdict`` is false_negative,
true_negative or unsure; ``annotator`` may be left out when a default annotator is given (``--annotator``). Other
keys are ignored (an LLM judge's ``reason`` does no harm). The whole file is checked before anything is written
(each problem names file, line and field); then all lines go in as one transaction, or none do. A line equal to
its annotator's verdict in force is skipped, so importing the same file twice adds nothing. Ids must exist in the
store, as the source's ids (the same ids ``auditor queue --json`` prints).

Export writes either the whole event log (an audit trail: undos included, with ``undoes``; import does not take it
back, since an undo names an event id of the other store), or with ``current_only`` each annotator's verdict in
force, in the import layout: that is the file to move verdicts between stores. The queue mode and sampling
probability stay behind, so moved verdicts count as not randomly sampled in the other store's statistics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from auditor.config import DEFAULT_BAND_CONFIG
from auditor.store import StoreError

from .verdicts import VERDICTS, record_verdicts

Progress = Callable[[int, int], None]


class VerdictFileError(StoreError):
    """A problem in a verdict file, with file, line and field in the message."""


@dataclass
class ImportSummary:
    path: str
    written: int = 0
    unchanged: int = 0  #: lines equal to the annotator's verdict in force (skipped, so re-imports add nothing)
    per_verdict: dict[str, int] = field(default_factory=dict)
    annotators: list[str] = field(default_factory=list)


def _problem(path: Path, line: int, msg: str) -> VerdictFileError:
    return VerdictFileError(f"{path}:{line}: {msg}; nothing was imported")


def read_verdict_file(path: str | Path, *, annotator: str | None = None) -> list[dict[str, Any]]:
    """Parse and check a verdict JSONL file (no store needed); rows carry their 1-based ``line``."""
    path = Path(path)
    if not path.exists():
        raise VerdictFileError(f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _problem(path, n, f"not valid UTF-8 (byte {exc.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _problem(path, n, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise _problem(path, n, "each line must be a JSON object")
            if "annotator" not in obj and annotator is not None:
                obj["annotator"] = annotator
            for key in ("query_id", "doc_id", "verdict", "annotator"):
                value = obj.get(key)
                if value is None:
                    hint = " (or pass --annotator NAME)" if key == "annotator" else ""
                    raise _problem(path, n, f"field {key!r} is missing{hint}")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("query_id", "doc_id"):
                    value = obj[key] = str(value)  # numeric ids (BEIR files often have them) are ids all the same
                if not isinstance(value, str) or not value.strip():
                    raise _problem(path, n, f"field {key!r} must be a non-empty string, got {value!r}")
            if obj["verdict"] not in VERDICTS:
                raise _problem(path, n, f"field 'verdict' must be one of {', '.join(VERDICTS)}, got {obj['verdict']!r}")
            note = obj.get("note")
            if note is not None and not isinstance(note, str):
                raise _problem(path, n, f"field 'note' must be a string, got {type(note).__name__}")
            rows.append({"line": n, "query_id": obj["query_id"], "doc_id": obj["doc_id"], "verdict": obj["verdict"],
                         "annotator": obj["annotator"].strip(), "note": note})
    if not rows:
        raise VerdictFileError(f"{path}: the file holds no verdicts; nothing was imported")
    return rows


def import_verdicts(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    annotator: str | None = None,
    origin: str = "import",
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    then: Callable[[duckdb.DuckDBPyConnection], Any] | None = None,
) -> ImportSummary:
    """Check a verdict file completely, then append all its verdicts in one transaction (or none); ``then(con)``
    runs in that transaction (see :func:`auditor.review.record_verdicts`)."""
    path = Path(path)
    rows = read_verdict_file(path, annotator=annotator)
    frame = pd.DataFrame(rows)[["line", "query_id", "doc_id", "verdict", "annotator", "note"]].astype("object")
    con.complete()  # DuckDB refuses register() while a half-read result is pending
    con.register("_verdict_file_ids", frame)
    try:
        bad = con.execute(
            """
            SELECT f.line, f.query_id, f.doc_id,
                   NOT EXISTS (SELECT 1 FROM queries q WHERE q.query_id = f.query_id) AS bad_query
            FROM _verdict_file_ids f
            WHERE NOT EXISTS (SELECT 1 FROM queries q WHERE q.query_id = f.query_id)
               OR NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = f.doc_id)
            ORDER BY f.line LIMIT 1
            """
        ).fetchall()
        # Lines that repeat the annotator's verdict in force change nothing: re-importing a file is a no-op.
        unchanged = {
            int(r[0])
            for r in con.execute(
                """
                SELECT f.line FROM _verdict_file_ids f JOIN current_verdicts v
                  ON v.query_id = f.query_id AND v.doc_id = f.doc_id AND v.annotator = f.annotator
                 AND v.verdict = f.verdict AND v.note IS NOT DISTINCT FROM f.note
                """
            ).fetchall()
        }
    finally:
        con.unregister("_verdict_file_ids")
    if bad:
        line, q, d, bad_query = bad[0]
        field_name, value = ("query_id", q) if bad_query else ("doc_id", d)
        raise _problem(path, int(line), f"field {field_name!r}: unknown id {value!r} (not in this store)")
    fresh = [r for r in rows if r["line"] not in unchanged]
    written = record_verdicts(con, fresh, origin=origin, config=config, model=model, then=then)
    summary = ImportSummary(path=str(path), written=written, unchanged=len(rows) - len(fresh))
    for r in rows:
        summary.per_verdict[r["verdict"]] = summary.per_verdict.get(r["verdict"], 0) + 1
    summary.annotators = sorted({r["annotator"] for r in rows})
    return summary


def export_verdicts(con: duckdb.DuckDBPyConnection, out_path: str | Path, *, current_only: bool = False) -> int:
    """Write verdict events (or current verdicts) as JSONL, atomically (``-``: standard output); returns the number
    of lines."""
    from auditor.export import STDOUT, copy_atomic, to_stdout_through_file

    if current_only:
        sql = """
            SELECT query_id, doc_id, verdict, annotator, note, created_at, origin, band, queue_mode, sampling_prob,
                   event_id
            FROM current_verdicts ORDER BY event_id
        """
        n = con.execute("SELECT count(*) FROM current_verdicts").fetchall()[0][0]
    else:
        sql = """
            SELECT event_id, query_id, doc_id, verdict, annotator, note, created_at, origin, band, queue_mode,
                   sampling_prob, undoes
            FROM verdicts ORDER BY event_id
        """
        n = con.execute("SELECT count(*) FROM verdicts").fetchall()[0][0]
    if str(out_path) == STDOUT:
        with to_stdout_through_file("verdicts.jsonl") as tmp:
            copy_atomic(con, sql, tmp)
    else:
        copy_atomic(con, sql, out_path)
    return int(n)
