"""The lexical signal: BM25 (the ``bm25s`` package) over the same corpus the dense model searched.

Dense and lexical retrievers disagree on many hard negatives, and a candidate that both put near the top, or that
shares most of its words with the labeled positive, is far more often an unlabeled positive (DESIGN.md, "Review
should clean what gets exported"). This module computes, for given (query, candidate) pairs:

``bm25``        BM25(q, n) divided by the best BM25 score of q over the whole corpus (1 = the lexical top hit);
``bm25_rank``   n's rank in a BM25 search of q over the corpus, the query's positives excluded (None beyond ``depth``);
``lex_to_pos``  max over the query's positives p of BM25(p -> n) / BM25(p -> p): how lexically close n is to a
                positive, on the scale of the positive's own match with itself.

Scores are computed from BM25's document-term weight matrix (sparse) for exactly the pairs asked, so the cost grows
with the number of candidates, not with candidates x corpus. Texts are tokenized with bm25s' English stopwords.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_PAIR_CHUNK = 200_000  # candidate pairs per sparse gather (bounds memory)
_QUERY_CHUNK = 1024  # queries per sparse product in the corpus search


@dataclass
class LexicalIndex:
    """BM25 weights of every document (rows in the caller's document order) and the tokenizer that made them."""

    weights: object  # scipy.sparse.csr_matrix, documents x vocabulary: BM25 contribution of each term
    tokenizer: object  # bm25s.tokenization.Tokenizer with the corpus vocabulary

    def term_matrix(self, texts: list[str]) -> object:
        """Binary (texts x vocabulary) matrix of each text's distinct known terms (unknown words are dropped)."""
        import scipy.sparse as sp

        ids = self.tokenizer.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
        vocab = self.weights.shape[1]
        rows, cols = [], []
        for i, toks in enumerate(ids):
            uniq = np.unique(np.asarray(toks, dtype=np.int64))
            uniq = uniq[(uniq > 0) & (uniq < vocab)]  # id 0 is bm25s' empty token, given to unknown words
            rows.append(np.full(len(uniq), i, dtype=np.int64))
            cols.append(uniq)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(texts), vocab))


def build_index(texts: list[str]) -> LexicalIndex:
    """Index the corpus (one text per document, in the order later row numbers refer to)."""
    import bm25s
    import scipy.sparse as sp
    from bm25s.tokenization import Tokenizer

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # the package sets its logger to DEBUG on import
    tokenizer = Tokenizer(stopwords="en")
    ids = tokenizer.tokenize(texts, return_as="ids", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(ids, show_progress=False)
    s = retriever.scores
    n_terms = len(s["indptr"]) - 1
    weights = sp.csc_matrix((s["data"], s["indices"], s["indptr"]), shape=(s["num_docs"], n_terms)).tocsr()
    return LexicalIndex(weights=weights, tokenizer=tokenizer)


def rowwise_scores(terms: object, weights: object, ti: np.ndarray, wi: np.ndarray) -> np.ndarray:
    """BM25 of text ``terms[ti[k]]`` against document ``weights[wi[k]]`` for every k (chunked sparse gathers)."""
    out = np.zeros(len(ti), dtype=np.float64)
    for s in range(0, len(ti), _PAIR_CHUNK):
        e = s + _PAIR_CHUNK
        out[s:e] = np.asarray(terms[ti[s:e]].multiply(weights[wi[s:e]]).sum(axis=1)).ravel()
    return out


def search(
    index: LexicalIndex, query_terms: object, depth: int, exclude: dict[int, set[int]]
) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """Best BM25 score of every query over the corpus, and the rank of each of its top-``depth`` documents.

    ``exclude`` maps a query row to document rows left out of its ranking (its positives), as in the dense search.
    Returns (best score per query, {(query row, document row): rank}).
    """
    n_q = query_terms.shape[0]
    best = np.zeros(n_q, dtype=np.float64)
    ranks: dict[tuple[int, int], int] = {}
    wt = index.weights.T.tocsr()
    for s in range(0, n_q, _QUERY_CHUNK):
        block = (query_terms[s:s + _QUERY_CHUNK] @ wt).tocsr()
        for r in range(block.shape[0]):
            lo, hi = block.indptr[r], block.indptr[r + 1]
            if lo == hi:
                continue
            docs, vals = block.indices[lo:hi], block.data[lo:hi]
            best[s + r] = float(vals.max())
            skip = exclude.get(s + r)
            if skip:
                keep = ~np.isin(docs, list(skip))
                docs, vals = docs[keep], vals[keep]
            k = min(depth, len(docs))
            if k == 0:
                continue
            top = np.argpartition(-vals, k - 1)[:k] if k < len(docs) else np.arange(len(docs))
            top = top[np.lexsort((docs[top], -vals[top]))]
            for rank, j in enumerate(top, start=1):
                ranks[(s + r, int(docs[j]))] = rank
    return best, ranks


def pair_signals(
    index: LexicalIndex,
    query_texts: list[str],
    cand_q: np.ndarray,
    cand_d: np.ndarray,
    pos_q: np.ndarray,
    pos_d: np.ndarray,
    depth: int,
) -> dict[str, np.ndarray]:
    """``bm25``, ``bm25_rank`` (float, NaN beyond ``depth``) and ``lex_to_pos`` for candidate pairs (cand_q[k],
    cand_d[k]), given as rows of ``query_texts`` and of the indexed corpus; positives as (pos_q, pos_d) rows."""
    q_terms = index.term_matrix(query_texts)
    exclude: dict[int, set[int]] = {}
    for qi, di in zip(pos_q.tolist(), pos_d.tolist()):
        exclude.setdefault(qi, set()).add(di)
    best, ranks = search(index, q_terms, depth, exclude)
    raw = rowwise_scores(q_terms, index.weights, cand_q, cand_d)
    bm25 = np.divide(raw, best[cand_q], out=np.zeros_like(raw), where=best[cand_q] > 0)
    bm25_rank = np.array([ranks.get((q, d), np.nan) for q, d in zip(cand_q.tolist(), cand_d.tolist())],
                         dtype=np.float64)

    # positive -> candidate: each positive's own terms as the query, on the scale of its match with itself
    lex = np.zeros(len(cand_q), dtype=np.float64)
    if len(pos_q):
        pos_terms = (index.weights[pos_d] > 0).astype(np.float32).tocsr()
        rows = np.arange(len(pos_d))
        self_score = rowwise_scores(pos_terms, index.weights, rows, pos_d)
        order = np.argsort(pos_q, kind="stable")
        starts = np.searchsorted(pos_q[order], np.arange(len(query_texts) + 1))
        # expand (candidate, positive of the same query) pairs, in blocks of candidates
        step = max(1, _PAIR_CHUNK // max(1, int(np.diff(starts).max())))
        for s in range(0, len(cand_q), step):
            cq = cand_q[s:s + step]
            counts = starts[cq + 1] - starts[cq]
            ci = np.repeat(np.arange(s, s + len(cq)), counts)
            first = np.repeat(starts[cq], counts)
            within = np.arange(len(ci)) - np.repeat(np.cumsum(counts) - counts, counts)
            offs = first + within
            pi = order[offs]
            vals = rowwise_scores(pos_terms, index.weights, pi, cand_d[ci])
            vals = np.divide(vals, self_score[pi], out=np.zeros_like(vals), where=self_score[pi] > 0)
            np.maximum.at(lex, ci, np.minimum(vals, 1.0))
    return {"bm25": bm25, "bm25_rank": bm25_rank, "lex_to_pos": lex}
