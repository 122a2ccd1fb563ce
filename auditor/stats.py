"""Pooling-bias and false-negative statistics of a store, aggregated in SQL, returned as a JSON-ready dict.

Sections (DESIGN.md, "Pooling-bias and false-negative statistics"): ``shape``, ``scores`` (geometry and histograms),
``positive_rank`` (MRR / success@k of the labeled positive, from the mined ranking), ``bands``, ``short_queries``,
``judged_at_k``, and ``verdicts`` (false-negative rates with Wilson intervals, the estimated total, rates per rank
bucket and per source, Cohen's kappa).

How verdicts become rates
-------------------------
An item is a (query, candidate) pair of the current bands. Its label is false negative when any annotator's current
verdict says so, true negative when someone said true_negative and nobody false_negative; items judged only
``unsure`` are counted but left out of the rates. Items are counted in the band they hold *now*.

Per band ``b`` of size ``N_b``, the rate comes from the band's items reviewed through the stratified (random) queue
when there are any: they are a simple random sample of ``n_b`` items, each included with probability
``pi_b = n_b / N_b``, so the Horvitz-Thompson total ``sum(y_i / pi_b) = N_b * fn_b / n_b`` is unbiased. The
``sampling_prob`` stored with each verdict is the design probability at the moment of review (``j / N_b`` for the
j-th item of the band's random order); it equals ``n_b / N_b`` for the last item when items are reviewed in order,
and the realised ``n_b / N_b`` is used because skipped items make the stored values drift. When a band has only
risk-ordered verdicts, its rate is the share among reviewed items, flagged ``"sample": "risk-ordered"``: it is biased
upward (the riskiest items come first) and the estimate for that band is an upper-leaning guess, not an unbiased one.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import duckdb

from auditor.bands import BANDS
from auditor.config import DEFAULT_BAND_CONFIG, StatsConfig
from auditor.estimators import (  # noqa: F401 - re-exported: the report and tests read them here
    Z95, cohen_kappa, hajek_rate, horvitz_thompson_total, stratified_total, wilson_interval,
)

RANK_BUCKETS = StatsConfig.rank_buckets
K_VALUES = StatsConfig.k_values
HIST_BINS = StatsConfig.histogram_bins


def _rate_row(fn: int, n: int) -> dict[str, Any]:
    ci = wilson_interval(fn, n)
    return {
        "judged": n,
        "false_negative": fn,
        "rate": fn / n if n else None,
        "ci95": list(ci) if ci else None,
    }


# --------------------------------------------------------------------------------------------------------------
# SQL sections
# --------------------------------------------------------------------------------------------------------------

def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> dict[str, Any]:
    rows = _rows(con, sql, params)
    return rows[0] if rows else {}


def _summary(con: duckdb.DuckDBPyConnection, column: str, src: str, params: Any) -> dict[str, Any]:
    return _one(
        con,
        f"""
        SELECT count({column}) AS n, min({column}) AS min, quantile_cont({column}, 0.05) AS p05,
               quantile_cont({column}, 0.25) AS p25, median({column}) AS median,
               quantile_cont({column}, 0.75) AS p75, quantile_cont({column}, 0.95) AS p95,
               max({column}) AS max, avg({column}) AS mean
        FROM ({src}) WHERE {column} IS NOT NULL AND isfinite({column})
        """,
        params,
    )


def _shape(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    shape = _one(
        con,
        """
        WITH pq AS (SELECT query_id, count(*) FILTER (WHERE relevant) AS npos,
                           count(*) FILTER (WHERE NOT relevant) AS njudged_neg
                    FROM qrels GROUP BY query_id),
        cq AS (SELECT query_id, count(DISTINCT doc_id) AS ncand FROM candidates GROUP BY query_id)
        SELECT (SELECT count(*) FROM queries) AS queries,
               (SELECT count(*) FROM documents) AS documents,
               (SELECT count(*) FROM pq WHERE npos > 0) AS queries_with_positives,
               (SELECT count(*) FROM queries WHERE query_id NOT IN (SELECT query_id FROM pq WHERE npos > 0))
                   AS queries_without_positives,
               (SELECT coalesce(sum(npos), 0) FROM pq) AS positives,
               (SELECT coalesce(sum(njudged_neg), 0) FROM pq) AS judged_negatives,
               (SELECT avg(npos) FROM pq WHERE npos > 0) AS positives_per_query_mean,
               (SELECT median(npos) FROM pq WHERE npos > 0) AS positives_per_query_median,
               (SELECT max(npos) FROM pq) AS positives_per_query_max,
               (SELECT avg((npos = 1)::INT) FROM pq WHERE npos > 0) AS single_positive_share,
               (SELECT count(*) FROM (SELECT DISTINCT query_id, doc_id FROM candidates)) AS candidates,
               (SELECT avg(ncand) FROM cq) AS candidates_per_query_mean,
               (SELECT median(ncand) FROM cq) AS candidates_per_query_median
        """,
    )
    shape["per_source"] = _rows(
        con,
        """
        SELECT source, count(*) AS candidates, count(DISTINCT query_id) AS queries,
               count(*) / count(DISTINCT query_id) AS candidates_per_query
        FROM candidates GROUP BY source ORDER BY source
        """,
    )
    return shape


def _histogram(con: duckdb.DuckDBPyConnection, column: str, src: str, params: list, lo: float, hi: float,
               bins: int = HIST_BINS) -> dict[str, Any]:
    if lo is None or hi is None:
        return {"edges": [], "counts": []}
    if hi <= lo:
        hi = lo + 1e-9
    width = (hi - lo) / bins
    counts = [0] * bins
    for i, c in con.execute(
        f"""
        SELECT least(greatest(floor(({column} - ?) / ?)::BIGINT, 0), ?) AS i, count(*)
        FROM ({src}) WHERE {column} IS NOT NULL AND isfinite({column}) GROUP BY i
        """,
        [lo, width, bins - 1] + params,
    ).fetchall():
        counts[int(i)] = int(c)
    return {"edges": [round(lo + width * k, 6) for k in range(bins + 1)], "counts": counts}


def _scores(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, Any]:
    src = "SELECT * FROM scored WHERE model = ?"
    out: dict[str, Any] = {}
    for col in ("s_pos_min", "s_pos_max", "s_neg", "delta", "ratio"):
        out[col] = _summary(con, col, src, [model])
    # s_pos per query (one value per query, not per candidate), for the positive histogram
    qsrc = "SELECT query_id, any_value(s_pos_min) AS s_pos_min FROM scored WHERE model = ? GROUP BY query_id"
    lo = min(v for v in (out["s_neg"].get("min"), out["s_pos_min"].get("min")) if v is not None) \
        if out["s_neg"].get("n") else None
    hi = max(v for v in (out["s_neg"].get("max"), out["s_pos_max"].get("max")) if v is not None) \
        if out["s_neg"].get("n") else None
    out["histograms"] = {
        "s_neg": _histogram(con, "s_neg", src, [model], lo, hi),
        "s_pos": _histogram(con, "s_pos_min", qsrc, [model], lo, hi),
        "delta": _histogram(con, "delta", src, [model], out["delta"].get("min"), out["delta"].get("max")),
        # ratio explodes where s_pos is near 0: bins span p05..p95, values outside fall into the end bins
        "ratio": _histogram(con, "ratio", src, [model], out["ratio"].get("p05"), out["ratio"].get("p95")),
    }
    inv = _one(
        con,
        """
        SELECT avg((s_neg >= s_pos_min)::INT) AS inversion_rate,
               count(DISTINCT query_id) FILTER (WHERE s_neg >= s_pos_min) AS queries_with_inversion,
               count(DISTINCT query_id) AS queries_scored
        FROM scored WHERE model = ?
        """,
        [model],
    )
    out.update(inv)
    return out


def _positive_rank(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, Any]:
    """Rank of the best labeled positive in the model's search, from the mined ranking.

    The mined candidates are the top-``depth`` non-positive documents, so the best positive's rank is
    ``1 + #{ranked candidates with s_neg > s_pos_max}`` when that count is below the depth, and beyond the depth
    otherwise (reciprocal rank 0 for MRR@depth).
    """
    depth = con.execute("SELECT max(rank) FROM scores WHERE model = ?", [model]).fetchall()[0][0]
    if depth is None:
        return {"note": "no candidate has a search rank (nothing was mined with this model): MRR is not computable"}
    ks = [k for k in K_VALUES if k <= depth]
    success = ", ".join(f"avg((prank <= {k})::INT) AS success_at_{k}" for k in ks)
    row = _one(
        con,
        f"""
        WITH per_q AS (
            SELECT query_id, count(*) FILTER (WHERE rank IS NOT NULL AND s_neg > s_pos_max) AS above
            FROM scores WHERE model = ? GROUP BY query_id
        ),
        r AS (SELECT query_id, CASE WHEN above < ? THEN above + 1 ELSE NULL END AS prank FROM per_q)
        SELECT count(*) AS queries, avg(coalesce(1.0 / prank, 0)) AS mrr,
               avg((prank IS NOT NULL)::INT) AS within_depth, median(prank) AS median_rank, {success}
        FROM r
        """,
        [model, depth],
    )
    row["depth"] = int(depth)
    row["note"] = (
        "rank of each query's best labeled positive among the mined candidates (positives were excluded from the "
        "search, so rank = 1 + candidates scoring above it); MRR is MRR@depth"
    )
    return row


def _bands(con: duckdb.DuckDBPyConnection, config: str, model: str) -> dict[str, Any]:
    overall = {b: 0 for b in BANDS}
    overall.update(
        dict(con.execute(
            "SELECT band, count(*) FROM bands WHERE config = ? AND model = ? GROUP BY band", [config, model]
        ).fetchall())
    )
    total = sum(overall.values())
    per_source = _rows(
        con,
        """
        SELECT c.source, b.band, count(*) AS n
        FROM bands b JOIN (SELECT DISTINCT query_id, doc_id, source FROM candidates) c
             ON c.query_id = b.query_id AND c.doc_id = b.doc_id
        WHERE b.config = ? AND b.model = ? GROUP BY ALL ORDER BY ALL
        """,
        [config, model],
    )
    by_source: dict[str, dict[str, int]] = {}
    for r in per_source:
        by_source.setdefault(r["source"], {b: 0 for b in BANDS})[r["band"]] = int(r["n"])
    rules = dict(con.execute(
        "SELECT rule, count(*) FROM bands WHERE config = ? AND model = ? GROUP BY rule ORDER BY 2 DESC",
        [config, model],
    ).fetchall())
    per_query = _one(
        con,
        """
        WITH q AS (SELECT query_id, count(*) FILTER (WHERE band = 'suspicious') AS s FROM bands
                   WHERE config = ? AND model = ? GROUP BY query_id)
        SELECT avg(s) AS suspicious_per_query_mean, max(s) AS suspicious_per_query_max,
               avg((s > 0)::INT) AS queries_with_suspicious_share, count(*) AS queries
        FROM q
        """,
        [config, model],
    )
    return {
        "counts": overall,
        "shares": {b: (n / total if total else None) for b, n in overall.items()},
        "total": total,
        "per_source": by_source,
        "rules": rules,
        "per_query": per_query,
    }


def _short(con: duckdb.DuckDBPyConnection, negatives: int, config: str, model: str) -> dict[str, Any]:
    from auditor.select import short_queries

    rel = short_queries(con, negatives, config=config, model=model)
    rows = rel.fetchall()
    with_pos = con.execute("SELECT count(DISTINCT query_id) FROM qrels WHERE relevant").fetchall()[0][0]
    return {
        "negatives": int(negatives),
        "count": len(rows),
        "share": len(rows) / with_pos if with_pos else None,
        "without_any": sum(1 for _, a in rows if a == 0),
        "ids": [q for q, _ in rows[: StatsConfig.short_ids_listed]],
        "note": "queries with a labeled positive left with fewer than N negatives by the default cleaning "
                "(top strategy, unreviewed suspicious dropped, confirmed false negatives dropped)",
    }


def _judged_at_k(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, Any]:
    """Share of the model's top-k (positives excluded) that carries a qrels label, and a label or a verdict."""
    rows = _rows(
        con,
        f"""
        WITH ranked AS (
            SELECT s.query_id, s.doc_id, s.rank,
                   EXISTS (SELECT 1 FROM qrels r WHERE r.query_id = s.query_id AND r.doc_id = s.doc_id) AS judged,
                   EXISTS (SELECT 1 FROM current_verdicts v WHERE v.query_id = s.query_id AND v.doc_id = s.doc_id
                           AND v.verdict <> 'unsure') AS reviewed
            FROM scores s WHERE s.model = ? AND s.rank IS NOT NULL
        ), ks AS (SELECT unnest({list(K_VALUES)}) AS k)
        SELECT k, count(r.doc_id) AS n, avg(r.judged::INT) AS judged,
               avg((r.judged OR r.reviewed)::INT) AS judged_or_reviewed
        FROM ks JOIN ranked r ON r.rank <= ks.k GROUP BY k ORDER BY k
        """,
        [model],
    )
    return {
        "by_k": rows,
        "note": "share of each query's top-k mined candidates (labeled positives excluded) that has any qrels "
                "label; judged_or_reviewed also counts items with a false/true-negative verdict",
    }


