"""`auditor mine`, `auditor band`, `auditor evaluate`, `auditor hide-positives`: the scoring engine's commands.

Heavy imports (sentence-transformers, faiss) happen inside the handlers, so `auditor --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

import duckdb

from auditor.commands.args import existing_store as _store
from auditor.commands.args import opt_float, opt_int


class _Bars:
    """tqdm bars per stage, for mine's stage_progress callback."""

    def __init__(self, disable: bool = False) -> None:
        self.bars: dict = {}
        self.disable = disable

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>9}", unit="text" if stage in
                                         ("documents", "queries") else "query", leave=True, disable=self.disable)
        bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _warm_queue(con: duckdb.DuckDBPyConnection, model: str | None, config: str) -> float:
    """The review queue's first pages, built now and kept in the store (auditor.review.queue.warm)."""
    from auditor.review import QueueChoice
    from auditor.review.queue import warm

    return warm(con, QueueChoice(model=model, config=config))


def cmd_mine(args: argparse.Namespace) -> int:
    from auditor.mine import cross_encode, mine

    con = _store(args.db)
    from auditor.config import MineConfig, RayConfig

    cfg = replace(MineConfig(), batch_size=args.batch_size, index=args.index, ivf_nlist=args.nlist,
                  ivf_nprobe=args.nprobe, engine=args.engine, device=args.device, query_prompts=args.query_prompts,
                  across_datasets=args.across_datasets)
    ray_cfg = replace(RayConfig(), address=args.ray_address, actors=args.ray_actors)
    from auditor.commands import progress
    from auditor.signals import interrupt_on_signals

    bars = _Bars(disable=progress.quiet)
    try:
        with interrupt_on_signals(con):  # Ctrl-C or SIGTERM: the transaction rolls back, the store stays as it was
            s = mine(con, model_name=args.model, depth=args.depth, source=args.source, index=args.index,
                     stage_progress=bars, config=cfg, band_config=args.config, ray_config=ray_cfg)
    finally:
        bars.close()
    if args.cross_encoder:
        n = cross_encode(con, args.cross_encoder, model=s.model, config=args.config)
        from auditor.bands import band_counts

        s.bands = {b: sum(r.values()) for b, r in band_counts(con, args.config, s.model).items()}
    pages = _warm_queue(con, s.model, args.config)
    if args.json:
        print(json.dumps({**asdict(s), "cross_encoded": n if args.cross_encoder else None,
                          "queue_pages_seconds": round(pages, 3)}, indent=1, default=str))
        return 0
    print(f"model {s.model}, source {s.source}, depth {s.depth}")
    print(f"queries searched {s.queries}, skipped without a positive {s.queries_without_positive}")
    print(f"encoded {s.embedded_documents} documents and {s.embedded_queries} queries (the rest were cached)")
    print(f"candidates mined {s.mined_candidates}, scored (all sources) {s.scored_candidates}")
    if s.index == "ivf":
        print(f"index ivf: nlist {s.nlist}, nprobe {s.nprobe}, recall@{s.depth}+positives {s.recall:.4f} against "
              f"exact search on {min(s.queries, cfg.ivf_recall_queries)} sampled queries")
    if args.cross_encoder:
        print(f"cross-encoder rescored {n} suspicious/ambiguous candidates")
    print("bands (" + args.config + "): " + ", ".join(f"{b} {n}" for b, n in s.bands.items()))
    print(f"took {s.seconds.get('total', 0):.1f} s (review queue pages: {pages:.1f} s)")
    return 0


_BAND_FLAGS = [
    ("relative_margin", opt_float, "suspicious when s_neg > s_pos - |s_pos| * X ('off' to disable)"),
    ("absolute_margin", opt_float, "suspicious when s_neg >= s_pos - X"),
    ("absolute_cap", opt_float, "suspicious when s_neg >= X"),
    ("near_duplicate", opt_float, "suspicious when sim(positive, candidate) >= X"),
    ("top_rank", opt_int, "suspicious when the candidate's rank in the model's search is <= K"),
    ("consensus_rank", opt_int,
     "suspicious when the candidate is within the top K of its query once dense, BM25 and closeness to the "
     "positive are fused (19 = what the export skips before any verdict)"),
    ("anchor_max_outscored", opt_int,
     "apply positive-relative rules only to queries whose positive is outscored by at most K candidates"),
    ("simans_a", float, "SimANS weight exp(-a (delta - b)^2): a"),
    ("simans_b", float, "SimANS weight: b (the delta that training should prefer)"),
    ("ambiguous_min_weight", float, "ambiguous when the SimANS weight is at least W"),
    ("easy_rank", opt_int, "too easy when ranked beyond K, whatever the score"),
]


