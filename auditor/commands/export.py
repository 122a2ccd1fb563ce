"""`auditor export` (cleaned training data) and `auditor stats` (pooling-bias and false-negative statistics)."""

from __future__ import annotations

import argparse
import json
import sys

import duckdb

from auditor.commands.args import opt_float
from auditor.config import DEFAULT_BAND_CONFIG, ExportConfig
from auditor.export import FILE_TYPES, FORMATS, ExportSummary

_DEFAULTS = ExportConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write cleaned training data (JSONL or Parquet)",
        description=(
            "Write the training set with N negatives per query chosen after cleaning: confirmed false negatives "
            "are dropped (or, with --relabel, added to the positives), unreviewed candidates whose estimated "
            "P(false negative) is above --max-risk are skipped (a query that would keep fewer than N takes its "
            "lowest-risk remaining candidates), and blank texts are never written. The settings are saved in the "
            "store: the review queue then holds what this export wrote, riskiest first. Layouts (--format): triplet = sentence-transformers "
            "{anchor, positive, negative}, one line per (positive, negative) pair; st-ntuple = sentence-transformers "
            "{anchor, positive, negative_1..negative_N}, one line per query with exactly N negatives; ntuple = "
            "FlagEmbedding {query, pos, neg, pos_scores, neg_scores, prompt}; rich = ids, texts, and per negative "
            "its band, scores, rank, source and verdict. File type: --file-type, else the extension of --out "
            "(.parquet is Parquet; .jsonl, .json or anything else is JSONL). Deterministic for a seed, written "
            "atomically (an interrupted or killed export leaves no partial file). Queries short of N negatives are "
            "reported. README: 'Export layouts and trainer settings'."
        ),
    )
    p.add_argument("--db", required=True, help="store file")
    p.add_argument("--out", required=True,
                   help="output file, or - for standard output (JSONL only; the summary then goes to standard error)")
    p.add_argument("--format", choices=list(FORMATS), default=_DEFAULTS.format,
                   help=f"output layout (default {_DEFAULTS.format})")
    p.add_argument("--file-type", choices=list(FILE_TYPES),
                   help="jsonl or parquet (default: from the extension of --out: .parquet is Parquet; .jsonl, .json "
                        "or anything else is JSONL)")
    p.add_argument("--negatives", type=int, default=_DEFAULTS.negatives,
                   help=f"negatives per query (default {_DEFAULTS.negatives})")
    p.add_argument("--strategy", choices=["top", "random", "simans", "band-mix"], default=_DEFAULTS.strategy,
                   help="top: hardest surviving negatives; random: uniform within a rank window; simans: sampled "
                        "by SimANS weight; band-mix: shares per band (default top)")
    p.add_argument("--relabel", action="store_true", help="add confirmed false negatives to the positives")
    p.add_argument("--max-risk", type=opt_float, default=_DEFAULTS.max_risk, metavar="P",
                   help="skip unreviewed candidates whose P(false negative) is above P (default %(default)s; 'off' "
                        "keeps them; `auditor stats` recommends one for a target rate)")
    p.add_argument("--no-keep-n", dest="keep_n", action="store_false", default=_DEFAULTS.keep_n,
                   help="let a query fall short of N instead of taking its lowest-risk remaining candidates")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--drop-unreviewed-suspicious", dest="drop_unreviewed_suspicious", action="store_true",
                   default=_DEFAULTS.drop_unreviewed_suspicious,
                   help="also never use a suspicious-band candidate nobody confirmed as a true negative")
    g.add_argument("--keep-unreviewed-suspicious", dest="drop_unreviewed_suspicious", action="store_false",
                   help="allow unreviewed suspicious candidates (default; the risk threshold still applies)")
    p.add_argument("--band-config", default="default", help="band configuration (default: default)")
    p.add_argument("--model", help="scorer whose bands to use (default: the latest scored)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help=f"random seed (default {_DEFAULTS.seed})")
    p.add_argument("--short-ids", help="write the ids of queries short of N negatives to this file")
    p.add_argument("--stats", help="also write the statistics file (JSON) here")
    p.add_argument("--report", help="also write the HTML report here")
    p.add_argument("--json", action="store_true", help="print the export summary as JSON")
    p.set_defaults(func=run_export)

    s = sub.add_parser(
        "stats",
        help="pooling-bias and false-negative statistics",
        description=(
            "Dataset shape, score geometry, band counts, queries short of N negatives, and from the verdicts the "
            "false-negative rate per band (Wilson 95% intervals), the estimated total of false negatives, the rate "
            "per rank bucket and per source, judged@k and annotator agreement."
        ),
    )
    s.add_argument("--db", required=True, help="store file")
    s.add_argument("--band-config", default="default", help="band configuration (default: default)")
    s.add_argument("--model", help="scorer (default: the latest scored)")
    s.add_argument("--negatives", type=int, default=_DEFAULTS.negatives,
                   help="N for the 'queries short of N negatives' figure")
    s.add_argument("--json", action="store_true", help="print the full statistics as JSON")
    s.add_argument("--out", help="write the statistics JSON to this file")
    s.add_argument("--report", help="write the HTML report to this file")
    s.set_defaults(func=run_stats)


def _write_json(obj: dict, path: str) -> None:
    from auditor.export import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1))


