"""Export speed and memory: 1M triplets through `auditor.export.export` against DuckDB's own COPY of the same rows.

Builds a generated store (200k queries x 5 scored, banded candidates, one positive each: no model needed), then in one
process, alternating, several times:
  * auditor export (triplet, 5 negatives, unreviewed suspicious kept so every query gives exactly 5 lines): the
    negative selection of auditor.select, counts, and the atomic COPY of the shaped, ordered rows;
  * baseline: DuckDB's own `COPY (SELECT anchor, positive, negative ...) TO` of the same 1M triplets written by hand
    over the same tables (candidates joined to queries, positives and documents), in the same query order;
  * floor: `COPY table TO` of a table already holding exactly the exported rows (pure JSON writing).
Prints medians and the ratio export / baseline (target: at most 2x), plus the peak RSS of the process.
On the same 1M-candidate store it also times `auditor.review.next_item` (the app's "show the next item" query,
target p95 < 200 ms), recording a verdict for two items in three and skipping the third.

    python bench/export.py [--queries 200000] [--repeat 3] [--db PATH]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_store import fill_synthetic  # noqa: E402

from auditor.export import export  # noqa: E402
from auditor.store import open_store  # noqa: E402

BASELINE = """
    SELECT q.text AS anchor,
           CASE WHEN dp.title IS NULL THEN dp.text ELSE dp.title || ' ' || dp.text END AS positive,
           CASE WHEN dn.title IS NULL THEN dn.text ELSE dn.title || ' ' || dn.text END AS negative
    FROM candidates c
    JOIN qrels r ON r.query_id = c.query_id AND r.relevant
    JOIN queries q ON q.query_id = c.query_id
    JOIN documents dp ON dp.doc_id = r.doc_id
    JOIN documents dn ON dn.doc_id = c.doc_id
    WHERE c.source_rank <= 5
    ORDER BY c.query_id, r.doc_id, c.source_rank
"""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", help="store file to build (default: a temporary one)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    db = Path(args.db) if args.db else work / "synthetic.duckdb"
    if db.exists():
        db.unlink()
    t = time.perf_counter()
    con = open_store(db)
    fill_synthetic(con, n_queries=args.queries, per_query=5)
    con.execute("CHECKPOINT")
    print(f"store: {args.queries:,} queries x 5 candidates built in {time.perf_counter() - t:.1f} s ({db})")
    rss0 = rss_mb()

    out, base_out, floor_out = work / "export.jsonl", work / "baseline.jsonl", work / "floor.jsonl"
    t_exp, t_base, t_floor = [], [], []
    rows = 0
    for i in range(args.repeat):
        t = time.perf_counter()
        s = export(con, out, fmt="triplet", negatives=5, drop_unreviewed_suspicious=False)
        t_exp.append(time.perf_counter() - t)
        rows = s.rows
        t = time.perf_counter()
        con.execute(f"COPY ({BASELINE}) TO '{base_out}' (FORMAT json)")
        t_base.append(time.perf_counter() - t)
        if i == 0:
            con.execute(f"CREATE TEMP TABLE exported AS SELECT * FROM read_json('{out}')")
        t = time.perf_counter()
        con.execute(f"COPY exported TO '{floor_out}' (FORMAT json)")
        t_floor.append(time.perf_counter() - t)
    n_base = con.execute(f"SELECT count(*) FROM read_json('{base_out}')").fetchall()[0][0]
    next_item_lines = time_next_item(con)
    con.close()
    me, mb, mf = statistics.median(t_exp), statistics.median(t_base), statistics.median(t_floor)
    size = out.stat().st_size / 1e6
    print(f"auditor export (triplet, 5 negatives): {rows:,} lines, {size:.0f} MB, median {me:.2f} s "
          f"(runs {', '.join(f'{x:.2f}' for x in t_exp)})")
    print(f"baseline COPY of the same triplets   : {n_base:,} lines, median {mb:.2f} s "
          f"(runs {', '.join(f'{x:.2f}' for x in t_base)})")
    print(f"floor COPY of a table of the rows    : median {mf:.2f} s")
    print(f"ratio export / baseline COPY         : {me / mb:.2f}x (target <= 2x); export / floor {me / mf:.2f}x")
    print(f"peak RSS {rss_mb():.0f} MB (after building the store: {rss0:.0f} MB)")
    for line in next_item_lines:
        print(line)


def time_next_item(con, calls: int = 60) -> list[str]:
    from auditor import review

    lines = []
    for mode in ("risk", "stratified"):
        times, skip = [], []
        for i in range(calls):
            t = time.perf_counter()
            item = review.next_item(con, annotator="bench", mode=mode, skip=skip)
            times.append(time.perf_counter() - t)
            if i % 3:
                review.record_verdict(con, query_id=item["query_id"], doc_id=item["doc_id"], verdict="true_negative",
                                      annotator="bench", queue_mode=mode, sampling_prob=item["sampling_prob"])
            else:
                skip.append((item["query_id"], item["doc_id"]))
        first, rest = times[0], sorted(times[1:])
        lines.append(f"next_item ({mode}) on 1M candidates: first call {first * 1000:.0f} ms (fills the item cache), "
                     f"then median {statistics.median(rest) * 1000:.0f} ms, p95 {rest[int(0.95 * len(rest))] * 1000:.0f} ms")
    return lines


if __name__ == "__main__":
    main()
