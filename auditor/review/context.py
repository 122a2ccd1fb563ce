"""The context of one item: what an annotator sees beside the candidate (query, positives, scores, risk, why).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import duckdb

from auditor.config import DEFAULT_BAND_CONFIG, ReviewConfig
from auditor.risk import drivers
from auditor.store import StoreError

from .state import chosen_model

#: Characters of a document kept in the "other candidates" snippets.
SNIPPET_CHARS = ReviewConfig.snippet_chars


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
    model = chosen_model(con, model)
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
