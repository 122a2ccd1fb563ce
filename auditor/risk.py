"""P(false negative) for every scored candidate: a rule-based prior, calibrated on the verdicts.

Why not the bands alone: every band rule reads one model's view (dense rank and cosine), so it cannot tell "hard"
from "relevant" better than rank does. Independent views can: a candidate that the dense model, BM25 and the
positive's own neighbourhood all put near the top is far more often an unlabeled positive than one that only the
dense model likes (DESIGN.md, "Review should clean what gets exported").

Prior (no verdict needed; nothing fitted to any data set)
    Within each query, candidates are ranked by each view that the data has: ``s_neg`` (dense, to the query),
    ``bm25`` (lexical, to the query), ``sim_to_pos`` and ``lex_to_pos`` (dense and lexical closeness to a positive),
    the teacher's score of the negative where the training file gave one, and the cross-encoder's where it was run.
    Reciprocal-rank fusion (mean over the available views of ``1 / (rrf_k + rank)``) gives ``fused_rank``, stored in
    ``scores`` at mining; the prior is ``1 / (1 + fused_rank)``. Its order holds across collections; its level does
    not (it assumes about 3.5 false negatives per 50 candidates), so before any verdict it is *uncalibrated*.
Calibrated (from the verdicts, :mod:`auditor.calibration`)
    ``logit P = a + b * logit(prior) + u_q``: the level and steepness of the prior fitted to the verdicts, and a
    per-query correction for queries whose verdicts find more (or fewer) false negatives than expected. Items with a
    verdict consensus carry it (1 for false negative, 0 for true negative).
Propagation
    A confirmed false negative lifts, to at least their cosine, the risk of its near-duplicates under the same query
    and of the same document under near-duplicate queries (``RiskConfig.propagate_doc`` / ``propagate_query``).

Every fit replaces the ``risk`` rows of its model and appends a ``risk_fits`` row (verdicts seen, whether it is
calibrated, parameters); ``p_model`` keeps the calibrated estimate without the verdicts (the export estimate's
audit compares it with the verdicts).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from auditor.calibration import fit_calibration
from auditor.config import RiskConfig
from auditor.store import transaction

log = logging.getLogger(__name__)

#: Independent views fused into the prior: (name, SQL score over ``scored`` joined with ``teacher``; higher = closer).
FUSION_VIEWS: tuple[tuple[str, str], ...] = (
    ("dense", "s.s_neg"),
    ("bm25", "s.bm25"),
    ("dense_to_positive", "s.sim_to_pos"),
    ("bm25_to_positive", "s.lex_to_pos"),
    ("teacher", "t.teacher"),
    ("cross_encoder", "s.ce_neg"),
)

_TEACHER_CTE = """
    t AS (SELECT query_id, doc_id, max(source_score) AS teacher FROM candidates
          WHERE source = 'given' AND source_score IS NOT NULL AND isfinite(source_score) {only}
          GROUP BY query_id, doc_id),
    tp AS (SELECT query_id, max(teacher_score) AS teacher_pos, count(*) AS n_pos FROM qrels WHERE relevant {only}
           GROUP BY query_id)
"""

#: Per item, the verdict consensus used as a label: more false_negative than true_negative verdicts -> 1, fewer -> 0;
#: ties and unsure-only items are not labels.
#: Fused rank assumed for a candidate without one (a prior of about 0.001).
MISSING_FUSED_RANK = 1000

#: The prior's log-odds for the scores row aliased {s}: the prior is 1 / (1 + fused_rank), odds 1 : fused_rank.
PRIOR_LOGIT_SQL = "-ln(greatest(coalesce({s}.fused_rank, " + str(MISSING_FUSED_RANK) + "), 1))"

LABELS_SQL = """
    SELECT query_id, doc_id, CASE WHEN n_fn > n_tn THEN 1 ELSE 0 END AS y FROM (
        SELECT query_id, doc_id, count(*) FILTER (WHERE verdict = 'false_negative') AS n_fn,
               count(*) FILTER (WHERE verdict = 'true_negative') AS n_tn
        FROM current_verdicts GROUP BY query_id, doc_id)
    WHERE n_fn <> n_tn
