"""The steps of one export in SQL, each over the temporary tables of :class:`auditor.export_sql._Tables`: the
positives, the selection (blank texts skipped), what is left out (short queries, oversized lines), the scores of
n-tuple lines, and what the summary counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from auditor.config import ExportConfig
from auditor.export_sql import _POSITIVE_ORDER, _Tables, _blank, _blank_document, _doc_text
from auditor.select import query_slices
from auditor.sql import lit, query_ids_sql
from auditor.store import StoreError

@dataclass
class ExportSummary:
    """What an export wrote and what it could not."""

    path: str
    format: str
    strategy: str
    negatives_per_query: int
    seed: int
    relabel: bool
    drop_unreviewed_suspicious: bool
    config: str
    model: str
    file_type: str = "jsonl"
    rule: str = ""  #: the risk rule in words (auditor.select.Selection.rule)
    fn_budget: float | None = ExportConfig.fn_budget
    target_rate: float | None = ExportConfig.target_rate
    max_risk: float | None = ExportConfig.max_risk  #: the explicit override, when given
    keep_n: bool = ExportConfig.keep_n
    risk_applied: bool = True  #: False when the store has no risk for the model (mined by an older auditor)
    tradeoff: float = 0.0  #: the solved lam of key = h - lam * p (auditor.tradeoff)
    candidates_above_max_risk: int = 0  #: with max_risk: unreviewed candidates of the model above it
    kept_by_lowest_risk: int = 0  #: negatives taken only so that their query keeps N (not eligible)
    queries_kept_by_lowest_risk: int = 0
    expected_false_negatives: float | None = None  #: sum of P(false negative) over the written negatives
    estimate: dict[str, Any] | None = None  #: auditor.estimate.export_estimate of this export
    rows: int = 0  #: lines (rows) written
    queries_with_positives: int = 0
    queries_written: int = 0
    negatives_written: int = 0  #: distinct (query, negative) pairs
    positives_written: int = 0  #: distinct (query, positive) pairs, relabeled ones included
    relabeled: int = 0  #: confirmed false negatives added as positives (relabel only)
    confirmed_false_negatives: int = 0  #: (query, doc) pairs some annotator marked false_negative
    short_queries: int = 0  #: queries with a usable positive that got fewer than N negatives (zero included)
    queries_without_negatives: int = 0  #: of those, queries that got none and were not written
    short_query_ids: list[str] = field(default_factory=list)
    short_ids_path: str | None = None
    empty_texts_skipped: int = 0  #: blank queries, positives and negatives left out
    queries_without_usable_positive: int = 0  #: queries whose text or every positive is blank: not written
    score_source: dict[str, int] | None = None  #: ntuple / rich: queries scored by "teacher" and by "model"
    #: queries left out because their line would be larger than ingest takes (auditor.ingest.limits.MAX_RECORD_BYTES)
    oversized_query_ids: list[str] = field(default_factory=list)
    scores: str = ExportConfig.scores  #: ntuple: which scores were written (teacher | model | none)
    lines_without_scores: int = 0  #: ntuple: lines written without pos_scores / neg_scores
    lines_without_prompt: int = 0  #: ntuple: lines without a prompt in a file where other lines have one
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _find_blank_texts(con: duckdb.DuckDBPyConnection, t: _Tables) -> bool:
    """The documents and queries whose text is blank: one scan, a handful of ids (none in most stores)."""
    con.execute(f"CREATE TEMP TABLE {t.blank_docs} AS SELECT doc_id FROM documents d WHERE {_blank_document('d')}")
    con.execute(f"CREATE TEMP TABLE {t.blank_queries} AS SELECT query_id FROM queries q WHERE {_blank('q.text')}")
    return bool(con.execute(f"SELECT EXISTS (FROM {t.blank_docs}) OR EXISTS (FROM {t.blank_queries})").fetchall()[0][0])


def _create_positives(
    con: duckdb.DuckDBPyConnection, t: _Tables, relabel: bool, summary: ExportSummary, any_blank: bool
) -> None:
    """The usable positives of each query, counting the blank ones left out."""
    relabeled = ""
    if relabel:
        relabeled = """
            UNION ALL
            SELECT DISTINCT v.query_id, v.doc_id, 'relabel', NULL::INTEGER FROM current_verdicts v
            WHERE v.verdict = 'false_negative'
              AND NOT EXISTS (SELECT 1 FROM qrels r WHERE r.relevant AND r.query_id = v.query_id
                              AND r.doc_id = v.doc_id)
        """
    con.execute(
        f"""
        CREATE TEMP TABLE {t.pos} AS
        SELECT p.*, p.doc_id IN (SELECT doc_id FROM {t.blank_docs}) AS doc_blank,
               p.query_id IN (SELECT query_id FROM {t.blank_queries}) AS query_blank
        FROM (SELECT r.query_id, r.doc_id, 'label' AS origin, max(r.grade) AS grade FROM qrels r
              WHERE r.relevant GROUP BY r.query_id, r.doc_id
              {relabeled}) p
        WHERE EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = p.doc_id)
          AND EXISTS (SELECT 1 FROM queries q WHERE q.query_id = p.query_id)
        """
    )
    if not any_blank:
        summary.queries_with_positives = int(con.execute(
            f"SELECT count(DISTINCT query_id) FROM {t.pos}").fetchall()[0][0])
        return
    (summary.queries_with_positives, summary.queries_without_usable_positive, blank_positives,
     blank_queries) = (int(x) for x in con.execute(
        f"""
        SELECT count(DISTINCT query_id),
               count(DISTINCT query_id) - count(DISTINCT query_id) FILTER (WHERE NOT doc_blank AND NOT query_blank),
               count(*) FILTER (WHERE doc_blank AND NOT query_blank),
               count(DISTINCT query_id) FILTER (WHERE query_blank)
        FROM {t.pos}
        """
    ).fetchall()[0])
    summary.empty_texts_skipped += blank_positives + blank_queries
    if blank_positives or blank_queries:
        con.execute(f"DELETE FROM {t.pos} WHERE doc_blank OR query_blank")


def _create_selection(
    con: duckdb.DuckDBPyConnection, t: _Tables, selection: Callable[..., str], n: int, summary: ExportSummary
) -> None:
    """Up to ``n`` negatives per query, none of them blank: blank candidates give their slot to the next one.
    ``selection(k, queries=None)`` is the SQL of ``k`` negatives per query (of the queries in relation ``queries``)."""
    spare = _blank_candidates_per_query(con, t)
    if not spare:  # the common case: the selection as it is, a slice of queries at a time on a large store
        slices = query_slices(con)
        if not slices:
            con.execute(f"CREATE TEMP TABLE {t.sel} AS {selection(n)}")
            return
        for i, part in enumerate(slices):
            con.register("_export_slice", part)
            try:
                sql = selection(n, queries="_export_slice")
                con.execute(f"CREATE TEMP TABLE {t.sel} AS {sql}" if i == 0 else f"INSERT INTO {t.sel} {sql}")
            finally:
                con.unregister("_export_slice")
        return
    # Take `spare` more than asked, drop the blank ones and number the rest again: the same choice as if the blank
    # candidates had never been there (exactly so for top, random and simans, whose order is per candidate).
    con.execute(
        f"""
        CREATE TEMP TABLE {t.raw} AS
        SELECT *, sum(CASE WHEN blank THEN 0 ELSE 1 END) OVER (
                      PARTITION BY query_id ORDER BY slot ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS kept
        FROM (SELECT s.*, s.doc_id IN (SELECT doc_id FROM {t.blank_docs}) AS blank
              FROM ({selection(n + spare)}) s)
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE {t.sel} AS
        SELECT query_id, doc_id, kept AS slot, band, rule, s_neg, rank, source, p_fn, p_unrev, eligible FROM {t.raw}
        WHERE NOT blank AND kept <= {n} ORDER BY query_id, slot
        """
    )
    summary.empty_texts_skipped += int(con.execute(  # blank ones the plain selection would have written
        f"""SELECT count(*) FROM {t.raw} WHERE blank AND slot <= {n}
            AND query_id IN (SELECT query_id FROM {t.pos})"""
    ).fetchall()[0][0])
    con.execute(f"DROP TABLE {t.raw}")


def _count_risk(con: duckdb.DuckDBPyConnection, t: _Tables, summary: ExportSummary) -> None:
    """What the risk threshold did: candidates it skipped, negatives kept to hold N, expected false negatives."""
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE NOT eligible), count(DISTINCT query_id) FILTER (WHERE NOT eligible),
                   sum(coalesce(p_fn, 0)) FILTER (WHERE NOT coalesce(v.tn, FALSE))
            FROM {t.sel} s LEFT JOIN (SELECT query_id, doc_id, bool_or(verdict = 'true_negative') AS tn
                                      FROM current_verdicts GROUP BY ALL) v USING (query_id, doc_id)"""
    ).fetchall()[0]
    summary.kept_by_lowest_risk, summary.queries_kept_by_lowest_risk = int(row[0]), int(row[1])
    summary.expected_false_negatives = float(row[2]) if summary.risk_applied and row[2] is not None else None
    if summary.max_risk is not None and summary.risk_applied:
        summary.candidates_above_max_risk = int(con.execute(
            "SELECT count(*) FROM risk WHERE model = ? AND p_fn > ? AND origin <> 'verdict'",
            [summary.model, float(summary.max_risk)],
        ).fetchall()[0][0])


