"""Judging cleaning at equal hardness: the rank-window baseline and the frontier ratio (DESIGN.md).

Dropping hard negatives always lowers contamination, so a cleaned export is compared with the naive rule of the same
hardness: "the N negatives at dense ranks r+1..r+N" for r = 0, step, ..., max_rank - N. Each r gives a point (mean
query-negative cosine, share of known false negatives); the **frontier ratio** of an export is its contamination
over the baseline's at the export's own mean cosine (linear interpolation between the points, sorted by cosine).
Below 1 the export is cleaner than a rank cut as hard as it.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from auditor.embed import fetch_matrix


def dense_ranking(con: duckdb.DuckDBPyConnection, model: str, depth: int) -> dict[str, np.ndarray]:
    """Top-``depth`` documents of every query with a positive, by the model's cached vectors, positives excluded.

    Returns arrays query_id, doc_id, rank (1-based) and s (cosine). Nothing is encoded: this reads the cache that
    `auditor mine` filled (a query or document without a vector is left out).
    """
    import faiss

    from auditor.texts import query_hash_sql, query_instruction

    doc_ids, D = fetch_matrix(
        con, """SELECT d.doc_id, e.vector FROM documents d JOIN embeddings e ON e.text_hash = d.text_hash
                AND e.model = $m AND e.role = 'document' ORDER BY d.doc_id""", {"m": model})
    query_ids, Q = fetch_matrix(
        con, f"""SELECT q.query_id, e.vector FROM queries q JOIN embeddings e ON e.text_hash = {query_hash_sql('q', query_instruction(con, model))}
                 AND e.model = $m AND e.role = 'query'
                 WHERE q.query_id IN (SELECT query_id FROM qrels WHERE relevant) ORDER BY q.query_id""", {"m": model})
    if not len(doc_ids) or not len(query_ids):
        return {k: np.zeros(0) for k in ("query_id", "doc_id", "rank", "s")}
    positives: dict[str, set[str]] = {}
    for q, d in con.execute("SELECT query_id, doc_id FROM qrels WHERE relevant").fetchall():
        positives.setdefault(q, set()).add(d)
    index = faiss.IndexFlatIP(D.shape[1])
    index.add(D)
    k = min(len(doc_ids), depth + max((len(v) for v in positives.values()), default=0))
    scores, idx = index.search(Q, k)
    out_q, out_d, out_r, out_s = [], [], [], []
    for qi, qid in enumerate(query_ids):
        skip = positives.get(qid, set())
        rank = 0
        for j, s in zip(idx[qi], scores[qi]):
            if j < 0 or doc_ids[j] in skip:
                continue
            rank += 1
            if rank > depth:
                break
            out_q.append(qid)
            out_d.append(doc_ids[j])
            out_r.append(rank)
            out_s.append(float(s))
    return {"query_id": np.array(out_q, dtype=object), "doc_id": np.array(out_d, dtype=object),
            "rank": np.array(out_r, dtype=np.int64), "s": np.array(out_s, dtype=np.float64)}


def baseline_curve(
    ranking: dict[str, np.ndarray], known: set[tuple[str, str]], n: int = 5, max_rank: int = 100, step: int = 5,
    queries: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Points (ranks, mean_s, contamination) of "the n negatives at dense ranks r+1..r+n" for r = 0, step, ..."""
    hit = np.array([(q, d) in known for q, d in zip(ranking["query_id"], ranking["doc_id"])], dtype=bool)
    keep = np.ones(len(hit), dtype=bool) if queries is None else np.isin(ranking["query_id"], list(queries))
    points = []
    for r in range(0, max_rank - n + 1, step):
        m = keep & (ranking["rank"] > r) & (ranking["rank"] <= r + n)
        if m.sum():
            points.append({"ranks": f"{r + 1}-{r + n}", "mean_s": float(ranking["s"][m].mean()),
                           "contamination": float(hit[m].mean()), "negatives": int(m.sum())})
    return points


def frontier_ratio(curve: list[dict[str, Any]], contamination: float | None, mean_s: float | None) -> float | None:
    """Contamination over the baseline's at the same mean cosine (None without a baseline or when it is zero)."""
    if contamination is None or mean_s is None or not curve:
        return None
    pts = sorted((p["mean_s"], p["contamination"]) for p in curve)
    base = float(np.interp(mean_s, [x for x, _ in pts], [y for _, y in pts]))
    return contamination / base if base > 0 else None


def baseline_at(curve: list[dict[str, Any]], mean_s: float) -> float | None:
    """The baseline's contamination at ``mean_s`` (interpolated), for reports."""
    if not curve:
        return None
    pts = sorted((p["mean_s"], p["contamination"]) for p in curve)
    return float(np.interp(mean_s, [x for x, _ in pts], [y for _, y in pts]))
