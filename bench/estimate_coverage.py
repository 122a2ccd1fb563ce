"""How often does the export's stated false-negative interval hold the true rate? Many audit samples per collection.

For each densely judged collection (default: Cranfield and CACM; any BEIR folder with --collection), one positive
kept per query and the others hidden (the answer key), mined once; then for each seed a fresh copy of the store gets
an audit sample drawn with that seed (auditor.audit.new_design) and the review of `bench/review_yield.py`: 10 rounds
of the default queue's next 20 items answered from the key, the risk refitted after each round, through the
library calls the CLI and the app make. After the last round: the interval `auditor stats` would state
(auditor.estimate.export_estimate) against the export's actual share of hidden positives, and the export's frontier
ratio.

    python bench/estimate_coverage.py [--collection cranfield --collection cacm | PATH] [--seeds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.config import DEFAULT_MODEL, SAMPLE_DIR, ReviewConfig  # noqa: E402


def run(source: Path, args: argparse.Namespace, work: Path) -> list[dict]:
    from auditor import audit, review, risk
    from auditor.review import queue
    from auditor.estimate import export_estimate
    from auditor.frontier import baseline_curve, dense_ranking, frontier_ratio
    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.planted import hide_positives, read_answer_key
    from auditor.select import Selection, select_negatives
    from auditor.store import open_store

    hidden = hide_positives(source, work / "planted", keep=1, seed=42)
    key = set(read_answer_key(hidden.answer_key))
    mined = work / "mined.duckdb"
    con = open_store(mined)
    ingest_path(con, work / "planted")
    mine(con)
    curve = baseline_curve(dense_ranking(con, DEFAULT_MODEL, 100), key, n=5)
    con.close()
    out = []
    for seed in range(args.seeds):
        db = work / f"seed{seed}.duckdb"
        shutil.copyfile(mined, db)
        con = open_store(db)
        audit.new_design(con, "default", DEFAULT_MODEL, 5, replace(ReviewConfig(), seed=seed))
        for _ in range(args.rounds):
            items = queue.build_queue(con, annotator="sim", limit=args.per_round, double_annotation=0)
            for q, d in zip(items["query_id"], items["doc_id"]):
                review.record_verdict(con, query_id=q, doc_id=d, annotator="sim", queue_mode="export",
                                      verdict="false_negative" if (q, d) in key else "true_negative")
            risk.fit(con, DEFAULT_MODEL)
        est = export_estimate(con, Selection(), DEFAULT_MODEL)
        rows = select_negatives(con, 5).project("query_id, doc_id, s_neg").fetchall()
        actual = sum((q, d) in key for q, d, _ in rows) / len(rows)
        mean_s = sum(s for *_, s in rows) / len(rows)
        inside = est["status"] == "estimated" and est["ci95"][0] <= actual <= est["ci95"][1]
        out.append({"seed": seed, "status": est["status"], "rate": est["rate"], "ci95": est["ci95"],
                    "actual": actual, "inside": inside, "audits": est["audit"]["reviewed"],
                    "ratio": frontier_ratio(curve, actual, mean_s)})
        con.close()
        db.unlink()
        r = out[-1]
        print(f"  {source.name} seed {seed}: stated {_pct(r['rate'])} [{_pct((r['ci95'] or [None])[0])}, "
              f"{_pct((r['ci95'] or [None, None])[1])}] from {r['audits']} audit items, actual {_pct(actual)}: "
              f"{'inside' if inside else 'NOT inside'}; frontier ratio {r['ratio']:.2f}", flush=True)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", action="append",
                    help="a shipped collection (cranfield, cacm) or a BEIR folder; repeatable (default: both shipped)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="estimate-coverage-"))
    total = []
    try:
        for name in args.collection or ["cranfield", "cacm"]:
            source = Path(name) if Path(name).is_dir() else SAMPLE_DIR / name
            (work / source.name).mkdir()
            res = run(source, args, work / source.name)
            total += res
            widths = [r["ci95"][1] - r["ci95"][0] for r in res if r["ci95"]]
            print(f"{source.name}: actual rate inside the stated interval in {sum(r['inside'] for r in res)} of "
                  f"{len(res)} audit samples; mean interval width {100 * sum(widths) / max(len(widths), 1):.1f} "
                  f"points; frontier ratio after review {min(r['ratio'] for r in res):.2f}-"
                  f"{max(r['ratio'] for r in res):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"all: {sum(r['inside'] for r in total)} of {len(total)} inside")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
