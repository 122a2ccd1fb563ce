"""A generated scored-and-banded store for benchmarks (no model needed): SQL only, seconds to build.

Imported by bench/export.py and bench/review_yield.py-free benchmarks; `python bench/synthetic_store.py OUT.duckdb`
builds one on its own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.store import open_store  # noqa: E402


def fill_synthetic(con: duckdb.DuckDBPyConnection, n_queries: int = 200_000, per_query: int = 5,
                   n_docs: int = 500_000, model: str = "synthetic", config: str = "default") -> None:
    """Queries q0.., one positive each (p<i>), ``per_query`` mined candidates with scores and bands."""
    con.execute(f"""
        INSERT INTO queries SELECT 'q' || i, 'what is the question number ' || i || ' about airflow?',
               md5('q' || i), 'synthetic', NULL FROM range({n_queries}) r(i);
        INSERT INTO documents SELECT 'd' || i, 'Title ' || i,
               'document ' || i || ' talks about boundary layers, shocks and the flow over a plate at speed ' || i,
               md5('d' || i), 'synthetic' FROM range({n_docs}) r(i);
        INSERT INTO documents SELECT 'p' || i, 'Positive ' || i, 'the answer to question ' || i || ' is here',
               md5('p' || i), 'synthetic' FROM range({n_queries}) r(i);
        INSERT INTO qrels SELECT 'q' || i, 'p' || i, true, 1, NULL, 'synthetic' FROM range({n_queries}) r(i);
        CREATE TEMP TABLE _gen AS
        SELECT 'q' || q AS query_id, 'd' || ((q * {per_query} + j) % {n_docs}) AS doc_id, j + 1 AS rank,
               0.5 + 0.4 * ((hash(q, 'pos') % 1000) / 1000.0) AS s_pos,
               0.3 + 0.6 * ((hash(q, j) % 1000) / 1000.0) - 0.02 * j AS s_neg
        FROM range({n_queries}) a(q), range({per_query}) b(j);
        INSERT INTO candidates (query_id, doc_id, source, source_rank, source_score, model)
        SELECT query_id, doc_id, 'mined', rank, s_neg, '{model}' FROM _gen;
        INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos, rank)
        SELECT '{model}', query_id, doc_id, s_neg, s_pos, s_pos, s_pos, s_neg * 0.9, rank FROM _gen;
        INSERT INTO bands SELECT '{config}', '{model}', query_id, doc_id,
               CASE WHEN s_neg > s_pos - abs(s_pos) * 0.05 THEN 'suspicious'
                    WHEN exp(-20 * ((s_neg - s_pos) + 0.15) ^ 2) >= 0.3 THEN 'ambiguous' ELSE 'too_easy' END,
               CASE WHEN s_neg >= s_pos THEN 'inversion' WHEN s_neg > s_pos - abs(s_pos) * 0.05
                    THEN 'relative_margin' ELSE 'simans' END,
               exp(-20 * ((s_neg - s_pos) + 0.15) ^ 2)
        FROM _gen;
        DROP TABLE _gen;
    """)
    from auditor.bands import mark_latest_model

    mark_latest_model(con, model)  # as `auditor mine` does: later commands default to this model


def build(path: Path, **kw) -> float:
    if path.exists():
        path.unlink()
    t0 = time.perf_counter()
    con = open_store(path)
    fill_synthetic(con, **kw)
    con.close()
    return time.perf_counter() - t0


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "synthetic.duckdb")
    print(f"built {out} in {build(out):.1f} s")