def run_export(args: argparse.Namespace) -> int:
    from auditor.cli import UserError
    from auditor.commands.progress import progress_bar
    from auditor.export import STDOUT, export
    from auditor.store import open_store

    if args.negatives < 1:
        raise UserError("--negatives must be at least 1")
    con = open_store(args.db)
    try:
        with progress_bar("export", disable=args.json, unit="step") as progress:
            try:
                summary = export(
                    con, args.out, fmt=args.format, file_type=args.file_type, negatives=args.negatives,
                    strategy=args.strategy, relabel=args.relabel,
                    drop_unreviewed_suspicious=args.drop_unreviewed_suspicious, config=args.band_config,
                    model=args.model, seed=args.seed, max_risk=args.max_risk, keep_n=args.keep_n,
                    short_ids_path=args.short_ids, progress=progress,
                )
            except ValueError as exc:
                raise UserError(str(exc)) from None
        if args.stats or args.report:
            from auditor.stats import compute_stats

            stats = compute_stats(con, model=args.model, config=args.band_config, negatives=args.negatives)
            stats["export"] = summary.to_dict()
            if args.stats:
                _write_json(stats, args.stats)
            if args.report:
                from auditor.report import write_report

                write_report(stats, args.report)
    finally:
        con.close()
    out = sys.stderr if args.out == STDOUT else sys.stdout  # standard output may be the data itself
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2), file=out)
        return 0
    for line in _summary_lines(summary):
        print(line, file=out)
    if args.stats:
        print(f"statistics: {args.stats}", file=out)
    if args.report:
        print(f"report: {args.report}", file=out)
    return 0


def _summary_lines(s: ExportSummary) -> list[str]:
    where = "standard output" if s.path == "-" else s.path
    lines = [f"wrote {s.rows:,} {s.format} {'lines' if s.file_type == 'jsonl' else 'rows'} ({s.file_type}) to "
             f"{where} ({s.queries_written:,} queries, {s.negatives_written:,} negatives, "
             f"{s.positives_written:,} positives{f', {s.relabeled} relabeled' if s.relabel else ''})",
             f"confirmed false negatives kept out of the negatives: {s.confirmed_false_negatives:,}"]
    if not s.risk_applied:
        lines.append("warning: no false-negative risk for this model (the store was mined by an older auditor): "
                     "nothing was skipped by risk; run `auditor mine` again (cached embeddings are reused)")
    elif s.max_risk is not None:
        kept = (f"; {s.kept_by_lowest_risk:,} negatives above it kept so that {s.queries_kept_by_lowest_risk:,} "
                "queries keep N" if s.kept_by_lowest_risk else "; every query kept N below it")
        expected = ("" if s.expected_false_negatives is None else
                    f"; expected false negatives in the file: {s.expected_false_negatives:.1f} "
                    f"({100 * s.expected_false_negatives / max(s.negatives_written, 1):.1f}%)")
        lines.append(f"max risk {s.max_risk:g}: {s.candidates_above_max_risk:,} unreviewed candidates above it "
                     f"skipped{kept}{expected}")
    if s.score_source:
        lines.append(f"scores: teacher for {s.score_source['teacher']:,} queries, model cosine for "
                     f"{s.score_source['model']:,}")
    if s.empty_texts_skipped or s.queries_without_usable_positive:
        lines.append(f"blank texts left out: {s.empty_texts_skipped:,}; queries without a usable positive (not "
                     f"written): {s.queries_without_usable_positive:,}")
    if s.short_queries:
        ids = ", ".join(s.short_query_ids[:10]) + (" ..." if s.short_queries > 10 else "")
        not_written = ("none of them was written: every st-ntuple row needs N negatives" if s.format == "st-ntuple"
                       else f"{s.queries_without_negatives:,} got none and were not written")
        lines.append(f"{s.short_queries:,} of {s.queries_with_positives:,} queries got fewer than "
                     f"{s.negatives_per_query} negatives ({not_written}): {ids}"
                     + (f"; all ids in {s.short_ids_path}" if s.short_ids_path else
                        "; use --short-ids FILE for the full list"))
    return lines


