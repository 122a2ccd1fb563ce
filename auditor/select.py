"""The choice of N negatives per query, for export and for automatic cleaning; one SQL statement, so it streams.

Candidates of a query: banded under (config, model), not a labeled positive of the query, not marked false_negative
by any annotator's current verdict (:func:`auditor.tradeoff.candidates_sql`). How risk enters:

default (``fn_budget``, or ``target_rate``)
    ``top`` takes each query's N highest ``key = h - lam * p`` (:mod:`auditor.tradeoff`): the hardest negatives
    the risk model considers safe, where "safe" is set by a budget relative to the data (at most ``fn_budget`` of
    the false negatives plain top-N mining would export), never by an absolute risk; a query short of safe
    candidates is filled by the same trade-off of hardness and risk. A confirmed true negative has risk 0: the
    hardest reviewed negatives always go in first. The other strategies treat candidates with risk at most the
    solved ``safe_risk`` as eligible.
``max_risk`` (an explicit override)
    unreviewed candidates with P(false negative) above it are not eligible; ``top`` takes the hardest eligible ones.
Either way a query with fewer than N eligible candidates is filled by the trade-off key (``keep_n``), so cleaning
never leaves a query short while the store has candidates for it (``eligible`` is false for those).

Strategies (deterministic for a seed: randomness is a hash of query, document and seed, computed in SQL):
``top``       the trade-off above (or, with ``max_risk``, the highest s_neg among the eligible);
``random``    uniform within a rank window of the model's search (``random_window``, inclusive);
``simans``    sampled without replacement with probability proportional to the SimANS weight
              (Efraimidis-Spirakis keys ``ln(u) / w``);
``band-mix``  shares per band (``band_mix``, e.g. 80% ambiguous, 20% too easy), interleaved so a band that runs
              out is filled from the others; bands outside the mix are used last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from auditor.bands import resolve_model
from auditor.config import DEFAULT_BAND_CONFIG, ExportConfig
from auditor.sql import lit, query_ids_sql
from auditor.store import remember
from auditor.tradeoff import Tradeoff, candidates_sql, solve_arrays, sources_sql, verdict_flags_sql

#: Past this many queries, lam is solved on a seeded sample of this many (the selection is per query, so the
#: sample's sums estimate the store's; at 10M candidates a full solve would read every row forty times).
SOLVE_SAMPLE_QUERIES = 5_000

#: Where the solved trade-off of one (model, settings) is cached (meta key prefix).
_CACHE_KEY = "tradeoff:"

STRATEGIES = ("top", "random", "simans", "band-mix")
OUTPUT_COLUMNS = (
    "query_id", "doc_id", "slot", "band", "rule", "weight", "s_neg", "rank", "source", "p_fn", "p_unrev", "eligible",
    "h", "key",
)

__all__ = ["STRATEGIES", "OUTPUT_COLUMNS", "Selection", "query_ids_sql", "selection_sql", "select_negatives",
           "short_queries", "verdict_flags_sql", "save_selection", "current_selection"]


def uniform_sql(seed: int, salt: str = "") -> str:
    """A deterministic uniform in (0, 1) per (query, document, seed): the same in every process."""
    return (
        f"((hash(query_id || chr(31) || doc_id || chr(31) || {lit(str(int(seed)) + salt)}) % 9007199254740992)"
        f"::DOUBLE + 0.5) / 9007199254740992.0"
    )


def _probability(name: str, x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x) or not 0 <= x <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {x}")
    return x


@dataclass(frozen=True)
class Selection:
    """One set of export settings: what `auditor export` takes and what the export-aware review queue follows.

    Saved in the store (``meta``) by every export, so the queue reviews what the last export wrote.
    """

    negatives: int = ExportConfig.negatives
    strategy: str = ExportConfig.strategy
    config: str = DEFAULT_BAND_CONFIG
    seed: int = ExportConfig.seed
    fn_budget: float | None = ExportConfig.fn_budget
    target_rate: float | None = ExportConfig.target_rate
    max_risk: float | None = ExportConfig.max_risk
    keep_n: bool = ExportConfig.keep_n
    drop_unreviewed_suspicious: bool = ExportConfig.drop_unreviewed_suspicious
    random_window: tuple[int, int] = ExportConfig.random_window
    band_mix: tuple[tuple[str, float], ...] | None = None

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if int(self.negatives) < 1:
            raise ValueError("the number of negatives per query must be >= 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        _probability("max_risk", self.max_risk)
        _probability("fn_budget", self.fn_budget)
        _probability("target_rate", self.target_rate)
        lo, hi = (int(x) for x in self.random_window)
        if lo < 1 or hi < lo:
            raise ValueError(f"random_window must be (lo, hi) with 1 <= lo <= hi, got {self.random_window}")
        if self.band_mix is not None:
            mix = dict(self.band_mix)
            bad = {b: f for b, f in mix.items() if not (isinstance(f, (int, float)) and math.isfinite(f) and f >= 0)}
            if bad or not any(f > 0 for f in mix.values()):
                raise ValueError(f"band_mix needs non-negative shares with at least one above 0, got {mix}")

    @property
    def rule(self) -> str:
        """The risk rule in words (for summaries and pages)."""
        if self.max_risk is not None:
            return f"max risk {self.max_risk:g}"
        if self.target_rate is not None:
            return f"target rate {self.target_rate:g}"
        return f"false-negative budget {(self.fn_budget if self.fn_budget is not None else 0.15):g} of plain top-N"

    def tradeoff(self, con: duckdb.DuckDBPyConnection, model: str, view: str = "current") -> Tradeoff:
        """The solved trade-off of these settings (cached per risk fit; see :mod:`auditor.tradeoff`)."""
        return solve(con, self, model, view=view)

    def sql(
        self, con: duckdb.DuckDBPyConnection, model: str | None = None, queries: str | None = None,
        query_ids: Sequence[str] | None = None, *, view: str = "current", tradeoff: Tradeoff | None = None,
    ) -> str:
        """The SELECT of up to N negatives per query (all values inlined, for callers that embed it in COPY ... TO).

        ``queries``, when given, is a SQL relation with a ``query_id`` column restricting the selection to those
        queries (the review queue re-selects only the queries a verdict touched); ``query_ids`` restricts it to a few
        queries named by id, a filter DuckDB applies inside each scan. ``view`` 'automatic' selects as if no verdict
        existed (the uncalibrated prior; `auditor evaluate`).
        """
        self.check()
        model = resolve_model(con, model)
        t = tradeoff if tradeoff is not None else self.tradeoff(con, model, view)
        ranked = self.ranked_sql(model, t, queries=queries, query_ids=query_ids, view=view, with_source=False)
        # the sources of the chosen rows only: grouping every candidate's took a third of a 10M-candidate export
        only = "" if queries is None else f" AND query_id IN (SELECT query_id FROM {queries})"
        if query_ids is not None:
            only += f" AND {query_ids_sql(query_ids)}"
        chosen = f"SELECT * EXCLUDE (source) FROM ({ranked}) WHERE slot <= {int(self.negatives)}"
        sources = sources_sql(f"WHERE (query_id, doc_id) IN (SELECT query_id, doc_id FROM chosen){only}")
        return f"""
            WITH chosen AS MATERIALIZED ({chosen})
            SELECT {', '.join(OUTPUT_COLUMNS)} FROM chosen LEFT JOIN ({sources}) USING (query_id, doc_id)
            ORDER BY query_id, slot"""

    def ranked_sql(
        self, model: str, t: Tradeoff, *, queries: str | None = None, query_ids: Sequence[str] | None = None,
        view: str = "current", with_source: bool = True,
    ) -> str:
        """Every candidate the selection may take, numbered per query in its order (``slot``): the export is
        ``slot <= N``, and the review pool (:mod:`auditor.gain`) reads the rest of the order too."""
        pool = self.keyed_sql(model, t, queries=queries, query_ids=query_ids, view=view, with_source=with_source)
        where = []
        if self.strategy == "random":
            lo, hi = (int(x) for x in self.random_window)
            where.append(f"rank BETWEEN {lo} AND {hi}")
        elif self.strategy == "band-mix":  # its order reads a per-band position
            pool = f"""SELECT *, row_number() OVER (PARTITION BY query_id, band, eligible
                                                    ORDER BY {uniform_sql(self.seed)}, doc_id) AS band_rn
                       FROM ({pool})"""
        if not self.keep_n:
            where.append("eligible")
        return f"""
            SELECT *, row_number() OVER (PARTITION BY query_id ORDER BY {self._order(t)}) AS slot
            FROM ({pool}) {"WHERE " + " AND ".join(where) if where else ""}"""

    def keyed_sql(
        self, model: str, t: Tradeoff, *, queries: str | None = None, query_ids: Sequence[str] | None = None,
        view: str = "current", with_source: bool = True,
    ) -> str:
        """Every candidate that may become a negative (not a confirmed false negative), with ``key`` and ``eligible``
        (and ``p_fn``, its risk for the selection)."""
        pool = candidates_sql(self.config, model, view=view, queries=queries, query_ids=query_ids,
                              drop_unreviewed_suspicious=self.drop_unreviewed_suspicious, with_source=with_source)
        if self.max_risk is not None:
            eligible = f"p <= {float(self.max_risk)!r}"
        elif self.strategy == "top":
            eligible = "TRUE"
        else:
            eligible = f"p <= {float(t.safe_risk) + 1e-12!r}"
        return f"""SELECT *, p AS p_fn, h - {float(t.lam)!r} * p AS key, {eligible} AS eligible
                   FROM ({pool}) WHERE NOT fn"""

    def _order(self, t: Tradeoff) -> str:
        """Eligible candidates first, in the strategy's order; a query short of N then takes its best trade-offs."""
        u = uniform_sql(self.seed)
        if self.strategy == "top":
            if self.max_risk is None:
                return "key DESC, doc_id"
            strategy_key = "-s_neg"
        elif self.strategy == "random":
            strategy_key = u
        elif self.strategy == "simans":
            strategy_key = f"-(ln({u}) / greatest(weight, 1e-300))"
        else:
            mix = dict(ExportConfig().band_mix if self.band_mix is None else self.band_mix)
            share = " ".join(f"WHEN {lit(b)} THEN {float(f)!r}" for b, f in mix.items() if f > 0)
            strategy_key = "coalesce((band_rn - 0.5) / (CASE band " + share + " ELSE NULL END), 1e15 + band_rn)"
        return f"NOT eligible, CASE WHEN eligible THEN {strategy_key} ELSE -key END, doc_id"

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