def _verdicts(con: duckdb.DuckDBPyConnection, config: str, model: str, double_annotation: float | None = None
              ) -> dict[str, Any]:
    base = _one(
        con,
        """
        SELECT (SELECT count(*) FROM verdicts) AS events,
               (SELECT count(*) FROM verdicts WHERE verdict = 'undo') AS undos,
               (SELECT count(DISTINCT annotator) FROM current_verdicts) AS annotators,
               (SELECT count(*) FROM (SELECT DISTINCT query_id, doc_id FROM current_verdicts)) AS items_reviewed
        """,
    )
    # One row per reviewed item of the current bands: label, whether it came from the random queue, rank, sources.
    items = """
        WITH iv AS (
            SELECT query_id, doc_id,
                   bool_or(verdict = 'false_negative') AS any_fn,
                   bool_or(verdict = 'true_negative') AS any_tn,
                   bool_or(queue_mode = 'stratified' AND sampling_prob IS NOT NULL) AS random
            FROM current_verdicts GROUP BY query_id, doc_id
        )
        SELECT b.band, iv.any_fn AS fn, (iv.any_fn OR iv.any_tn) AS decided, iv.random, s.rank,
               b.query_id, b.doc_id
        FROM iv JOIN bands b ON b.query_id = iv.query_id AND b.doc_id = iv.doc_id AND b.config = ? AND b.model = ?
        LEFT JOIN scores s ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
    """
    params = [config, model]
    sizes = dict(con.execute(
        "SELECT band, count(*) FROM bands WHERE config = ? AND model = ? GROUP BY band", params
    ).fetchall())
    per_band_rows = {r["band"]: r for r in _rows(
        con,
        f"""
        SELECT band,
               count(*) AS reviewed,
               count(*) FILTER (WHERE NOT decided) AS unsure,
               count(*) FILTER (WHERE decided) AS judged, count(*) FILTER (WHERE fn) AS fn,
               count(*) FILTER (WHERE decided AND random) AS judged_random,
               count(*) FILTER (WHERE fn AND random) AS fn_random
        FROM ({items}) GROUP BY band
        """,
        params,
    )}
    per_band = []
    strata = []
    any_risk_only = False
    for band in BANDS:
        size = int(sizes.get(band, 0))
        r = per_band_rows.get(band, {})
        if r.get("judged_random"):
            n, fn, sample = int(r["judged_random"]), int(r["fn_random"]), "random"
        else:
            n, fn, sample = int(r.get("judged", 0)), int(r.get("fn", 0)), "risk-ordered" if r.get("judged") else None
            any_risk_only = any_risk_only or bool(n)
        row = {"band": band, "size": size, "reviewed": int(r.get("reviewed", 0)), "unsure": int(r.get("unsure", 0)),
               "sample": sample, **_rate_row(fn, n)}
        row["inclusion_prob"] = n / size if size and n else None
        row["estimated_false_negatives"] = (
            horvitz_thompson_total([1.0] * fn, [n / size] * fn) if n and size else None
        )
        row["confirmed_false_negatives"] = int(r.get("fn", 0))
        per_band.append(row)
        strata.append((size, fn, n))
    unreviewed_bands = [b["band"] for b in per_band if b["size"] and not b["judged"]]
    estimate = {
        "estimate": stratified_total(strata) if any(n for _, _, n in strata) else None,
        "method": "sum over bands of N_b * rate_b (Horvitz-Thompson with pi = n_b / N_b within each band's random "
                  "sample; the risk-ordered share where a band has no random sample)",
        "bands_without_verdicts": unreviewed_bands,
        "confirmed_total": sum(b["confirmed_false_negatives"] for b in per_band),
        "biased_upward": any_risk_only,
    }
    buckets = []
    for lo, hi in RANK_BUCKETS:
        r = _one(
            con,
            f"SELECT count(*) FILTER (WHERE decided) AS n, count(*) FILTER (WHERE fn) AS fn FROM ({items}) "
            f"WHERE rank BETWEEN ? AND ?",
            params + [lo, hi],
        )
        buckets.append({"ranks": f"{lo}-{hi}", **_rate_row(int(r.get("fn") or 0), int(r.get("n") or 0))})
    per_source = [
        {"source": r["source"], **_rate_row(int(r["fn"]), int(r["n"]))}
        for r in _rows(
            con,
            f"""
            SELECT c.source, count(*) FILTER (WHERE i.decided) AS n, count(*) FILTER (WHERE i.fn) AS fn
            FROM ({items}) i JOIN (SELECT DISTINCT query_id, doc_id, source FROM candidates) c
                 ON c.query_id = i.query_id AND c.doc_id = i.doc_id
            GROUP BY c.source ORDER BY c.source
            """,
            params,
        )
    ]
    only_source = [
        {"only_source": r["source"], **_rate_row(int(r["fn"]), int(r["n"]))}
        for r in _rows(
            con,
            f"""
            WITH srcs AS (SELECT query_id, doc_id, list(DISTINCT source) AS s FROM candidates GROUP BY ALL)
            SELECT srcs.s[1] AS source, count(*) FILTER (WHERE i.decided) AS n, count(*) FILTER (WHERE i.fn) AS fn
            FROM ({items}) i JOIN srcs ON srcs.query_id = i.query_id AND srcs.doc_id = i.doc_id
            WHERE len(srcs.s) = 1 AND (SELECT count(DISTINCT source) FROM candidates) > 1
            GROUP BY ALL ORDER BY ALL
            """,
            params,
        )
    ]
    # Agreement only over items deliberately routed to two annotators (the queue's double-annotation rule): two
    # verdicts on an item that was not routed are an accident (a lease that ran out), not a sample for kappa.
    from auditor.review.choice import DOUBLE_HASH_SQL, double_share

    share = double_share(double_annotation)
    pairs = [
        (a, b)
        for a, b in con.execute(
            f"""
            WITH ranked AS (
                SELECT query_id, doc_id, verdict,
                       row_number() OVER (PARTITION BY query_id, doc_id ORDER BY event_id) AS k,
                       count(*) OVER (PARTITION BY query_id, doc_id) AS m
                FROM current_verdicts v WHERE {DOUBLE_HASH_SQL} < ?
            )
            SELECT a.verdict, b.verdict FROM ranked a JOIN ranked b USING (query_id, doc_id)
            WHERE a.k = 1 AND b.k = 2
            ORDER BY query_id, doc_id
            """,
            [share],
        ).fetchall()
    ]
    kappa = {
        "items": len(pairs),
        "kappa": cohen_kappa(pairs),
        "agreement": (sum(a == b for a, b in pairs) / len(pairs)) if pairs else None,
        "double_annotation": share,
        "note": "first two annotators of each item routed to double annotation (the share above) and judged by two "
                "(verdict categories false_negative / true_negative / unsure); other overlaps are not counted",
    }
    return {**base, "per_band": per_band, "estimated_total_false_negatives": estimate,
            "per_rank_bucket": buckets, "per_source": per_source, "only_in_one_source": only_source,
            "agreement": kappa}


