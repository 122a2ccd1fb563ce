"""Bands: suspicious / ambiguous / too easy, computed in SQL from a :class:`~auditor.config.BandConfig`.

The rules (DESIGN.md, "Bands") become one CASE expression over the ``scored`` view, so changing a threshold never
re-embeds anything and a preview over a million scored rows is a single aggregate. Every row records the first rule
that fired, in this priority order (suspicious rules first, because a likely false negative must never be hidden
behind a weaker label):

1. ``inversion``        ``s_neg >= s_pos``                             (*)
2. ``near_duplicate``   ``sim(p, n) >= near_duplicate``
3. ``cross_encoder``    ``ce_neg >= ce_pos``                           (when a second opinion was run)
4. ``relative_margin``  ``s_neg > s_pos - |s_pos| * relative_margin``  (*, sign-safe; sentence-transformers' test)
5. ``absolute_margin``  ``s_neg >= s_pos - absolute_margin``           (*)
6. ``absolute_cap``     ``s_neg >= absolute_cap``
7. ``top_rank``         ``rank <= top_rank`` in the model's search
8. ``consensus``        ``fused_rank <= consensus_rank``: near the top of the fused independent views (auditor.risk)
9. ``easy_rank``        rank beyond ``easy_rank`` (or not ranked within the mined depth) -> too easy
10. ``simans``          SimANS weight ``exp(-a (delta - b)^2) >= ambiguous_min_weight`` -> ambiguous
11. ``low_weight``      everything else -> too easy

``s_pos`` is the anchor column chosen by ``BandConfig.anchor`` (minimum over positives by default). Rules marked
(*) compare against the positive and apply only where it is a usable anchor: outscored by at most
``anchor_max_outscored`` of the query's candidates (a per-query window count, column ``n_outscoring``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import duckdb

from auditor.config import DEFAULT_BAND_CONFIG, PREVIEW_SAMPLE_CANDIDATES, BandConfig
from auditor.sql import lit
from auditor.store import StoreError, transaction

SUSPICIOUS_RULES = (
    "inversion", "near_duplicate", "cross_encoder", "relative_margin", "absolute_margin", "absolute_cap", "top_rank",
    "consensus",
)
RULE_ORDER = SUSPICIOUS_RULES + ("easy_rank", "simans", "low_weight")
BANDS = ("suspicious", "ambiguous", "too_easy")
#: One colour and one name per band, for every picture of them: the app's pages and the HTML report.
BAND_COLOURS = {"suspicious": "#DC2626", "ambiguous": "#D97706", "too_easy": "#64748B"}
BAND_LABELS = {"suspicious": "Suspicious", "ambiguous": "Ambiguous", "too_easy": "Too easy"}

#: Columns of the ``scored`` view that `histogram` accepts (plus ``weight`` from ``bands``).
HISTOGRAM_COLUMNS = (
    "s_neg", "s_pos_min", "s_pos_mean", "s_pos_max", "delta", "ratio", "sim_to_pos", "rank", "ce_neg", "ce_pos",
    "bm25", "bm25_rank", "lex_to_pos", "fused_rank",
)

_LATEST_MODEL_KEY = "latest_scored_model"


def _first(result: duckdb.DuckDBPyConnection) -> tuple | None:
    """First row, reading the result to its end (DuckDB refuses new relations while a result is unfinished)."""
    rows = result.fetchall()
    return rows[0] if rows else None


def _num(x: float | int) -> str:
    """A finite number as a SQL DOUBLE literal (configs come from users: never format arbitrary text into SQL)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"band thresholds must be finite numbers, got {x}")
    return f"CAST({x!r} AS DOUBLE)"


def validate(cfg: BandConfig) -> BandConfig:
    """Reject settings that would silently produce nonsense bands; returns cfg."""
    if cfg.anchor not in ("min", "mean", "max"):
        raise ValueError(f"anchor must be min, mean or max, got {cfg.anchor!r}")
    for name in ("relative_margin", "absolute_margin", "absolute_cap", "near_duplicate"):
        v = getattr(cfg, name)
        if v is not None:
            _num(v)
    if cfg.relative_margin is not None and cfg.relative_margin < 0:
        raise ValueError(f"relative_margin must be >= 0, got {cfg.relative_margin}")
    if cfg.absolute_margin is not None and cfg.absolute_margin < 0:
        raise ValueError(f"absolute_margin must be >= 0, got {cfg.absolute_margin}")
    if cfg.simans_a < 0:
        raise ValueError(f"simans_a must be >= 0, got {cfg.simans_a}")
    _num(cfg.simans_b)
    if not 0 <= cfg.ambiguous_min_weight <= 1:
        raise ValueError(f"ambiguous_min_weight must be within [0, 1], got {cfg.ambiguous_min_weight}")
    for name in ("easy_rank", "top_rank", "consensus_rank"):
        v = getattr(cfg, name)
        if v is not None and int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if cfg.anchor_max_outscored is not None and int(cfg.anchor_max_outscored) < 0:
        raise ValueError(f"anchor_max_outscored must be >= 0, got {cfg.anchor_max_outscored}")
    return cfg


