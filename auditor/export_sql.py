"""The SQL of an export's lines: the temporary tables one export fills, and the line of each format built from them
(see :mod:`auditor.export` for the layouts)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import duckdb

from auditor.config import ExportConfig
from auditor.ingest.rules import BLANK_RE
from auditor.sql import ident, lit

FORMATS = ("triplet", "ntuple", "st-ntuple", "rich")
#: A text made only of blank characters: never written. Ingest's own rule (auditor.ingest.limits.BLANK_CHARS), so an
#: export never holds a text its ingest would refuse.
_BLANK_PATTERN = lit(BLANK_RE)
#: Order of a query's positives: highest grade first, labeled before relabeled, then doc id.
_POSITIVE_ORDER = "grade DESC NULLS LAST, origin, doc_id"


@dataclass(frozen=True)
class _Tables:
    """Names of one export's temporary tables (unique, so exports on one connection can run side by side)."""

    sel: str  #: the negatives: query_id, doc_id, slot, band, rule, s_neg, rank, source
    pos: str  #: the usable positives: query_id, doc_id, origin, grade (and blank flags)
    score: str  #: ntuple / rich: query_id, doc_id, role ('pos' | 'neg'), score, score_source
    blank_docs: str  #: doc_id of every document whose embedded text is blank
    blank_queries: str  #: query_id of every query whose text is blank
    raw: str  #: scratch

    @classmethod
    def fresh(cls) -> _Tables:
        tag = uuid.uuid4().hex[:12]
        return cls(*(f"_export_{kind}_{tag}" for kind in ("sel", "pos", "score", "blank_docs", "blank_q", "raw")))

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        for name in (self.sel, self.pos, self.score, self.blank_docs, self.blank_queries, self.raw):
            con.execute(f"DROP TABLE IF EXISTS {name}")




def _doc_text(t: str) -> str:
    from auditor.texts import doc_text_sql

    return doc_text_sql(t)


def _blank(text_sql: str) -> str:
    return f"regexp_full_match({text_sql}, {_BLANK_PATTERN})"


def _positive_order(p: str) -> str:
    return f"{p}.grade DESC NULLS LAST, {p}.origin, {p}.doc_id"


def _blank_document(d: str) -> str:
    """Whether document ``d``'s embedded text (``title text``) is blank, without building that text (2x faster)."""
    return f"({_blank(f'{d}.text')} AND ({d}.title IS NULL OR {_blank(f'{d}.title')}))"