def _blank_candidates_per_query(con: duckdb.DuckDBPyConnection, t: _Tables) -> int:
    """The most blank-text candidates any one query has (0 in almost every store)."""
    return int(con.execute(
        f"""
        SELECT coalesce(max(n), 0) FROM (
            SELECT query_id, count(DISTINCT doc_id) AS n FROM candidates
            WHERE doc_id IN (SELECT doc_id FROM {t.blank_docs}) GROUP BY query_id)
        """
    ).fetchall()[0][0])


def _count_short(con: duckdb.DuckDBPyConnection, t: _Tables, n: int, summary: ExportSummary) -> None:
    """Queries with a usable positive that got fewer than ``n`` negatives (none included)."""
    rows = con.execute(
        f"""
        SELECT p.query_id, coalesce(s.nneg, 0) AS nneg
        FROM (SELECT DISTINCT query_id FROM {t.pos}) p
        LEFT JOIN (SELECT query_id, count(*) AS nneg FROM {t.sel} GROUP BY query_id) s USING (query_id)
        WHERE coalesce(s.nneg, 0) < ? ORDER BY p.query_id
        """,
        [n],
    ).fetchall()
    summary.short_query_ids = [r[0] for r in rows]
    summary.short_queries = len(rows)
    summary.queries_without_negatives = sum(1 for r in rows if r[1] == 0)