@dataclass(frozen=True)
class _SuspicionRule:
    """One suspicious rule, in SQL and in plain words (the Histograms page shows the words): one spec for both."""

    name: str
    active: Callable[[BandConfig], bool]
    #: condition over a ``scored`` row; ``a`` is the anchor guard ("" or "n_outscoring <= k AND "), ``p`` the s_pos column
    sql: Callable[[BandConfig, str, str], str]
    words: Callable[[BandConfig], str]


#: The suspicious rules in priority order (the module docstring's 1-8); names are SUSPICIOUS_RULES.
SUSPICION_RULES = (
    _SuspicionRule("inversion", lambda c: True, lambda c, a, p: f"{a}s_neg >= {p}",
                   lambda c: "it scores at or above the labeled positive"),
    _SuspicionRule("near_duplicate", lambda c: c.near_duplicate is not None,
                   lambda c, a, p: f"sim_to_pos >= {_num(c.near_duplicate)}",
                   lambda c: f"it is nearly a copy of a labeled positive (similarity {c.near_duplicate:.2f} or more)"),
    _SuspicionRule("cross_encoder", lambda c: bool(c.use_cross_encoder),
                   lambda c, a, p: "ce_neg IS NOT NULL AND ce_pos IS NOT NULL AND ce_neg >= ce_pos",
                   lambda c: "a cross-encoder (where one was run) scores it at or above the positive"),
    _SuspicionRule("relative_margin", lambda c: c.relative_margin is not None,
                   lambda c, a, p: f"{a}s_neg > {p} - abs({p}) * {_num(c.relative_margin)}",
                   lambda c: f"it scores at least {100 * (1 - c.relative_margin):.1f}% of the labeled positive's score"),
    _SuspicionRule("absolute_margin", lambda c: c.absolute_margin is not None,
                   lambda c, a, p: f"{a}s_neg >= {p} - {_num(c.absolute_margin)}",
                   lambda c: f"it scores within {c.absolute_margin:.3f} of the labeled positive"),
    _SuspicionRule("absolute_cap", lambda c: c.absolute_cap is not None,
                   lambda c, a, p: f"s_neg >= {_num(c.absolute_cap)}",
                   lambda c: f"its similarity to the query is {c.absolute_cap:.2f} or more"),
    _SuspicionRule("top_rank", lambda c: c.top_rank is not None, lambda c, a, p: f"rank <= {int(c.top_rank)}",
                   lambda c: f"the model ranks it in its top {c.top_rank} for the query"),
    _SuspicionRule("consensus", lambda c: c.consensus_rank is not None,
                   lambda c, a, p: f"fused_rank <= {int(c.consensus_rank)}",
                   lambda c: f"the retrievers together rank it in the query's top {c.consensus_rank}"),
)
assert tuple(r.name for r in SUSPICION_RULES) == SUSPICIOUS_RULES


def band_sql(cfg: BandConfig) -> tuple[str, str, str]:
    """(rule, band, weight) SQL expressions over a row of ``scored`` for this config."""
    validate(cfg)
    s_pos = f"s_pos_{cfg.anchor}"
    weight = f"exp(-{_num(cfg.simans_a)} * pow((s_neg - {s_pos}) - {_num(cfg.simans_b)}, 2))"
    anchored = "" if cfg.anchor_max_outscored is None else f"n_outscoring <= {int(cfg.anchor_max_outscored)} AND "
    whens = [f"WHEN {r.sql(cfg, anchored, s_pos)} THEN '{r.name}'" for r in SUSPICION_RULES if r.active(cfg)]
    if cfg.easy_rank is not None:
        whens.append(f"WHEN rank IS NULL OR rank > {int(cfg.easy_rank)} THEN 'easy_rank'")
    whens.append(f"WHEN {weight} >= {_num(cfg.ambiguous_min_weight)} THEN 'simans'")
    rule = "CASE " + " ".join(whens) + " ELSE 'low_weight' END"
    suspicious = ", ".join(lit(r) for r in SUSPICIOUS_RULES)
    band = f"CASE WHEN rule IN ({suspicious}) THEN 'suspicious' WHEN rule = 'simans' THEN 'ambiguous' ELSE 'too_easy' END"
    return rule, band, weight


