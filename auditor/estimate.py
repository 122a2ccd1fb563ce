"""How many false negatives will the export still hold? Two estimates, and the threshold for a target rate.

``model``      the sum of P(false negative) over the exported negatives (a confirmed true negative counts 0): as
               good as the risk model's calibration, which the verdicts improve (before any verdict it is the
               rule-based prior, an assumption rather than a measurement: said so in ``calibrated``).
``sample``     from the stratified random review (queue mode ``stratified``): per band, the false-negative share of
               the randomly reviewed candidates the export would take if they were unreviewed (``p_model`` within the
               threshold), weighted by the band's share of the export's unreviewed negatives; reviewed true
               negatives count 0. Its 95% interval combines each band's Wilson interval with the same weights, a
               conservative bound; bands without a sampled item count as [0, 1] and are named in ``unsampled``.
``recommend``  for each target rate, the highest risk threshold whose export the model expects at or under the
               target (the hardest negatives that meet it), from a sweep of thresholds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import duckdb

from auditor.select import Selection
from auditor.stats import wilson_interval

#: Thresholds swept for the recommendation (P(false negative) above which an unreviewed candidate is skipped).
SWEEP = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

#: Past this many banded queries the sweep runs on a random sample of this many (see recommend).
SWEEP_SAMPLE_QUERIES = 5_000


def _exported(con: duckdb.DuckDBPyConnection, selection: Selection, model: str, queries: str | None = None) -> str:
    """The export of ``selection`` with each negative's risk, verdict state and band (only ``queries``' when given:
    a relation with a query_id column)."""
    return f"""
        SELECT e.query_id, e.doc_id, e.band, e.s_neg, e.eligible, coalesce(r.p_fn, 0) AS p_fn, r.origin,
               coalesce(v.tn, FALSE) AS reviewed_tn
        FROM ({selection.sql(con, model, queries=queries)}) e
        LEFT JOIN risk r ON r.model = {_lit(model)} AND r.query_id = e.query_id AND r.doc_id = e.doc_id
        LEFT JOIN (SELECT query_id, doc_id, bool_or(verdict = 'true_negative') AND NOT bool_or(verdict =
                          'false_negative') AS tn
                   FROM current_verdicts GROUP BY ALL) v ON v.query_id = e.query_id AND v.doc_id = e.doc_id
    """


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def model_estimate(con: duckdb.DuckDBPyConnection, selection: Selection, model: str,
                   queries: str | None = None) -> dict[str, Any]:
    """Expected false negatives among the exported negatives by the risk model, with hardness and fill counts
    (over ``queries`` only when given: counts are then the sample's)."""
    from auditor.risk import current_fit

    n, expected, mean_s, filled, queries = con.execute(
        f"""SELECT count(*), coalesce(sum(CASE WHEN reviewed_tn THEN 0 ELSE p_fn END), 0), avg(s_neg),
                   count(*) FILTER (WHERE NOT eligible), count(DISTINCT query_id) FILTER (WHERE NOT eligible)
            FROM ({_exported(con, selection, model, queries)})"""
    ).fetchall()[0]
    fit = current_fit(con, model)
    return {
        "negatives": int(n), "expected_false_negatives": float(expected),
        "expected_rate": float(expected) / n if n else None, "mean_s_neg": mean_s,
        "kept_by_lowest_risk": int(filled), "queries_kept_at_n_by_lowest_risk": int(queries),
        "calibrated": bool(fit and fit["blend"] > 0),
        "verdicts_in_fit": int(fit["n_labels"]) if fit else 0,
    }


def sample_estimate(con: duckdb.DuckDBPyConnection, selection: Selection, model: str) -> dict[str, Any]:
    """The export's false-negative rate from the stratified random review, per band, with a 95% interval."""
    threshold = 2.0 if selection.max_risk is None else float(selection.max_risk)
    rows = con.execute(
        f"""
        WITH exported AS ({_exported(con, selection, model)}),
        share AS (SELECT band, count(*) AS n FROM exported WHERE NOT reviewed_tn GROUP BY band),
        item AS (
            SELECT v.query_id, v.doc_id, b.band,
                   bool_or(v.verdict = 'false_negative') AS fn, bool_or(v.verdict = 'true_negative') AS tn
            FROM current_verdicts v
            JOIN bands b ON b.config = $c AND b.model = $m AND b.query_id = v.query_id AND b.doc_id = v.doc_id
            JOIN risk r ON r.model = $m AND r.query_id = v.query_id AND r.doc_id = v.doc_id
            WHERE v.queue_mode = 'stratified' AND r.p_model <= $t
            GROUP BY ALL
        ),
        sampled AS (SELECT band, count(*) FILTER (WHERE fn OR tn) AS judged, count(*) FILTER (WHERE fn) AS fn
                    FROM item GROUP BY band)
        SELECT share.band, share.n, coalesce(sampled.judged, 0), coalesce(sampled.fn, 0)
        FROM share LEFT JOIN sampled USING (band) ORDER BY share.band
        """,
        {"c": selection.config, "m": model, "t": threshold},
    ).fetchall()
    total = con.execute(f"SELECT count(*) FROM ({_exported(con, selection, model)})").fetchall()[0][0]
    if not total:
        return {"rate": None, "ci95": None, "judged": 0, "per_band": [], "unsampled": []}
    rate = lo = hi = 0.0
    per_band, unsampled, judged_all = [], [], 0
    for band, n, judged, fn in rows:
        w = n / total
        ci = wilson_interval(int(fn), int(judged))
        judged_all += int(judged)
        if ci is None:
            unsampled.append(band)
            hi += w
        else:
            rate += w * fn / judged
            lo += w * ci[0]
            hi += w * ci[1]
        per_band.append({"band": band, "unreviewed_exported": int(n), "judged": int(judged), "false_negative": int(fn),
                         "rate": fn / judged if judged else None, "ci95": list(ci) if ci else None})
    return {"rate": rate if not unsampled else None, "ci95": [lo, hi] if judged_all else None, "judged": judged_all,
            "per_band": per_band, "unsampled": unsampled}


def recommend(
    con: duckdb.DuckDBPyConnection, selection: Selection, model: str, targets: tuple[float, ...] = (0.01, 0.02, 0.05),
    sample_queries: int = SWEEP_SAMPLE_QUERIES,
) -> dict[str, Any]:
    """Sweep the risk threshold; for each target rate the highest threshold the model expects to meet it.

    Each threshold is a whole selection. Past ``sample_queries`` queries the sweep runs on that many queries drawn
    at random (a seeded hash, so runs agree): the selection is per query, so the sample's rate estimates the
    export's, and eleven selections of 10M candidates (minutes) become eleven of a few hundred thousand.
    """
    n_queries = con.execute(
        "SELECT count(DISTINCT query_id) FROM bands WHERE config = ? AND model = ?", [selection.config, model]
    ).fetchall()[0][0]
    sampled = n_queries > sample_queries
    if sampled:
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _sweep_queries AS
               SELECT query_id FROM (SELECT DISTINCT query_id FROM bands WHERE config = ? AND model = ?)
               ORDER BY hash(query_id, 'sweep'), query_id LIMIT ?""",
            [selection.config, model, int(sample_queries)],
        )
    sweep = []
    try:
        for t in SWEEP:
            m = model_estimate(con, replace(selection, max_risk=t), model, "_sweep_queries" if sampled else None)
            sweep.append({"max_risk": t, "expected_rate": m["expected_rate"], "mean_s_neg": m["mean_s_neg"],
                          "kept_by_lowest_risk": m["kept_by_lowest_risk"]})
    finally:
        con.execute("DROP TABLE IF EXISTS _sweep_queries")
    out = {}
    for target in targets:
        ok = [p for p in sweep if p["expected_rate"] is not None and p["expected_rate"] <= target]
        best = max(ok, key=lambda p: p["max_risk"]) if ok else None
        out[f"{target:g}"] = best
    return {"sweep": sweep, "for_target_rate": out,
            "queries": int(sample_queries) if sampled else int(n_queries), "sampled": sampled}


def export_estimate(
    con: duckdb.DuckDBPyConnection, selection: Selection, model: str, *, sweep: bool = True
) -> dict[str, Any]:
    """All three, for `auditor stats`, the report and the Histograms page."""
    out = {"selection": {"negatives": selection.negatives, "strategy": selection.strategy,
                         "config": selection.config, "max_risk": selection.max_risk},
           "model": model_estimate(con, selection, model), "sample": sample_estimate(con, selection, model)}
    if sweep:
        out["recommend"] = recommend(con, selection, model)
    return out