def cmd_band(args: argparse.Namespace) -> int:
    from auditor import bands

    con = _store(args.db)
    if args.list:
        configs = bands.list_band_configs(con)
        if not configs:
            print("no saved band configurations (the defaults apply as 'default')")
        for name, cfg in configs.items():
            print(f"{name}: {cfg.to_json()}")
        return 0
    from auditor.cli import UserError
    from auditor.store import StoreError

    try:
        base = bands.load_band_config(con, args.config)
    except StoreError:
        from auditor.config import BandConfig

        base = BandConfig()
    changes = {name: getattr(args, name) for name, _, _ in _BAND_FLAGS if getattr(args, name) is not _UNSET}
    if args.anchor:
        changes["anchor"] = args.anchor
    if args.cross_encoder_rule is not None:
        changes["use_cross_encoder"] = args.cross_encoder_rule == "on"
    try:
        cfg = replace(base, **changes)
        bands.validate(cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.preview:
        p = bands.preview_bands(con, cfg, args.model, min_negatives=args.min_negatives, max_candidates=None)
        print(json.dumps(p, indent=2) if args.json else _format_preview(p))
        return 0
    counts = bands.assign_bands(con, args.config, args.model, cfg)
    detail = bands.band_counts(con, args.config, args.model)
    _warm_queue(con, args.model, args.config)
    if args.json:
        print(json.dumps({"config": args.config, "params": asdict(cfg), "bands": counts, "rules": detail}, indent=2))
        return 0
    print(f"band config {args.config!r}: {cfg.to_json()}")
    for band, n in counts.items():
        rules = ", ".join(f"{r} {k}" for r, k in detail.get(band, {}).items())
        print(f"  {band:<11} {n:>8}   {rules}")
    return 0


def _format_preview(p: dict) -> str:
    lines = [f"model {p['model']}: {p['total_candidates']} candidates, {p['total_queries']} queries"]
    for b, n in p["candidates"].items():
        lines.append(f"  {b:<11} {n:>8} candidates in {p['queries'][b]} queries")
    lines.append(f"queries left with fewer than {p['min_negatives']} non-suspicious negatives: {p['short_queries']}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from auditor.evaluate import evaluate, format_report
    from auditor.select import Selection

    con = _store(args.db, read_only=True)
    selection = Selection(negatives=args.negatives, strategy=args.strategy, config=args.config, seed=args.seed,
                          fn_budget=args.fn_budget, target_rate=args.target_rate, max_risk=args.max_risk)
    result = evaluate(con, args.answer_key, model=args.model, selection=selection)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_hide(args: argparse.Namespace) -> int:
    from auditor.planted import hide_positives

    s = hide_positives(args.beir_dir, args.out_dir, keep=args.keep, seed=args.seed, split=args.split)
    print(f"{s.queries} queries: kept {s.kept} positives, hid {s.hidden}, kept {s.judged_negatives} judged negatives")
    print(f"qrels: {s.qrels_path}")
    print(f"answer key: {s.answer_key}")
    return 0


class _Unset:
    def __repr__(self) -> str:
        return "(saved or default)"


_UNSET = _Unset()


def register(subparsers: argparse._SubParsersAction) -> None:
    from auditor.config import (
        DEFAULT_BAND_CONFIG,
        DEFAULT_MODEL,
        ExportConfig,
        MineConfig,
        RayConfig,
    )

    p = subparsers.add_parser(
        "mine", help="embed, mine candidates with FAISS, score every candidate, assign bands",
        description="Embed documents and queries (cached in the store: a text is never embedded twice), search "
                    "every query with a labeled positive over the corpus of its own dataset, store the top-K "
                    "non-positive documents as candidates, score every candidate of every source (given negatives too) against the "
                    "positives, and assign the bands of the default configuration.",
    )
    p.add_argument("--db", required=True, help="store file")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"sentence-transformers model name or local folder (default {DEFAULT_MODEL}, shipped)")
    p.add_argument("--depth", type=int, default=MineConfig.depth, help="candidates kept per query (default %(default)s)")
    p.add_argument("--source", default=None, help="source name of the mined candidates (default mined:MODEL)")
    p.add_argument("--index", choices=["auto", "flat", "ivf"], default=MineConfig.index,
                   help=f"auto (default): exact search up to {MineConfig.ivf_min_docs:,} documents, IVF beyond; "
                        "flat: exact search; ivf: approximate (FAISS IndexIVFFlat), for corpora of millions, its "
                        "recall@depth against exact search is printed")
    p.add_argument("--nlist", type=int, default=MineConfig.ivf_nlist, metavar="N",
                   help="IVF cells (default: about 4*sqrt(documents))")
    p.add_argument("--nprobe", type=int, default=MineConfig.ivf_nprobe, metavar="N",
                   help="IVF cells searched per query (default %(default)s; more = slower and closer to exact; "
                        "equal to --nlist = exact)")
    p.add_argument("--engine", choices=["local", "ray"], default=MineConfig.engine,
                   help="where texts missing from the embedding cache are encoded: local (this process, default) "
                        "or ray (a Ray Data job over an actor pool, one model per CPU or GPU slot; needs "
                        "pip install 'auditor[ray]')")
    p.add_argument("--ray-address", default=RayConfig.address, metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (e.g. ray://head:10001 or auto); default: "
                        "start a local Ray instance for this run")
    p.add_argument("--ray-actors", type=int, default=RayConfig.actors, metavar="N",
                   help="with --engine ray: model replicas (default: one per CPU slot, or per GPU with cuda)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=MineConfig.device,
                   help="where the model runs (default auto: cuda when torch sees a GPU)")
    p.add_argument("--batch-size", type=int, default=MineConfig.batch_size, help="texts per encoder batch")
    p.add_argument("--across-datasets", action="store_true",
                   help="search each query among every document of the store (default: only its own dataset's, "
                        "so loading a second training set never mixes its passages into the first's negatives)")
    p.add_argument("--query-prompts", choices=["auto", "always", "never"], default=MineConfig.query_prompts,
                   help="the training file's per-query prompts: auto (default) puts them in front of their queries "
                        "only for a model that declares a query prompt of its own (it expects instructions; the "
                        "file's prompt replaces its own); always; never")
    p.add_argument("--config", default=DEFAULT_BAND_CONFIG, help="band configuration to assign after scoring")
    p.add_argument("--cross-encoder", metavar="PATH", default=None,
                   help="local CrossEncoder folder: rescore suspicious and ambiguous candidates as a second opinion")
    p.add_argument("--json", action="store_true", help="print the mining summary as JSON")
    p.set_defaults(func=cmd_mine)

    p = subparsers.add_parser(
        "band", help="(re)assign bands with changed thresholds, without re-embedding",
        description="Compute suspicious / ambiguous / too-easy bands from the stored scores with a named threshold "
                    "set. Flags change the named configuration (saved in the store); numbers may be 'off' to "
                    "switch a rule off. Several named configurations can coexist for comparison.",
    )
    p.add_argument("--db", required=True, help="store file")
    p.add_argument("--config", default=DEFAULT_BAND_CONFIG, help="configuration name (default %(default)s)")
    p.add_argument("--model", default=None, help="scored model (default: the latest scored)")
    for name, typ, text in _BAND_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=_UNSET, metavar="X", help=text)
    p.add_argument("--anchor", choices=["min", "mean", "max"], default=None,
                   help="which positive score rules compare against (default min: conservative)")
    p.add_argument("--cross-encoder-rule", choices=["on", "off"], default=None,
                   help="use cross-encoder scores when present")
    p.add_argument("--preview", action="store_true", help="print what the thresholds would do; write nothing")
    p.add_argument("--min-negatives", type=int, default=ExportConfig.negatives,
                   help="with --preview: count queries left with fewer non-suspicious negatives than this")
    p.add_argument("--list", action="store_true", help="list saved configurations and exit")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_band)

    p = subparsers.add_parser(
        "evaluate", help="count known false negatives per band and in an export (answer key of hidden positives)",
        description="Given an answer key (TSV of query-id, corpus-id of known-but-hidden positives, as written by "
                    "`auditor hide-positives`), report per band and per rule how many known false negatives it "
                    "holds (recall, precision), and how many reach an export of N negatives per query, against "
                    "plain top-N mining; both judged at equal hardness by the frontier ratio: contamination over "
                    "that of the dense rank window r+1..r+N with the same mean cosine (below 1 = cleaner than a "
                    "rank cut as hard).",
    )
    p.add_argument("--db", required=True, help="store file")
    p.add_argument("--answer-key", required=True, help="TSV: query-id, corpus-id (header optional)")
    p.add_argument("--negatives", type=int, default=ExportConfig.negatives, help="negatives per query in the export")
    p.add_argument("--strategy", choices=["top", "random", "simans", "band-mix"], default=ExportConfig.strategy)
    p.add_argument("--config", default=DEFAULT_BAND_CONFIG, help="band configuration")
    p.add_argument("--model", default=None, help="scored model (default: the latest scored)")
    p.add_argument("--seed", type=int, default=ExportConfig.seed)
    from auditor.commands.export import add_risk_arguments

    add_risk_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "hide-positives", help="copy a BEIR folder keeping K positives per query; write an answer key of the rest",
        description="Plant known false negatives for calibration: keep the K highest-graded judged positives of "
                    "each query (ties broken by a seeded hash), hide the others, and write answer_key.tsv.",
    )
    p.add_argument("beir_dir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--keep", type=int, default=1, help="positives kept per query (default 1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the tie-break between equal grades")
    p.add_argument("--split", default=None, help="qrels split (default: train, else the only one)")
    p.set_defaults(func=cmd_hide)


