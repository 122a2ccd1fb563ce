"""Does review clean what gets exported? An annotator simulated from an answer key, working the default queue.

Each densely judged collection (default: the two development collections, Cranfield and CACM; any BEIR folder with
several judged positives per query works) with one positive kept per query and the others hidden (the answer key),
run end to end through the CLI, as a user (or our held-out evaluation) would:

    hide-positives -> ingest -> mine -> export --format ntuple --negatives N      (before review)
    10 rounds: queue --annotator sim --limit 20 --json -> answers from the key -> verdicts import   (refits the risk)
    export --format ntuple --negatives N                                           (after review)

Each export is read back from its file (negative texts mapped to document ids) and judged at equal hardness: its
share of hidden positives, its mean query-negative cosine, and the frontier ratio against the rank-window baseline
(auditor.frontier). Also printed: hidden positives found by the review, what `auditor stats` states about the
export's false-negative rate (before review: nothing but what to review; after: an estimate with a 95% interval)
against the file's actual rate, and the figures on each half of the queries.

    python bench/review_yield.py [--collection cranfield --collection cacm | PATH] [--rounds 10] [--per-round 20]
                                 [--negatives 5] [--seed 42] [--workdir DIR]

Targets (issue 15), with the same defaults on every collection: automatic export frontier ratio <= 0.60 with every
query kept and mean s_neg >= 0.50; after 200 verdicts from the default queue in 10 rounds <= 0.40; the actual rate
inside the stated interval.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def auditor(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"auditor {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def read_export(path: Path, db: Path) -> list[tuple[str, str]]:
    """(query_id, doc_id) of every negative in an ntuple export, mapped back from texts as an outside judge would."""
    from auditor.texts import doc_text_sql
    from auditor.store import open_store

    con = open_store(db, read_only=True)
    try:
        doc_of = {t: d for d, t in con.execute(f"SELECT doc_id, {doc_text_sql()} FROM documents").fetchall()}
        query_of = {t: q for q, t in con.execute("SELECT query_id, text FROM queries").fetchall()}
    finally:
        con.close()
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        q = query_of[row["query"]]
        pairs += [(q, doc_of[t]) for t in row["neg"]]
    return pairs


def judge(pairs: list[tuple[str, str]], key: set, ranking: dict, curve: list, queries: set | None = None) -> dict:
    """Contamination, mean cosine, frontier ratio and queries kept of exported (query, negative) pairs."""
    import numpy as np

    from auditor.frontier import baseline_at, frontier_ratio

    s_of = {(q, d): s for q, d, s in zip(ranking["query_id"], ranking["doc_id"], ranking["s"])}
    if queries is not None:
        pairs = [p for p in pairs if p[0] in queries]
    hits = sum(p in key for p in pairs)
    cos = [s_of.get(p) for p in pairs]
    known = [c for c in cos if c is not None]
    mean_s = float(np.mean(known)) if known else None
    share = hits / len(pairs) if pairs else None
    return {"negatives": len(pairs), "hidden": hits, "contamination": share, "mean_s": mean_s,
            "queries": len({q for q, _ in pairs}), "rank_cut": baseline_at(curve, mean_s) if mean_s else None,
            "ratio": frontier_ratio(curve, share, mean_s)}


def run_collection(source: Path, args: argparse.Namespace, work: Path) -> dict:
    """The whole loop on one collection; returns its figures (and prints them)."""
    from auditor.frontier import baseline_curve, dense_ranking
    from auditor.planted import read_answer_key
    from auditor.store import open_store

    n = str(args.negatives)
    work.mkdir(parents=True, exist_ok=True)
    folder, db = work / "planted", work / "store.duckdb"
    for p in (db, Path(f"{db}.wal")):
        if p.exists():
            p.unlink()
    t0 = time.perf_counter()
    auditor("hide-positives", str(source), str(folder), "--keep", "1", "--seed", str(args.seed))
    key = set(read_answer_key(folder / "answer_key.tsv"))
    auditor("ingest", str(folder), "--db", str(db))
    auditor("mine", "--db", str(db))
    t_mined = time.perf_counter()

    con = open_store(db, read_only=True)
    ranking = dense_ranking(con, "all-MiniLM-L6-v2", 100)
    all_queries = sorted({q for q, _ in con.execute("SELECT query_id, doc_id FROM qrels WHERE relevant").fetchall()})
    con.close()
    curve = baseline_curve(ranking, key, n=args.negatives)
    halves = [
        {q for q in all_queries if int(hashlib.md5(q.encode()).hexdigest(), 16) % 2 == h} for h in (0, 1)
    ]
    half_curves = [baseline_curve(ranking, key, n=args.negatives, queries=h) for h in halves]

    def exported(name: str) -> tuple[list, dict]:
        out = work / f"{name}.jsonl"
        auditor("export", "--db", str(db), "--out", str(out), "--format", "ntuple", "--negatives", n)
        stated = json.loads(auditor("stats", "--db", str(db), "--json", "--negatives", n))["export_estimate"]
        return read_export(out, db), stated

    before, stated_before = exported("before")
    found = reviewed = audits = 0
    t_review = time.perf_counter()
    for r in range(args.rounds):
        items = json.loads(auditor("queue", "--db", str(db), "--annotator", "sim", "--limit", str(args.per_round),
                                   "--json"))
        if not items:
            print(f"round {r + 1}: the queue is empty")
            break
        answers = work / f"answers-{r + 1}.jsonl"
        with open(answers, "w", encoding="utf-8") as fh:
            for it in items:
                hit = (it["query_id"], it["doc_id"]) in key
                found += hit
                reviewed += 1
                audits += bool(it.get("audit"))
                fh.write(json.dumps({"query_id": it["query_id"], "doc_id": it["doc_id"],
                                     "verdict": "false_negative" if hit else "true_negative"}) + "\n")
        auditor("verdicts", "import", str(answers), "--db", str(db), "--annotator", "sim")
    t_reviewed = time.perf_counter()
    after, stated_after = exported("after")

    n_queries = len(all_queries)
    rows = {"before review": judge(before, key, ranking, curve), "after review": judge(after, key, ranking, curve)}
    print(f"\n== {source.name}: 1 positive kept per query, {len(key)} hidden positives, {n_queries} queries "
          f"(hide + ingest + mine {t_mined - t0:.0f} s; {args.rounds} review rounds {t_reviewed - t_review:.0f} s)")
    print(f"review: {reviewed} items from the default queue ({audits} audit items), {found} hidden positives "
          "confirmed")
    print(f"export --format ntuple --negatives {n}, read back from the file:")
    print(f"{'':<14} {'negatives':>9} {'hidden':>7} {'FN share':>8} {'mean s_neg':>10} {'rank cut':>8} "
          f"{'ratio':>6} {'queries kept':>12}  stated by `auditor stats`")
    for (name, r), st in zip(rows.items(), (stated_before, stated_after)):
        said = ("no percentage (uncalibrated)" if st["status"] == "uncalibrated" else
                f"{100 * st['rate']:.1f}% [{100 * st['ci95'][0]:.1f}, {100 * st['ci95'][1]:.1f}]"
                if st["status"] == "estimated" else st["status"])
        print(f"{name:<14} {r['negatives']:>9} {r['hidden']:>7} {100 * r['contamination']:>7.1f}% "
              f"{r['mean_s']:>10.3f} {100 * r['rank_cut']:>7.1f}% {r['ratio']:>6.2f} "
              f"{100 * r['queries'] / n_queries:>11.1f}%  {said}")
    for i, (h, hc) in enumerate(zip(halves, half_curves)):
        b, a = judge(before, key, ranking, hc, h), judge(after, key, ranking, hc, h)
        print(f"  half {i + 1} ({len(h)} queries): before {100 * b['contamination']:.1f}% @ {b['mean_s']:.3f} ratio "
              f"{b['ratio']:.2f}; after {100 * a['contamination']:.1f}% @ {a['mean_s']:.3f} ratio {a['ratio']:.2f}")
    auto, rev = rows["before review"], rows["after review"]
    inside = (stated_after["status"] == "estimated"
              and stated_after["ci95"][0] <= rev["contamination"] <= stated_after["ci95"][1])
    checks = {
        "automatic ratio <= 0.60": auto["ratio"] <= 0.60,
        "every query kept": auto["queries"] == n_queries and rev["queries"] == n_queries,
        "mean s_neg >= 0.50": auto["mean_s"] >= 0.50 and rev["mean_s"] >= 0.50,
        "reviewed ratio <= 0.40": rev["ratio"] <= 0.40,
        "no percentage before review": stated_before["status"] == "uncalibrated",
        "actual rate inside the stated interval": inside,
    }
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
    return {"collection": source.name, "rows": rows, "found": found, "reviewed": reviewed, "audits": audits,
            "stated_before": stated_before, "stated_after": stated_after, "checks": checks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", action="append",
                    help="a shipped collection (cranfield, cacm) or a BEIR folder; repeatable (default: both shipped)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="review-yield-"))
    results = []
    for name in args.collection or ["cranfield", "cacm"]:
        source = Path(name) if Path(name).is_dir() else ROOT / "data" / name
        if not (source / "corpus.jsonl").is_file():
            raise SystemExit(f"{name}: not a shipped collection nor a BEIR folder")
        results.append(run_collection(source, args, work / source.name))
    print(f"\nfiles in {work}")
    if args.json:
        print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
