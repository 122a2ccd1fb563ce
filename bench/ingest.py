"""Ingest speed and memory against DuckDB's own read_json of the same file.

    python bench/ingest.py                 # 1M triplets (and 250k, 500k to show memory stays flat)
    python bench/ingest.py --sizes 100000  # quicker

Generates a sentence-transformers triplet JSONL (realistic lengths: 8-word queries, 60-word passages, 200k distinct
queries, so texts repeat the way mined sets do), then times, each in a fresh process:
  * duckdb:  CREATE TABLE t AS SELECT * FROM read_json(file)   (the raw read, nothing else)
  * auditor: ingest_path(con, file)                           (read, check every field, hash, dedupe, merge)
and prints rows/s and peak resident memory of each. Target: auditor within 3x of the raw read, memory flat in size.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
mode, src, db = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if mode == "duckdb":
    import duckdb
    con = duckdb.connect(db)
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_json('{src}', format = 'newline_delimited')")
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
else:
    from auditor.ingest import ingest_path
    from auditor.store import open_store
    con = open_store(db)
    s = ingest_path(con, src)
    rows = s.candidates
con.close()
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "rows": rows, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]

    def words(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    queries = [words(8) for _ in range(min(200_000, max(1, n // 5)))]
    with open(path, "w") as fh:
        for i in range(n):
            q = queries[i % len(queries)]
            fh.write(json.dumps({"anchor": q, "positive": f"{q} {words(52)}", "negative": words(60)}) + "\n")


def run(mode: str, src: Path, db: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, mode, str(src), str(db)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250000,500000,1000000", help="comma-separated triplet counts")
    args = ap.parse_args()
    print(f"{'triplets':>10} {'file MB':>8} | {'duckdb s':>9} {'rows/s':>10} {'peak MB':>8} | "
          f"{'auditor s':>9} {'rows/s':>10} {'peak MB':>8} | {'ratio':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (int(x) for x in args.sizes.split(",")):
            src = tmp / f"triplets-{n}.jsonl"
            generate(src, n)
            raw = run("duckdb", src, tmp / f"raw-{n}.duckdb")
            aud = run("auditor", src, tmp / f"aud-{n}.duckdb")
            assert aud["rows"] == n, aud  # every triplet's negative stored as a candidate
            print(f"{n:>10,} {src.stat().st_size / 1e6:>8.0f} | {raw['seconds']:>9.2f} {n / raw['seconds']:>10,.0f} "
                  f"{raw['peak_mb']:>8.0f} | {aud['seconds']:>9.2f} {n / aud['seconds']:>10,.0f} {aud['peak_mb']:>8.0f} "
                  f"| {aud['seconds'] / raw['seconds']:>5.2f}")


if __name__ == "__main__":
    main()
