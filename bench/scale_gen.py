"""Generated FlagEmbedding training files for bench/scale.py (numpy; about a minute per 10M candidates).

Each line is ``{"query", "pos": [1 text], "neg": [N texts], "pos_scores": [1], "neg_scores": [N]}`` with realistic
lengths: queries of 6-10 words, passages of 45-75 words (about 60), words of 2-9 letters drawn from a 30,000-word
vocabulary with a Zipf-like frequency. Passages come from a pool of ``pool`` distinct texts (default 15 per query:
3M for 200k queries), so a passage is the negative of several queries, as in real mined sets where popular passages
recur; within one query the N negatives and the positive are distinct. Teacher scores fall with the negative's rank,
with noise, rounded to 4 decimals. A seed fixes every byte.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

VOCAB = 30_000
_LETTERS = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))


def _vocabulary(rng: np.random.Generator) -> np.ndarray:
    lengths = rng.integers(2, 10, VOCAB)
    letters = _LETTERS[np.minimum(rng.geometric(0.18, (VOCAB, 9)) - 1, 25)]
    return np.array(["".join(row[:n]) for row, n in zip(letters, lengths)], dtype=object)


def _texts(rng: np.random.Generator, vocab: np.ndarray, n: int, lo: int, hi: int) -> list[str]:
    """n texts of lo..hi words (Zipf-like word frequency), as JSON string literals (quoted, escaped)."""
    out: list[str] = []
    step = 200_000
    ranks = np.arange(1, VOCAB + 1)
    p = 1.0 / ranks**0.9
    p /= p.sum()
    for s in range(0, n, step):
        m = min(step, n - s)
        lengths = rng.integers(lo, hi + 1, m)
        words = rng.choice(VOCAB, size=(m, hi), p=p)
        for row, k in zip(vocab[words], lengths):
            out.append(json.dumps(" ".join(row[:k])))
    return out


def generate(path: Path, queries: int, negatives: int = 50, pool: int | None = None, seed: int = 0,
             verbose: bool = True) -> dict:
    """Write the training file; returns its shape (queries, negatives, pool, bytes, seconds)."""
    t0 = time.perf_counter()
    pool = pool or max(4 * (negatives + 1), 15 * queries)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    passages = _texts(rng, vocab, pool, 45, 75)
    if verbose:
        print(f"  {pool:,} passages generated ({time.perf_counter() - t0:.0f} s)", flush=True)
    stride = 7919 if negatives * 7919 < pool else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    step = 50_000
    with open(path, "w", encoding="ascii") as fh:
        for s in range(0, queries, step):
            m = min(step, queries - s)
            q = np.arange(s, s + m, dtype=np.int64)
            qtexts = _texts(rng, vocab, m, 6, 10)
            # negatives: pool slots q*15 + j*stride (distinct within a query); positive: the next slot after them
            slots = (q[:, None] * 15 + np.arange(negatives + 1, dtype=np.int64)[None, :] * stride) % pool
            ps = np.round(0.70 + 0.25 * rng.random(m), 4)
            ns = np.round(np.maximum(-0.2, ps[:, None] - 0.1 - 0.006 * np.arange(negatives)[None, :]
                                     - 0.1 * rng.random((m, negatives))), 4)
            lines = []
            for i in range(m):
                row = slots[i]
                lines.append(
                    '{"query": ' + qtexts[i] + ', "pos": [' + passages[row[negatives]] + '], "neg": ['
                    + ", ".join(passages[k] for k in row[:negatives]) + '], "pos_scores": [' + repr(float(ps[i]))
                    + '], "neg_scores": [' + ", ".join(map(repr, ns[i].tolist())) + "]}\n"
                )
            fh.write("".join(lines))
            if verbose:
                print(f"  queries {s + m:,} of {queries:,} written ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"queries": queries, "negatives": negatives, "pool": pool, "bytes": path.stat().st_size,
            "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--negatives", type=int, default=50)
    args = ap.parse_args()
    print(generate(args.out, args.queries, args.negatives))
