"""The choice of N negatives per query, for export and for automatic cleaning; one SQL statement, so it streams.

Eligible candidates of a query: banded under (config, model), not a labeled positive of the query, not marked
false_negative by any annotator's current verdict, and (by default) not an unreviewed suspicious one: a suspicious
candidate is used only once an annotator confirmed it true_negative (and nobody marked it false_negative).

Strategies (deterministic for a seed: randomness is a hash of query, document and seed, computed in SQL):
``top``       highest s_neg first (hardest negatives that survived cleaning);
``random``    uniform within a rank window of the model's search (``random_window``, inclusive);
``simans``    sampled without replacement with probability proportional to the SimANS weight
              (Efraimidis-Spirakis keys ``ln(u) / w``);
``band-mix``  shares per band (``band_mix``, e.g. 80% ambiguous, 20% too easy), interleaved so a band that runs
              out is filled from the others; bands outside the mix are used last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import duckdb

from auditor.bands import resolve_model
from auditor.config import DEFAULT_BAND_CONFIG, ExportConfig

STRATEGIES = ("top", "random", "simans", "band-mix")
OUTPUT_COLUMNS = ("query_id", "doc_id", "slot", "band", "rule", "s_neg", "rank", "source")


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _uniform(seed: int) -> str:
    """A deterministic uniform in (0, 1) per (query, document, seed)."""
    return (
        f"((hash(query_id || chr(31) || doc_id || chr(31) || {_lit(str(int(seed)))}) % 9007199254740992)::DOUBLE "
        f"+ 0.5) / 9007199254740992.0"
    )


def _pool_sql(config: str, model: str, drop_unreviewed_suspicious: bool) -> str:
    keep_suspicious = "" if not drop_unreviewed_suspicious else """
          AND (b.band <> 'suspicious' OR EXISTS (
                SELECT 1 FROM current_verdicts v WHERE v.query_id = b.query_id AND v.doc_id = b.doc_id
                AND v.verdict = 'true_negative'))"""
    return f"""
        SELECT b.query_id, b.doc_id, b.band, b.rule, b.weight, s.s_neg, s.rank, c.source
        FROM bands b
        JOIN scores s ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
        JOIN (SELECT query_id, doc_id,
                     -- one source is the common case: skip the sort-and-join of string_agg(DISTINCT ...)
                     CASE WHEN min(source) = max(source) THEN min(source)
                          ELSE array_to_string(list_sort(list_distinct(list(source))), ',') END AS source
              FROM candidates GROUP BY query_id, doc_id) c ON c.query_id = b.query_id AND c.doc_id = b.doc_id
        WHERE b.config = {_lit(config)} AND b.model = {_lit(model)}
          AND NOT EXISTS (SELECT 1 FROM qrels r WHERE r.relevant AND r.query_id = b.query_id AND r.doc_id = b.doc_id)
          AND NOT EXISTS (SELECT 1 FROM current_verdicts v WHERE v.query_id = b.query_id AND v.doc_id = b.doc_id
                          AND v.verdict = 'false_negative'){keep_suspicious}"""


def selection_sql(
    con: duckdb.DuckDBPyConnection,
    n: int,
    strategy: str = "top",
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    seed: int = 42,
    drop_unreviewed_suspicious: bool = True,
    random_window: tuple[int, int] = ExportConfig.random_window,
    band_mix: Mapping[str, float] | None = None,
) -> str:
    """The SELECT behind `select_negatives` (all values inlined), for callers that embed it in COPY ... TO."""
    n = int(n)
    if n < 1:
        raise ValueError("the number of negatives per query must be >= 1")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    model = resolve_model(con, model)
    pool = _pool_sql(config, model, drop_unreviewed_suspicious)
    u = _uniform(seed)
    where = ""
    if strategy == "top":
        order = "s_neg DESC, doc_id"
    elif strategy == "random":
        lo, hi = (int(x) for x in random_window)
        if lo < 1 or hi < lo:
            raise ValueError(f"random_window must be (lo, hi) with 1 <= lo <= hi, got {random_window}")
        where = f"WHERE rank BETWEEN {lo} AND {hi}"
        order = f"{u}, doc_id"
    elif strategy == "simans":
        order = f"ln({u}) / greatest(weight, 1e-300) DESC, doc_id"
    else:
        mix = dict(ExportConfig().band_mix if band_mix is None else band_mix)
        bad = {b: f for b, f in mix.items() if not (isinstance(f, (int, float)) and math.isfinite(f) and f >= 0)}
        if bad or not any(f > 0 for f in mix.values()):
            raise ValueError(f"band_mix needs non-negative shares with at least one above 0, got {mix}")
        share = " ".join(f"WHEN {_lit(b)} THEN {float(f)!r}" for b, f in mix.items() if f > 0)
        pool = f"""SELECT *, CASE band {share} ELSE NULL END AS share,
                          row_number() OVER (PARTITION BY query_id, band ORDER BY {u}, doc_id) AS band_rn
                   FROM ({pool})"""
        order = "coalesce((band_rn - 0.5) / share, 1e15 + band_rn), doc_id"
    return f"""
        SELECT query_id, doc_id, slot, band, rule, s_neg, rank, source FROM (
            SELECT *, row_number() OVER (PARTITION BY query_id ORDER BY {order}) AS slot
            FROM ({pool}) {where}
        ) WHERE slot <= {n}
        ORDER BY query_id, slot"""


def select_negatives(
    con: duckdb.DuckDBPyConnection,
    n: int,
    strategy: str = "top",
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    seed: int = 42,
    drop_unreviewed_suspicious: bool = True,
    random_window: tuple[int, int] = ExportConfig.random_window,
    band_mix: Mapping[str, float] | None = None,
) -> duckdb.DuckDBPyRelation:
    """Up to `n` negatives per query, as a lazy DuckDB relation with columns
    query_id, doc_id, slot (1..n), band, rule, s_neg, rank, source (sources joined by ',' when several).
    """
    sql = selection_sql(con, n, strategy, config, model, seed, drop_unreviewed_suspicious,
                        random_window, band_mix)
    con.complete()  # a caller's unfinished execute() result would block a new relation
    return con.sql(sql)


def short_queries(
    con: duckdb.DuckDBPyConnection,
    n: int,
    strategy: str = "top",
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    seed: int = 42,
    drop_unreviewed_suspicious: bool = True,
    random_window: tuple[int, int] = ExportConfig.random_window,
    band_mix: Mapping[str, float] | None = None,
) -> duckdb.DuckDBPyRelation:
    """Queries with a labeled positive that would get fewer than `n` negatives: relation (query_id, available)."""
    sel = selection_sql(con, n, strategy, config, model, seed, drop_unreviewed_suspicious, random_window, band_mix)
    con.complete()
    return con.sql(f"""
        SELECT q.query_id, coalesce(s.available, 0) AS available
        FROM (SELECT DISTINCT r.query_id FROM qrels r JOIN documents d USING (doc_id) WHERE r.relevant) q
        LEFT JOIN (SELECT query_id, count(*) AS available FROM ({sel}) GROUP BY query_id) s USING (query_id)
        WHERE coalesce(s.available, 0) < {int(n)}
        ORDER BY q.query_id""")
