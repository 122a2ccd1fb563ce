"""Verdict events and review progress: what annotators said.

Verdicts are insert-only events in ``verdicts``; an undo is one more event naming the event it takes back, so the table
is an audit trail and two annotators writing at once never overwrite each other (use ``con.cursor()`` per thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import pandas as pd

from auditor.config import DEFAULT_BAND_CONFIG
from auditor.store import StoreError, transaction

from .choice import BAND_LEVEL_SQL, RECORDED_MODES
from .state import chosen_model, settle

VERDICTS = ("false_negative", "true_negative", "unsure")




def _validate_verdict(verdict: str, annotator: str, where: str = "") -> None:
    if verdict not in VERDICTS:
        raise ValueError(f"{where}verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError(f"{where}annotator must be a non-empty name")


def record_verdict(
    con: duckdb.DuckDBPyConnection,
    *,
    query_id: str,
    doc_id: str,
    verdict: str,
    annotator: str,
    note: str | None = None,
    origin: str = "app",
    band: str | None = None,
    queue_mode: str | None = None,
    sampling_prob: float | None = None,
) -> int:
    """Append one verdict event and return its event_id. Nothing is ever updated: a changed mind is a new event."""
    _validate_verdict(verdict, annotator)
    if queue_mode is not None and queue_mode not in RECORDED_MODES:
        raise ValueError(f"queue_mode must be one of {', '.join(RECORDED_MODES)} or None, got {queue_mode!r}")
    if sampling_prob is not None and not 0.0 < float(sampling_prob) <= 1.0:
        raise ValueError(f"sampling_prob must be in (0, 1], got {sampling_prob}")
    row = con.execute(
        """
        INSERT INTO verdicts (query_id, doc_id, verdict, annotator, note, origin, band, queue_mode, sampling_prob)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING event_id
        """,
        [query_id, doc_id, verdict, annotator.strip(), note or None, origin, band, queue_mode, sampling_prob],
    ).fetchall()
    return int(row[0][0])


def record_verdicts(
    con: duckdb.DuckDBPyConnection, rows: Iterable[dict[str, Any]], origin: str = "import",
    *, config: str = DEFAULT_BAND_CONFIG, model: str | None = None,
    then: Callable[[duckdb.DuckDBPyConnection], Any] | None = None,
) -> int:
    """Append many verdict events in one transaction (all or nothing); returns how many were written.

    ``then(con)`` runs inside that transaction after the insert (a refit of the risk on the new verdicts): a kill
    or an error in it leaves neither the verdicts nor a half-done refit.

    Each row needs query_id, doc_id, verdict, annotator (note, band, queue_mode, sampling_prob optional). Unknown
    query or document ids are rejected. A missing band is filled from the current bands of (config, model).
    """
    records = []
    for i, r in enumerate(rows):
        where = f"row {i + 1}: "
        for key in ("query_id", "doc_id", "verdict", "annotator"):
            if not isinstance(r.get(key), str) or not r.get(key):
                raise ValueError(f"{where}field {key!r} must be a non-empty string")
        _validate_verdict(r["verdict"], r["annotator"], where)
        note = r.get("note")
        if note is not None and not isinstance(note, str):
            raise ValueError(f"{where}field 'note' must be a string")
        records.append(
            (r["query_id"], r["doc_id"], r["verdict"], r["annotator"].strip(), note or None, origin,
             r.get("band"), r.get("queue_mode"), r.get("sampling_prob"))
        )
    if not records:
        return 0
    df = pd.DataFrame(
        records,
        columns=["query_id", "doc_id", "verdict", "annotator", "note", "origin", "band", "queue_mode",
                 "sampling_prob"],
    ).astype({"band": "object", "queue_mode": "object", "note": "object", "sampling_prob": "float64"})
    try:
        banded_model = chosen_model(con, model)
    except StoreError:
        banded_model = None
    settle(con)
    with transaction(con):
        con.register("_incoming_verdicts", df)
        try:
            bad = con.execute(
                """
                SELECT i.query_id, i.doc_id,
                       NOT EXISTS (SELECT 1 FROM queries q WHERE q.query_id = i.query_id) AS bad_q
                FROM _incoming_verdicts i
                WHERE NOT EXISTS (SELECT 1 FROM queries q WHERE q.query_id = i.query_id)
                   OR NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = i.doc_id)
                LIMIT 1
                """
            ).fetchall()
            if bad:
                bad = bad[0]
                what = f"query id {bad[0]!r}" if bad[2] else f"document id {bad[1]!r}"
                raise StoreError(f"unknown {what}: verdicts must name ids that exist in the store")
            con.execute(
                """
                INSERT INTO verdicts (query_id, doc_id, verdict, annotator, note, origin, band, queue_mode,
                                      sampling_prob)
                SELECT i.query_id, i.doc_id, i.verdict, i.annotator, i.note, i.origin,
                       coalesce(i.band, b.band), i.queue_mode, i.sampling_prob
                FROM _incoming_verdicts i
                LEFT JOIN bands b ON b.config = ? AND b.model = ? AND b.query_id = i.query_id AND b.doc_id = i.doc_id
                """,
                [config, banded_model],
            )
        finally:
            con.unregister("_incoming_verdicts")
        if then is not None:
            then(con)
    return len(records)


#: Undo reads "the latest verdict not yet undone" and then appends; two undos interleaved between those steps would
#: both take back the same verdict. One process writes a store (DuckDB's rule), so a process-wide lock serialises them.
_UNDO_LOCK = threading.Lock()


def undo_last(con: duckdb.DuckDBPyConnection, *, annotator: str) -> dict[str, Any] | None:
    """Take back ``annotator``'s latest verdict that is not already undone, by appending an 'undo' event.

    Returns {query_id, doc_id, verdict, event_id} of the verdict taken back (event_id is that verdict's id), or None
    when there is nothing to undo. Repeated calls walk back through the annotator's history; concurrent calls take
    back distinct verdicts.
    """
    with _UNDO_LOCK:
        row = con.execute(
            """
            SELECT event_id, query_id, doc_id, verdict, band FROM verdicts
            WHERE annotator = ? AND verdict <> 'undo'
              AND event_id NOT IN (SELECT undoes FROM verdicts WHERE undoes IS NOT NULL)
            ORDER BY event_id DESC LIMIT 1
            """,
            [annotator],
        ).fetchall()
        if not row:
            return None
        event_id, query_id, doc_id, verdict, band = row[0]
        con.execute(
            "INSERT INTO verdicts (query_id, doc_id, verdict, annotator, origin, band, undoes) "
            "VALUES (?, ?, 'undo', ?, 'app', ?, ?)",
            [query_id, doc_id, annotator, band, event_id],
        )
    return {"query_id": query_id, "doc_id": doc_id, "verdict": verdict, "event_id": int(event_id)}


def review_progress(
    con: duckdb.DuckDBPyConnection,
    *,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    annotator: str | None = None,
) -> pd.DataFrame:
    """Per band: total items, reviewed items (by anyone, or by ``annotator``), remaining, and verdict counts.

    Rows come in risk order (suspicious, ambiguous, too_easy); bands with no items show total 0.
    """
    model = chosen_model(con, model)
    params: list[Any] = []
    who = ""
    if annotator is not None:
        who = "WHERE annotator = ?"
        params.append(annotator)
    df = con.execute(
        f"""
        WITH item_verdicts AS (
            SELECT query_id, doc_id,
                   bool_or(verdict = 'false_negative') AS fn,
                   bool_or(verdict = 'true_negative') AS tn,
                   bool_and(verdict = 'unsure') AS un
            FROM current_verdicts {who} GROUP BY query_id, doc_id
        ),
        all_bands AS (SELECT unnest(['suspicious', 'ambiguous', 'too_easy']) AS band)
        SELECT a.band,
               count(b.doc_id) AS total,
               count(v.doc_id) AS reviewed,
               count(b.doc_id) - count(v.doc_id) AS remaining,
               count(*) FILTER (WHERE v.fn) AS false_negative,
               count(*) FILTER (WHERE v.tn AND NOT v.fn) AS true_negative,
               count(*) FILTER (WHERE v.un) AS unsure
        FROM all_bands a
        LEFT JOIN bands b ON b.band = a.band AND b.config = ? AND b.model = ?
        LEFT JOIN item_verdicts v ON v.query_id = b.query_id AND v.doc_id = b.doc_id
        GROUP BY a.band ORDER BY {BAND_LEVEL_SQL.format(b='a.band')}
        """,
        params + [config, model],
    ).df()
    return df
