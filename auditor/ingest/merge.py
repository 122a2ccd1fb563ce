"""Folding the staging tables into the store: new rows only, conflicts refused.

Runs inside the caller's transaction, so a refused conflict leaves the store exactly as it was.
"""

from __future__ import annotations

import duckdb

from auditor.config import GIVEN_SOURCE
from auditor.ingest.errors import IngestError


def check_conflicts(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Same id, different text (against what is stored), or a pair labeled both relevant and not."""
    for staged, stored, key, label in (
        ("s_docs", "documents", "doc_id", "document"),
        ("s_queries", "queries", "query_id", "query"),
    ):
        row = con.execute(
            f"""
            SELECT s.{key} FROM {staged} s JOIN {stored} t USING ({key})
            WHERE s.text_hash <> t.text_hash LIMIT 1
            """
        ).fetchone()
        if row:
            raise IngestError(
                source, "_id", f"{label} id {row[0]!r} is already in the store with a different text"
            )
    row = con.execute(
        """
        SELECT s.query_id, s.doc_id, s.line FROM s_qrels s JOIN qrels q USING (query_id, doc_id)
        WHERE s.relevant <> q.relevant LIMIT 1
        """
    ).fetchone()
    if row:
        where = f"{source}:{row[2]}" if row[2] is not None else source
        raise IngestError(
            where, "score", f"pair ({row[0]!r}, {row[1]!r}) is stored with the opposite relevance label"
        )


def merge(con: duckdb.DuckDBPyConnection, dataset: str, source: str) -> dict[str, int]:
    """Insert what is new; returns counts of new rows and of merged duplicates."""
    check_conflicts(con, source)
    counts: dict[str, int] = {}
    counts["duplicates"] = con.execute(
        "SELECT coalesce(sum(occurrences - 1), 0) FROM (SELECT occurrences FROM s_docs UNION ALL "
        "SELECT occurrences FROM s_queries)"
    ).fetchone()[0]
    # A negative that is also a positive of the same query contradicts the labels: the label wins.
    counts["negatives_dropped_as_positive"] = con.execute(
        """
        DELETE FROM s_cands c WHERE EXISTS (
            SELECT 1 FROM s_qrels p WHERE p.relevant AND p.query_id = c.query_id AND p.doc_id = c.doc_id)
          OR EXISTS (
            SELECT 1 FROM qrels p WHERE p.relevant AND p.query_id = c.query_id AND p.doc_id = c.doc_id)
        """
    ).fetchone()[0]
    counts["documents"] = con.execute(
        """
        INSERT INTO documents (doc_id, title, text, text_hash, dataset)
        SELECT doc_id, title, text, text_hash, ? FROM s_docs
        WHERE doc_id NOT IN (SELECT doc_id FROM documents)
        """,
        [dataset],
    ).fetchone()[0]
    counts["queries"] = con.execute(
        """
        INSERT INTO queries (query_id, text, text_hash, dataset, prompt)
        SELECT query_id, text, text_hash, ?, prompt FROM s_queries
        WHERE query_id NOT IN (SELECT query_id FROM queries)
        """,
        [dataset],
    ).fetchone()[0]
    before = _qrels_counts(con)
    con.execute(
        """
        INSERT INTO qrels (query_id, doc_id, relevant, grade, teacher_score, dataset)
        SELECT s.query_id, s.doc_id, s.relevant, s.grade, s.teacher_score, ? FROM s_qrels s
        ANTI JOIN qrels q ON q.query_id = s.query_id AND q.doc_id = s.doc_id
        """,
        [dataset],
    )
    after = _qrels_counts(con)
    counts["positives"] = after[0] - before[0]
    counts["judged_negatives"] = after[1] - before[1]
    counts["candidates"] = con.execute(
        """
        INSERT INTO candidates (query_id, doc_id, source, source_rank, source_score, model)
        SELECT s.query_id, s.doc_id, ?, s.source_rank, s.source_score, NULL FROM s_cands s
        ANTI JOIN candidates c ON c.query_id = s.query_id AND c.doc_id = s.doc_id AND c.source = ?
        ORDER BY s.query_id, s.source_rank NULLS LAST, s.doc_id
        """,
        [GIVEN_SOURCE, GIVEN_SOURCE],
    ).fetchone()[0]
    return counts


def _qrels_counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    return con.execute("SELECT count(*) FILTER (WHERE relevant), count(*) FILTER (WHERE NOT relevant) FROM qrels").fetchone()