def _keep_full_rows(con: duckdb.DuckDBPyConnection, t: _Tables, n: int) -> None:
    """st-ntuple: every row has the same columns, so only queries with exactly ``n`` negatives, and their best
    positive."""
    con.execute(f"""DELETE FROM {t.sel} WHERE query_id IN
                    (SELECT query_id FROM {t.sel} GROUP BY query_id HAVING count(*) < {n})""")
    con.execute(f"""CREATE TEMP TABLE {t.raw} AS SELECT * FROM {t.pos}
                    QUALIFY row_number() OVER (PARTITION BY query_id ORDER BY {_POSITIVE_ORDER}) = 1""")
    con.execute(f"DROP TABLE {t.pos}")
    con.execute(f"ALTER TABLE {t.raw} RENAME TO {t.pos}")


def _leave_out_oversized(con: duckdb.DuckDBPyConnection, t: _Tables, fmt: str, summary: ExportSummary) -> None:
    """Leave out the queries whose line would be larger than ingest takes (limits.MAX_RECORD_BYTES), so an export
    always ingests back: an n-tuple line holds all of a query's texts, a triplet line one of each.

    A cheap bound first (raw bytes, at most 6 bytes of JSON per byte of text), the exact JSON size only for the
    queries near the limit: a normal export pays one scan of lengths.
    """
    from auditor.ingest import limits

    limit = int(limits.MAX_RECORD_BYTES)
    agg = "max" if fmt == "triplet" else "sum"
    # the store's longest texts and the most texts a line holds bound every line: usually far below the limit
    q_max, d_max = con.execute(f"SELECT (SELECT max(strlen(text)) FROM queries), "
                               f"(SELECT max(strlen({_doc_text('d')})) FROM documents d)").fetchall()[0]
    per_line = con.execute(f"SELECT (SELECT max(n) FROM (SELECT count(*) AS n FROM {t.pos} GROUP BY query_id)), "
                           f"(SELECT max(n) FROM (SELECT count(*) AS n FROM {t.sel} GROUP BY query_id))").fetchall()[0]
    texts = 2 if fmt == "triplet" else sum(int(n or 0) for n in per_line)
    if ((q_max or 0) + texts * ((d_max or 0) + 8)) * 6 + 64 <= limit:
        return

    def line_bytes(size, only: str = "") -> str:  # bytes of each query's line, by ``size(text expression)``
        return f"""
            SELECT q.query_id, {size('q.text')} + coalesce(p.b, 0) + coalesce(n.b, 0) AS bytes FROM queries q
            JOIN (SELECT x.query_id, {agg}({size(_doc_text('d'))} + 8) AS b
                  FROM {t.pos} x JOIN documents d USING (doc_id) WHERE NOT x.doc_blank AND NOT x.query_blank {only}
                  GROUP BY x.query_id) p USING (query_id)
            JOIN (SELECT x.query_id, {agg}({size(_doc_text('d'))} + 8) AS b
                  FROM {t.sel} x JOIN documents d USING (doc_id) WHERE true {only}
                  GROUP BY x.query_id) n USING (query_id)
        """

    near = [r[0] for r in con.execute(
        f"SELECT query_id FROM ({line_bytes(lambda e: f'strlen({e})')}) WHERE bytes * 6 + 64 > {limit}"
    ).fetchall()]
    if not near:
        return
    only = f"AND x.{query_ids_sql(near)}"
    over = [r[0] for r in con.execute(
        f"SELECT query_id FROM ({line_bytes(lambda e: f'strlen(to_json({e})::VARCHAR)', only)}) "
        f"WHERE bytes + 64 > {limit} ORDER BY query_id"
    ).fetchall()]
    if over:
        con.execute(f"DELETE FROM {t.sel} WHERE query_id IN (SELECT unnest(?::VARCHAR[]))", [over])
        summary.oversized_query_ids = over


