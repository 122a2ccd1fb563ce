"""Scale: 200,000 queries x 50 given negatives = 10,000,000 candidates through every step after mining.

    python bench/scale.py                        # 10M candidates (about 4 GB of JSONL), work files in /tmp
    python bench/scale.py --queries 20000        # 1M, while developing
    python bench/scale.py --work DIR --keep      # keep the generated file and stores for a second look

A FlagEmbedding training file is generated (bench/scale_gen.py: realistic lengths, 3M distinct passages, teacher
scores), then each step runs in a fresh process, so that each one's peak resident memory is its own (os.wait4):

  step         what auditor does                                   plain DuckDB operation it is compared with
  ingest       ingest_path: read, check, hash, dedupe, merge       CREATE TABLE AS SELECT * FROM read_json(file)
  scores       (set-up, not a product step) scores from the file's teacher scores, fused rank, risk prior
  bands        assign_bands with the default thresholds            CREATE TABLE AS SELECT * FROM scores
  preview      preview_bands (the slider) at 3 thresholds          one GROUP BY over the scores (count per band)
  review       next_item in each queue order, 60 calls each       (target p95 < 200 ms); the first call builds the
               order's page (and keeps it in the store)
  review_restart  the same in a new process (the app restarted): the first item from the kept page
  stats        compute_stats (the data lead's report)              -
  export       export, triplets of 5 negatives per query           COPY of the same selection written by hand
                                                                   (and COPY of the given top 5: no selection)

No embedding: at 40 passages/s on 2 CPU threads the 3M passages alone would take about 21 hours. The scores are
the training file's own teacher scores standing in for the model's cosine (s_neg = the negative's teacher score,
s_pos = the positive's), which exercises the same SQL on the same number of rows. Prints a table and writes
``scale.json`` into the work folder; note the load average (printed) beside the figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODEL = "teacher"  # the scores' model name: the training file's teacher scores
NEGATIVES = 5  # exported per query

#: The export's selection written by hand (default settings: per query, the 5 highest-scoring negatives whose
#: P(false negative) is at most .05, topped up by the lowest-risk others), joined to the texts: the same work as
#: auditor's export in one plain COPY.
EXPORT_SELECTION_BASELINE = """
    WITH sel AS (
        SELECT * FROM (
            SELECT b.query_id, b.doc_id, s.s_neg,
                   row_number() OVER (PARTITION BY b.query_id ORDER BY coalesce(r.p_fn, 0) > 0.05,
                       CASE WHEN coalesce(r.p_fn, 0) <= 0.05 THEN -s.s_neg ELSE coalesce(r.p_fn, 0) END,
                       b.doc_id) AS slot
            FROM bands b JOIN scores s ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
            LEFT JOIN risk r ON r.model = b.model AND r.query_id = b.query_id AND r.doc_id = b.doc_id
            WHERE b.config = 'default' AND b.model = 'teacher'
        ) WHERE slot <= 5
    )
    SELECT q.text AS anchor, dp.text AS positive, dn.text AS negative
    FROM sel
    JOIN qrels r ON r.query_id = sel.query_id AND r.relevant
    JOIN queries q ON q.query_id = sel.query_id
    JOIN documents dp ON dp.doc_id = r.doc_id
    JOIN documents dn ON dn.doc_id = sel.doc_id
    ORDER BY sel.query_id, r.doc_id, sel.slot
"""

#: The same-shaped triplets without any selection (the given top 5 by rank): what writing alone costs.
EXPORT_BASELINE = """
    SELECT q.text AS anchor, dp.text AS positive, dn.text AS negative
    FROM candidates c
    JOIN qrels r ON r.query_id = c.query_id AND r.relevant
    JOIN queries q ON q.query_id = c.query_id
    JOIN documents dp ON dp.doc_id = r.doc_id
    JOIN documents dn ON dn.doc_id = c.doc_id
    WHERE c.source_rank <= 5
    ORDER BY c.query_id, r.doc_id, c.source_rank
