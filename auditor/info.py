"""What a store holds, in a few SQL aggregates (for `auditor info` and the app's sidebar)."""

from __future__ import annotations

from typing import Any

import duckdb

from auditor.store import schema_version


def store_info(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    counts = dict(
        zip(
            ["queries", "documents", "positives", "judged non-relevant", "candidates", "embeddings", "scores",
             "verdict events"],
            con.execute(
                """
                SELECT (SELECT count(*) FROM queries), (SELECT count(*) FROM documents),
                       (SELECT count(*) FROM qrels WHERE relevant), (SELECT count(*) FROM qrels WHERE NOT relevant),
                       (SELECT count(*) FROM candidates), (SELECT count(*) FROM embeddings),
                       (SELECT count(*) FROM scores), (SELECT count(*) FROM verdicts)
                """
            ).fetchone(),
        )
    )
    per_query, single = con.execute(
        """
        SELECT coalesce(avg(n), 0), coalesce(avg((n = 1)::INT), 0) FROM (
            SELECT q.query_id, count(r.doc_id) AS n FROM queries q
            LEFT JOIN qrels r ON r.query_id = q.query_id AND r.relevant GROUP BY q.query_id)
        """
    ).fetchone()
    by_source = [
        dict(zip(["source", "candidates", "queries", "with_score"], row))
        for row in con.execute(
            """
            SELECT source, count(*), count(DISTINCT query_id), count(source_score)
            FROM candidates GROUP BY source ORDER BY source
            """
        ).fetchall()
    ]
    ingests = [
        dict(zip(["ingested_at", "format", "dataset", "path"], row))
        for row in con.execute("SELECT ingested_at, format, dataset, path FROM ingests ORDER BY ingest_id").fetchall()
    ]
    models = [r[0] for r in con.execute("SELECT DISTINCT model FROM scores ORDER BY 1").fetchall()]
    configs = [r[0] for r in con.execute("SELECT name FROM band_configs ORDER BY name").fetchall()]
    return {
        "schema_version": schema_version(con),
        "counts": counts,
        "positives_per_query": float(per_query),
        "single_positive_share": float(single),
        "candidates_by_source": by_source,
        "ingests": ingests,
        "models": models,
        "band_configs": configs,
    }