def _count_written(con: duckdb.DuckDBPyConnection, t: _Tables, summary: ExportSummary) -> None:
    row = con.execute(
        f"""
        WITH pq AS (SELECT query_id, count(*) AS npos, count(*) FILTER (WHERE origin = 'relabel') AS nrel
                    FROM {t.pos} GROUP BY query_id),
        nq AS (SELECT query_id, count(*) AS nneg FROM {t.sel} GROUP BY query_id)
        SELECT count(*), coalesce(sum(nneg), 0), coalesce(sum(npos), 0), coalesce(sum(nrel), 0),
               (SELECT count(*) FROM (SELECT DISTINCT query_id, doc_id FROM current_verdicts
                                      WHERE verdict = 'false_negative'))
        FROM pq JOIN nq USING (query_id)
        """
    ).fetchall()[0]
    (summary.queries_written, summary.negatives_written, summary.positives_written, summary.relabeled,
     summary.confirmed_false_negatives) = (int(x) for x in row)


def _create_scores(con: duckdb.DuckDBPyConnection, t: _Tables, model: str) -> dict[str, int]:
    """One score per written (query, positive | negative): the teacher's when the training file gave one for every
    text of the query, else the model's cosine for all of them. Returns the number of queries per source.

    Model scores: ``scores.s_neg`` for negatives; for a positive the cosine of the cached query and document vectors
    (``scores`` keeps only min/mean/max over a query's positives), else its ``s_neg`` (a relabeled candidate), else
    the query's ``s_pos_mean`` when the vectors are no longer cached.
    """
    from auditor.texts import query_hash_sql, query_instruction

    m = lit(model)
    query_key = query_hash_sql("q", query_instruction(con, model))  # the cache key mine embedded the query under
    con.execute(
        f"""
        CREATE TEMP TABLE {t.score} AS
        WITH written AS (SELECT DISTINCT query_id FROM {t.sel} WHERE query_id IN (SELECT query_id FROM {t.pos})),
        given AS (
            SELECT query_id, doc_id, max(source_score) AS teacher FROM candidates
            WHERE source = 'given' AND query_id IN (SELECT query_id FROM written) GROUP BY query_id, doc_id),
        labeled AS (
            SELECT query_id, doc_id, max(teacher_score) AS teacher FROM qrels
            WHERE relevant AND query_id IN (SELECT query_id FROM written) GROUP BY query_id, doc_id),
        query_vectors AS (
            SELECT q.query_id, any_value(e.vector) AS vector FROM queries q
            JOIN embeddings e ON e.model = {m} AND e.role = 'query' AND e.text_hash = {query_key}
            WHERE q.query_id IN (SELECT query_id FROM written) GROUP BY q.query_id),
        cosines AS (
            SELECT p.query_id, p.doc_id, max(list_dot_product(qv.vector, e.vector))::DOUBLE AS cosine
            FROM {t.pos} p JOIN query_vectors qv ON qv.query_id = p.query_id
            JOIN documents d ON d.doc_id = p.doc_id
            JOIN embeddings e ON e.model = {m} AND e.role = 'document' AND e.text_hash = d.text_hash
            GROUP BY p.query_id, p.doc_id),
        mean_positive AS (
            SELECT query_id, any_value(s_pos_mean) AS s FROM scores
            WHERE model = {m} AND query_id IN (SELECT query_id FROM written) GROUP BY query_id),
        items AS (
            SELECT p.query_id, p.doc_id, 'pos' AS role, coalesce(l.teacher, g.teacher) AS teacher,
                   coalesce(c.cosine, sn.s_neg, mp.s) AS model
            FROM {t.pos} p
            LEFT JOIN labeled l USING (query_id, doc_id)
            LEFT JOIN given g USING (query_id, doc_id)
            LEFT JOIN cosines c USING (query_id, doc_id)
            LEFT JOIN scores sn ON sn.model = {m} AND sn.query_id = p.query_id AND sn.doc_id = p.doc_id
            LEFT JOIN mean_positive mp ON mp.query_id = p.query_id
            WHERE p.query_id IN (SELECT query_id FROM written)
            UNION ALL
            SELECT s.query_id, s.doc_id, 'neg', g.teacher, s.s_neg
            FROM {t.sel} s LEFT JOIN given g USING (query_id, doc_id)
            WHERE s.query_id IN (SELECT query_id FROM written)
        ),
        per_query AS (
            SELECT query_id, bool_and(coalesce(isfinite(teacher), false)) AS teacher_ok FROM items GROUP BY query_id)
        SELECT i.query_id, i.doc_id, i.role,
               CASE WHEN pq.teacher_ok THEN i.teacher ELSE i.model END AS score,
               CASE WHEN pq.teacher_ok THEN 'teacher' ELSE 'model' END AS score_source
        FROM items i JOIN per_query pq USING (query_id)
        """
    )
    bad = con.execute(
        f"SELECT count(*), any_value(query_id) FROM {t.score} WHERE NOT coalesce(isfinite(score), false)"
    ).fetchall()[0]
    if bad[0]:
        raise StoreError(
            f"{bad[0]:,} model scores of model {model!r} are missing or not finite (query {bad[1]!r} among them): "
            f"run `auditor mine --db FILE --model {model}` again, then export"
        )
    counts = dict(con.execute(
        f"SELECT score_source, count(DISTINCT query_id) FROM {t.score} GROUP BY score_source"
    ).fetchall())
    return {source: int(counts.get(source, 0)) for source in ("teacher", "model")}