"""


def fused_rank_sql(cfg: RiskConfig = RiskConfig()) -> str:
    """UPDATE statement filling ``scores.fused_rank`` for ``model = $m`` from the fusion views."""
    k = int(cfg.rrf_k)
    ranks = ",\n".join(
        f"CASE WHEN {expr} IS NULL OR NOT isfinite({expr}) THEN NULL ELSE "
        f"rank() OVER (PARTITION BY s.query_id ORDER BY {expr} DESC NULLS LAST) END AS r_{name}"
        for name, expr in FUSION_VIEWS
    )
    terms = " + ".join(f"coalesce(1.0 / ({k} + r_{name}), 0)" for name, _ in FUSION_VIEWS)
    count = " + ".join(f"CASE WHEN r_{name} IS NULL THEN 0 ELSE 1 END" for name, _ in FUSION_VIEWS)
    return f"""
        UPDATE scores SET fused_rank = f.fused_rank FROM (
            SELECT query_id, doc_id, row_number() OVER (
                       PARTITION BY query_id ORDER BY ({terms}) / greatest({count}, 1) DESC, s_neg DESC, doc_id
                   ) AS fused_rank
            FROM (
                WITH {_TEACHER_CTE.format(only="")}
                SELECT s.query_id, s.doc_id, s.s_neg, {ranks}
                FROM scores s LEFT JOIN t USING (query_id, doc_id)
                WHERE s.model = $m
            )
        ) f
        WHERE scores.model = $m AND scores.query_id = f.query_id AND scores.doc_id = f.doc_id
    """


def update_fused_rank(con: duckdb.DuckDBPyConnection, model: str, cfg: RiskConfig = RiskConfig()) -> None:
    """Recompute the fused rank of every candidate of ``model`` (after mining or a cross-encoder run)."""
    con.execute(fused_rank_sql(cfg), {"m": model})


@dataclass
class FitSummary:
    """What one fit saw and did (printed by the CLI, shown by the app)."""

    model: str
    fit_id: int | None = None
    n_labels: int = 0
    n_false_negative: int = 0
    calibrated: bool = False  #: False: too few verdicts, the uncalibrated prior is in force
    intercept: float = 0.0
    slope: float = 1.0
    queries_adjusted: int = 0  #: queries with a per-query correction (those with verdicts)
    candidates: int = 0
    propagated: int = 0
    last_event_id: int = 0
    note: str = ""


def last_event_id(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT coalesce(max(event_id), 0) FROM verdicts").fetchall()[0][0])


def current_fit(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, Any] | None:
    """The newest fit of ``model`` (the one whose ``risk`` rows are in force), or None before any."""
    cur = con.execute(
        "SELECT fit_id, created_at, last_event_id, n_labels, n_false_negative, blend, params FROM risk_fits "
        "WHERE model = ? ORDER BY fit_id DESC LIMIT 1",
        [model],
    )
    rows = cur.fetchall()
    if not rows:
        return None
    out = dict(zip([d[0] for d in cur.description], rows[0]))
    out["params"] = json.loads(out["params"])
    return out


def is_stale(con: duckdb.DuckDBPyConnection, model: str) -> bool:
    """True when verdicts arrived after the fit in force (or nothing was fitted yet)."""
    fit = current_fit(con, model)
    return fit is None or fit["last_event_id"] < last_event_id(con)


def fit(
    con: duckdb.DuckDBPyConnection, model: str, cfg: RiskConfig = RiskConfig(), *, in_transaction: bool = False
) -> FitSummary:
    """Calibrate the prior on the verdicts in force, write ``risk`` for every scored candidate of ``model``, record
    the fit.

    Only the labeled items come to Python (to fit three numbers and the per-query corrections); the predictions for
    every candidate are one INSERT ... SELECT with the calibration inlined and the corrections joined, so a refit
    costs a scan, not memory, at any size. With ``in_transaction`` the caller holds the transaction (mining writes
    scores, bands and risk together).
    """
    summary = FitSummary(model=model, last_event_id=last_event_id(con))
    labeled = con.execute(
        f"""SELECT l.query_id, {PRIOR_LOGIT_SQL.format(s="s")} AS prior_logit, l.y
            FROM ({LABELS_SQL}) l JOIN scores s ON s.model = $m AND s.query_id = l.query_id AND s.doc_id = l.doc_id
            ORDER BY l.query_id, l.doc_id""",
        {"m": model},
    ).fetchnumpy()
    y = np.asarray(labeled["y"], dtype=np.int64)
    summary.n_labels, summary.n_false_negative = len(y), int(y.sum())
    params: dict[str, Any] = {"config": cfg.__dict__}
    offsets: dict[str, float] = {}
    p_model = "prior"
    if len(y) >= cfg.min_labels and min(y.sum(), len(y) - y.sum()) >= cfg.min_per_class:
        cal = fit_calibration(np.asarray(labeled["prior_logit"], dtype=np.float64), y,
                              np.asarray(labeled["query_id"], dtype=object), shrink=cfg.query_shrink,
                              slope_sd=cfg.slope_sd)
        summary.calibrated, summary.intercept, summary.slope = True, cal.intercept, cal.slope
        offsets = cal.offsets
        summary.queries_adjusted = len(offsets)
        params.update(intercept=cal.intercept, slope=cal.slope, queries_adjusted=len(offsets))
        p_model = (f"1.0 / (1 + exp(-({cal.intercept!r} + {cal.slope!r} * {PRIOR_LOGIT_SQL.format(s='f')} "
                   f"+ coalesce(o.offset, 0))))")
    else:
        summary.note = (f"uncalibrated prior: calibrating needs {cfg.min_labels} labeled items with at least "
                        f"{cfg.min_per_class} of each verdict (have {len(y)}, {int(y.sum())} false negatives)")
    origin = "'model'" if summary.calibrated else "'prior'"

    def write() -> None:
        fit_id = con.execute(
            "INSERT INTO risk_fits (model, last_event_id, n_labels, n_false_negative, blend, params) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING fit_id",
            [model, summary.last_event_id, summary.n_labels, summary.n_false_negative,
             1.0 if summary.calibrated else 0.0, json.dumps(params)],
        ).fetchall()[0][0]
        summary.fit_id = int(fit_id)
        con.execute("DELETE FROM risk WHERE model = $m", {"m": model})
        con.register("_risk_offsets", pa.table({"query_id": pa.array(list(offsets), pa.string()),
                                                "offset": pa.array(list(offsets.values()), pa.float64())}))
        try:
            con.execute(
                f"""
                INSERT INTO risk (model, query_id, doc_id, prior, p_model, p_fn, origin, fit_id)
                SELECT $m, query_id, doc_id, prior, p_model,
                       coalesce(y::DOUBLE, p_model), CASE WHEN y IS NULL THEN {origin} ELSE 'verdict' END, $f
                FROM (SELECT f.query_id, f.doc_id, 1.0 / (1 + coalesce(f.fused_rank, {MISSING_FUSED_RANK})) AS prior,
                             {p_model} AS p_model, l.y
                      FROM (SELECT query_id, doc_id, fused_rank FROM scores WHERE model = $m) f
                      LEFT JOIN _risk_offsets o USING (query_id)
                      LEFT JOIN ({LABELS_SQL}) l USING (query_id, doc_id))
                ORDER BY query_id, doc_id
                """,
                {"m": model, "f": summary.fit_id},
            )
        finally:
            con.unregister("_risk_offsets")
        summary.candidates = int(con.execute(
            "SELECT count(*) FROM risk WHERE model = $m", {"m": model}).fetchall()[0][0])
        summary.propagated = _propagate(con, model, cfg)

    if in_transaction:
        write()
    else:
        with transaction(con):
            write()
    return summary


def _propagate(con: duckdb.DuckDBPyConnection, model: str, cfg: RiskConfig) -> int:
    """Lift the risk of near-duplicates of confirmed false negatives (same query, or near-duplicate queries)."""
    from auditor.texts import query_instruction

    instruction = query_instruction(con, model)
    parts = [
        _near_sql(role, threshold, instruction)
        for role, threshold in (("document", cfg.propagate_doc), ("query", cfg.propagate_query))
        if threshold is not None
    ]
    if not parts:
        return 0
    lifted = con.execute(
        f"""
        UPDATE risk SET p_fn = near.sim, origin = 'propagated' FROM (
            WITH fn AS (SELECT query_id, doc_id FROM ({LABELS_SQL}) WHERE y = 1)
            SELECT query_id, doc_id, max(sim) AS sim FROM ({' UNION ALL '.join(parts)}) GROUP BY ALL
        ) near
        WHERE risk.model = $m AND risk.query_id = near.query_id AND risk.doc_id = near.doc_id
          AND risk.origin <> 'verdict' AND risk.p_fn < near.sim
        """,
        {"m": model},
    ).fetchall()
    return int(lifted[0][0]) if lifted else 0


def _near_sql(role: str, threshold: float, instruction: str | None) -> str:
    """Candidates whose document (role 'document': same query) or query (role 'query': same document) is within
    ``threshold`` cosine of a confirmed false negative's (rows of ``fn``), with that cosine."""
    from auditor.texts import query_hash_sql

    table, key, same = ("documents", "doc_id", "query_id") if role == "document" else ("queries", "query_id", "doc_id")

    def cache_key(t: str) -> str:  # the hash a text's vector is cached under (a query's includes its prompt)
        return f"{t}.text_hash" if role == "document" else query_hash_sql(t, instruction)

    return f"""
        SELECT r.query_id, r.doc_id, list_cosine_similarity(ef.vector, eo.vector) AS sim
        FROM fn JOIN risk r ON r.model = $m AND r.{same} = fn.{same} AND r.{key} <> fn.{key}
        JOIN {table} tf ON tf.{key} = fn.{key} JOIN {table} tob ON tob.{key} = r.{key}
        JOIN embeddings ef ON ef.model = $m AND ef.role = '{role}' AND ef.text_hash = {cache_key('tf')}
        JOIN embeddings eo ON eo.model = $m AND eo.role = '{role}' AND eo.text_hash = {cache_key('tob')}
        WHERE list_cosine_similarity(ef.vector, eo.vector) >= {float(threshold)!r}"""


