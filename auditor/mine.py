"""Mining and scoring: FAISS search of every query over the corpus, then positive-aware scores for every candidate.

`mine` embeds what is not cached (see :mod:`auditor.embed`), searches, stores the top-`depth` non-positive
documents of each query as candidates of one source, and (re)computes ``scores`` for every candidate of every
source (given negatives too), then assigns the default bands. Vector arithmetic is numpy on index arrays; joins and
aggregates are SQL. A run on unchanged texts encodes nothing and never loads the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from auditor import bands as bands_mod
from auditor import risk as risk_mod
from auditor.config import DEFAULT_BAND_CONFIG, DEFAULT_MODEL, MineConfig, RayConfig
from auditor.embed import embed_many, fetch_matrix
from auditor.encoder import model_key, resolve_model_path
from auditor.sql import lit
from auditor.store import StoreError, transaction
from auditor.texts import (
    doc_text_sql,
    instruction_for,
    query_hash_sql,
    query_text_sql,
    record_instruction,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]



_CHUNK = 200_000  # candidate rows per numpy block


@dataclass
class MineSummary:
    """What a mining run did (printed by `auditor mine`, shown by the app)."""

    model: str
    source: str
    depth: int
    queries: int = 0  #: queries searched (those with at least one positive)
    queries_without_positive: int = 0  #: skipped: nothing to compare a negative against
    documents: int = 0
    embedded_documents: int = 0  #: encoded in this run (the rest came from the cache)
    embedded_queries: int = 0
    mined_candidates: int = 0  #: candidates stored for `source`
    scored_candidates: int = 0  #: rows of ``scores`` for this model, all sources
    bands: dict[str, int] = field(default_factory=dict)
    risk: risk_mod.FitSummary | None = None  #: the risk fit written with the scores (prior, or prior + verdicts)
    index: str = ""  #: the FAISS index searched ("flat" or "ivf"; of the largest dataset's corpus)
    documents_searched: int = 0  #: documents in the largest corpus searched (one dataset's, or all across datasets)
    nlist: int = 0  #: IVF cells (ivf only)
    nprobe: int = 0  #: IVF cells visited per query (ivf only)
    recall: float | None = None  #: IVF only: share of exact top-k found, on a sample of queries
    seconds: dict[str, float] = field(default_factory=dict)


def _stage(progress_cb: Callable[[str, int, int], None] | None, name: str) -> Progress | None:
    if progress_cb is None:
        return None
    return lambda done, total: progress_cb(name, done, total)


def choose_index(index: str, n_docs: int, cfg: MineConfig) -> str:
    """"flat" or "ivf" for ``index`` ("auto": IVF past ``cfg.ivf_min_docs`` documents, where exact search of every
    query costs hours on CPU; below it exact search is affordable and loses nothing)."""
    if index == "auto":
        return "ivf" if n_docs > cfg.ivf_min_docs else "flat"
    if index not in ("flat", "ivf"):
        raise ValueError(f"index must be 'auto', 'flat' or 'ivf', got {index!r}")
    return index


def ivf_recall(index, D: np.ndarray, Q: np.ndarray, k: int, sample: int, seed: int = 0) -> float:
    """recall@k of ``index`` against exact search: the share of each sampled query's exact top-k that the index
    also returns, averaged over ``sample`` queries drawn with a fixed seed (exact search of a sample is cheap)."""
    import faiss

    if not len(Q) or not k:
        return 1.0
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(Q), min(sample, len(Q)), replace=False))
    _, exact = faiss.knn(Q[pick], D, k, metric=faiss.METRIC_INNER_PRODUCT)  # brute force, no copy of D
    _, approx = index.search(Q[pick], k)
    found = sum(len(np.intersect1d(e[e >= 0], a[a >= 0])) for e, a in zip(exact, approx))
    return found / max(1, int((exact >= 0).sum()))


def _search_groups(con: duckdb.DuckDBPyConnection, across_datasets: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows of _qidx, rows of _didx) to search together: per dataset (a query's candidates come from its own
    corpus: a store holding Cranfield and MS MARCO must not offer MS MARCO passages as Cranfield negatives), or all
    at once with ``across_datasets``."""
    if across_datasets:
        n_q = con.execute("SELECT count(*) FROM _qidx").fetchall()[0][0]
        n_d = con.execute("SELECT count(*) FROM _didx").fetchall()[0][0]
        return [(np.arange(n_q, dtype=np.int64), np.arange(n_d, dtype=np.int64))]
    rows = con.execute(
        """WITH qs AS (SELECT q.dataset, list(x.qi ORDER BY x.qi) AS qi
                       FROM _qidx x JOIN (SELECT DISTINCT query_id, dataset FROM queries) q USING (query_id)
                       GROUP BY q.dataset),
                members AS (  -- a document stored once belongs to every dataset whose labels or lists name it
                       SELECT doc_id, dataset FROM documents
                       UNION SELECT doc_id, dataset FROM qrels
                       UNION SELECT c.doc_id, q.dataset FROM candidates c JOIN queries q USING (query_id)
                       WHERE c.model IS NULL),
                ds AS (SELECT d.dataset, list(x.di ORDER BY x.di) AS di
                       FROM _didx x JOIN members d USING (doc_id) GROUP BY d.dataset)
           SELECT qs.qi, ds.di FROM qs JOIN ds USING (dataset) ORDER BY dataset"""
    ).fetchall()
    return [(np.asarray(q, dtype=np.int64), np.asarray(d, dtype=np.int64)) for q, d in rows]


