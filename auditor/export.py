"""Export of cleaned training data as JSONL, streamed by DuckDB and written atomically.

The negatives of each query come from :func:`auditor.select.selection_sql` (the one place where the choice is made:
confirmed false negatives and, by default, unreviewed suspicious candidates never get in). This module only shapes
rows and writes them:

``triplet``  sentence-transformers ``{"anchor", "positive", "negative"}``: one line per (positive, negative) pair of a
             query, every labeled positive paired with each of the query's negatives, so no positive and no negative
             is lost (a query with 2 positives and 5 negatives gives 10 lines). Lines of a query are adjacent, ordered
             by positive then negative slot.
``ntuple``   FlagEmbedding ``{"query", "pos": [...], "neg": [...]}``: one line per query.
``rich``     one line per query with ids and texts: ``query_id``, ``query``, ``positives`` [{doc_id, text, origin}],
             ``negatives`` [{doc_id, text, slot, band, rule, s_neg, s_pos_min, delta, rank, source, verdict}].

Texts are those the scorer embedded: the query text, and a document's ``title text`` (the BEIR convention used by
:mod:`auditor.mine`). With ``relabel``, confirmed false negatives (any annotator's current verdict) join the
positives of their query (``origin`` ``"relabel"`` in the rich layout). Queries with no negative at all are not
written; queries with fewer than N are written with what they have; both are counted in the summary, whose
``short_query_ids`` lists every query short of N (and ``short_ids_path`` holds them one per line when asked).

Writing: the selection is materialised once in a temporary table, then ``COPY (SELECT ...) TO tmp (FORMAT json)``
writes a temporary file in the destination folder, renamed over the destination with ``os.replace`` only when
complete. An interrupted or failed export removes the temporary file and leaves any older file untouched.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from auditor.config import DEFAULT_BAND_CONFIG, ExportConfig
from auditor.store import StoreError

FORMATS = ("triplet", "ntuple", "rich")
Progress = Callable[[int, int], None]



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
    rows: int = 0  #: lines written
    queries_with_positives: int = 0
    queries_written: int = 0
    negatives_written: int = 0  #: distinct (query, negative) pairs
    positives_written: int = 0  #: distinct (query, positive) pairs, relabeled ones included
    relabeled: int = 0  #: confirmed false negatives added as positives (relabel only)
    confirmed_false_negatives: int = 0  #: (query, doc) pairs some annotator marked false_negative
    short_queries: int = 0  #: queries with a positive that got fewer than N negatives (zero included)
    queries_without_negatives: int = 0  #: of those, queries that got none and were not written
    short_query_ids: list[str] = field(default_factory=list)
    short_ids_path: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _doc_text(t: str) -> str:
    from auditor.mine import doc_text_sql

    return doc_text_sql(t)


def _rows_sql(fmt: str, _SEL: str, _POS: str) -> str:
    """The SELECT whose rows are the output lines, over the materialised selection and positives."""
    dtext_p, dtext_n = _doc_text("dp"), _doc_text("dn")
    if fmt == "triplet":
        return f"""
            SELECT q.text AS anchor, {dtext_p} AS positive, {dtext_n} AS negative
            FROM {_SEL} s
            JOIN {_POS} p ON p.query_id = s.query_id
            JOIN queries q ON q.query_id = s.query_id
            JOIN documents dp ON dp.doc_id = p.doc_id
            JOIN documents dn ON dn.doc_id = s.doc_id
            ORDER BY s.query_id, p.doc_id, s.slot
        """
    if fmt == "ntuple":
        return f"""
            WITH pos AS (
                SELECT p.query_id, list({dtext_p} ORDER BY p.origin, p.doc_id) AS pos
                FROM {_POS} p JOIN documents dp ON dp.doc_id = p.doc_id GROUP BY p.query_id
            ),
            neg AS (
                SELECT s.query_id, list({dtext_n} ORDER BY s.slot) AS neg
                FROM {_SEL} s JOIN documents dn ON dn.doc_id = s.doc_id GROUP BY s.query_id
            )
            SELECT q.text AS query, pos.pos, neg.neg
            FROM neg JOIN pos USING (query_id) JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    if fmt == "rich":
        return f"""
            WITH pos AS (
                SELECT p.query_id,
                       list({{'doc_id': p.doc_id, 'text': {dtext_p}, 'origin': p.origin}} ORDER BY p.origin, p.doc_id)
                           AS positives
                FROM {_POS} p JOIN documents dp ON dp.doc_id = p.doc_id GROUP BY p.query_id
            ),
            verdicts AS (
                SELECT query_id, doc_id,
                       CASE WHEN bool_or(verdict = 'false_negative') THEN 'false_negative'
                            WHEN bool_or(verdict = 'true_negative') THEN 'true_negative'
                            ELSE 'unsure' END AS verdict
                FROM current_verdicts GROUP BY query_id, doc_id
            ),
            neg AS (
                SELECT s.query_id,
                       list({{'doc_id': s.doc_id, 'text': {dtext_n}, 'slot': s.slot, 'band': s.band,
                              'rule': s.rule, 's_neg': s.s_neg, 's_pos_min': sc.s_pos_min,
                              'delta': s.s_neg - sc.s_pos_min, 'rank': s.rank, 'source': s.source,
                              'verdict': v.verdict}} ORDER BY s.slot) AS negatives
                FROM {_SEL} s
                JOIN documents dn ON dn.doc_id = s.doc_id
                LEFT JOIN scores sc ON sc.model = $model AND sc.query_id = s.query_id AND sc.doc_id = s.doc_id
                LEFT JOIN verdicts v ON v.query_id = s.query_id AND v.doc_id = s.doc_id
                GROUP BY s.query_id
            )
            SELECT neg.query_id, q.text AS query, pos.positives, neg.negatives
            FROM neg JOIN pos USING (query_id) JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def temp_path_for(out_path: Path) -> Path:
    """A hidden temporary name in the destination folder (same file system, so os.replace is atomic)."""
    return out_path.with_name(f".{out_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def copy_atomic(
    con: duckdb.DuckDBPyConnection, select_sql: str, out_path: str | Path, params: dict[str, Any] | None = None
) -> None:
    """``COPY (select_sql) TO`` a temporary file beside ``out_path``, then rename it over ``out_path``.

    On any error or interruption the temporary file is removed and an existing ``out_path`` is left as it was.
    """
    out_path = Path(out_path)
    if not out_path.parent.exists():
        raise StoreError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    tmp = temp_path_for(out_path)
    try:
        con.execute(f"COPY ({select_sql}) TO {_lit(str(tmp))} (FORMAT json)", params or {})
        _finish(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _finish(tmp: Path, out_path: Path) -> None:
    """Make the written file durable, then move it into place (a separate step so tests can fail it)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out_path)