def compute_stats(
    con: duckdb.DuckDBPyConnection,
    *,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    negatives: int = 5,
    double_annotation: float | None = None,
) -> dict[str, Any]:
    """All statistics of the store as a JSON-serialisable dict (see the module docstring). ``double_annotation`` is
    the share of items routed to two annotators (default: ReviewConfig, i.e. AUDITOR_DOUBLE_ANNOTATION): Cohen's
    kappa is computed over those items only."""
    from auditor.bands import resolve_model

    out: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "negatives": int(negatives),
        "shape": _shape(con),
    }
    try:
        model = model or resolve_model(con, None)
    except Exception as exc:  # no scores yet: shape only
        out["model"] = None
        out["note"] = str(exc)
        return _jsonable(out)
    out["model"] = model
    out["scores"] = _scores(con, model)
    out["positive_rank"] = _positive_rank(con, model)
    has_bands = bool(con.execute(
        "SELECT 1 FROM bands WHERE config = ? AND model = ? LIMIT 1", [config, model]
    ).fetchall())
    if has_bands:
        out["bands"] = _bands(con, config, model)
        out["short_queries"] = _short(con, negatives, config, model)
        out["verdicts"] = _verdicts(con, config, model, double_annotation)
        if con.execute("SELECT 1 FROM risk WHERE model = ? LIMIT 1", [model]).fetchall():
            from dataclasses import replace

            from auditor.estimate import export_estimate
            from auditor.select import current_selection

            selection = replace(current_selection(con), config=config, negatives=int(negatives))
            out["export_estimate"] = export_estimate(con, selection, model)
    else:
        out["note"] = f"no bands for configuration {config!r}: band statistics and verdict rates are omitted"
    out["judged_at_k"] = _judged_at_k(con, model)
    try:
        from auditor.bands import load_band_config

        out["band_config"] = json_loads(load_band_config(con, config).to_json())
    except Exception:  # a non-default name never saved: the bands exist, their thresholds are unknown
        out["band_config"] = None
    return _jsonable(out)


def json_loads(text: str) -> Any:
    import json

    return json.loads(text)


def _jsonable(value: Any) -> Any:
    """Plain Python types only (numpy / Decimal / NaN become JSON-friendly)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
