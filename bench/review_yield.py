"""Does the risk-ordered review queue find hidden positives faster than random review, and does review clean the export?

Cranfield with one positive kept per query and the others hidden (the answer key), run end to end through the CLI:
hide-positives -> ingest -> mine -> export (before) -> queue --json (first N items) -> answers from the answer key ->
`auditor verdicts import` -> export (after). Compares the hidden positives among the first N queue items with N
mined candidates drawn at random (seeded), and the hidden positives among the exported negatives before and after.

    python bench/review_yield.py [--items 200] [--negatives 5] [--seed 42] [--workdir DIR]

Targets (issue 5): queue >= 2x random; fewer hidden positives in the export after review.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def auditor(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"auditor {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def hidden_in_export(path: Path, key: set[tuple[str, str]]) -> tuple[int, int]:
    """(hidden positives among exported negatives, negatives exported), from a rich export."""
    hits = total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for neg in row["negatives"]:
            total += 1
            hits += (row["query_id"], neg["doc_id"]) in key
    return hits, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()

    from auditor.planted import read_answer_key
    from auditor.store import open_store

    work = Path(args.workdir or tempfile.mkdtemp(prefix="review-yield-"))
    work.mkdir(parents=True, exist_ok=True)
    folder, db = work / "cranfield-1pos", work / "store.duckdb"
    for p in (db, Path(f"{db}.wal")):
        if p.exists():
            p.unlink()
    t0 = time.perf_counter()
    auditor("hide-positives", str(ROOT / "data" / "cranfield"), str(folder), "--keep", "1", "--seed", str(args.seed))
    key = set(read_answer_key(folder / "answer_key.tsv"))
    auditor("ingest", str(folder), "--db", str(db))
    auditor("mine", "--db", str(db))
    t_mined = time.perf_counter()

    before = work / "before.jsonl"
    auditor("export", "--db", str(db), "--out", str(before), "--format", "rich", "--negatives", str(args.negatives),
            "--seed", str(args.seed))

    queue = json.loads(auditor("queue", "--db", str(db), "--limit", str(args.items), "--json"))
    queue_hits = sum((it["query_id"], it["doc_id"]) in key for it in queue)

    con = open_store(db, read_only=True)
    try:
        mined = con.execute(
            "SELECT DISTINCT query_id, doc_id FROM candidates WHERE source <> 'given' ORDER BY query_id, doc_id"
        ).fetchall()
        bands_in_queue = {}
        for it in queue:
            bands_in_queue[it["band"]] = bands_in_queue.get(it["band"], 0) + 1
    finally:
        con.close()
    rng = random.Random(args.seed)
    sample = rng.sample(mined, min(args.items, len(mined)))
    random_hits = sum(tuple(x) in key for x in sample)
    # expected hits of a random draw, for a seed-free comparison
    expected_random = args.items * sum(tuple(x) in key for x in mined) / len(mined)

    answers = work / "answers.jsonl"
    with open(answers, "w", encoding="utf-8") as fh:
        for it in queue:
            hit = (it["query_id"], it["doc_id"]) in key
            fh.write(json.dumps({"query_id": it["query_id"], "doc_id": it["doc_id"],
                                 "verdict": "false_negative" if hit else "true_negative"}) + "\n")
    auditor("verdicts", "import", str(answers), "--db", str(db), "--annotator", "answer-key")

    after = work / "after.jsonl"
    auditor("export", "--db", str(db), "--out", str(after), "--format", "rich", "--negatives", str(args.negatives),
            "--seed", str(args.seed))
    hb, nb = hidden_in_export(before, key)
    ha, na = hidden_in_export(after, key)

    print(f"Cranfield, 1 positive kept per query, {len(key)} hidden positives; {len(mined)} mined candidates "
          f"(ingest + mine {t_mined - t0:.0f} s)")
    print(f"review of the first {len(queue)} risk-queue items  : {queue_hits} hidden positives found "
          f"({100 * queue_hits / max(len(queue), 1):.1f}%)  bands {bands_in_queue}")
    print(f"{len(sample)} mined candidates drawn at random  : {random_hits} hidden positives "
          f"(expected {expected_random:.1f})")
    ratio = queue_hits / random_hits if random_hits else float("inf")
    print(f"yield ratio queue / random                 : {ratio:.2f}x  (target >= 2x)")
    print(f"export of {args.negatives} negatives per query, before review : {hb} hidden positives among {nb} negatives "
          f"({100 * hb / max(nb, 1):.2f}%)")
    print(f"export of {args.negatives} negatives per query, after review  : {ha} hidden positives among {na} negatives "
          f"({100 * ha / max(na, 1):.2f}%)  (target: fewer than before)")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
