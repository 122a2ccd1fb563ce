"""`auditor ingest` and `auditor info`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="load a training set into a store",
        description=(
            "Load a training set into a DuckDB store: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), "
            "FlagEmbedding JSONL {query,pos,neg,pos_scores?,neg_scores?}, sentence-transformers triplets "
            "{anchor|query,positive,negative} or n-tuples {anchor|query,positive,negative_1..n | neg}; JSONL, Parquet "
            "or CSV. Every record is checked (non-blank texts, finite teacher scores within +-1e6, ids of at most "
            "1,024 characters or 64-bit integers, records of at most 16 MiB; see auditor/ingest/limits.py). All or "
            "nothing: a bad line stops the ingest, naming file, line and field, and the store is left as it was "
            "(also on Ctrl-C or SIGTERM), unless --skip-bad. A file with no valid record is refused; re-ingesting "
            "the same input adds nothing."
        ),
    )
    p.add_argument("path", help="file or BEIR folder; - reads JSON lines from standard input; also .jsonl.gz, a JSON "
                                "array, a folder of Parquet shards or a datasets save_to_disk folder")
    p.add_argument("--db", required=True, help="store file (created if missing)")
    p.add_argument("--format", default="auto",
                   choices=["auto", "beir", "flag", "triplets", "ntuple", "labeled-pair", "labeled-list"],
                   help="input format (default: detected from the folder layout or the first record's keys)")
    p.add_argument("--columns", metavar="ROLE=COL,...",
                   help="the file's own column names, e.g. query=question,positive=answer[,negative=negative]"
                        "[,prompt=COL] (sentence-transformers' mine_hard_negatives names its columns after its input); "
                        "negative may name one column (a text or a list) or the prefix of numbered columns COL_1..N; "
                        "scores=COL (default: scores) is output_scores' list, the positive's score first; "
                        "label=COL (default: label / labels) reads a labeled-pair or labeled-list output, with "
                        "positive= naming its document column")
    p.add_argument("--split", help="BEIR qrels split (default: train if present, else the only one)")
    p.add_argument("--name", help="dataset name recorded with the rows (default: file or folder name)")
    p.add_argument("--skip-bad", action="store_true",
                   help="store the valid records and write rejected lines, with reasons, to a report")
    p.add_argument("--rejects", help="where --skip-bad writes its report (default: ./<dataset>.rejects.jsonl)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_ingest)

    p = sub.add_parser("info", help="what is in a store", description="Counts of what a store holds, per dataset and source.")
    p.add_argument("--db", required=True, help="store file")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run_info)


def run_ingest(args: argparse.Namespace) -> int:
    from auditor.commands.progress import progress_bar
    from auditor.ingest import ingest_path
    from auditor.store import open_store

    columns = None
    if args.columns:
        from auditor.cli import UserError
        from auditor.ingest.formats import parse_columns

        try:
            columns = parse_columns(args.columns)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    con = open_store(args.db)
    try:
        with progress_bar("ingest", disable=args.json, unit="step") as progress:
            summary = ingest_path(con, args.path, fmt=args.format, split=args.split, name=args.name,
                                  skip_bad=args.skip_bad, rejects_path=args.rejects, progress=progress,
                                  columns=columns)
    finally:
        con.close()
    print(json.dumps(summary.as_dict(), indent=2) if args.json else "\n".join(summary.lines()))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from auditor.info import store_info
    from auditor.store import open_store

    con = open_store(args.db, read_only=True)
    try:
        info = store_info(con)
    finally:
        con.close()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"store {args.db} (schema version {info['schema_version']})")
    for key, value in info["counts"].items():
        print(f"  {key:<22}{value:>12,}")
    print(f"  {'positives per query':<22}{info['positives_per_query']:>12.2f}")
    print(f"  {'single-positive share':<22}{info['single_positive_share']:>12.1%}")
    if info["candidates_by_source"]:
        print("candidates by source:")
        for row in info["candidates_by_source"]:
            what = "teacher scores" if row["source"] == "given" else "source scores"
            scored = f", {what} on {row['with_score']:,}" if row["with_score"] else ""
            print(f"  {row['source']:<22}{row['candidates']:>12,}  ({row['queries']:,} queries{scored})")
    if info["models"]:
        print("scored with models: " + ", ".join(info["models"]))
    if info["band_configs"]:
        print("band configurations: " + ", ".join(info["band_configs"]))
    if info["ingests"]:
        print("ingests:")
        for row in info["ingests"]:
            print(f"  {row['ingested_at']:%Y-%m-%d %H:%M}  {row['format']:<8} {row['dataset']:<20} {row['path']}")
    return 0