def _rows_sql(fmt: str, t: _Tables, negatives: int, extra_columns: str = "", scores: str = ExportConfig.scores) -> str:
    """The SELECT whose rows are the output lines, over the materialised selection, positives and scores."""
    dtext_p, dtext_n = _doc_text("dp"), _doc_text("dn")
    if fmt == "triplet":
        return f"""
            SELECT q.text AS anchor, {dtext_p} AS positive, {dtext_n} AS negative
            FROM {t.sel} s
            JOIN {t.pos} p ON p.query_id = s.query_id
            JOIN queries q ON q.query_id = s.query_id
            JOIN documents dp ON dp.doc_id = p.doc_id
            JOIN documents dn ON dn.doc_id = s.doc_id
            ORDER BY s.query_id, p.doc_id, s.slot
        """
    if fmt == "ntuple":
        keep = {"teacher": "pos.score_source = 'teacher'", "model": "true"}.get(scores)
        score_columns = (f""",
                   CASE WHEN {keep} THEN pos.pos_scores END AS pos_scores,
                   CASE WHEN {keep} THEN neg.neg_scores END AS neg_scores""" if keep else "")
        return f"""
            WITH pos AS (
                SELECT p.query_id, list({dtext_p} ORDER BY {_positive_order('p')}) AS pos,
                       list(sc.score ORDER BY {_positive_order('p')}) AS pos_scores,
                       any_value(sc.score_source) AS score_source
                FROM {t.pos} p JOIN documents dp ON dp.doc_id = p.doc_id
                JOIN {t.score} sc ON sc.query_id = p.query_id AND sc.doc_id = p.doc_id AND sc.role = 'pos'
                GROUP BY p.query_id
            ),
            neg AS (
                SELECT s.query_id, list({dtext_n} ORDER BY s.slot) AS neg, list(sc.score ORDER BY s.slot) AS neg_scores
                FROM {t.sel} s JOIN documents dn ON dn.doc_id = s.doc_id
                JOIN {t.score} sc ON sc.query_id = s.query_id AND sc.doc_id = s.doc_id AND sc.role = 'neg'
                GROUP BY s.query_id
            )
            SELECT q.text AS query, pos.pos, neg.neg{score_columns}{extra_columns}
            FROM neg JOIN pos USING (query_id) JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    if fmt == "st-ntuple":  # the tables hold one positive and exactly N negatives per query (_keep_full_rows)
        columns = ", ".join(f"neg.neg[{i}] AS negative_{i}" for i in range(1, int(negatives) + 1))
        return f"""
            WITH neg AS (
                SELECT s.query_id, list({dtext_n} ORDER BY s.slot) AS neg
                FROM {t.sel} s JOIN documents dn ON dn.doc_id = s.doc_id GROUP BY s.query_id
            )
            SELECT q.text AS anchor, {dtext_p} AS positive, {columns}
            FROM neg JOIN {t.pos} p USING (query_id) JOIN documents dp ON dp.doc_id = p.doc_id
            JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    if fmt == "rich":
        return f"""
            WITH pos AS (
                SELECT p.query_id,
                       list({{'doc_id': p.doc_id, 'text': {dtext_p}, 'origin': p.origin, 'score': sc.score}}
                            ORDER BY {_positive_order('p')}) AS positives,
                       any_value(sc.score_source) AS score_source
                FROM {t.pos} p JOIN documents dp ON dp.doc_id = p.doc_id
                JOIN {t.score} sc ON sc.query_id = p.query_id AND sc.doc_id = p.doc_id AND sc.role = 'pos'
                GROUP BY p.query_id
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
                              'rule': s.rule, 's_neg': s.s_neg, 's_pos_min': m.s_pos_min,
                              'delta': s.s_neg - m.s_pos_min, 'rank': s.rank, 'source': s.source,
                              'verdict': v.verdict, 'score': sc.score}} ORDER BY s.slot) AS negatives
                FROM {t.sel} s
                JOIN documents dn ON dn.doc_id = s.doc_id
                JOIN {t.score} sc ON sc.query_id = s.query_id AND sc.doc_id = s.doc_id AND sc.role = 'neg'
                LEFT JOIN scores m ON m.model = $model AND m.query_id = s.query_id AND m.doc_id = s.doc_id
                LEFT JOIN verdicts v ON v.query_id = s.query_id AND v.doc_id = s.doc_id
                GROUP BY s.query_id
            )
            SELECT neg.query_id, q.text AS query, pos.positives, neg.negatives, pos.score_source
            FROM neg JOIN pos USING (query_id) JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def _flag_extra_columns(con: duckdb.DuckDBPyConnection, t: _Tables) -> str:
    """``prompt`` (and ``type``, where the store has it) for the FlagEmbedding layout, when a written query has one.

    Null for the others: the JSONL writer leaves the key out of their lines (:func:`_without_nulls`), so FlagEmbedding
    falls back to the trainer's instruction (``""`` would replace it with none, a null would read as "None").
    """
    out = ""
    has_type = bool(con.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'queries' AND column_name = 'type'"
    ).fetchall())
    for column in ("prompt", "type") if has_type else ("prompt",):
        used = con.execute(
            f"SELECT 1 FROM queries WHERE {column} IS NOT NULL AND query_id IN (SELECT query_id FROM {t.sel}) LIMIT 1"
        ).fetchall()
        if used:
            out += f", nullif(q.{column}, '') AS {column}"
    return out


# --- temporary files, signals, atomic writes --------------------------------------------------------------------


def _without_nulls(con: duckdb.DuckDBPyConnection, rows_sql: str) -> str:
    """``rows_sql`` as one JSON object per row with its null keys left out (a JSON merge patch drops them), in order.

    FlagEmbedding tests ``'prompt' in data``: a key present as null would become the instruction "None".
    """
    names = [d[0] for d in con.execute(f"SELECT * FROM ({rows_sql}) LIMIT 0").description]
    fields = ", ".join(f"{lit(n)}: r.{ident(n)}" for n in names)
    return f"SELECT json_merge_patch('{{}}', to_json({{{fields}}}))::VARCHAR AS line FROM ({rows_sql}) r"