def export(
    con: duckdb.DuckDBPyConnection,
    out_path: str | Path,
    *,
    fmt: str = ExportConfig.format,
    negatives: int = ExportConfig.negatives,
    strategy: str = ExportConfig.strategy,
    relabel: bool = ExportConfig.relabel,
    drop_unreviewed_suspicious: bool = ExportConfig.drop_unreviewed_suspicious,
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    seed: int = ExportConfig.seed,
    random_window: tuple[int, int] | None = None,
    band_mix: dict[str, float] | None = None,
    short_ids_path: str | Path | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the cleaned training set to ``out_path`` (JSONL, atomically) and return what was written.

    See the module docstring for the formats. ``short_ids_path``, when given, receives the ids of queries that got
    fewer than ``negatives`` negatives, one per line.
    """
    from auditor.bands import require_fresh_bands, resolve_model
    from auditor.select import selection_sql

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    steps = 4
    if progress:
        progress(0, steps)
    model = resolve_model(con, model)
    require_fresh_bands(con, config, model)
    sel_kw: dict[str, Any] = {}
    if random_window is not None:
        sel_kw["random_window"] = random_window
    if band_mix is not None:
        sel_kw["band_mix"] = band_mix
    sel = selection_sql(
        con, negatives, strategy=strategy, config=config, model=model, seed=seed,
        drop_unreviewed_suspicious=drop_unreviewed_suspicious, **sel_kw,
    )
    summary = ExportSummary(
        path=str(out_path), format=fmt, strategy=strategy, negatives_per_query=int(negatives), seed=int(seed),
        relabel=bool(relabel), drop_unreviewed_suspicious=bool(drop_unreviewed_suspicious), config=config,
        model=model,
    )
    tag = uuid.uuid4().hex[:12]  # temp tables are per connection; unique names let exports run side by side
    _SEL, _POS = f"_export_sel_{tag}", f"_export_pos_{tag}"
    try:
        con.execute(f"CREATE TEMP TABLE {_SEL} AS {sel}")
        relabeled = ""
        if relabel:
            relabeled = """
                UNION ALL
                SELECT DISTINCT v.query_id, v.doc_id, 'relabel' FROM current_verdicts v
                WHERE v.verdict = 'false_negative'
                  AND EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = v.doc_id)
                  AND NOT EXISTS (SELECT 1 FROM qrels r WHERE r.relevant AND r.query_id = v.query_id
                                  AND r.doc_id = v.doc_id)
            """
        con.execute(
            f"""
            CREATE TEMP TABLE {_POS} AS
            SELECT DISTINCT r.query_id, r.doc_id, 'label' AS origin FROM qrels r
            WHERE r.relevant AND EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = r.doc_id)
            {relabeled}
            """
        )
        if progress:
            progress(1, steps)
        _fill_counts(con, summary, negatives, _SEL, _POS)
        if progress:
            progress(2, steps)
        params = {"model": model} if fmt == "rich" else None
        copy_atomic(con, _rows_sql(fmt, _SEL, _POS), out_path, params)
        if progress:
            progress(3, steps)
        summary.rows = _count_lines(fmt, summary, con, _SEL, _POS)
        if short_ids_path is not None:
            short = Path(short_ids_path)
            tmp = temp_path_for(short)
            try:
                tmp.write_text("".join(f"{q}\n" for q in summary.short_query_ids), encoding="utf-8")
                os.replace(tmp, short)
            finally:
                if tmp.exists():
                    tmp.unlink()
            summary.short_ids_path = str(short)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_SEL}")
        con.execute(f"DROP TABLE IF EXISTS {_POS}")
    summary.seconds = round(time.perf_counter() - t0, 3)
    if progress:
        progress(steps, steps)
    return summary


def _fill_counts(con: duckdb.DuckDBPyConnection, summary: ExportSummary, n: int, _SEL: str, _POS: str) -> None:
    row = con.execute(
        f"""
        WITH pq AS (SELECT query_id, count(*) AS npos, count(*) FILTER (WHERE origin = 'relabel') AS nrel
                    FROM {_POS} GROUP BY query_id),
        nq AS (SELECT query_id, count(*) AS nneg FROM {_SEL} GROUP BY query_id)
        SELECT count(*), count(nq.query_id), coalesce(sum(nq.nneg), 0), coalesce(sum(pq.npos) FILTER
               (WHERE nq.query_id IS NOT NULL), 0), coalesce(sum(pq.nrel) FILTER (WHERE nq.query_id IS NOT NULL), 0),
               count(*) FILTER (WHERE coalesce(nq.nneg, 0) < ?), count(*) FILTER (WHERE nq.query_id IS NULL),
               (SELECT count(*) FROM (SELECT DISTINCT query_id, doc_id FROM current_verdicts
                                      WHERE verdict = 'false_negative'))
        FROM pq LEFT JOIN nq USING (query_id)
        """,
        [int(n)],
    ).fetchall()[0]
    (summary.queries_with_positives, summary.queries_written, summary.negatives_written, summary.positives_written,
     summary.relabeled, summary.short_queries, summary.queries_without_negatives,
     summary.confirmed_false_negatives) = (int(x) for x in row)
    summary.short_query_ids = [
        r[0]
        for r in con.execute(
            f"""
            SELECT p.query_id FROM (SELECT DISTINCT query_id FROM {_POS}) p
            LEFT JOIN (SELECT query_id, count(*) AS nneg FROM {_SEL} GROUP BY query_id) s USING (query_id)
            WHERE coalesce(s.nneg, 0) < ? ORDER BY p.query_id
            """,
            [int(n)],
        ).fetchall()
    ]


def _count_lines(fmt: str, summary: ExportSummary, con: duckdb.DuckDBPyConnection, _SEL: str, _POS: str) -> int:
    if fmt != "triplet":
        return summary.queries_written
    return int(
        con.execute(
            f"SELECT count(*) FROM {_SEL} s JOIN {_POS} p USING (query_id)"
        ).fetchall()[0][0]
    )
