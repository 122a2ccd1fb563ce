"""How many false negatives does the export still hold? An estimate with an interval, or a plain "not yet".

Before the verdicts calibrate the risk (:mod:`auditor.calibration`) the only figure would be a sum of the prior,
which is an assumption about the data (on the densely judged collections the truth was up to 8 times it): no
percentage is given then, only what to review for one.

After review, the false negatives of the export are those among its unreviewed negatives U (a reviewed negative in
the export is a confirmed true negative; a confirmed false negative is never exported). They are estimated from the
calibrated risk, corrected by the audit sample S (:mod:`auditor.audit`: every reviewed candidate whose permanent
random number is below the audit rate, whichever queue served it), post-stratified by risk:

    FN(U) = sum over U of p  +  sum over risk strata b of |U_b| * mean over S_b of (y - p)

``p`` is a candidate's calibrated risk as if unreviewed and ``y`` its verdict (1 = false negative); the strata are
the quintiles of the risk in S. Within a stratum the audited candidates stand for the unreviewed ones of the same
risk, so the correction removes the model's bias level by level, wherever in the store the audits were taken (the
export moves while people review). Its variance, ``sum_b |U_b|^2 v_b / |S_b|`` with ``v_b`` the larger of the
residuals' variance and their mean ``p (1 - p)`` (audits that found no false negative have residuals of almost no
spread, which says little about the mean with rare events), plus the variance of U's
outcomes around their risk, ``sum over U of p (1 - p)``, gives a 95% interval (Student's t, |S| - 1 degrees of
freedom), clipped to [0, |U|]. How often the true rate falls inside: `python bench/estimate_coverage.py` (README).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import duckdb

from auditor.audit import design
from auditor.config import ReviewConfig
from auditor.risk import LABELS_SQL, current_fit
from auditor.select import Selection
from auditor.tradeoff import candidates_sql

#: Audit items in the export's population needed before an interval is stated.
MIN_AUDITS = 10


#: Risk strata of the correction (quintiles of the audit sample's risk).
STRATA = 5


def stratified_correction(
    audit_y: list[float], audit_p: list[float], strata_of_u: list[tuple[int, float, float]], n_unreviewed: int,
) -> tuple[float, float, float] | None:
    """(estimate, low, high) of the false negatives among the unreviewed exported negatives.

    ``audit_y``, ``audit_p``: the audit sample's verdicts and risks; ``strata_of_u``: per stratum b (0..STRATA-1,
    cut at :func:`strata_edges` of ``audit_p``) the unreviewed negatives' (count, sum of p, sum of p (1 - p)).
    None without two audited candidates. Pure arithmetic, see the module docstring."""
    if len(audit_y) < 2:
        return None
    from bisect import bisect_right

    edges = strata_edges(audit_p)
    residuals: dict[int, list[float]] = {}
    floors: dict[int, list[float]] = {}
    for y, p in zip(audit_y, audit_p):
        b = bisect_right(edges, p)
        residuals.setdefault(b, []).append(y - p)
        floors.setdefault(b, []).append(p * (1 - p))
    total = var = 0.0
    for b, count, sum_p, sum_pq in strata_of_u:
        total += sum_p
        var += sum_pq
        e = residuals.get(b, [])
        if len(e) >= 2:
            mean = sum(e) / len(e)
            # a stratum whose audits found no false negative has residuals of almost no spread; the spread the
            # risk itself implies, mean p (1 - p), is the least its mean can be trusted to
            spread = max(sum((x - mean) ** 2 for x in e) / (len(e) - 1), sum(floors[b]) / len(e))
            total += count * mean
            var += count * count * spread / len(e)
    from scipy.stats import t as student

    half = float(student.ppf(0.975, len(audit_y) - 1)) * math.sqrt(max(var, 0.0))
    clip = float(n_unreviewed)
    return min(max(total, 0.0), clip), min(max(total - half, 0.0), clip), min(max(total + half, 0.0), clip)


def strata_edges(audit_p: list[float]) -> list[float]:
    """Inner edges of the risk strata: the quintiles of the audit sample's risk (a stratum b holds risks p with
    ``bisect_right(edges, p) == b``)."""
    ordered = sorted(audit_p)
    return [ordered[min(len(ordered) - 1, (len(ordered) * k) // STRATA)] for k in range(1, STRATA)]


def _sample_sql(selection: Selection, model: str, rate: float, u_sql: str) -> str:
    """The audit sample: every reviewed candidate (a verdict consensus) with u below the rate, with y and p."""
    # only the judged queries' candidates (a candidate's values depend on its own query's rows alone)
    judged = "(SELECT DISTINCT query_id FROM verdicts)"
    return f"""
        SELECT l.y, c.p_unrev AS p
        FROM ({candidates_sql(selection.config, model, queries=judged)}) c
        JOIN ({LABELS_SQL}) l USING (query_id, doc_id)
        WHERE {u_sql} < {rate!r}"""


def _exported_sql(exported: str) -> str:
    """Each exported negative of relation ``exported`` (a selection's rows) with its s_neg, verdict (y) and risk as
    if unreviewed (p: the selection's p_unrev)."""
    return f"""
        SELECT s.query_id, s.doc_id, s.s_neg, l.y, s.p_unrev AS p FROM {exported} s
        LEFT JOIN ({LABELS_SQL}) l ON l.query_id = s.query_id AND l.doc_id = s.doc_id"""


def export_estimate(
    con: duckdb.DuckDBPyConnection, selection: Selection, model: str, cfg: ReviewConfig = ReviewConfig(),
    exported: str | None = None,
) -> dict[str, Any]:
    """The export's estimated false-negative rate with a 95% interval, or why there is none yet (``status``:
    ``uncalibrated``, ``few_audits``, ``estimated`` or ``empty``), with the audit sample's progress; for `auditor
    stats`, the export summary, the report and the Histograms page. ``exported``: a table of the exported negatives
    (query_id, doc_id, s_neg, p_unrev) when the caller has them (an export just selected them: no second selection)."""
    fit = current_fit(con, model)
    calibrated = bool(fit and fit["blend"] > 0)
    t = selection.tradeoff(con, model)
    audit = design(con, selection.config, model, selection.negatives, cfg)
    rate = float(audit.rate)
    con.complete()
    sample = con.execute(_sample_sql(selection, model, rate, audit.u_sql())).fetchall()
    audit_y, audit_p = [float(y) for y, _ in sample], [float(p or 0) for _, p in sample]
    edges = strata_edges(audit_p) if audit_p else []
    stratum = " + ".join(f"CASE WHEN p >= {e!r} THEN 1 ELSE 0 END" for e in edges) or "0"
    source = exported or f"({selection.sql(con, model, tradeoff=t)})"
    table = f"_export_estimate_{uuid.uuid4().hex}"
    con.execute(f"CREATE TEMP TABLE {table} AS {_exported_sql(source)}")
    try:
        n_export, mean_s, confirmed, n_unrev, pending = con.execute(
            f"""SELECT count(*), avg(s_neg), count(*) FILTER (WHERE y = 0), count(*) FILTER (WHERE y IS NULL),
                       count(*) FILTER (WHERE y IS NULL AND {audit.u_sql()} < {rate!r})
                FROM {table}""").fetchall()[0]
        strata = [(int(b), int(n), float(sp), float(spq)) for b, n, sp, spq in con.execute(
            f"""SELECT {stratum} AS b, count(*), sum(p), sum(p * (1 - p)) FROM {table} WHERE y IS NULL
                GROUP BY ALL ORDER BY b""").fetchall()]
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    sum_p = sum(sp for _, _, sp, _ in strata)
    out: dict[str, Any] = {
        "selection": {"negatives": selection.negatives, "strategy": selection.strategy, "config": selection.config,
                      "rule": selection.rule, "fn_budget": selection.fn_budget, "target_rate": selection.target_rate,
                      "max_risk": selection.max_risk},
        "tradeoff": {"lam": t.lam, "safe_risk": t.safe_risk, "budget_met": t.budget_met},
        "negatives": int(n_export), "unreviewed": int(n_unrev), "confirmed_true_negatives": int(confirmed or 0),
        "mean_s_neg": mean_s, "calibrated": calibrated, "verdicts_in_fit": int(fit["n_labels"]) if fit else 0,
        "audit": {"rate": rate, "planned": audit.planned, "reviewed": len(sample), "pending": int(pending),
                  "every": cfg.audit_every},
        "model_rate": (sum_p / n_export) if calibrated and n_export else None,
        "rate": None, "ci95": None, "false_negatives": None, "ci95_count": None,
    }
    if not n_export:
        out.update(status="empty", message="the export holds no negatives")
        return out
    if not calibrated:
        out.update(status="uncalibrated", message=(
            f"not estimated: the risk is the uncalibrated prior, an assumption about the data, not a measurement. "
            f"Review the default queue (`auditor queue`, the Review page): every {cfg.audit_every}th item is an "
            f"audit item, a random {100 * rate:.1f}% of the export; at least {MIN_AUDITS} of them (about "
            f"{audit.planned} for a narrow interval) give an estimate with a 95% interval"))
        return out
    est = stratified_correction(audit_y, audit_p, strata, int(n_unrev))
    if len(sample) < MIN_AUDITS or est is None:
        out.update(status="few_audits", message=(
            f"not estimated yet: {len(sample)} of the at least {MIN_AUDITS} audit items an interval needs are "
            f"reviewed ({int(pending)} waiting in the default queue); the calibrated risk alone expects "
            f"{100 * sum_p / n_export:.1f}%, unchecked"))
        return out
    value, lo, hi = est
    out.update(status="estimated", false_negatives=value, ci95_count=[lo, hi], rate=value / n_export,
               ci95=[lo / n_export, hi / n_export],
               message=(f"estimated false negatives in the export: {100 * value / n_export:.1f}% "
                        f"(95% interval {100 * lo / n_export:.1f}-{100 * hi / n_export:.1f}%), from the calibrated "
                        f"risk checked against {len(sample)} audit items"))
    return out
