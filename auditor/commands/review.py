"""`auditor queue` and `auditor verdicts import|export`: the review queue and verdicts from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from auditor.commands.args import existing_store, opt_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "queue",
        help="print the review queue in order",
        description=(
            "Print the review queue. export (default): the verdicts that would change the export most, with the "
            "current export settings (those of the latest `auditor export`, or the flags below): exported "
            "negatives likely to be false negatives, and hard candidates the export leaves out for their risk (a "
            "confirmed true negative goes in); every 4th item is an audit item, a random share of the export whose "
            "verdicts let `auditor stats` estimate the export's false-negative rate with an interval. risk: every "
            "candidate, highest P(false negative) first. stratified: random per band, with each item's sampling "
            "probability. Items already judged (by ANNOTATOR, or by enough annotators) are left out. With --json, a "
            "JSON array of items carrying query_id, doc_id (the source's ids), band, rule, scores and p_fn, ready "
            "for an LLM judge whose answers come back through `auditor verdicts import`. With --claim, the items "
            "are leased to ANNOTATOR (default 10 minutes, renewed by every claim): nobody else is given them until "
            "the lease ends or they are judged, unless an item is routed to double annotation; asking again returns "
            "the items already held, topped up to --limit. The app uses the same leases."
        ),
    )
    p.add_argument("--db", required=True, help="store file")
    p.add_argument("--limit", type=int, default=20, help="items to print (default 20; 0 = all)")
    p.add_argument("--mode", choices=["export", "risk", "stratified"], default="export",
                   help="queue order (default export)")
    p.add_argument("--band", action="append", choices=["suspicious", "ambiguous", "too_easy"],
                   help="only this band (repeatable)")
    p.add_argument("--source", help="only candidates from this source (e.g. given, or a mining run's name)")
    p.add_argument("--query-id", help="only this query")
    p.add_argument("--annotator", help="leave out items this annotator has already judged or skipped")
    p.add_argument("--claim", action="store_true",
                   help="lease the items to --annotator (opens the store read-write: not while the app runs)")
    p.add_argument("--release", action="store_true", help="end every lease of --annotator and exit")
    p.add_argument("--lease-minutes", type=float, default=10.0, help="how long a claim holds its items (default 10)")
    p.add_argument("--band-config", default=None,
                   help="band configuration (default: the export settings' in export mode, else 'default')")
    p.add_argument("--model", help="scorer whose bands to use (default: the latest scored)")
    p.add_argument("--seed", type=int, default=42, help="seed of the stratified order (default 42)")
    p.add_argument("--double-annotation", type=float, metavar="SHARE",
                   help="share of items that need a second annotator (default: ReviewConfig, 0)")
    g = p.add_argument_group("export settings (export mode; default: those of the latest export)")
    g.add_argument("--negatives", type=int, help="negatives per query")
    g.add_argument("--strategy", choices=["top", "random", "simans", "band-mix"], help="how negatives are chosen")
    g.add_argument("--fn-budget", type=float, metavar="SHARE",
                   help="share of plain top-N mining's false negatives the export may hold")
    g.add_argument("--max-risk", type=opt_float, metavar="P", help="risk threshold ('off' for none)")
    p.add_argument("--texts", action="store_true", help="with --json, add the query and candidate texts")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=run_queue)

    v = sub.add_parser(
        "verdicts",
        help="import or export review verdicts (JSONL)",
        description="Bring verdicts in from another annotator, a script or an LLM judge, or write them out.",
    )
    vsub = v.add_subparsers(dest="verdicts_command", metavar="ACTION")
    vsub.required = True
    imp = vsub.add_parser(
        "import",
        help="append verdicts from a JSONL file",
        description=(
            'Append verdicts from JSONL lines {"query_id", "doc_id", "verdict", "annotator", "note"?}; verdict is '
            "false_negative, true_negative or unsure. The whole file is checked first (errors name file, line and "
            "field; unknown ids are rejected), then written in one transaction: all lines or none."
        ),
    )
    imp.add_argument("file", help="verdict file (JSONL)")
    imp.add_argument("--db", required=True, help="store file")
    imp.add_argument("--annotator", help="annotator name for lines that carry none")
    imp.add_argument("--band-config", default="default", help="band configuration used to record each item's band")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=run_import)
    exp = vsub.add_parser(
        "export",
        help="write verdict events to a JSONL file",
        description="Write every verdict event (undos included) as JSONL, an audit trail; or with --current only "
                    "the verdicts in force, in the layout `auditor verdicts import` reads (use that to move verdicts "
                    "to another store). Written atomically.",
    )
    exp.add_argument("--db", required=True, help="store file")
    exp.add_argument("--out", required=True, help="output file (JSONL), or - for standard output")
    exp.add_argument("--current", action="store_true", help="only each annotator's current verdict per item")
    exp.set_defaults(func=run_export)


def _selection(con, args: argparse.Namespace):
    """The latest export's settings, with any flag given on the command line on top."""
    from dataclasses import replace

    from auditor.select import current_selection

    sel = current_selection(con)
    changes = {k: getattr(args, k) for k in ("negatives", "strategy", "fn_budget") if getattr(args, k) is not None}
    if args.max_risk is not None or "--max-risk" in sys.argv:
        changes["max_risk"] = args.max_risk
    if args.band_config is not None:
        changes["config"] = args.band_config
    return replace(sel, **changes)