"""


# ---------------------------------------------------------------------------------------------------------------
# steps (each runs in its own process: python bench/scale.py --step NAME ...)
# ---------------------------------------------------------------------------------------------------------------


def _timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def step_read_json(src: Path, db: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(db))
    secs, _ = _timed(con.execute, f"CREATE TABLE t AS SELECT * FROM read_json('{src}', format = 'newline_delimited')")
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    return {"seconds": secs, "rows": rows}


def step_ingest(src: Path, db: Path) -> dict:
    from auditor.ingest import ingest_path
    from auditor.store import open_store

    con = open_store(db)
    secs, s = _timed(ingest_path, con, src)
    con.close()
    return {"seconds": secs, "candidates": s.candidates, "queries": s.queries, "documents": s.documents}


def step_scores(db: Path) -> dict:
    """Stand-in for mining: one score row per candidate from the file's teacher scores (see the module docstring)."""
    from auditor import bands as bands_mod
    from auditor import risk as risk_mod
    from auditor.store import open_store

    con = open_store(db)
    t = time.perf_counter()
    con.execute(
        """
        INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos, rank)
        SELECT $m, c.query_id, c.doc_id, c.source_score, p.mn, p.av, p.mx, NULL, c.source_rank
        FROM candidates c
        JOIN (SELECT query_id, min(teacher_score) AS mn, avg(teacher_score) AS av, max(teacher_score) AS mx
              FROM qrels WHERE relevant GROUP BY query_id) p USING (query_id)
        """,
        {"m": MODEL},
    )
    bands_mod.mark_latest_model(con, MODEL)
    insert = time.perf_counter() - t
    fused, _ = _timed(risk_mod.update_fused_rank, con, MODEL)
    prior, _ = _timed(risk_mod.fit, con, MODEL)
    rows = con.execute("SELECT count(*) FROM scores").fetchone()[0]
    con.close()
    return {"seconds": insert + fused + prior, "insert": insert, "fused_rank": fused, "risk_prior": prior,
            "rows": rows}


def step_bands(db: Path) -> dict:
    from auditor import bands as bands_mod
    from auditor.config import DEFAULT_BAND_CONFIG, BandConfig
    from auditor.store import open_store

    from auditor.review import QueueChoice
    from auditor.review.queue import warm

    con = open_store(db)
    secs, counts = _timed(bands_mod.assign_bands, con, DEFAULT_BAND_CONFIG, MODEL, BandConfig())
    pages = warm(con, QueueChoice(model=MODEL))  # what `auditor band` ends with: the review queue's first pages
    base, _ = _timed(con.execute, "CREATE TEMP TABLE copy_of_scores AS SELECT * FROM scores")
    con.close()
    return {"seconds": secs, "queue_pages": pages, "baseline": base, "bands": counts}


def step_preview(db: Path) -> dict:
    from dataclasses import replace

    from auditor import bands as bands_mod
    from auditor.config import BandConfig
    from auditor.store import open_store

    con = open_store(db)
    times = []
    for margin in (0.05, 0.10, 0.02, 0.05):  # slider moves; the first call also reads the tables from disk
        cfg = replace(BandConfig(), relative_margin=margin)
        secs, p = _timed(bands_mod.preview_bands, con, cfg, MODEL)
        times.append(secs)
    base = []
    for _ in range(3):
        secs, _ = _timed(lambda: con.execute(
            "SELECT CASE WHEN s_neg > s_pos_min - abs(s_pos_min) * 0.05 THEN 'suspicious' ELSE 'other' END, "
            "count(*), count(DISTINCT query_id) FROM scores GROUP BY 1").fetchall())
        base.append(secs)
    con.close()
    return {"seconds": statistics.median(times[1:]), "first": times[0], "runs": times,
            "baseline": statistics.median(base)}


