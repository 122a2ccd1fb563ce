"""The trade-off between a negative's hardness and its risk, and the one number that sets it for a whole export.

Every candidate of a query gets ``key = h - lam * p``: ``h`` its hardness, the query-negative cosine scaled to the
query's own candidates (0 = the least similar of them, 1 = the most similar; cosine scales differ by model and by
query), and ``p`` its P(false negative) (:mod:`auditor.risk`; 0 once confirmed a true negative). The export takes the
N highest keys of each query: the hardest negatives, each charged ``lam`` for its risk, so a query short of safe
candidates is filled by the best trade-off, never by the easiest. One ``lam`` holds for every query, so risk is
avoided where it is cheapest in hardness.

``lam`` is not a constant: it is solved, per export, for a budget stated relative to the data (DESIGN.md):

``fn_budget``   (default 0.15) the export may hold at most this share of the false negatives that plain top-N mining
                (the N most similar candidates of each query, nothing removed) would hold, both counted by the risk
                model. Before any verdict the risk is the uncalibrated prior, but a ratio of two sums of it does not
                depend on its level, and once the verdicts calibrate it the same budget sends the export deeper on a
                collection dense with false negatives and keeps it hard on a sparse one.
``target_rate`` instead, an absolute expected false-negative rate (meaningful once the risk is calibrated).

The smallest ``lam`` that meets the budget wins (the least hardness given up). ``safe_risk`` is the highest risk of an
unreviewed negative the solved export takes: strategies that do not rank by key (random, SimANS, band mix) use it as
their risk threshold. Solving (:func:`auditor.select.solve`) loads, for at most ``SOLVE_SAMPLE_QUERIES`` queries (a seeded sample past that), each
candidate's hardness and risk and bisects on ``lam``; the result is cached in the store per settings, risk fit and
band write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from auditor.sql import lit, query_ids_sql

#: Views of the candidates: ``current`` (verdicts and the risk in force) or ``automatic`` (what the export would be
#: with no verdict at all: the uncalibrated prior, nobody's verdict; `auditor evaluate` compares the two).
VIEWS = ("current", "automatic")


def verdict_flags_sql(where: str = "") -> str:
    """Per judged candidate (``where`` filters ``current_verdicts``), whether some annotator's current verdict calls it
    a false negative (``fn``) or a true one (``tn``): the only way verdicts enter a selection (the review queue's
    export snapshots rely on it)."""
    return f"""SELECT query_id, doc_id, bool_or(verdict = 'false_negative') AS fn,
                      bool_or(verdict = 'true_negative') AS tn
               FROM current_verdicts {where} GROUP BY query_id, doc_id"""


def sources_sql(where: str = "") -> str:
    """(query_id, doc_id, source) of every candidate (``where`` filters them): its sources joined by ','."""
    # one source is the common case: skip the sort-and-join of string_agg(DISTINCT ...)
    return f"""SELECT query_id, doc_id,
                      CASE WHEN min(source) = max(source) THEN min(source)
                           ELSE array_to_string(list_sort(list_distinct(list(source))), ',') END AS source
               FROM candidates {where} GROUP BY query_id, doc_id"""


def candidates_sql(
    config: str, model: str, *, view: str = "current", queries: str | None = None,
    query_ids: Sequence[str] | None = None, drop_unreviewed_suspicious: bool = False, with_source: bool = True,
) -> str:
    """Every banded candidate of (config, model) that is not a labeled positive of its query, with its hardness and
    risk: query_id, doc_id, band, rule, weight, s_neg, rank, source, h, p (risk for the selection: 0 for a confirmed
    true negative), p_unrev (risk as if nobody had judged it), fn / tn (some annotator's current verdict says false /
    true negative; a false negative is never exported, and ``tn`` wins only where nobody says false negative).

    ``queries`` (a relation with a query_id column) or ``query_ids`` restrict it to some queries (a filter written
    into every scan, so DuckDB skips row groups by their zone maps). With ``drop_unreviewed_suspicious`` an
    unreviewed suspicious candidate is left out altogether.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    only = "" if queries is None else f" AND query_id IN (SELECT query_id FROM {queries})"
    if query_ids is not None:
        only += f" AND {query_ids_sql(query_ids)}"
    where = "WHERE true" + only
    if view == "automatic":
        flags = "FALSE AS fn, FALSE AS tn"
        verdicts = ""
        risk = "coalesce(r.prior, 0)"
        p_unrev = risk
    else:
        flags = "coalesce(v.fn, FALSE) AS fn, coalesce(v.tn, FALSE) AND NOT coalesce(v.fn, FALSE) AS tn"
        verdicts = f"LEFT JOIN ({verdict_flags_sql(where)}) v ON v.query_id = b.query_id AND v.doc_id = b.doc_id"
        p_unrev = "CASE WHEN r.origin = 'verdict' THEN r.p_model ELSE coalesce(r.p_fn, 0) END"
        risk = f"CASE WHEN coalesce(v.tn, FALSE) AND NOT coalesce(v.fn, FALSE) THEN 0 ELSE {p_unrev} END"
    suspicious = "AND (band <> 'suspicious' OR tn)" if drop_unreviewed_suspicious else ""
    source, sources = "NULL::VARCHAR AS source", ""
    if with_source:  # without, the caller adds the sources of the rows it keeps (grouping every candidate's is slow)
        source = "c.source"
        sources = f"JOIN ({sources_sql(where)}) c ON c.query_id = b.query_id AND c.doc_id = b.doc_id"
    return f"""
        SELECT * EXCLUDE (lo, hi), CASE WHEN hi > lo THEN (s_neg - lo) / (hi - lo) ELSE 1.0 END AS h FROM (
            SELECT b.query_id, b.doc_id, b.band, b.rule, b.weight, s.s_neg, s.rank, {source},
                   {risk} AS p, {p_unrev} AS p_unrev, {flags},
                   min(s.s_neg) OVER (PARTITION BY b.query_id) AS lo, max(s.s_neg) OVER (PARTITION BY b.query_id) AS hi
            FROM bands b
            JOIN (SELECT * FROM scores {where}) s
                 ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
            {sources}
            LEFT JOIN (SELECT * FROM risk {where}) r
                   ON r.model = b.model AND r.query_id = b.query_id AND r.doc_id = b.doc_id
            {verdicts}
            WHERE b.config = {lit(config)} AND b.model = {lit(model)}{only.replace(" AND query_id", " AND b.query_id")}
              AND NOT EXISTS (SELECT 1 FROM qrels q WHERE q.relevant AND q.query_id = b.query_id
                              AND q.doc_id = b.doc_id)
        ) WHERE true {suspicious}"""


