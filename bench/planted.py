"""Planted false negatives on Cranfield: auditor's default cleaning against plain mining and sentence-transformers.

Keeps the best-graded positive of each query, hides the others (1,387 known false negatives), then with the default
model and 5 negatives per query compares, in one run:
  (a) plain top-5 mining (positives excluded, nothing else);
  (b) sentence_transformers.util.mine_hard_negatives(relative_margin=0.05, range_max=50, num_negatives=5,
      output_format="n-tuple"), which drops queries that cannot fill 5 negatives;
  (c) auditor: `auditor mine` + default bands + select_negatives() with its defaults (top, unreviewed suspicious
      dropped).
For each: share of the negatives that are hidden positives, share of queries kept with 5 negatives, mean s_neg.

    python bench/planted.py            # about 1-2 minutes on 2 CPU cores (the corpus is embedded once per method)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.config import DEFAULT_MODEL, SAMPLE_CRANFIELD  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    n = args.negatives

    from auditor.embed import load_model
    from auditor.evaluate import evaluate
    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.planted import hide_positives, read_answer_key, read_qrels
    from auditor.select import select_negatives
    from auditor.store import open_store

    work = Path(tempfile.mkdtemp(prefix="auditor-planted-"))
    hidden = hide_positives(SAMPLE_CRANFIELD, work / "cranfield-1pos", keep=1, seed=args.seed)
    key = set(read_answer_key(hidden.answer_key))
    kept = [(q, d) for q, d, g in read_qrels(hidden.qrels_path) if g > 0]
    print(f"Cranfield: {hidden.queries} queries, kept {hidden.kept} positives, hid {hidden.hidden}")

    # ---- (c) auditor ----
    con = open_store(work / "planted.duckdb")
    ingest_path(con, work / "cranfield-1pos")
    t = time.perf_counter()
    mine(con)
    t_auditor = time.perf_counter() - t
    ev = evaluate(con, sorted(key), negatives=n)
    sel = select_negatives(con, n).fetchall()
    n_queries = ev["scored_queries"]
    c_rows = len(sel)
    c_fn = sum((q, d) in key for q, d, *_ in sel)
    per_q: dict[str, int] = {}
    for q, *_ in sel:
        per_q[q] = per_q.get(q, 0) + 1
    c_full = sum(v == n for v in per_q.values())
    c_mean = sum(r[5] for r in sel) / c_rows

    # ---- (b) sentence-transformers ----
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    docs = con.execute(
        "SELECT doc_id, CASE WHEN title IS NULL THEN text ELSE title || ' ' || text END FROM documents"
    ).fetchall()
    queries = dict(con.execute("SELECT query_id, text FROM queries").fetchall())
    text_docs: dict[str, set[str]] = {}
    for did, txt in docs:
        text_docs.setdefault(txt, set()).add(did)
    doc_text = {did: txt for did, txt in docs}
    pairs = [(q, d) for q, d in kept if q in queries and d in doc_text]
    ds = Dataset.from_dict({"query": [queries[q] for q, _ in pairs], "positive": [doc_text[d] for _, d in pairs]})
    qid_of = {queries[q]: q for q, _ in pairs}
    model = load_model(DEFAULT_MODEL)
    t = time.perf_counter()
    out = mine_hard_negatives(
        ds, model, corpus=[t for _, t in docs], relative_margin=0.05, range_max=50, num_negatives=n,
        output_format="n-tuple", output_scores=True, verbose=False, batch_size=32,
    )
    t_st = time.perf_counter() - t
    b_rows = b_fn = 0
    b_scores = []
    for row in out:
        qid = qid_of[row["query"]]
        for i in range(1, n + 1):
            txt = row[f"negative_{i}"]
            b_rows += 1
            b_fn += any((qid, d) in key for d in text_docs.get(txt, ()))
        b_scores += row["scores"][1:]
    b_queries = len(out)

    a = ev["plain_top"]
    rows = [
        ("(a) plain top-5 mining", a["fn_share"], a["queries_full"] / n_queries, a["mean_s_neg"], a["negatives"]),
        ("(b) ST relative_margin=0.05", b_fn / b_rows, b_queries / n_queries, sum(b_scores) / len(b_scores), b_rows),
        ("(c) auditor default cleaning", c_fn / c_rows, c_full / n_queries, c_mean, c_rows),
    ]
    print(f"\n{n} negatives per query, model {DEFAULT_MODEL}, {n_queries} queries, {len(key)} hidden positives")
    print(f"{'method':<30} {'hidden positives':>16} {'queries kept':>12} {'mean s_neg':>10} {'negatives':>9}")
    for name, fn, kept_share, mean, count in rows:
        print(f"{name:<30} {100 * fn:>15.1f}% {100 * kept_share:>11.1f}% {mean:>10.4f} {count:>9}")
    b_fn_share, b_mean = rows[1][1], rows[1][3]
    ok = rows[2][1] < b_fn_share and rows[2][2] >= 0.95 and abs(rows[2][3] - b_mean) <= 0.02
    print(f"\ntarget (c): fewer hidden positives than (b), >= 95% of queries kept, mean s_neg within 0.02 of (b): "
          f"{'met' if ok else 'NOT met'}")
    print(f"(mining time in this run: auditor {t_auditor:.1f} s incl. embedding, ST {t_st:.1f} s)")
    print("\nper band (auditor default config):")
    for band, r in ev["bands"].items():
        prec = "-" if r["precision"] is None else f"{100 * r['precision']:.1f}%"
        print(f"  {band:<11} {r['candidates']:>6} candidates, {r['known_fn']:>4} hidden positives "
              f"(precision {prec}, recall {100 * r['recall']:.1f}%)")
    if args.json:
        print(json.dumps({"rows": rows, "bands": ev["bands"], "rules": ev["rules"]}, indent=2, default=str))
    con.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