def _build_index(vectors: np.ndarray, kind: str, cfg: MineConfig):
    import faiss

    dim = vectors.shape[1]
    n = vectors.shape[0]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = cfg.ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = vectors if n <= 256 * nlist else vectors[rng.choice(n, 256 * nlist, replace=False)]
        index.train(train)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    else:
        raise ValueError(f"index must be 'flat' or 'ivf', got {kind!r}")
    index.add(vectors)
    return index


def _rowwise_dot(a: np.ndarray, ai: np.ndarray, b: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """sum(a[ai] * b[bi], axis=1), in blocks so memory stays bounded."""
    out = np.empty(len(ai), dtype=np.float64)
    for s in range(0, len(ai), _CHUNK):
        e = s + _CHUNK
        out[s:e] = np.einsum("ij,ij->i", a[ai[s:e]], b[bi[s:e]])
    return out


def mine(
    con: duckdb.DuckDBPyConnection,
    model_name: str = DEFAULT_MODEL,
    depth: int = MineConfig.depth,
    source: str | None = None,
    index: str | None = None,
    progress: Progress | None = None,
    *,
    stage_progress: Callable[[str, int, int], None] | None = None,
    config: MineConfig = MineConfig(),
    band_config: str = DEFAULT_BAND_CONFIG,
    ray_config: RayConfig | None = None,
) -> MineSummary:
    """Embed, search, store top-`depth` candidates under `source`, score every candidate, assign default bands.

    `progress(done, total)` reports embedding progress over all texts (documents then queries); `stage_progress(
    stage, done, total)` reports per stage ("documents", "queries", "search", "score") for richer UIs.
    Re-running replaces this source's candidates and this model's scores (idempotent). ``index`` overrides
    ``config.index``; ``config.engine`` "ray" encodes on Ray (``ray_config``), which changes nothing downstream.
    """
    index = index or config.index
    if depth < 1:
        raise ValueError("depth must be >= 1")
    resolve_model_path(model_name)  # a missing model folder is reported before any work
    key = model_key(model_name)
    instruction = instruction_for(model_name, config.query_prompts)
    source = source or f"mined:{key}"
    summary = MineSummary(model=key, source=source, depth=depth)
    t0 = time.perf_counter()

    n_docs = con.execute("SELECT count(*) FROM documents").fetchall()[0][0]
    if not n_docs:
        raise StoreError("the store has no documents: ingest a corpus first (`auditor ingest PATH --db FILE`)")
    n_queries = con.execute("SELECT count(*) FROM queries").fetchall()[0][0]
    # A positive whose text is blank (real BEIR corpora have a few) says nothing about the query: it would become a
    # meaningless anchor (cosine ~0) for every negative of its query.
    pos_sql = f"""SELECT DISTINCT q.query_id, r.doc_id FROM qrels r JOIN queries q USING (query_id)
                  JOIN documents d USING (doc_id) WHERE r.relevant AND trim({doc_text_sql('d')}) <> ''"""
    with_pos = con.execute(f"SELECT count(DISTINCT query_id) FROM ({pos_sql})").fetchall()[0][0]
    summary.documents = n_docs
    summary.queries = with_pos
    summary.queries_without_positive = n_queries - with_pos
    if not with_pos:
        raise StoreError(
            f"none of the {n_queries} queries has a labeled positive that is in the corpus, so there is nothing to "
            "compare a negative against; check the qrels (BEIR: score > 0 is a positive) or the training file's pos"
        )
    if summary.queries_without_positive:
        log.warning(
            "%d of %d queries have no labeled positive in the corpus; they are skipped (not mined, not scored)",
            summary.queries_without_positive, n_queries,
        )

    # --- embed (cache) ---
    q_hash, q_text = query_hash_sql(instruction=instruction), query_text_sql(instruction=instruction)
    n_q_texts = con.execute(f"SELECT count(DISTINCT {q_hash}) FROM queries WHERE query_id IN "
                            f"(SELECT query_id FROM ({pos_sql}))").fetchall()[0][0]
    n_d_texts = con.execute("SELECT count(DISTINCT text_hash) FROM documents").fetchall()[0][0]
    total = n_q_texts + n_d_texts

    offsets, stages = {"document": 0, "query": n_d_texts}, {"document": "documents", "query": "queries"}

    def tick(role: str, done: int, todo: int) -> None:
        if progress:
            progress(offsets[role] + done, total)
        sp = _stage(stage_progress, stages[role])
        if sp:
            sp(done, todo)

    # Both roles in one call: the Ray engine then starts its pool of model replicas once.
    r = embed_many(
        con, model_name,
        {"document": f"SELECT text_hash, {doc_text_sql()} AS text FROM documents",
         "query": f"SELECT {q_hash} AS text_hash, {q_text} AS text FROM queries "
                  f"WHERE query_id IN (SELECT query_id FROM ({pos_sql}))"},
        batch_size=config.batch_size, progress=tick if progress or stage_progress else None,
        engine=config.engine, device=config.device, ray_config=ray_config,
    )
    summary.embedded_documents = r["document"].encoded
    summary.embedded_queries = r["query"].encoded
    if progress:
        progress(total, total)
    summary.seconds["embed"] = time.perf_counter() - t0

    # --- vectors ---
    t1 = time.perf_counter()
    doc_ids, D = fetch_matrix(
        con,
        """SELECT d.doc_id, e.vector FROM documents d JOIN embeddings e
           ON e.text_hash = d.text_hash AND e.model = $m AND e.role = 'document' ORDER BY d.doc_id""",
        {"m": key},
    )
    query_ids, Q = fetch_matrix(
        con,
        f"""SELECT q.query_id, e.vector FROM queries q JOIN embeddings e
            ON e.text_hash = {query_hash_sql('q', instruction)}
            AND e.model = $m AND e.role = 'query'
            WHERE q.query_id IN (SELECT query_id FROM ({pos_sql})) ORDER BY q.query_id""",
        {"m": key},
    )
    con.register("_qidx", pa.table({"query_id": pa.array(query_ids, pa.string()),
                                    "qi": pa.array(np.arange(len(query_ids), dtype=np.int64))}))
    con.register("_didx", pa.table({"doc_id": pa.array(doc_ids, pa.string()),
                                    "di": pa.array(np.arange(len(doc_ids), dtype=np.int64))}))
    try:
        pos = con.execute(
            f"SELECT qi, di FROM ({pos_sql}) p JOIN _qidx USING (query_id) JOIN _didx USING (doc_id) ORDER BY qi, di"
        ).fetchnumpy()
        pos_qi, pos_di = pos["qi"].astype(np.int64), pos["di"].astype(np.int64)
        max_pos = int(np.bincount(pos_qi, minlength=len(query_ids)).max()) if len(pos_qi) else 0

        # --- search: each query among the documents of its own dataset (unless config.across_datasets) ---
        hit_q, hit_d, hit_rank, hit_score = [], [], [], []
        pos_keys = pos_qi * len(doc_ids) + pos_di
        sp = _stage(stage_progress, "search")
        searched = 0
        for q_rows, d_rows in _search_groups(con, config.across_datasets):
            kind = choose_index(index, len(d_rows), config)
            index_obj = _build_index(D[d_rows], kind, config)
            k = min(len(d_rows), depth + max_pos)
            if len(d_rows) >= summary.documents_searched:  # the summary describes the largest corpus searched
                summary.index, summary.documents_searched = kind, len(d_rows)
                if kind == "ivf":
                    summary.nlist, summary.nprobe = int(index_obj.nlist), int(index_obj.nprobe)
                    summary.recall = ivf_recall(index_obj, D[d_rows], Q[q_rows], k, config.ivf_recall_queries)
                    log.info("IVF index: nlist %d, nprobe %d, recall@%d %.4f against exact search on %d sampled "
                             "queries", summary.nlist, summary.nprobe, k, summary.recall,
                             min(len(q_rows), config.ivf_recall_queries))
            step = 8192
            for s in range(0, len(q_rows), step):
                scores, local = index_obj.search(Q[q_rows[s:s + step]], k)
                idx = np.where(local < 0, -1, d_rows[np.maximum(local, 0)])  # back to rows of D
                qi = q_rows[s:s + step].astype(np.int64)[:, None]
                excluded = (idx < 0) | np.isin(qi * len(doc_ids) + idx, pos_keys)
                keep_rank = np.cumsum(~excluded, axis=1)
                keep = ~excluded & (keep_rank <= depth)
                hit_q.append(np.broadcast_to(qi, idx.shape)[keep])
                hit_d.append(idx[keep].astype(np.int64))
                hit_rank.append(keep_rank[keep].astype(np.int32))
                hit_score.append(scores[keep].astype(np.float64))
                searched += min(step, len(q_rows) - s)
                if sp:
                    sp(searched, len(query_ids))
        hits = pa.table({
            "qi": np.concatenate(hit_q), "di": np.concatenate(hit_d),
            "rank": np.concatenate(hit_rank), "score": np.concatenate(hit_score),
        })
        con.register("_hits", hits)
        summary.seconds["search"] = time.perf_counter() - t1

        # --- score every candidate (this source's new hits and every other source's candidates) ---
        t2 = time.perf_counter()
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _cand AS
            SELECT row_number() OVER (ORDER BY qi, di) - 1 AS ci, qi, di, query_id, doc_id, h.rank FROM (
                SELECT qi, di FROM _hits
                UNION
                SELECT qi, di FROM (SELECT DISTINCT query_id, doc_id FROM candidates WHERE source <> $src)
                    JOIN _qidx USING (query_id) JOIN _didx USING (doc_id)
            ) c JOIN _qidx USING (qi) JOIN _didx USING (di) LEFT JOIN _hits h USING (qi, di)""",
            {"src": source},
        )
        cand = con.execute("SELECT qi, di FROM _cand ORDER BY ci").fetchnumpy()
        c_qi, c_di = cand["qi"].astype(np.int64), cand["di"].astype(np.int64)
        s_neg = _rowwise_dot(Q, c_qi, D, c_di)
        s_pos = _rowwise_dot(Q, pos_qi, D, pos_di)
        sim_to_pos = np.full(len(c_qi), -np.inf)
        # near-duplicate check: max over the query's positives of sim(p, n), via a SQL expansion in blocks
        n_cand = len(c_qi)
        block = max(1, _CHUNK // max(1, max_pos))
        con.register("_pos", pa.table({"qi": pos_qi, "di": pos_di}))
        for s in range(0, n_cand, block):
            pairs = con.execute(
                "SELECT c.ci, c.di AS ndi, p.di AS pdi FROM _cand c JOIN _pos p USING (qi) "
                "WHERE c.ci >= $lo AND c.ci < $hi",
                {"lo": s, "hi": s + block},
            ).fetchnumpy()
            ci = pairs["ci"].astype(np.int64)
            if len(ci):
                sims = _rowwise_dot(D, pairs["ndi"].astype(np.int64), D, pairs["pdi"].astype(np.int64))
                np.maximum.at(sim_to_pos, ci, sims)
        sim_to_pos[~np.isfinite(sim_to_pos)] = np.nan
        summary.seconds["score"] = time.perf_counter() - t2

        # --- the independent lexical signal (BM25 over the same corpus) ---
        t_lex = time.perf_counter()
        lex = _lexical(con, c_qi, c_di, pos_qi, pos_di, depth)
        summary.seconds["bm25"] = time.perf_counter() - t_lex
        con.register("_cand_scores", pa.table({"ci": np.arange(n_cand, dtype=np.int64), "s_neg": s_neg,
                                               "sim_to_pos": sim_to_pos, **lex}))
        con.register("_pos_scores", pa.table({"qi": pos_qi, "s": s_pos}))
        with transaction(con):
            record_instruction(con, key, instruction)
            con.execute("DELETE FROM candidates WHERE source = $src", {"src": source})
            con.execute(
                """INSERT INTO candidates (query_id, doc_id, source, source_rank, source_score, model)
                SELECT query_id, doc_id, $src, h.rank, h.score, $m FROM _hits h
                JOIN _qidx USING (qi) JOIN _didx USING (di) ORDER BY qi, h.rank""",
                {"src": source, "m": key},
            )
            con.execute("DELETE FROM scores WHERE model = $m", {"m": key})
            con.execute(
                """INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos,
                                       rank, ce_neg, ce_pos, bm25, bm25_rank, lex_to_pos)
                SELECT $m, c.query_id, c.doc_id, s.s_neg, p.mn, p.av, p.mx, nullif(s.sim_to_pos, 'NaN'::DOUBLE),
                       c.rank, NULL, NULL, s.bm25, nullif(s.bm25_rank, 'NaN'::DOUBLE)::INTEGER, s.lex_to_pos
                FROM _cand c JOIN _cand_scores s USING (ci)
                JOIN (SELECT qi, min(s) AS mn, avg(s) AS av, max(s) AS mx FROM _pos_scores GROUP BY qi) p USING (qi)
                ORDER BY c.ci""",
                {"m": key},
            )
            bands_mod.mark_latest_model(con, key)
            t3 = time.perf_counter()
            risk_mod.update_fused_rank(con, key)
            summary.bands = bands_mod.reassign_after_scoring(con, key, band_config)
            summary.seconds["bands"] = time.perf_counter() - t3
            t4 = time.perf_counter()
            summary.risk = risk_mod.fit(con, key, in_transaction=True)
            summary.seconds["risk"] = time.perf_counter() - t4
        summary.mined_candidates = len(hits)
        summary.scored_candidates = n_cand
    finally:
        con.execute("DROP TABLE IF EXISTS _cand")
        for name in ("_qidx", "_didx", "_hits", "_pos", "_cand_scores", "_pos_scores"):
            try:
                con.unregister(name)
            except Exception:  # noqa: BLE001 - not registered when an earlier step failed
                pass

    summary.seconds["total"] = time.perf_counter() - t0
    return summary


def _lexical(
    con: duckdb.DuckDBPyConnection, c_qi: np.ndarray, c_di: np.ndarray, pos_qi: np.ndarray, pos_di: np.ndarray,
    depth: int,
) -> dict[str, np.ndarray]:
    """BM25 signals for the candidate pairs, as row numbers of the registered ``_qidx`` / ``_didx`` orders."""
    from auditor.lexical import build_index, pair_signals

    doc_texts = [r[0] for r in con.execute(
        f"SELECT {doc_text_sql('d')} FROM _didx x JOIN documents d USING (doc_id) ORDER BY x.di").fetchall()]
    query_texts = [r[0] for r in con.execute(
        "SELECT q.text FROM _qidx x JOIN queries q USING (query_id) ORDER BY x.qi").fetchall()]
    index = build_index(doc_texts)
    del doc_texts
    return pair_signals(index, query_texts, c_qi, c_di, pos_qi, pos_di, depth)


def cross_encode(
    con: duckdb.DuckDBPyConnection,
    path: str,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    bands: tuple[str, ...] = ("suspicious", "ambiguous"),
    batch_size: int = 32,
    progress: Progress | None = None,
) -> int:
    """Second opinion: score (q, n) of the candidates in `bands` and (q, p) of their queries' positives with a local
    CrossEncoder folder; store ``ce_neg`` and ``ce_pos`` (the best positive's score) and re-assign bands, so the rule
    ``cross_encoder`` (n scored at or above the positive) can fire. Returns the number of candidates rescored.
    """
    import os
    from pathlib import Path

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise StoreError(f"cross-encoder folder {path} does not exist")
    model = bands_mod.resolve_model(con, model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import CrossEncoder

    try:
        ce = CrossEncoder(str(folder))
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"cannot load cross-encoder from {path}: {type(exc).__name__}: {exc}") from None
    in_bands = ", ".join(lit(b) for b in bands)
    cand = con.execute(
        f"""SELECT b.query_id, b.doc_id, {query_text_sql('q')} AS qtext,
                   {doc_text_sql('d')} AS dtext
            FROM bands b JOIN queries q USING (query_id) JOIN documents d USING (doc_id)
            WHERE b.config = $c AND b.model = $m AND b.band IN ({in_bands}) ORDER BY b.query_id, b.doc_id""",
        {"c": config, "m": model},
    ).fetchall()
    if not cand:
        return 0
    posrows = con.execute(
        f"""SELECT DISTINCT r.query_id, {query_text_sql('q')} AS qtext,
                   {doc_text_sql('d')} AS dtext
            FROM qrels r JOIN queries q USING (query_id) JOIN documents d USING (doc_id)
            WHERE r.relevant AND r.query_id IN (SELECT query_id FROM bands WHERE config = $c AND model = $m
                                                AND band IN ({in_bands}))""",
        {"c": config, "m": model},
    ).fetchall()
    pairs = [(q, d) for _, _, q, d in cand] + [(q, d) for _, q, d in posrows]
    scores = np.asarray(ce.predict(pairs, batch_size=batch_size, show_progress_bar=False), dtype=np.float64)
    if scores.ndim > 1:  # multi-label heads: use the last logit as "relevant"
        scores = scores[:, -1]
    if progress:
        progress(len(pairs), len(pairs))
    neg = pa.table({"query_id": [r[0] for r in cand], "doc_id": [r[1] for r in cand], "ce": scores[: len(cand)]})
    posbest: dict[str, float] = {}
    for (qid, _, _), s in zip(posrows, scores[len(cand):]):
        posbest[qid] = max(posbest.get(qid, -math.inf), float(s))
    post = pa.table({"query_id": list(posbest), "ce": list(posbest.values())})
    con.register("_ce_neg", neg)
    con.register("_ce_pos", post)
    try:
        with transaction(con):
            con.execute(
                """UPDATE scores SET ce_neg = n.ce, ce_pos = p.ce FROM _ce_neg n JOIN _ce_pos p USING (query_id)
                   WHERE scores.model = $m AND scores.query_id = n.query_id AND scores.doc_id = n.doc_id""",
                {"m": model},
            )
            risk_mod.update_fused_rank(con, model)
            bands_mod.reassign_after_scoring(con, model, config)
            risk_mod.fit(con, model, in_transaction=True)
    finally:
        con.unregister("_ce_neg")
        con.unregister("_ce_pos")
    return len(cand)