def _settings(n: int, settings: dict[str, Any]) -> Selection:
    """A Selection from `select_negatives`-style keyword settings (``band_mix`` as a dict)."""
    mix = settings.pop("band_mix", None)
    if mix is not None:
        settings["band_mix"] = tuple(sorted(dict(mix).items()))
    if settings.get("random_window") is not None:
        settings["random_window"] = tuple(settings["random_window"])
    return Selection(negatives=int(n), **settings)


_SQL_ONLY = ("model", "queries", "query_ids", "view", "tradeoff")


def selection_sql(con: duckdb.DuckDBPyConnection, n: int, **settings: Any) -> str:
    """The SELECT behind `select_negatives`: ``settings`` are :class:`Selection`'s fields (``band_mix`` may be a
    dict) plus ``model``, ``queries``, ``query_ids``, ``view`` and ``tradeoff`` of :meth:`Selection.sql`."""
    extra = {k: settings.pop(k) for k in _SQL_ONLY if k in settings}
    return _settings(n, settings).sql(con, **extra)


def select_negatives(con: duckdb.DuckDBPyConnection, n: int, **settings: Any) -> duckdb.DuckDBPyRelation:
    """Up to `n` negatives per query, as a lazy DuckDB relation with the columns of ``OUTPUT_COLUMNS``: slot (1..n),
    band, rule, s_neg, rank, source (sources joined by ',' when several), p_fn (the risk the choice used), p_unrev
    (the risk as if nobody had judged it), eligible (false for candidates taken only to keep a query at N), h and key
    (:mod:`auditor.tradeoff`)."""
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


