"""How well auditor catches known false negatives (an answer key of hidden positives, see :mod:`auditor.planted`).

Per band and per rule: how many of the key's pairs it holds (recall over the key, precision over the band). Then
the export view, judged at equal hardness (:mod:`auditor.frontier`): of N negatives per query chosen with the export
settings, how many are known false negatives, their mean cosine, and the frontier ratio against the rank-window
baseline — for plain top-N mining with no cleaning, the automatic export (no verdict: the uncalibrated prior), and
the export as the store's verdicts leave it; and the export's stated false-negative rate and interval
(:mod:`auditor.estimate`) against the actual rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from auditor.bands import BANDS, resolve_model
from auditor.config import DEFAULT_BAND_CONFIG
from auditor.planted import read_answer_key
from auditor.frontier import baseline_at, baseline_curve, dense_ranking, frontier_ratio
from auditor.select import Selection
from auditor.sql import lit


def evaluate(
    con: duckdb.DuckDBPyConnection,
    answer_key: str | Path | list[tuple[str, str]],
    negatives: int = 5,
    config: str = DEFAULT_BAND_CONFIG,
    model: str | None = None,
    strategy: str = "top",
    seed: int = 42,
    selection: Selection | None = None,
    baseline_depth: int = 100,
) -> dict[str, Any]:
    """Counts of known false negatives per band, per rule, among all candidates, and in an export of `negatives`.

    ``selection`` gives every export setting (it overrides negatives, config, strategy and seed); without it the
    export defaults apply with those four.
    """
    pairs = read_answer_key(answer_key) if not isinstance(answer_key, list) else sorted(set(answer_key))
    model = resolve_model(con, model)
    if selection is None:
        selection = Selection(negatives=int(negatives), strategy=strategy, config=config, seed=seed)
    negatives, config = selection.negatives, selection.config
    con.register("_key", pa.table({"query_id": pa.array([p[0] for p in pairs], pa.string()),
                                   "doc_id": pa.array([p[1] for p in pairs], pa.string())}))
    try:
        p = {"c": config, "m": model}
        known = con.execute("SELECT count(*) FROM _key WHERE query_id IN (SELECT query_id FROM queries)").fetchall()[0][0]
        in_candidates = con.execute(
            "SELECT count(*) FROM _key k JOIN scores s USING (query_id, doc_id) WHERE s.model = $m", {"m": model}
        ).fetchall()[0][0]
        scored_queries = con.execute(
            "SELECT count(DISTINCT query_id) FROM scores WHERE model = $m", {"m": model}
        ).fetchall()[0][0]

        def grouped(col: str) -> dict[str, dict[str, Any]]:
            rows = con.execute(
                f"""SELECT b.{col}, count(*), count(k.doc_id) FROM bands b
                    LEFT JOIN _key k USING (query_id, doc_id)
                    WHERE b.config = $c AND b.model = $m GROUP BY 1 ORDER BY 1""",
                p,
            ).fetchall()
            return {
                name: {"candidates": n, "known_fn": hits, "precision": hits / n if n else None,
                       "recall": hits / known if known else None}
                for name, n, hits in rows
            }

        found = grouped("band")
        empty = {"candidates": 0, "known_fn": 0, "precision": None, "recall": 0.0 if known else None}
        per_band = {b: found.get(b, dict(empty)) for b in BANDS}
        per_rule = grouped("rule")

        def export_view(sql: str) -> dict[str, Any]:
            n_rows, hits, full, queries, mean_s = con.execute(
                f"""SELECT count(*), count(k.doc_id), count(DISTINCT query_id) FILTER (WHERE slot = {int(negatives)}),
                           count(DISTINCT query_id), avg(s_neg)
                    FROM ({sql}) e LEFT JOIN _key k USING (query_id, doc_id)"""
            ).fetchall()[0]
            return {"negatives": n_rows, "known_fn": hits, "fn_share": hits / n_rows if n_rows else None,
                    "queries_with_any": queries, "queries_full": full,
                    "queries_full_share": full / scored_queries if scored_queries else None, "mean_s_neg": mean_s}

        cleaned = export_view(selection.sql(con, model))
        automatic = export_view(selection.sql(con, model, view="automatic"))
        plain = export_view(
            f"""SELECT query_id, doc_id, s_neg, row_number() OVER (PARTITION BY query_id ORDER BY s_neg DESC, doc_id)
                       AS slot FROM scores s WHERE model = {lit(model)} AND NOT EXISTS (SELECT 1 FROM qrels r
                       WHERE r.relevant AND r.query_id = s.query_id AND r.doc_id = s.doc_id)
                QUALIFY slot <= {int(negatives)}"""
        )
        verdicts = con.execute("SELECT count(*) FROM current_verdicts").fetchall()[0][0]
    finally:
        con.unregister("_key")
    ranking = dense_ranking(con, model, baseline_depth)
    key = set(pairs)
    curve = baseline_curve(ranking, key, n=negatives, max_rank=baseline_depth)
    for view in (cleaned, automatic, plain):
        view["frontier_ratio"] = frontier_ratio(curve, view["fn_share"], view["mean_s_neg"])
        view["baseline_at_same_hardness"] = baseline_at(curve, view["mean_s_neg"]) if view["mean_s_neg"] else None
    from auditor.estimate import export_estimate

    stated = export_estimate(con, selection, model)
    actual = cleaned["fn_share"]
    stated["actual_rate"] = actual
    stated["actual_inside"] = (None if stated["ci95"] is None or actual is None
                               else stated["ci95"][0] <= actual <= stated["ci95"][1])
    return {
        "model": model, "config": config, "negatives_per_query": int(negatives), "strategy": selection.strategy,
        "selection": json.loads(selection.to_json()), "rule": selection.rule,
        "known_false_negatives": known, "known_in_candidates": in_candidates, "scored_queries": scored_queries,
        "bands": per_band, "rules": per_rule, "verdicts": int(verdicts), "plain_top": plain, "automatic": automatic,
        "export": cleaned, "estimate": stated, "baseline": curve,
    }


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of `evaluate`'s result for the terminal."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:5.1f}%"

    lines = [
        f"model {result['model']}, band config {result['config']}",
        f"known false negatives: {result['known_false_negatives']} "
        f"({result['known_in_candidates']} of them among the scored candidates)",
        "",
        f"{'band':<12} {'candidates':>10} {'known FN':>9} {'precision':>9} {'recall':>7}",
    ]
    for name in BANDS:
        r = result["bands"][name]
        lines.append(f"{name:<12} {r['candidates']:>10} {r['known_fn']:>9} {pct(r['precision']):>9} {pct(r['recall']):>7}")
    lines += ["", f"{'rule':<16} {'candidates':>10} {'known FN':>9} {'precision':>9} {'recall':>7}"]
    for name, r in result["rules"].items():
        lines.append(f"{name:<16} {r['candidates']:>10} {r['known_fn']:>9} {pct(r['precision']):>9} {pct(r['recall']):>7}")
    n = result["negatives_per_query"]
    lines += ["", f"export of {n} negatives per query ({result['strategy']}, {result['rule']}), judged at equal "
                  "hardness:",
              f"{'':<26} {'negatives':>9} {'known FN':>9} {'FN share':>8} {'queries full':>12} {'mean s_neg':>10} "
              f"{'rank cut':>8} {'ratio':>6}"]
    views = [("plain top-N (no clean)", result["plain_top"]), ("automatic (no verdicts)", result["automatic"])]
    if result["verdicts"]:
        views.append((f"after {result['verdicts']} verdicts", result["export"]))
    for label, r in views:
        mean = "-" if r["mean_s_neg"] is None else f"{r['mean_s_neg']:.3f}"
        ratio = "-" if r.get("frontier_ratio") is None else f"{r['frontier_ratio']:.2f}"
        lines.append(f"{label:<26} {r['negatives']:>9} {r['known_fn']:>9} {pct(r['fn_share']):>8} "
                     f"{pct(r['queries_full_share']):>12} {mean:>10} {pct(r.get('baseline_at_same_hardness')):>8} "
                     f"{ratio:>6}")
    est = result["estimate"]
    if est["ci95"] is not None:
        inside = "inside" if est["actual_inside"] else "OUTSIDE"
        lines.append(f"stated false-negative rate {pct(est['rate'])} (95% interval {pct(est['ci95'][0])} - "
                     f"{pct(est['ci95'][1])}); actual {pct(est['actual_rate'])}: {inside} the interval")
    else:
        lines.append(f"stated: {est['message']}; actual {pct(est['actual_rate'])}")
    if result.get("baseline"):
        lines += ["", "baseline: the N negatives at dense ranks r+1..r+N (rank cut column = its contamination at the "
                      "export's mean s_neg; ratio = FN share / rank cut, below 1 is cleaner than a cut as hard)"]
        lines.append("  " + "  ".join(f"{p['ranks']}: {100 * p['contamination']:.1f}% @ {p['mean_s']:.3f}"
                                      for p in result["baseline"][::2]))
    return "\n".join(lines)
