"""The choice of N negatives per query, for export and for automatic cleaning; one SQL statement, so it streams.

Candidates of a query: banded under (config, model), not a labeled positive of the query, not marked false_negative
by any annotator's current verdict. Of those, *eligible* are the ones confirmed true_negative (and by nobody
false_negative), and the unreviewed ones whose P(false negative) (:mod:`auditor.risk`) is at most ``max_risk``. With
``drop_unreviewed_suspicious``, unreviewed candidates of the suspicious band are left out altogether (a hard filter). The strategy picks N among the eligible; a
query with fewer than N eligible takes its lowest-risk remaining candidates (``keep_n``), so cleaning never leaves
a query short while the store has candidates for it.

Strategies (deterministic for a seed: randomness is a hash of query, document and seed, computed in SQL):
``top``       highest s_neg first (hardest negatives that survived cleaning);
``random``    uniform within a rank window of the model's search (``random_window``, inclusive);
``simans``    sampled without replacement with probability proportional to the SimANS weight
              (Efraimidis-Spirakis keys ``ln(u) / w``);
``band-mix``  shares per band (``band_mix``, e.g. 80% ambiguous, 20% too easy), interleaved so a band that runs
              out is filled from the others; bands outside the mix are used last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import duckdb

from auditor.bands import resolve_model
from auditor.config import DEFAULT_BAND_CONFIG, ExportConfig

STRATEGIES = ("top", "random", "simans", "band-mix")
OUTPUT_COLUMNS = (
    "query_id", "doc_id", "slot", "band", "rule", "weight", "s_neg", "rank", "source", "p_fn", "eligible",
)


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def query_ids_sql(query_ids: Sequence[str]) -> str:
    """A condition on ``query_id`` naming the given queries, with the ids inlined: DuckDB applies it inside each scan
    and skips the row groups whose zone maps exclude them (a semi-join on a table of ids reads every row)."""
    return f"query_id = ANY([{', '.join(_lit(q) for q in query_ids)}]::VARCHAR[])"


def _uniform(seed: int) -> str:
    """A deterministic uniform in (0, 1) per (query, document, seed)."""
    return (
        f"((hash(query_id || chr(31) || doc_id || chr(31) || {_lit(str(int(seed)))}) % 9007199254740992)::DOUBLE "
        f"+ 0.5) / 9007199254740992.0"
    )


def _pool_sql(
    config: str, model: str, drop_unreviewed_suspicious: bool, max_risk: float | None, queries: str | None = None,
    query_ids: Sequence[str] | None = None,
) -> str:
    """Every candidate that may become a negative (not a positive, not a confirmed false negative), with
    ``eligible``: reviewed true negative, or unreviewed and under the risk threshold. With ``drop_unreviewed_suspicious``
    an unreviewed suspicious candidate is not a candidate at all.
    """
    risky = "FALSE" if max_risk is None else f"coalesce(r.p_fn, 0) > {_finite(max_risk)!r}"
    # The band filter is a hard one (an unreviewed suspicious candidate is never used); the risk threshold is soft.
    suspicious = "AND (b.band <> 'suspicious' OR coalesce(v.tn, FALSE))" if drop_unreviewed_suspicious else ""
    # A query filter is written into every scan (not only the outer WHERE): the grouped subqueries would otherwise
    # aggregate the whole table before the join could filter them.
    only = "" if queries is None else f" AND query_id IN (SELECT query_id FROM {queries})"
    if query_ids is not None:  # a constant filter: DuckDB skips the row groups whose zone maps exclude it
        only += f" AND {query_ids_sql(query_ids)}"
    where = "WHERE true" + only
    return f"""
        SELECT b.query_id, b.doc_id, b.band, b.rule, b.weight, s.s_neg, s.rank, c.source, r.p_fn,
               coalesce(v.tn, FALSE) OR NOT {risky} AS eligible
        FROM bands b
        JOIN (SELECT * FROM scores {where}) s
             ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
        JOIN (SELECT query_id, doc_id,
                     -- one source is the common case: skip the sort-and-join of string_agg(DISTINCT ...)
                     CASE WHEN min(source) = max(source) THEN min(source)
                          ELSE array_to_string(list_sort(list_distinct(list(source))), ',') END AS source
              FROM candidates {where} GROUP BY query_id, doc_id) c ON c.query_id = b.query_id AND c.doc_id = b.doc_id
        LEFT JOIN (SELECT * FROM risk {where}) r
               ON r.model = b.model AND r.query_id = b.query_id AND r.doc_id = b.doc_id
        LEFT JOIN ({verdict_flags_sql(where)}) v
               ON v.query_id = b.query_id AND v.doc_id = b.doc_id
        WHERE b.config = {_lit(config)} AND b.model = {_lit(model)}{only.replace(" AND query_id", " AND b.query_id")}
          AND NOT coalesce(v.fn, FALSE) {suspicious}
          AND NOT EXISTS (SELECT 1 FROM qrels q WHERE q.relevant AND q.query_id = b.query_id AND q.doc_id = b.doc_id)"""


def verdict_flags_sql(where: str = "") -> str:
    """Per judged candidate (``where`` filters ``current_verdicts``), whether some annotator's current verdict calls it
    a false negative (``fn``) or a true one (``tn``): the only way verdicts enter a selection (the review queue's
    export snapshots rely on it)."""
    return f"""SELECT query_id, doc_id, bool_or(verdict = 'false_negative') AS fn,
                      bool_or(verdict = 'true_negative') AS tn
               FROM current_verdicts {where} GROUP BY query_id, doc_id"""


def _finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"max_risk must be a probability in [0, 1], got {x}")
    return x


def selection_sql(
    con: duckdb.DuckDBPyConnection,
    n: int,
    strategy: str = "top",
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    seed: int = 42,
    drop_unreviewed_suspicious: bool = ExportConfig.drop_unreviewed_suspicious,
    random_window: tuple[int, int] = ExportConfig.random_window,
    band_mix: Mapping[str, float] | None = None,
    max_risk: float | None = ExportConfig.max_risk,
    keep_n: bool = ExportConfig.keep_n,
    queries: str | None = None,
    query_ids: Sequence[str] | None = None,
) -> str:
    """The SELECT behind `select_negatives` (all values inlined), for callers that embed it in COPY ... TO.

    ``queries``, when given, is a SQL relation with a ``query_id`` column restricting the selection to those queries
    (the review queue re-selects only the queries a verdict touched); ``query_ids`` restricts it to a few queries
    named by id, a filter DuckDB applies inside each scan (cheaper than ``queries`` for a handful of ids).
    """
    n = int(n)
    if n < 1:
        raise ValueError("the number of negatives per query must be >= 1")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    model = resolve_model(con, model)
    pool = _pool_sql(config, model, drop_unreviewed_suspicious, max_risk, queries, query_ids)
    u = _uniform(seed)
    where = ""
    if strategy == "top":
        key = "-s_neg"
    elif strategy == "random":
        lo, hi = (int(x) for x in random_window)
        if lo < 1 or hi < lo:
            raise ValueError(f"random_window must be (lo, hi) with 1 <= lo <= hi, got {random_window}")
        where = f"WHERE rank BETWEEN {lo} AND {hi}"
        key = u
    elif strategy == "simans":
        key = f"-(ln({u}) / greatest(weight, 1e-300))"
    else:
        mix = dict(ExportConfig().band_mix if band_mix is None else band_mix)
        bad = {b: f for b, f in mix.items() if not (isinstance(f, (int, float)) and math.isfinite(f) and f >= 0)}
        if bad or not any(f > 0 for f in mix.values()):
            raise ValueError(f"band_mix needs non-negative shares with at least one above 0, got {mix}")
        share = " ".join(f"WHEN {_lit(b)} THEN {float(f)!r}" for b, f in mix.items() if f > 0)
        pool = f"""SELECT *, CASE band {share} ELSE NULL END AS share,
                          row_number() OVER (PARTITION BY query_id, band, eligible ORDER BY {u}, doc_id) AS band_rn
                   FROM ({pool})"""
        key = "coalesce((band_rn - 0.5) / share, 1e15 + band_rn)"
    if not keep_n:
        where = f"{where} AND eligible" if where else "WHERE eligible"
    # Eligible candidates first, in the strategy's order; a query short of N then takes its lowest-risk others.
    order = f"NOT eligible, CASE WHEN eligible THEN {key} ELSE coalesce(p_fn, 0) END, doc_id"
    return f"""
        SELECT query_id, doc_id, slot, band, rule, weight, s_neg, rank, source, p_fn, eligible FROM (
            SELECT *, row_number() OVER (PARTITION BY query_id ORDER BY {order}) AS slot
            FROM ({pool}) {where}
        ) WHERE slot <= {n}
        ORDER BY query_id, slot"""


def select_negatives(con: duckdb.DuckDBPyConnection, n: int, **settings: Any) -> duckdb.DuckDBPyRelation:
    """Up to `n` negatives per query, as a lazy DuckDB relation with columns query_id, doc_id, slot (1..n), band,
    rule, s_neg, rank, source (sources joined by ',' when several), p_fn and eligible (false for the lowest-risk
    candidates taken only to keep a query at N). `settings` are those of :func:`selection_sql`.
    """
    sql = selection_sql(con, n, **settings)
    con.complete()  # a caller's unfinished execute() result would block a new relation
    return con.sql(sql)


def short_queries(con: duckdb.DuckDBPyConnection, n: int, **settings: Any) -> duckdb.DuckDBPyRelation:
    """Queries with a labeled positive that would get fewer than `n` negatives: relation (query_id, available)."""
    sel = selection_sql(con, n, **settings)
    con.complete()
    return con.sql(f"""
        SELECT q.query_id, coalesce(s.available, 0) AS available
        FROM (SELECT DISTINCT r.query_id FROM qrels r JOIN documents d USING (doc_id) WHERE r.relevant) q
        LEFT JOIN (SELECT query_id, count(*) AS available FROM ({sel}) GROUP BY query_id) s USING (query_id)
        WHERE coalesce(s.available, 0) < {int(n)}
        ORDER BY q.query_id""")


@dataclass(frozen=True)
class Selection:
    """One set of export settings: what `auditor export` takes and what the export-aware review queue follows.

    Saved in the store (``meta``) by every export, so the queue reviews what the last export wrote.
    """

    negatives: int = ExportConfig.negatives
    strategy: str = ExportConfig.strategy
    config: str = DEFAULT_BAND_CONFIG
    seed: int = ExportConfig.seed
    max_risk: float | None = ExportConfig.max_risk
    keep_n: bool = ExportConfig.keep_n
    drop_unreviewed_suspicious: bool = ExportConfig.drop_unreviewed_suspicious
    random_window: tuple[int, int] = ExportConfig.random_window
    band_mix: tuple[tuple[str, float], ...] | None = None

    def sql(
        self, con: duckdb.DuckDBPyConnection, model: str | None = None, queries: str | None = None,
        query_ids: Sequence[str] | None = None,
    ) -> str:
        return selection_sql(
            con, self.negatives, strategy=self.strategy, config=self.config, model=model, seed=self.seed,
            drop_unreviewed_suspicious=self.drop_unreviewed_suspicious, random_window=self.random_window,
            band_mix=dict(self.band_mix) if self.band_mix is not None else None, max_risk=self.max_risk,
            keep_n=self.keep_n, queries=queries, query_ids=query_ids,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if data.get("random_window") is not None:
            data["random_window"] = tuple(data["random_window"])
        if data.get("band_mix") is not None:
            data["band_mix"] = tuple((str(b), float(f)) for b, f in data["band_mix"])
        return cls(**data)


_SETTINGS_KEY = "export_settings"


def save_selection(con: duckdb.DuckDBPyConnection, selection: Selection) -> None:
    """Remember the settings of the latest export (the review queue's default)."""
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_SETTINGS_KEY, selection.to_json()])


def current_selection(con: duckdb.DuckDBPyConnection) -> Selection:
    """The settings of the latest export, or the defaults before any."""
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [_SETTINGS_KEY]).fetchall()
    return Selection.from_json(rows[0][0]) if rows else Selection()