def refit_if_stale(con: duckdb.DuckDBPyConnection, model: str, cfg: RiskConfig = RiskConfig()) -> FitSummary | None:
    """Refit when verdicts arrived since the fit in force; None when it is current."""
    return fit(con, model, cfg) if is_stale(con, model) else None


# --------------------------------------------------------------------------------------------------------------
# explaining one item in words (the Review page and `auditor queue --texts`)


def drivers(f: dict[str, Any]) -> list[str]:
    """What drove an item's risk, in words an annotator understands (most telling first).

    ``f`` holds the candidate's scores (rank, bm25_rank, sim_to_pos, lex_to_pos, fused_rank, s_neg, s_pos_min,
    ce_neg, ce_pos), its teacher score and the positives' best (``teacher``, ``teacher_pos``), and its risk row
    (origin, n_labels), as `auditor.review.item_context` reads them.
    """
    out: list[str] = []
    if f.get("origin") == "verdict":
        out.append("already judged")
    if f.get("origin") == "propagated":
        out.append("near-duplicate of a confirmed false negative")
    rank, brank = f.get("rank"), f.get("bm25_rank")
    top = 5
    if rank is not None and brank is not None and rank <= top and brank <= top:
        out.append(f"both retrievers put it in their top {top} (dense #{rank}, BM25 #{brank})")
    elif rank is not None and rank <= top:
        out.append(f"the dense model's #{rank}")
    elif brank is not None and brank <= top:
        out.append(f"BM25's #{brank}")
    sim = f.get("sim_to_pos")
    if sim is not None and sim >= 0.8:
        out.append(f"near-duplicate of the positive (cosine {sim:.2f})")
    elif sim is not None and sim >= 0.7:
        out.append(f"close to the positive (cosine {sim:.2f})")
    lex = f.get("lex_to_pos")
    if lex is not None and lex >= 0.3:
        out.append(f"shares many words with the positive ({100 * lex:.0f}% of its self-match)")
    if f.get("s_neg") is not None and f.get("s_pos_min") is not None and f["s_neg"] >= f["s_pos_min"]:
        out.append("scores at or above the positive")
    if f.get("teacher") is not None and f.get("teacher_pos") is not None and f["teacher"] >= f["teacher_pos"]:
        out.append("the teacher scored it at or above the positive")
    if f.get("ce_neg") is not None and f.get("ce_pos") is not None and f["ce_neg"] >= f["ce_pos"]:
        out.append("the cross-encoder scored it at or above the positive")
    if not out and f.get("fused_rank") is not None:
        out.append(f"#{f['fused_rank']} of its query when the views are combined")
    if f.get("origin") == "model" and f.get("n_labels"):
        out.append(f"calibrated on {f['n_labels']} verdicts")
    return out


def describe(p: float | None) -> str:
    """P(false negative) as a short label."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "not estimated"
    return f"{100 * p:.0f}%" if p >= 0.01 else "<1%"