#: Candidates per slice when a selection over the whole store runs a slice of queries at a time.
SLICE_CANDIDATES = 1_000_000


def query_slices(con: duckdb.DuckDBPyConnection, per_slice: int | None = None) -> list[pa.Table]:
    """The queries in slices of consecutive ids of about ``per_slice`` candidates each (one slice or none: []).

    A selection is a window per query: over every candidate of a large store it outgrows DuckDB's memory and
    spills to disk (at 10M candidates under the store's 2 GB, 14.5 s against 9.8 s with room for it). Scores,
    bands, risk and candidates are written in query-id order, so a slice's rows lie in a few row groups of each
    table, which DuckDB reads alone (the semi-join on the slice's ids filters every scan by their range)."""
    per_slice = int(per_slice or SLICE_CANDIDATES)
    n_candidates, n_queries = con.execute(
        "SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM queries)").fetchall()[0]
    parts = -(-int(n_candidates) // per_slice)
    if parts <= 1:
        return []
    ids = con.sql("SELECT query_id FROM queries ORDER BY query_id").to_arrow_table()["query_id"]
    step = -(-int(n_queries) // parts)
    return [pa.table({"query_id": ids.slice(i, step)}) for i in range(0, len(ids), step)]


_SETTINGS_KEY = "export_settings"


def save_selection(con: duckdb.DuckDBPyConnection, selection: Selection) -> None:
    """Remember the settings of the latest export (the review queue's default)."""
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_SETTINGS_KEY, selection.to_json()])