def step_review(db: Path, calls: int = 60, annotator: str = "bench", cold: bool = True) -> dict:
    """Per queue order: the first item (builds the order's page and keeps it in the store, or reads the kept one),
    then ``calls`` items, each judged (one in five a false negative, which re-selects its query in the export order)
    or skipped (one in three)."""
    import resource

    from auditor import review
    from auditor.store import open_store

    con = open_store(db)
    if cold:  # no page kept from an earlier run: the first request builds
        con.execute("DELETE FROM queue_pages")
    out = {"rss_before_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for mode in ("export", "risk", "stratified"):  # export: the default, the items the export would take next
        times, skip = [], []
        for i in range(calls):
            secs, item = _timed(review.next_item, con, annotator=annotator, mode=mode, skip=skip)
            times.append(secs)
            if i % 3:
                verdict = "false_negative" if i % 5 == 1 else "true_negative"
                review.record_verdict(con, query_id=item["query_id"], doc_id=item["doc_id"], verdict=verdict,
                                      annotator=annotator, queue_mode=item["mode"],
                                      sampling_prob=item["sampling_prob"])
            else:
                skip.append((item["query_id"], item["doc_id"]))
        rest = sorted(times[1:])
        out[mode] = {"first": times[0], "median": statistics.median(rest), "p95": rest[int(0.95 * len(rest))],
                     "max": rest[-1], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    con.close()
    return {"seconds": max(v["p95"] for k, v in out.items() if k in ("export", "risk", "stratified")), **out}


def step_stats(db: Path) -> dict:
    from auditor.stats import compute_stats
    from auditor.store import open_store

    con = open_store(db)
    secs, s = _timed(compute_stats, con, model=MODEL)
    con.close()
    return {"seconds": secs, "candidates": s["shape"].get("candidates")}


def step_export(db: Path, work: Path) -> dict:
    from auditor.export import export
    from auditor.store import open_store

    con = open_store(db)
    out, base_out = work / "export.jsonl", work / "baseline.jsonl"
    secs, s = _timed(export, con, out, fmt="triplet", negatives=NEGATIVES, model=MODEL)
    con.close()
    # The baselines are plain DuckDB, as for read_json: its own memory limit (80% of RAM), not the store's 2 GB
    # (under that the hand-written selection runs out of memory at 10M candidates: it sorts texts, auditor ids).
    import duckdb

    con = duckdb.connect(str(db))
    base, _ = _timed(con.execute, f"COPY ({EXPORT_SELECTION_BASELINE}) TO '{base_out}' (FORMAT json)")
    base_rows = con.execute(f"SELECT count(*) FROM read_json('{base_out}')").fetchone()[0]
    plain, _ = _timed(con.execute, f"COPY ({EXPORT_BASELINE}) TO '{base_out}' (FORMAT json)")
    con.close()
    return {"seconds": secs, "baseline": base, "baseline_rows": base_rows, "plain_copy": plain, "rows": s.rows,
            "mb": out.stat().st_size / 1e6}


STEPS = {
    "read_json": lambda a: step_read_json(a.src, a.work / "raw.duckdb"),
    "ingest": lambda a: step_ingest(a.src, a.db),
    "scores": lambda a: step_scores(a.db),
    "bands": lambda a: step_bands(a.db),
    "preview": lambda a: step_preview(a.db),
    "review": lambda a: step_review(a.db),
    "review_restart": lambda a: step_review(a.db, annotator="bench-2", cold=False),  # a new process: the pages the store kept
    "stats": lambda a: step_stats(a.db),
    "export": lambda a: step_export(a.db, a.work),
}


# ---------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------


def run_step(name: str, args: argparse.Namespace) -> dict:
    """Run one step in a fresh process; its result plus that process's own peak RSS (os.wait4)."""
    cmd = [sys.executable, __file__, "--step", name, "--src", str(args.src), "--db", str(args.db),
           "--work", str(args.work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"step {name} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


def _size_mb(db: Path) -> float:
    wal = Path(f"{db}.wal")
    return (db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200_000, help="queries (x 50 negatives = candidates)")
    ap.add_argument("--negatives", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("/tmp/auditor-scale"), help="work folder (file, stores)")
    ap.add_argument("--keep", action="store_true", help="keep the stores and exports (the input file is always kept)")
    ap.add_argument("--steps", help="comma-separated steps to run again on the kept store of an earlier --keep run "
                    f"(of: {', '.join(STEPS)}); prints their results only")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args), default=str))
        return

    from scale_gen import generate

    args.work.mkdir(parents=True, exist_ok=True)
    n = args.queries * args.negatives
    args.src = args.work / f"flag-{args.queries}x{args.negatives}.jsonl"
    args.db = args.work / f"store-{args.queries}x{args.negatives}.duckdb"
    if not args.src.exists():
        print(f"generating {args.src} ...", flush=True)
        shape = generate(args.src.with_suffix(".tmp"), args.queries, args.negatives)
        args.src.with_suffix(".tmp").rename(args.src)
        print(f"  {shape['bytes'] / 1e9:.2f} GB in {shape['seconds']:.0f} s", flush=True)
    if args.steps:
        if "ingest" in args.steps.split(","):  # a fresh store
            for p in (args.db, Path(f"{args.db}.wal")):
                p.unlink(missing_ok=True)
        elif not args.db.exists():
            raise SystemExit(f"no kept store at {args.db}: run with --keep first")
        for name in args.steps.split(","):
            if name not in STEPS:
                raise SystemExit(f"unknown step {name!r}: use {', '.join(STEPS)}")
            r = run_step(name, args)
            r["load1"] = os.getloadavg()[0]
            print(f"  {name:<10} {json.dumps(r, default=str)}", flush=True)
        return
    for p in (args.db, Path(f"{args.db}.wal"), args.work / "raw.duckdb", args.work / "raw.duckdb.wal"):
        p.unlink(missing_ok=True)

    print(f"{n:,} candidates ({args.queries:,} queries x {args.negatives}), {args.src.stat().st_size / 1e9:.2f} GB "
          f"input; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, dict] = {"candidates": n, "input_gb": args.src.stat().st_size / 1e9,
                                "load_before": os.getloadavg()}
    for name in STEPS:
        r = run_step(name, args)
        if name != "read_json":
            r["store_mb"] = _size_mb(args.db)
        r["load1"] = os.getloadavg()[0]
        results[name] = r
        print(f"  {name:<10} {json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})}",
              flush=True)
        if name == "read_json":
            (args.work / "raw.duckdb").unlink(missing_ok=True)
    results["load_after"] = os.getloadavg()
    (args.work / "scale.json").write_text(json.dumps(results, indent=2, default=str))

    raw = results["read_json"]["seconds"]
    rows = [
        ("ingest", results["ingest"]["seconds"], raw, "read_json", "<= 3x"),
        ("bands", results["bands"]["seconds"], results["bands"]["baseline"], "CTAS scores", "-"),
        ("preview", results["preview"]["seconds"], results["preview"]["baseline"], "GROUP BY", "< 1 s"),
        ("next item p95 (export)", results["review"]["export"]["p95"], None, "", "< 200 ms"),
        ("next item p95 (risk)", results["review"]["risk"]["p95"], None, "", "< 200 ms"),
        ("next item p95 (stratified)", results["review"]["stratified"]["p95"], None, "", "< 200 ms"),
        ("first item, new process (export)", results["review_restart"]["export"]["first"], None, "", "< 1 s"),
        ("stats", results["stats"]["seconds"], None, "", "-"),
        ("export", results["export"]["seconds"], results["export"]["baseline"], "COPY select", "<= 2x"),
        ("export", results["export"]["seconds"], results["export"]["plain_copy"], "COPY top 5", "-"),
    ]
    print(f"\n{'step':<28} {'seconds':>9} {'DuckDB':>9} {'ratio':>6}  {'against':<12} target")
    for name, secs, base, what, target in rows:
        ratio = f"{secs / base:.2f}" if base else "-"
        b = f"{base:.2f}" if base else "-"
        print(f"{name:<28} {secs:>9.3f} {b:>9} {ratio:>6}  {what:<12} {target}")
    print(f"{'scores (set-up)':<28} {results['scores']['seconds']:>9.2f}")
    peak = max(r["peak_mb"] for k, r in results.items() if isinstance(r, dict) and "peak_mb" in r and k != "read_json")
    print(f"peak RSS of any auditor step: {peak:,.0f} MB (target < 8,000); DuckDB read_json: "
          f"{results['read_json']['peak_mb']:,.0f} MB; store on disk {results['export']['store_mb']:,.0f} MB; "
          f"load average after: {results['load_after'][0]:.2f}")
    if not args.keep:
        for p in (args.db, Path(f"{args.db}.wal"), args.work / "export.jsonl", args.work / "baseline.jsonl"):
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