def band_definitions(cfg: BandConfig) -> dict[str, str]:
    """What each band means with these thresholds, in plain words (the Histograms page), from the rules above."""
    rules = [r.words(cfg) for r in SUSPICION_RULES if r.active(cfg)]
    anchor = ""
    if cfg.anchor_max_outscored is not None:
        anchor = (f" The comparisons with the positive count only for queries whose positive is beaten by at most "
                  f"{cfg.anchor_max_outscored} candidates (a weak positive is no yardstick).")
    window = math.sqrt(-math.log(cfg.ambiguous_min_weight) / cfg.simans_a) if 0 < cfg.ambiguous_min_weight < 1 \
        else 0.0
    lo, hi = cfg.simans_b - window, cfg.simans_b + window
    easy = f" or ranked beyond {cfg.easy_rank}" if cfg.easy_rank is not None else ""
    return {
        "suspicious": "Likely a false negative (relevant but labeled negative) when any of these holds: "
                      + "; ".join(rules) + "." + anchor,
        "ambiguous": f"Not suspicious, and its score minus the positive's (delta) lies between {lo:+.2f} and "
                     f"{hi:+.2f} (SimANS weight {cfg.ambiguous_min_weight:.2f} or more): hard but probably not "
                     "relevant — the negatives training learns most from.",
        "too_easy": f"Everything else: far below the positive{easy}. Little for the model to learn.",
    }


#: preview_bands' sample is the queries whose hash(query_id) modulo this falls under a cut-off.
_SAMPLE_MOD = 1_000_003


def banded_sql(cfg: BandConfig, only: str = "") -> str:
    """SELECT of every ``scored`` column plus n_outscoring, rule, band and weight, for ``model = $model`` (and the
    condition ``only``, e.g. `` AND query_id IN (...)``, when given: it must keep or drop whole queries)."""
    rule, band, weight = band_sql(cfg)
    outscoring = (
        f"count(*) FILTER (WHERE s_neg >= s_pos_{cfg.anchor}) OVER (PARTITION BY query_id) AS n_outscoring"
    )
    return (
        f"SELECT *, {band} AS band FROM ("
        f"SELECT *, {rule} AS rule, {weight} AS weight FROM ("
        f"SELECT *, {outscoring} FROM scored WHERE model = $model{only}))"
    )


# --- named configurations --------------------------------------------------------------------------------------


def save_band_config(con: duckdb.DuckDBPyConnection, name: str, cfg: BandConfig) -> None:
    """Store (or replace) a named threshold set, so bands can be recomputed and compared later."""
    if not name or not name.strip():
        raise ValueError("a band configuration needs a name")
    validate(cfg)
    con.execute(
        "INSERT OR REPLACE INTO band_configs (name, params, created_at) VALUES (?, ?, current_timestamp)",
        [name, cfg.to_json()],
    )


def reassign_after_scoring(
    con: duckdb.DuckDBPyConnection, model: str, primary: str = DEFAULT_BAND_CONFIG
) -> dict[str, int]:
    """Re-band `primary` and every other configuration that has bands for `model`, after the model's scores changed:
    bands left from the old scores would name candidates and ranks that no longer exist. Returns `primary`'s counts.

    Runs inside the caller's transaction (scores and bands change together or not at all: an export never sees
    scored candidates without bands).
    """
    names = {primary} | {r[0] for r in con.execute(
        "SELECT DISTINCT config FROM bands WHERE model = ?", [model]).fetchall()}
    counts: dict[str, int] = {}
    for name in sorted(names):
        cfg = load_band_config(con, name)
        save_band_config(con, name, cfg)
        _write_bands(con, name, model, cfg)
        if name == primary:
            counts = _stored_counts(con, name, model)
    return counts


