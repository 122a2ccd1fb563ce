"""Words and small look-ups the app (and any other front end) shows; no Streamlit here.

Kept out of the pages so the explanation of a band rule is one tested function, the same wherever it is shown.
"""

from __future__ import annotations

import json
import math
from typing import Any

import duckdb

from auditor.config import BandConfig

VERDICT_LABELS = {"false_negative": "False negative", "true_negative": "True negative", "unsure": "Unsure"}


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def explain_rule(rule: str | None, candidate: dict[str, Any], cfg: BandConfig | None = None) -> str:
    """Why a candidate sits in its band, in one sentence, e.g.
    "scores 0.97 x the positive: above the 95% relative-margin rule".

    ``candidate`` needs s_neg, s_pos_min, delta, ratio (and sim_to_pos, weight, rank where the rule uses them).
    """
    cfg = cfg or BandConfig()
    s_neg, s_pos = candidate.get("s_neg"), candidate.get("s_pos_min")
    delta, ratio = candidate.get("delta"), candidate.get("ratio")
    rule = (rule or "").strip()
    if rule == "relative_margin":
        pct = round(100 * (1 - (cfg.relative_margin or 0.0)))
        return f"scores {_f(ratio)} x the positive: above the {pct}% relative-margin rule"
    if rule == "absolute_margin":
        return (
            f"only {_f(-delta if delta is not None else None)} below the positive: within the "
            f"{_f(cfg.absolute_margin)} margin rule"
        )
    if rule == "absolute_cap":
        return f"scores {_f(s_neg)}: at or above the absolute cap {_f(cfg.absolute_cap)}"
    if rule == "inversion":
        return f"scores {_f(s_neg)}, at or above the labeled positive ({_f(s_pos)}): an inversion"
    if rule == "near_duplicate":
        return (
            f"very close to a labeled positive (similarity {_f(candidate.get('sim_to_pos'))} >= "
            f"{_f(cfg.near_duplicate)})"
        )
    if rule in ("cross_encoder", "second_opinion"):
        return (
            f"the cross-encoder scores it {_f(candidate.get('ce_neg'))}, at or above the positive "
            f"({_f(candidate.get('ce_pos'))})"
        )
    if rule == "top_rank":
        return (
            f"ranked {candidate.get('rank')} in the model's search: within the top {cfg.top_rank}, where unlabeled "
            "positives concentrate"
        )
    if rule == "consensus":
        return (
            f"#{candidate.get('fused_rank')} of its query once the dense model, BM25 and closeness to the positive "
            f"are combined: within the top {cfg.consensus_rank}, where several independent views agree"
        )
    if rule == "easy_rank":
        return f"ranked {candidate.get('rank')}, beyond rank {cfg.easy_rank}: too easy whatever its score"
    if rule in ("simans", "low_weight", "ambiguous", "too_easy", "margin"):
        w = candidate.get("weight")
        below = f"{_f(-delta)} below the positive" if delta is not None and delta <= 0 else f"delta {_f(delta)}"
        if w is not None and w >= cfg.ambiguous_min_weight:
            return f"{below}: in the informative middle (SimANS weight {_f(w)} >= {_f(cfg.ambiguous_min_weight)})"
        return f"{below}: far from the positive (SimANS weight {_f(w)} < {_f(cfg.ambiguous_min_weight)})"
    return f"rule: {rule}" if rule else "no rule recorded"


def band_config_of(con: duckdb.DuckDBPyConnection, name: str) -> BandConfig:
    """The thresholds of a saved band configuration, or the defaults when it was never saved."""
    try:
        from auditor.bands import load_band_config

        return load_band_config(con, name)
    except ImportError:
        pass
    except Exception:
        return BandConfig()
    row = con.execute("SELECT params FROM band_configs WHERE name = ?", [name]).fetchone()
    if row is None:
        return BandConfig()
    params = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return BandConfig.from_json(params)


def banded_pairs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(band config, model, candidates) for every configuration that has bands, biggest first."""
    return [
        (c, m, int(n))
        for c, m, n in con.execute(
            "SELECT config, model, count(*) FROM bands GROUP BY config, model "
            "ORDER BY (config = 'default') DESC, 3 DESC, 1, 2"
        ).fetchall()
    ]


def candidate_sources(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the candidate sources in the store ('given', mining runs, ...)."""
    return [r[0] for r in con.execute("SELECT DISTINCT source FROM candidates ORDER BY 1").fetchall()]


def band_counts_by_source(con: duckdb.DuckDBPyConnection, config: str, model: str) -> dict[str, dict[str, int]]:
    """{source: {band: candidates}} of the stored bands of (config, model), aggregated in SQL.

    A candidate found by two sources counts once under each.
    """
    out: dict[str, dict[str, int]] = {}
    for source, band, n in con.execute(
        """
        SELECT c.source, b.band, count(*) FROM bands b
        JOIN (SELECT DISTINCT query_id, doc_id, source FROM candidates) c USING (query_id, doc_id)
        WHERE b.config = ? AND b.model = ? GROUP BY ALL ORDER BY 1, 2
        """,
        [config, model],
    ).fetchall():
        out.setdefault(source, {})[band] = int(n)
    return out


def scored_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Models with scores in the store, the most recently scored first."""
    try:
        from auditor.bands import latest_model

        latest = latest_model(con)
    except ImportError:
        latest = None
    models = [r[0] for r in con.execute("SELECT DISTINCT model FROM scores ORDER BY 1").fetchall()]
    if latest in models:
        models.remove(latest)
        models.insert(0, latest)
    return models


def scores_version(con: duckdb.DuckDBPyConnection) -> tuple:
    """A cheap fingerprint that changes whenever scores or stored bands change (mining and band assignment both
    write ``band_configs.created_at``), so aggregates of them can be cached between page runs."""
    return tuple(
        con.execute(
            "SELECT (SELECT count(*) FROM scores), (SELECT count(*) FROM bands), "
            "(SELECT max(created_at) FROM band_configs)::VARCHAR, (SELECT count(*) FROM candidates)"
        ).fetchone()
    )


def annotator_verdicts(con: duckdb.DuckDBPyConnection, annotator: str) -> int:
    """How many items ``annotator`` has a standing (not undone) verdict on."""
    return int(con.execute("SELECT count(*) FROM current_verdicts WHERE annotator = ?", [annotator]).fetchone()[0])
