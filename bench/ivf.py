"""IVF against exact search: recall@k and search time at several nprobe, with the index auditor mine builds.

    python bench/ivf.py                          # 500k documents, 2,000 queries, k = 60 (depth 50 + positives)
    python bench/ivf.py --docs 1000000 --nprobe 8,32,128

The vectors are generated, not embedded (embedding 500k passages takes hours on this CPU): unit vectors in 384
dimensions, each a random mixture of three of 2,000 topic centres plus noise, with a spread that gives cosines to the nearest documents like
all-MiniLM-L6-v2's on real passages (about 0.5-0.8), and queries drawn like documents. Recall on real embeddings
depends on how clustered they are; `auditor mine --index ivf` prints its own recall@k on every run (exact search of
a sample of its queries), which is the figure to trust for a given corpus.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.config import MineConfig  # noqa: E402
from auditor.mine import _build_index, ivf_recall  # noqa: E402


def vectors(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        # a mixture of three topics with random weights, plus noise: neighbourhoods overlap as real ones do
        w = rng.dirichlet((1.0, 1.0, 1.0), m).astype(np.float32)
        picks = rng.integers(0, len(centres), (m, 3))
        v = np.einsum("mk,mkd->md", w, centres[picks]) + spread * rng.standard_normal((m, centres.shape[1]),
                                                                                      dtype=np.float32)
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=500_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--nprobe", default="4,16,32,64,128")
    args = ap.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    dim = 384
    centres = rng.standard_normal((2_000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = 0.06
    D = vectors(args.docs, centres, spread, rng)
    Q = vectors(args.queries, centres, spread, rng)
    t = time.perf_counter()
    exact_scores, _ = faiss.knn(Q, D, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    flat_s = time.perf_counter() - t
    print(f"{args.docs:,} documents, {args.queries:,} queries, k={args.k}; exact search {flat_s:.2f} s "
          f"({args.queries / flat_s:,.0f} queries/s); top-1 cosine median {np.median(exact_scores[:, 0]):.2f}, "
          f"k-th {np.median(exact_scores[:, -1]):.2f}")
    cfg = MineConfig()
    t = time.perf_counter()
    index = _build_index(D, "ivf", cfg)
    print(f"IVF index (nlist {index.nlist}, trained and filled): {time.perf_counter() - t:.1f} s")
    print(f"{'nprobe':>7} {'recall@k':>9} {'seconds':>8} {'queries/s':>10} {'speed-up':>9}")
    for nprobe in (int(x) for x in args.nprobe.split(",")):
        index.nprobe = min(nprobe, index.nlist)
        t = time.perf_counter()
        index.search(Q, args.k)
        s = time.perf_counter() - t
        recall = ivf_recall(index, D, Q, args.k, sample=args.queries)
        print(f"{index.nprobe:>7} {recall:>9.4f} {s:>8.2f} {args.queries / s:>10,.0f} {flat_s / s:>8.1f}x")


if __name__ == "__main__":
    main()