def stale_bands(con: duckdb.DuckDBPyConnection, config: str, model: str) -> int:
    """How many scored candidates of `model` have no band under `config`, plus band rows whose candidate is no
    longer scored. Zero for a store written by one `auditor mine` (scores and bands commit together); non-zero for a
    store left by an older version killed between the two, or by a tool writing scores directly."""
    # One full outer join (a single hash join: 0.35 s at 1M candidates, where two anti-joins took 2 s).
    return con.execute(
        """
        SELECT count(*) FROM (SELECT query_id, doc_id FROM scores WHERE model = $m) s
        FULL JOIN (SELECT query_id, doc_id FROM bands WHERE config = $c AND model = $m) b
             ON b.query_id = s.query_id AND b.doc_id = s.doc_id
        WHERE s.query_id IS NULL OR b.query_id IS NULL
        """,
        {"c": config, "m": model},
    ).fetchall()[0][0]


def require_fresh_bands(con: duckdb.DuckDBPyConnection, config: str, model: str) -> None:
    """Refuse to export or sample from bands that do not match the scores (a silent omission otherwise)."""
    if not _first(con.execute("SELECT 1 FROM bands WHERE config = ? AND model = ? LIMIT 1", [config, model])):
        raise StoreError(
            f"no bands for band configuration {config!r} and model {model!r}: run `auditor mine` (or "
            f"`auditor band --config {config}`) first"
        )
    n = stale_bands(con, config, model)
    if n:
        raise StoreError(
            f"the bands of configuration {config!r} do not match the scores of model {model!r} ({n:,} candidates "
            f"differ; a mining run was interrupted, or scores changed since): run `auditor band --db FILE --config "
            f"{config}` to re-band, then try again"
        )


def list_band_configs(con: duckdb.DuckDBPyConnection) -> dict[str, BandConfig]:
    """All named configurations, by name (iterating gives the names)."""
    rows = con.execute("SELECT name, params FROM band_configs ORDER BY name").fetchall()
    return {name: BandConfig.from_json(params) for name, params in rows}


def load_band_config(con: duckdb.DuckDBPyConnection, name: str = DEFAULT_BAND_CONFIG) -> BandConfig:
    """The named configuration; ``default`` falls back to the shipped defaults when it was never saved."""
    row = _first(con.execute("SELECT params FROM band_configs WHERE name = ?", [name]))
    if row:
        return BandConfig.from_json(row[0])
    if name == DEFAULT_BAND_CONFIG:
        return BandConfig()
    known = ", ".join(list_band_configs(con)) or "none yet"
    raise StoreError(f"no band configuration named {name!r} (known: {known}); create it with `auditor band --config {name} ...`")


# --- models ------------------------------------------------------------------------------------------------------


def mark_latest_model(con: duckdb.DuckDBPyConnection, model: str) -> None:
    """Remember which model scored last (the default model of every later command)."""
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_LATEST_MODEL_KEY, model])


def latest_model(con: duckdb.DuckDBPyConnection) -> str | None:
    """The model whose scores were written most recently, or None when nothing is scored."""
    # Two point reads, not `IN (SELECT DISTINCT model FROM scores)`: that grouped every score row on each review item.
    row = _first(con.execute("SELECT value FROM meta WHERE key = ?", [_LATEST_MODEL_KEY]))
    if row and _first(con.execute("SELECT 1 FROM scores WHERE model = ? LIMIT 1", [row[0]])):
        return row[0]
    row = _first(con.execute("SELECT model FROM scores GROUP BY model ORDER BY count(*) DESC, model LIMIT 1"))
    return row[0] if row else None


def resolve_model(con: duckdb.DuckDBPyConnection, model: str | None) -> str:
    """`model`, or the latest scored one; a clear error when the store has no scores for it."""
    if model is None:
        model = latest_model(con)
        if model is None:
            raise StoreError("this store has no scores yet: run `auditor mine --db FILE` first")
        return model
    if not _first(con.execute("SELECT 1 FROM scores WHERE model = ? LIMIT 1", [model])):
        known = [r[0] for r in con.execute("SELECT DISTINCT model FROM scores ORDER BY 1").fetchall()]
        raise StoreError(f"no scores for model {model!r} (scored models: {', '.join(known) or 'none'})")
    return model


# --- assigning and previewing -------------------------------------------------------------------------------------


def assign_bands(
    con: duckdb.DuckDBPyConnection,
    config_name: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    cfg: BandConfig | None = None,
) -> dict[str, int]:
    """Write ``bands`` rows for (config, model), replacing the old ones in one transaction. Returns counts per band.

    With ``cfg`` the configuration is saved under ``config_name`` first; without it the saved one (or the defaults
    for ``default``) is used.
    """
    model = resolve_model(con, model)
    if cfg is None:
        cfg = load_band_config(con, config_name)
    validate(cfg)
    with transaction(con):
        save_band_config(con, config_name, cfg)
        _write_bands(con, config_name, model, cfg)
    return _stored_counts(con, config_name, model)