def run_queue(args: argparse.Namespace) -> int:
    from auditor.cli import UserError
    from auditor.review import build_queue, item_context

    if args.limit < 0:
        raise UserError("--limit must be 0 (all) or more")
    if (args.claim or args.release) and not args.annotator:
        raise UserError("--claim and --release need --annotator NAME: leases are held by one annotator")
    if args.claim and args.limit == 0:
        raise UserError("--claim needs a --limit of at least 1")
    if args.lease_minutes <= 0:
        raise UserError("--lease-minutes must be more than 0")
    writes = args.claim or args.release
    con = existing_store(args.db, read_only=not writes)
    try:
        if args.release:
            from auditor.review.leases import release

            n = release(con, args.annotator)
            print(json.dumps({"released": n}) if args.json else f"released {n} held item(s) of {args.annotator}")
            return 0
        selection = _selection(con, args) if args.mode == "export" else None
        config = selection.config if selection else (args.band_config or "default")
        kw = dict(mode=args.mode, model=args.model, config=config, bands=args.band, source=args.source,
                  query_id=args.query_id, seed=args.seed, double_annotation=args.double_annotation,
                  selection=selection)
        if args.claim:
            from auditor.review import claim

            items = claim(con, annotator=args.annotator, limit=args.limit, ttl=args.lease_minutes * 60, **kw)
        else:
            df = build_queue(con, annotator=args.annotator, limit=args.limit or None, **kw)
            items = _records(df)
        if args.texts:
            for item in items:
                ctx = item_context(con, item["query_id"], item["doc_id"], model=item.get("model") or args.model,
                                   config=item.get("config") or config)
                item["query"] = ctx["query"]
                item["positives"] = [p["text"] for p in ctx["positives"]]
                item["text"] = ctx["candidate"]["text"]
                item["title"] = ctx["candidate"]["title"]
    finally:
        con.close()
    if args.json:
        json.dump(items, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not items:
        print("the queue is empty" + (": no verdict would change the export" if args.mode == "export" else ""))
        return 0
    print(f"{'#':>4}  {'P(FN)':>6}  {'band':<10} {'rule':<16} {'s_neg':>7} {'s_pos':>7} {'delta':>7} {'rank':>5}  "
          "query_id / doc_id")
    for i, it in enumerate(items, 1):
        rank = "" if it["rank"] is None else it["rank"]
        p = "" if it.get("p_fn") is None else f"{it['p_fn']:.3f}"
        print(f"{i:>4}  {p:>6}  {it['band']:<10} {it['rule']:<16} {it['s_neg']:>7.3f} {it['s_pos_min']:>7.3f} "
              f"{it['delta']:>7.3f} {rank:>5}  {it['query_id']} / {it['doc_id']}")
    return 0


def _records(df) -> list[dict]:
    import math

    out = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if hasattr(v, "item") and not isinstance(v, (list, str)):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            clean[k] = v
        if clean.get("rank") is not None:
            clean["rank"] = int(clean["rank"])
        out.append(clean)
    return out


def run_import(args: argparse.Namespace) -> int:
    from auditor.review.io import import_verdicts

    from auditor.signals import interrupt_on_signals

    con = existing_store(args.db)
    fits = []
    try:
        with interrupt_on_signals(con):  # Ctrl-C or SIGTERM: verdicts and refit roll back together
            summary = import_verdicts(con, args.file, annotator=args.annotator,
                                      config=args.band_config or "default", then=lambda c: fits.append(_refit(c)))
        fit = fits[0] if fits else None
    finally:
        con.close()
    if args.json:
        print(json.dumps(summary.__dict__, indent=2))
    else:
        counts = ", ".join(f"{n} {v}" for v, n in sorted(summary.per_verdict.items()))
        print(f"imported {summary.written} verdicts from {summary.path} ({counts}) by "
              f"{', '.join(summary.annotators)}"
              + (f"; {summary.unchanged} lines repeated a verdict in force and were skipped" if summary.unchanged else ""))
        if fit is not None:
            print(_fit_line(fit))
    return 0


def _refit(con):
    """Refit the false-negative risk of the latest scored model on the verdicts now in force (None if unscored),
    inside the caller's transaction: the import and its refit land together or not at all."""
    from auditor.bands import latest_model
    from auditor.risk import fit

    model = latest_model(con)
    return fit(con, model, in_transaction=True) if model else None


def _fit_line(fit) -> str:
    if not fit.calibrated:
        return f"risk: {fit.note}"
    return (f"risk calibrated on {fit.n_labels} verdicts ({fit.n_false_negative} false negatives): logit P = "
            f"{fit.intercept:.2f} + {fit.slope:.2f} x logit(prior), {fit.queries_adjusted} queries corrected by their "
            f"own verdicts; {fit.propagated} near-duplicates of confirmed false negatives lifted")


def run_export(args: argparse.Namespace) -> int:
    from auditor.export import STDOUT
    from auditor.review.io import export_verdicts

    con = existing_store(args.db, read_only=True)
    try:
        n = export_verdicts(con, args.out, current_only=args.current)
    finally:
        con.close()
    where = "standard output" if args.out == STDOUT else args.out
    print(f"wrote {n} {'current verdicts' if args.current else 'verdict events'} to {where}",
          file=sys.stderr if args.out == STDOUT else sys.stdout)
    return 0