def current_selection(con: duckdb.DuckDBPyConnection) -> Selection:
    """The settings of the latest export, or the defaults before any."""
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [_SETTINGS_KEY]).fetchall()
    return Selection.from_json(rows[0][0]) if rows else Selection()


def solve(
    con: duckdb.DuckDBPyConnection, selection: Selection, model: str, *, view: str = "current",
    sample_queries: int = SOLVE_SAMPLE_QUERIES, use_cache: bool = True,
) -> Tradeoff:
    """Solve the trade-off of ``selection`` on the store (cached per model, settings and risk fit in the current
    view: the review queue and the export of one fit then agree)."""
    from auditor.bands import BANDS_WRITTEN_KEY
    from auditor.risk import current_fit

    selection.check()
    fit = current_fit(con, model)
    fit_id = fit["fit_id"] if fit else None
    cache_key = f"{_CACHE_KEY}{model}:{selection.to_json()}"
    stamp = [r[0] for r in con.execute("SELECT value FROM meta WHERE key = ?", [BANDS_WRITTEN_KEY]).fetchall()]
    state = {"fit_id": fit_id, "bands": stamp[0] if stamp else None}
    if use_cache and view == "current":
        rows = con.execute("SELECT value FROM meta WHERE key = ?", [cache_key]).fetchall()
        if rows:
            cached = json.loads(rows[0][0])
            if cached.get("state") == state:
                return Tradeoff(**cached["tradeoff"])
    n_queries = con.execute(
        "SELECT count(DISTINCT query_id) FROM bands WHERE config = ? AND model = ?", [selection.config, model]
    ).fetchall()[0][0]
    sampled = n_queries > sample_queries
    ids = None
    if sampled:
        ids = [r[0] for r in con.execute(
            """SELECT query_id FROM (SELECT DISTINCT query_id FROM bands WHERE config = ? AND model = ?)
               ORDER BY hash(query_id, 'tradeoff'), query_id LIMIT ?""",
            [selection.config, model, int(sample_queries)]).fetchall()]
    con.complete()
    arrays = con.sql(
        f"""SELECT query_id, h, p, p_unrev, s_neg, fn, tn
            FROM ({candidates_sql(selection.config, model, view=view, query_ids=ids,
                                  drop_unreviewed_suspicious=selection.drop_unreviewed_suspicious)})
            ORDER BY query_id, doc_id""").fetchnumpy()
    _, qi = np.unique(np.asarray(arrays["query_id"], dtype=object), return_inverse=True)

    def col(name: str, dtype: Any) -> np.ndarray:
        return np.nan_to_num(np.asarray(arrays[name], dtype=dtype))

    result = solve_arrays(
        qi, col("h", np.float64), col("p", np.float64), col("p_unrev", np.float64), col("s_neg", np.float64),
        col("fn", bool), col("tn", bool), selection.negatives,
        fn_budget=selection.fn_budget, target_rate=selection.target_rate,
    )
    result = Tradeoff(**{**asdict(result), "sampled": sampled, "fit_id": fit_id})
    if use_cache and view == "current":
        remember(con, cache_key, json.dumps({"state": state, "tradeoff": asdict(result)}))
    return result


