"""`auditor export` (cleaned training data) and `auditor stats` (pooling-bias and false-negative statistics)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import duckdb

from auditor.commands.args import existing_store, opt_float
from auditor.config import DEFAULT_BAND_CONFIG, ExportConfig
from auditor.export import FILE_TYPES, FORMATS, SCORE_CHOICES, ExportSummary

if TYPE_CHECKING:
    from auditor.select import Selection

_DEFAULTS = ExportConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write cleaned training data (JSONL or Parquet)",
        description=(
            "Write the training set with N negatives per query chosen after cleaning: confirmed false negatives "
            "are dropped (or, with --relabel, added to the positives), and of the rest each query takes its hardest "
            "candidates, each charged for its estimated P(false negative); the charge is set so that the export "
            "holds at most --fn-budget of the false negatives plain top-N mining would (0.15 by default: a budget "
            "relative to the data, not a fixed risk), or an expected --target-rate once verdicts calibrate the "
            "risk; --max-risk P instead skips unreviewed candidates above P (a query short of N is then filled by "
            "the same trade-off of hardness and risk). Blank texts are never written. The settings are saved in "
            "the store: the review queue then asks about what this export would change most. The summary states "
            "the export's estimated false-negative rate with a 95%% interval once verdicts (and the queue's audit "
            "items) allow one, and says so when they do not yet. Layouts (--format): triplet = sentence-transformers "
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
    p.add_argument("--scores", choices=list(SCORE_CHOICES), default=_DEFAULTS.scores,
                   help="ntuple: teacher (default) writes pos_scores/neg_scores only for queries whose training file "
                        "gave teacher scores; model fills the others with the model's cosines (FlagEmbedding "
                        "softmaxes them without a temperature: little signal); none writes no scores")
    add_risk_arguments(p)
    p.add_argument("--no-keep-n", dest="keep_n", action="store_false", default=_DEFAULTS.keep_n,
                   help="with --max-risk (or a strategy other than top): let a query fall short of N instead of "
                        "filling it with the best remaining trade-offs of hardness and risk")
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
    s.add_argument("--out", help="write the statistics JSON to this file (- for standard output, like --json)")
    s.add_argument("--report", help="write the HTML report to this file")
    s.set_defaults(func=run_stats)


def add_risk_arguments(p: argparse.ArgumentParser, default_budget: float | None = _DEFAULTS.fn_budget) -> None:
    """--fn-budget, --target-rate and --max-risk: how much risk an export takes (export, evaluate, queue)."""
    p.add_argument("--fn-budget", type=float, default=default_budget, metavar="SHARE",
                   help="hold at most this share of the false negatives plain top-N mining would, by the risk model "
                        f"(default {_DEFAULTS.fn_budget}; smaller is cleaner and easier)")
    p.add_argument("--target-rate", type=float, default=None, metavar="RATE",
                   help="instead, an expected false-negative rate of the export (meaningful once verdicts calibrate "
                        "the risk: `auditor stats` says whether they do)")
    p.add_argument("--max-risk", type=opt_float, default=None, metavar="P",
                   help="explicit override: skip unreviewed candidates whose P(false negative) is above P")


def selection_from_args(args: argparse.Namespace) -> "Selection":
    """The export settings the command line asked for."""
    from auditor.select import Selection

    for name in ("fn_budget", "target_rate", "max_risk"):
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            from auditor.cli import UserError

            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    return Selection(negatives=args.negatives, strategy=args.strategy, config=args.band_config, seed=args.seed,
                     fn_budget=args.fn_budget, target_rate=args.target_rate, max_risk=args.max_risk,
                     keep_n=args.keep_n, drop_unreviewed_suspicious=args.drop_unreviewed_suspicious)


def _write_json(obj: dict, path: str) -> None:
    from auditor.export import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1))


def run_export(args: argparse.Namespace) -> int:
    from auditor.cli import UserError
    from auditor.commands.progress import progress_bar
    from auditor.export import STDOUT, export

    if args.negatives < 1:
        raise UserError("--negatives must be at least 1")
    con = existing_store(args.db)
    try:
        with progress_bar("export", disable=args.json, unit="step") as progress:
            try:
                summary = export(
                    con, args.out, selection_from_args(args), fmt=args.format, file_type=args.file_type,
                    relabel=args.relabel, model=args.model, scores=args.scores, short_ids_path=args.short_ids,
                    progress=progress,
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
    else:
        kept = (f"; {s.kept_by_lowest_risk:,} negatives above it kept so that {s.queries_kept_by_lowest_risk:,} "
                "queries keep N" if s.kept_by_lowest_risk else "")
        skipped = (f": {s.candidates_above_max_risk:,} unreviewed candidates above it skipped"
                   if s.max_risk is not None else f" (trade-off {s.tradeoff:.3g} per unit of risk)")
        lines.append(f"cleaning: {s.rule}{skipped}{kept}")
        if s.estimate:
            lines.append(s.estimate["message"])
    if s.score_source and s.format == "ntuple":
        written = {"teacher": f"teacher scores on {s.score_source['teacher']:,} lines",
                   "model": f"teacher scores on {s.score_source['teacher']:,} lines, model cosines on "
                            f"{s.score_source['model']:,}",
                   "none": "no scores (--scores none)"}[s.scores]
        if s.scores == "teacher" and s.lines_without_scores:
            written += (f"; {s.lines_without_scores:,} lines without scores (no teacher score in the training file; "
                        "--scores model writes model cosines)")
        lines.append(f"scores: {written}")
    elif s.score_source:
        lines.append(f"scores: teacher for {s.score_source['teacher']:,} queries, model cosine for "
                     f"{s.score_source['model']:,}")
    if s.lines_without_prompt:
        lines.append(f"prompt: {s.lines_without_prompt:,} lines have no prompt and leave the key out (FlagEmbedding "
                     "gives them the trainer's --query_instruction_for_retrieval; a loader that reads all lines into "
                     "one table may give them a null prompt instead)")
    if s.empty_texts_skipped or s.queries_without_usable_positive:
        lines.append(f"blank texts left out: {s.empty_texts_skipped:,}; queries without a usable positive (not "
                     f"written): {s.queries_without_usable_positive:,}")
    if s.oversized_query_ids:
        ids = ", ".join(s.oversized_query_ids[:10]) + (" ..." if len(s.oversized_query_ids) > 10 else "")
        lines.append(f"{len(s.oversized_query_ids):,} queries left out: their line would be larger than ingest takes "
                     f"(16 MiB; fewer --negatives, or --format triplet, keeps them): {ids}")
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

    con = existing_store(args.db, read_only=True)
    try:
        _require_known_band_config(con, args.band_config)
        stats = compute_stats(con, model=args.model, config=args.band_config, negatives=args.negatives)
    finally:
        con.close()
    if args.out and args.out != "-":
        _write_json(stats, args.out)
    if args.report:
        from auditor.report import write_report

        write_report(stats, args.report)
    if args.json or args.out == "-":
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
        sel, a = est["selection"], est["audit"]
        print(f"export of {sel['negatives']} negatives per query ({sel['rule']}): {est['negatives']:,} negatives, "
              f"mean s_neg {est['mean_s_neg'] or 0:.3f}, {est['confirmed_true_negatives']:,} confirmed true negatives")
        print(f"  {est['message']}")
        print(f"  audit sample: {a['reviewed']} reviewed, {a['pending']} waiting; rate {100 * a['rate']:.2f}% of the "
              "export")
    jk = (st.get("judged_at_k") or {}).get("by_k") or []
    if jk:
        print("judged@k (qrels label / label or verdict): " + ", ".join(
            f"@{r['k']} {_pct(r['judged'])}/{_pct(r['judged_or_reviewed'])}" for r in jk if r["k"] in (1, 5, 10, 50)))