def _write_bands(con: duckdb.DuckDBPyConnection, config_name: str, model: str, cfg: BandConfig) -> None:
    """Replace the bands of (config, model); the caller holds the transaction."""
    con.execute("DELETE FROM bands WHERE config = ? AND model = ?", [config_name, model])
    con.execute(
        f"INSERT INTO bands (config, model, query_id, doc_id, band, rule, weight) "
        f"SELECT $config, model, query_id, doc_id, band, rule, weight FROM ({banded_sql(cfg)}) ORDER BY query_id, doc_id",
        {"config": config_name, "model": model},
    )
    mark_bands_written(con)


#: ``meta`` key whose value changes with every write of ``bands`` (the review queue's cheap change check).
BANDS_WRITTEN_KEY = "bands_written"


def mark_bands_written(con: duckdb.DuckDBPyConnection) -> None:
    """Record that ``bands`` changed. Every band write of auditor does it; code that rewrites band rows by hand
    calls it too, or the review queue may keep serving its page of the old bands (it does not hash 10M rows per
    item to find out)."""
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, CAST(uuid() AS VARCHAR))", [BANDS_WRITTEN_KEY])


def _stored_counts(con: duckdb.DuckDBPyConnection, config_name: str, model: str) -> dict[str, int]:
    counts = dict.fromkeys(BANDS, 0)
    counts.update(
        dict(
            con.execute(
                "SELECT band, count(*) FROM bands WHERE config = ? AND model = ? GROUP BY band", [config_name, model]
            ).fetchall()
        )
    )
    return counts


def preview_bands(
    con: duckdb.DuckDBPyConnection, cfg: BandConfig, model: str | None = None, min_negatives: int = 5,
    max_candidates: int | None = PREVIEW_SAMPLE_CANDIDATES,
) -> dict[str, Any]:
    """What `cfg` would do, without writing: one SQL aggregate (the app's threshold sliders call it on every move).

    Returns ``candidates`` and ``queries`` per band (a query counts in every band it has a candidate in), ``rules``
    per rule, totals, and ``short_queries``: queries left with fewer than ``min_negatives`` non-suspicious negatives.

    Past ``max_candidates`` scored candidates (None: never) the counts are estimated from a random sample of whole
    queries holding about that many (a seeded hash of the query id, so every slider move sees the same sample), scaled
    by total / sampled candidates; ``sampled`` says so and ``total_candidates`` stays exact. Banding reads each
    query's candidates together (a window per query), which alone costs about a second per 10M candidates on two
    cores: a slider cannot wait for that, and a count within a fraction of a percent serves it as well. Assigning
    the bands is always exact.
    """
    model = resolve_model(con, model)
    total = con.execute("SELECT count(*) FROM scores WHERE model = ?", [model]).fetchall()[0][0]
    sampled = max_candidates is not None and total > max_candidates
    cut = math.ceil(_SAMPLE_MOD * max_candidates / total) if sampled else _SAMPLE_MOD
    only = f" AND hash(query_id, 'preview') % {_SAMPLE_MOD} < {cut}" if sampled else ""
    # Grouped per (query, band, rule) first: every count below then reads that small table, not every candidate.
    sql = f"""
        WITH g AS (SELECT query_id, band, rule, count(*) AS n FROM ({banded_sql(cfg, only)}) GROUP BY ALL),
        per_query AS (SELECT query_id, coalesce(sum(n) FILTER (WHERE band <> 'suspicious'), 0) AS ok
                      FROM g GROUP BY query_id)
        SELECT 'band' AS kind, band AS key, sum(n) AS n, count(DISTINCT query_id) AS nq FROM g GROUP BY band
        UNION ALL SELECT 'rule', rule, sum(n), count(DISTINCT query_id) FROM g GROUP BY rule
        UNION ALL SELECT 'total', 'all', sum(n), count(DISTINCT query_id) FROM g
        UNION ALL SELECT 'short', 'all', count(*) FILTER (WHERE ok < $min_neg), NULL FROM per_query
    """
    rows = con.execute(sql, {"model": model, "min_neg": int(min_negatives)}).fetchall()
    in_sample = next((int(n or 0) for kind, _, n, _ in rows if kind == "total"), 0)
    scale = total / in_sample if sampled and in_sample else 1.0

    def est(n: Any) -> int:
        return int(round((n or 0) * scale))

    out: dict[str, Any] = {
        "model": model,
        "candidates": dict.fromkeys(BANDS, 0),
        "queries": dict.fromkeys(BANDS, 0),
        "rules": {},
        "total_candidates": int(total),
        "total_queries": 0,
        "short_queries": 0,
        "min_negatives": int(min_negatives),
        "sampled": sampled,
        "sample_candidates": in_sample,
    }
    for kind, key, n, nq in rows:
        if kind == "band":
            out["candidates"][key] = est(n)
            out["queries"][key] = est(nq)
        elif kind == "rule":
            out["rules"][key] = est(n)
        elif kind == "total":
            out["total_queries"] = est(nq)
        else:
            out["short_queries"] = est(n)
    return out