def _count_flag_keys(con: duckdb.DuckDBPyConnection, t: _Tables, scores: str, summary: ExportSummary) -> None:
    """How many written lines carry no scores, and (when some carry one) no prompt: the summary says so. From the
    score sources and the queries, not from the lines (building them is the export's main cost)."""
    src = summary.score_source or {"teacher": 0, "model": 0}
    summary.lines_without_scores = {"teacher": src["model"], "model": 0, "none": src["teacher"] + src["model"]}[scores]
    with_prompt, without_prompt = con.execute(
        f"""SELECT count(*) FILTER (WHERE nullif(prompt, '') IS NOT NULL),
                   count(*) FILTER (WHERE nullif(prompt, '') IS NULL)
            FROM queries WHERE query_id IN (SELECT query_id FROM {t.sel})
                           AND query_id IN (SELECT query_id FROM {t.pos})"""
    ).fetchall()[0]
    summary.lines_without_prompt = int(without_prompt) if with_prompt else 0


def _count_rows(con: duckdb.DuckDBPyConnection, t: _Tables, fmt: str, summary: ExportSummary) -> int:
    if fmt != "triplet":
        return summary.queries_written
    return int(con.execute(f"SELECT count(*) FROM {t.sel} s JOIN {t.pos} p USING (query_id)").fetchall()[0][0])