@dataclass(frozen=True)
class Tradeoff:
    """A solved trade-off: the ``lam`` of ``key = h - lam * p`` and what it gives (on the solve's queries)."""

    lam: float = 0.0
    safe_risk: float = 1.0  #: highest risk of an unreviewed negative the export takes (other strategies' threshold)
    expected: float | None = None  #: expected false negatives per exported negative, by the risk in force
    plain_expected: float | None = None  #: ... of plain top-N mining, counted the same way
    budget_met: bool = True  #: False when even the cleanest choice holds more than the budget
    queries: int = 0  #: queries the solve ran on
    sampled: bool = False
    fit_id: int | None = None


def select_top(qi: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """Mask of the ``n`` highest keys of each group (``qi``: group index per row)."""
    order = np.lexsort((-key, qi))
    grouped = qi[order]
    starts = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    pos = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    mask = np.zeros(len(key), dtype=bool)
    mask[order[pos < n]] = True
    return mask


def solve_arrays(
    qi: np.ndarray, h: np.ndarray, p: np.ndarray, p_unrev: np.ndarray, s_neg: np.ndarray, fn: np.ndarray,
    tn: np.ndarray, n: int, *, fn_budget: float | None = 0.15, target_rate: float | None = None,
) -> Tradeoff:
    """The smallest lam whose export meets the budget (pure: arrays in, numbers out; see the module docstring)."""
    if len(qi) == 0:
        return Tradeoff()
    keep = ~fn
    qi_k, h_k, p_k, tn_k = qi[keep], h[keep], p[keep], tn[keep]
    plain = select_top(qi, s_neg, n)
    plain_total = float(p_unrev[plain].sum())

    def chosen(lam: float) -> np.ndarray:
        return select_top(qi_k, h_k - lam * p_k, n)

    base = chosen(0.0)
    n_export = int(base.sum())
    if target_rate is not None:
        target = target_rate * n_export
    else:
        target = (0.15 if fn_budget is None else fn_budget) * plain_total

    slack = 1e-9 * max(target, 1.0)  # sums of floats: 0.1 + 0.05 must meet a budget of 0.15

    def cost(lam: float) -> float:
        return float(p_k[chosen(lam)].sum()) - slack

    lo, hi = 0.0, 1.0
    if cost(0.0) <= target:
        lam = 0.0
    else:
        while cost(hi) > target and hi < 1e6:
            lo, hi = hi, hi * 4
        if cost(hi) > target:  # not reachable: the cleanest choice the keys allow
            lam = hi
        else:
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                if cost(mid) > target:
                    lo = mid
                else:
                    hi = mid
                if hi - lo < 1e-4 * hi:
                    break
            lam = hi
    sel = chosen(lam)
    unreviewed = sel & ~tn_k
    return Tradeoff(
        lam=float(lam), safe_risk=float(p_k[unreviewed].max()) if unreviewed.any() else 0.0,
        expected=float(p_k[sel].sum()) / max(int(sel.sum()), 1),
        plain_expected=plain_total / max(int(plain.sum()), 1),
        budget_met=float(p_k[sel].sum()) - slack <= target, queries=int(len(np.unique(qi))),
    )