def band_counts(
    con: duckdb.DuckDBPyConnection, config_name: str = DEFAULT_BAND_CONFIG, model: str | None = None
) -> dict[str, dict[str, int]]:
    """Stored counts: ``{band: {rule: n}}`` for (config, model)."""
    model = resolve_model(con, model)
    out: dict[str, dict[str, int]] = {b: {} for b in BANDS}
    for band, rule, n in con.execute(
        "SELECT band, rule, count(*) FROM bands WHERE config = ? AND model = ? GROUP BY ALL ORDER BY ALL",
        [config_name, model],
    ).fetchall():
        out.setdefault(band, {})[rule] = n
    return out


def histogram(
    con: duckdb.DuckDBPyConnection,
    column: str,
    model: str | None = None,
    bins: int = 50,
    where: str | None = None,
    *,
    config: str = DEFAULT_BAND_CONFIG,
    band: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    clamp: bool = False,
) -> dict[str, Any]:
    """Bin counts of one score column, computed in SQL (for a Plotly bar chart).

    ``where`` is an extra SQL condition on ``scored`` columns (trusted caller code, never user text); ``band``
    restricts to one band of ``config``. ``lo``/``hi`` fix the range (default: the data's min and max), so several
    histograms can share bins; with ``clamp`` values outside them count in the edge bins (an overlay of a few
    items on another histogram's bins must not lose the extreme ones). Returns ``{"column", "edges" (bins+1), "counts" (bins), "n", "lo", "hi"}``.
    """
    if column not in HISTOGRAM_COLUMNS and column != "weight":
        raise ValueError(f"cannot histogram {column!r}; choose one of {', '.join(HISTOGRAM_COLUMNS + ('weight',))}")
    bins = int(bins)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    model = resolve_model(con, model)
    src = "SELECT s.*, b.band, b.rule, b.weight FROM scored s JOIN bands b USING (model, query_id, doc_id) " \
          "WHERE s.model = $model AND b.config = $config"
    if column != "weight" and band is None:
        src = "SELECT * FROM scored WHERE model = $model"
    params: dict[str, Any] = {"model": model}
    if "$config" in src:
        params["config"] = config
    cond = [f"{column} IS NOT NULL", f"isfinite({column}::DOUBLE)"]
    if band is not None:
        cond.append("band = $band")
        params["band"] = band
    if where:
        cond.append(f"({where})")
    base = f"SELECT {column}::DOUBLE AS x FROM ({src}) WHERE {' AND '.join(cond)}"
    row = _first(con.execute(f"SELECT min(x), max(x), count(*) FROM ({base})", params))
    dmin, dmax, n = row
    lo = dmin if lo is None else float(lo)
    hi = dmax if hi is None else float(hi)
    if not n or lo is None or hi is None:
        return {"column": column, "edges": [], "counts": [], "n": 0, "lo": lo, "hi": hi}
    if hi <= lo:
        hi = lo + 1e-9
    width = (hi - lo) / bins
    params.update({"lo": lo, "width": width, "bins": bins})
    counts = [0] * bins
    for idx, c in con.execute(
        f"SELECT least(greatest(floor((x - $lo) / $width)::BIGINT, 0), $bins - 1) AS i, count(*) FROM ({base}) "
        f"{'' if clamp else 'WHERE x >= $lo AND x <= $lo + $width * $bins'} GROUP BY i",
        params,
    ).fetchall():
        counts[int(idx)] = c
    edges = [lo + i * width for i in range(bins + 1)]
    return {"column": column, "edges": edges, "counts": counts, "n": sum(counts), "lo": lo, "hi": hi}
