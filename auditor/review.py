"""Verdict events, review progress and the context of one item: what annotators said, and what they see.

Verdicts are insert-only events in ``verdicts``; an undo is one more event naming the event it takes back, so the table
is an audit trail and two annotators writing at once never overwrite each other (use ``con.cursor()`` per thread).
Which item comes next is :mod:`auditor.queue`'s job; its entry points are re-exported here for callers that think
of "review" as one thing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import pandas as pd

from auditor.config import DEFAULT_BAND_CONFIG, ReviewConfig
from auditor.queue import (  # noqa: F401 - re-exported: the queue's entry points
    BAND_LEVEL_SQL, BANDS, MODES, RECORDED_MODES, build_queue, needs_two_annotators, next_item, resolve_model, risk_of,
    settle,
)
from auditor.store import StoreError, transaction

VERDICTS = ("false_negative", "true_negative", "unsure")

#: Characters of a document kept in the "other candidates" snippets.
SNIPPET_CHARS = ReviewConfig.snippet_chars


# --------------------------------------------------------------------------------------------------------------
# verdict events
# --------------------------------------------------------------------------------------------------------------

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
        banded_model = resolve_model(con, model, config)
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


# --------------------------------------------------------------------------------------------------------------
# progress and context
# --------------------------------------------------------------------------------------------------------------

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
    model = resolve_model(con, model, config)
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


def item_context(
    con: duckdb.DuckDBPyConnection,
    query_id: str,
    doc_id: str,
    *,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
) -> dict[str, Any]:
    """Everything a reviewer needs to judge one item: the query, its positives, the candidate, its siblings.

    The siblings (``others``) come without their texts: the page shows them only when asked, through
    :func:`sibling_texts`. Every read is of one query's rows or of a few documents by id, filters DuckDB applies
    inside the scan (a query's rows lie together; ``= ANY(list)`` is a pushed-down filter where ``IN (SELECT ...)``
    joins every document), so the cost stays near constant as the store grows.
    """
    model = resolve_model(con, model, config)
    q = con.execute("SELECT text, prompt FROM queries WHERE query_id = ? LIMIT 1", [query_id]).fetchall()
    if not q:
        raise StoreError(f"unknown query id {query_id!r}")
    labeled = con.execute(
        "SELECT doc_id, grade, teacher_score FROM qrels WHERE query_id = ? AND relevant", [query_id]
    ).fetchall()
    texts = {
        r[0]: (r[1], r[2])
        for r in con.execute(
            "SELECT doc_id, title, text FROM documents WHERE doc_id = ANY(?)", [[doc_id, *(r[0] for r in labeled)]]
        ).fetchall()
    }
    if doc_id not in texts:
        raise StoreError(f"unknown document id {doc_id!r}")
    positives = sorted(
        ({"doc_id": d, "title": texts[d][0], "text": texts[d][1], "grade": g, "teacher_score": t}
         for d, g, t in labeled if d in texts),
        key=lambda p: (p["grade"] is None, -(p["grade"] or 0), p["doc_id"]),
    )
    # One statement reads the query's rows of each per-candidate table once: the candidate and its siblings.
    cur = con.execute(
        """
        WITH s AS (SELECT * FROM scored WHERE model = $m AND query_id = $q),
             b AS (SELECT doc_id, band, rule, weight FROM bands WHERE config = $c AND model = $m AND query_id = $q),
             r AS (SELECT doc_id, p_fn, prior, origin, fit_id FROM risk WHERE model = $m AND query_id = $q),
             c AS (SELECT doc_id, list(DISTINCT source ORDER BY source) AS sources,
                          max(source_score) FILTER (WHERE source = 'given') AS teacher
                   FROM candidates WHERE query_id = $q GROUP BY doc_id),
             ids AS (SELECT doc_id FROM c UNION SELECT $d)
        SELECT ids.doc_id, b.band, b.rule, s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio,
               s.rank, b.weight, s.sim_to_pos, s.ce_neg, s.ce_pos, s.bm25, s.bm25_rank, s.lex_to_pos, s.fused_rank,
               r.p_fn, r.prior, r.origin, rf.n_labels, c.sources, c.teacher,
               s.doc_id IS NOT NULL AND b.doc_id IS NOT NULL AS banded
        FROM ids LEFT JOIN s USING (doc_id) LEFT JOIN b USING (doc_id) LEFT JOIN r USING (doc_id)
             LEFT JOIN c USING (doc_id) LEFT JOIN risk_fits rf ON rf.fit_id = r.fit_id
        ORDER BY s.rank NULLS LAST, s.s_neg DESC, ids.doc_id
        """,
        {"q": query_id, "d": doc_id, "m": model, "c": config},
    )
    names = [x[0] for x in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    candidate = next(r for r in rows if r["doc_id"] == doc_id)
    candidate.pop("banded")
    candidate["title"], candidate["text"] = texts[doc_id]
    candidate["sources"] = list(candidate["sources"] or [])
    teacher_pos = [p["teacher_score"] for p in positives if p["teacher_score"] is not None]
    candidate["teacher_pos"] = max(teacher_pos) if teacher_pos else None
    others = [
        {"doc_id": r["doc_id"], "band": r["band"], "rule": r["rule"], "s_neg": r["s_neg"], "delta": r["delta"],
         "rank": r["rank"]}
        for r in rows if r["doc_id"] != doc_id and r["banded"]
    ]
    verdicts_cur = con.execute(
        "SELECT annotator, verdict, note, created_at FROM current_verdicts WHERE query_id = ? AND doc_id = ? "
        "ORDER BY event_id",
        [query_id, doc_id],
    )
    vnames = [d[0] for d in verdicts_cur.description]
    from auditor.risk import drivers

    risk = None
    if candidate.get("p_fn") is not None:
        risk = {"p_fn": candidate["p_fn"], "origin": candidate["origin"], "prior": candidate["prior"],
                "n_labels": candidate["n_labels"], "drivers": drivers(candidate)}
    return {
        "risk": risk,
        "query_id": query_id,
        "query": q[0][0],
        "prompt": q[0][1],
        "positives": positives,
        "candidate": candidate,
        "others": others,
        "verdicts": [dict(zip(vnames, r)) for r in verdicts_cur.fetchall()],
        "model": model,
        "config": config,
    }


def sibling_texts(con: duckdb.DuckDBPyConnection, doc_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """doc_id -> (title, the text's first ``ReviewConfig.snippet_chars`` characters), for the siblings of an item
    that the Review page lists when its "other candidates" are opened."""
    ids = [str(d) for d in doc_ids]
    if not ids:
        return {}
    rows = con.execute(
        f"SELECT doc_id, title, left(text, {int(SNIPPET_CHARS)}) FROM documents WHERE doc_id = ANY(?)", [ids]
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def others_with_texts(con: duckdb.DuckDBPyConnection, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """``ctx["others"]`` with each sibling's ``title`` and ``snippet``, read once per context (the Review page runs
    again on every key while the list is open; the worklist keeps the context)."""
    if "others_texts" not in ctx:
        ctx["others_texts"] = sibling_texts(con, [o["doc_id"] for o in ctx["others"]])
    texts = ctx["others_texts"]
    return [{**o, "title": texts.get(o["doc_id"], (None, None))[0], "snippet": texts.get(o["doc_id"], (None, None))[1]}
            for o in ctx["others"]]