def run_stats(args: argparse.Namespace) -> int:
    from auditor.stats import compute_stats
    from auditor.store import open_store

    con = open_store(args.db, read_only=True)
    try:
        _require_known_band_config(con, args.band_config)
        stats = compute_stats(con, model=args.model, config=args.band_config, negatives=args.negatives)
    finally:
        con.close()
    if args.out:
        _write_json(stats, args.out)
    if args.report:
        from auditor.report import write_report

        write_report(stats, args.report)
    if args.json:
        json.dump(stats, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    _print_stats(stats)
    return 0


def _require_known_band_config(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """A misspelt --band-config is an error, not a report without bands (``default`` always exists)."""
    from auditor.cli import UserError

    if name == DEFAULT_BAND_CONFIG:
        return
    known = sorted({r[0] for r in con.execute(
        "SELECT name FROM band_configs UNION SELECT DISTINCT config FROM bands"
    ).fetchall()} | {DEFAULT_BAND_CONFIG})
    if name not in known:
        raise UserError(f"no band configuration named {name!r}; known: {', '.join(known)} "
                        f"(create one with `auditor band --db FILE --config {name} ...`)")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print_stats(st: dict) -> None:
    sh = st["shape"]
    print(f"queries {sh['queries']:,}  documents {sh['documents']:,}  positives {sh['positives']:,} "
          f"({sh['positives_per_query_mean'] or 0:.2f} per query, {_pct(sh['single_positive_share'])} single)  "
          f"candidates {sh['candidates']:,}")
    for r in sh.get("per_source", []):
        print(f"  source {r['source']}: {r['candidates']:,} candidates over {r['queries']:,} queries")
    if st.get("model") is None:
        print(st.get("note", ""))
        return
    sc = st["scores"]
    print(f"model {st['model']}: s_pos median {sc['s_pos_min'].get('median') or 0:.3f}, s_neg median "
          f"{sc['s_neg'].get('median') or 0:.3f}, delta median {sc['delta'].get('median') or 0:.3f}, "
          f"inversion rate {_pct(sc.get('inversion_rate'))}")
    pr = st.get("positive_rank", {})
    if "mrr" in pr:
        print(f"labeled positive: MRR@{pr['depth']} {pr['mrr']:.3f}, success@1 {_pct(pr.get('success_at_1'))}")
    if "bands" in st:
        b = st["bands"]
        print("bands: " + ", ".join(f"{k} {v:,} ({_pct(b['shares'][k])})" for k, v in b["counts"].items()))
        s = st["short_queries"]
        print(f"queries short of {s['negatives']} negatives after cleaning: {s['count']:,} ({_pct(s['share'])})")
        v = st["verdicts"]
        print(f"verdicts: {v['items_reviewed']:,} items by {v['annotators']} annotators")
        for r in v["per_band"]:
            ci = "" if not r["ci95"] else f" [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"
            print(f"  {r['band']:<10} {r['false_negative']}/{r['judged']} false negatives = {_pct(r['rate'])}{ci}"
                  + (f" ({r['sample']})" if r["sample"] else ""))
        est = v["estimated_total_false_negatives"]
        if est["estimate"] is not None:
            print(f"  estimated false negatives in all bands: {est['estimate']:.0f}"
                  + (" (some bands risk-ordered only: leans high)" if est["biased_upward"] else ""))
        for r in v["per_rank_bucket"]:
            if r["judged"]:
                print(f"  rank {r['ranks']:<7} {r['false_negative']}/{r['judged']} = {_pct(r['rate'])}")
        if v["agreement"]["items"]:
            print(f"  Cohen's kappa over {v['agreement']['items']} items: {v['agreement']['kappa']}")
    est = st.get("export_estimate")
    if est:
        m, smp, sel = est["model"], est["sample"], est["selection"]
        print(f"export of {sel['negatives']} negatives per query (max risk {sel['max_risk']}): expected false "
              f"negatives {m['expected_false_negatives']:.1f} of {m['negatives']:,} = {_pct(m['expected_rate'])} by "
              + (f"the risk model (calibrated on {m['verdicts_in_fit']} verdicts)" if m["calibrated"]
                 else "the rule-based prior (no verdicts yet: an assumption, not a measurement)"))
        if smp.get("ci95"):
            point = "-" if smp["rate"] is None else _pct(smp["rate"])
            print(f"  from the stratified random review ({smp['judged']} items): {point} "
                  f"[{_pct(smp['ci95'][0])}, {_pct(smp['ci95'][1])}]"
                  + (f"; no sample yet in {', '.join(smp['unsampled'])}" if smp["unsampled"] else ""))
        else:
            print("  no stratified random review yet: `auditor queue --mode stratified` gives a sample to check it")
        rec = (est.get("recommend") or {}).get("for_target_rate") or {}
        for target, best in rec.items():
            if best:
                print(f"  for at most {_pct(float(target))} false negatives: --max-risk {best['max_risk']:g} "
                      f"(expected {_pct(best['expected_rate'])}, mean s_neg {best['mean_s_neg']:.3f})")
            else:
                print(f"  for at most {_pct(float(target))} false negatives: no threshold in the sweep gets there")
    jk = (st.get("judged_at_k") or {}).get("by_k") or []
    if jk:
        print("judged@k (qrels label / label or verdict): " + ", ".join(
            f"@{r['k']} {_pct(r['judged'])}/{_pct(r['judged_or_reviewed'])}" for r in jk if r["k"] in (1, 5, 10, 50)))
