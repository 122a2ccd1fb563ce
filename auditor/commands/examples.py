"""Examples at the end of every command's ``--help``, in one table (tests/test_cli.py parses each of them)."""

from __future__ import annotations

import argparse

#: command path -> example command lines, each with a short comment after "#".
EXAMPLES: dict[str, list[str]] = {
    "ingest": [
        "auditor ingest data/cranfield --db audit.duckdb   # BEIR folder (corpus, queries, qrels/)",
        "auditor ingest train.jsonl --db audit.duckdb   # FlagEmbedding {query, pos, neg} lines",
        "auditor ingest triplets.parquet --db audit.duckdb --name nq   # sentence-transformers triplets",
        "auditor ingest train.jsonl --db audit.duckdb --skip-bad --rejects rejects.jsonl",
        "auditor ingest mined.jsonl --db audit.duckdb --columns query=question,positive=answer   # mine_hard_negatives",
        "auditor ingest - --db audit.duckdb --name piped < train.jsonl   # standard input",
    ],
    "info": ["auditor info --db audit.duckdb", "auditor info --db audit.duckdb --json"],
    "mine": [
        "auditor mine --db audit.duckdb   # the shipped model, 50 candidates per query",
        "auditor mine --db audit.duckdb --depth 100 --device cuda",
        "auditor mine --db audit.duckdb --model /models/bge-base-en-v1.5 --json",
    ],
    "band": [
        "auditor band --db audit.duckdb --config strict --relative-margin 0.1 --preview",
        "auditor band --db audit.duckdb --config strict --relative-margin 0.1",
    ],
    "evaluate": [
        "auditor evaluate --db planted.duckdb --answer-key /tmp/planted/answer_key.tsv --negatives 5",
    ],
    "hide-positives": ["auditor hide-positives data/cranfield /tmp/planted --keep 1"],
    "queue": [
        "auditor queue --db audit.duckdb --limit 20   # what would change the export most",
        "auditor queue --db audit.duckdb --annotator judge --claim --limit 10 --json --texts",
        "auditor queue --db audit.duckdb --annotator judge --release",
    ],
    "verdicts import": [
        "auditor verdicts import judge.jsonl --db audit.duckdb",
        "auditor verdicts import answers.jsonl --db audit.duckdb --annotator llm-judge",
    ],
    "verdicts export": [
        "auditor verdicts export --db audit.duckdb --out verdicts.jsonl --current",
        "auditor verdicts export --db audit.duckdb --out - | head   # to standard output",
    ],
    "export": [
        "auditor export --db audit.duckdb --out train.jsonl   # triplets, 5 negatives per query",
        "auditor export --db audit.duckdb --out train.jsonl --format ntuple --negatives 15   # FlagEmbedding",
        "auditor export --db audit.duckdb --out train.parquet --fn-budget 0.1 --stats stats.json",
        "auditor export --db audit.duckdb --out - --format st-ntuple | gzip > train.jsonl.gz",
    ],
    "stats": [
        "auditor stats --db audit.duckdb",
        "auditor stats --db audit.duckdb --out stats.json --report report.html",
        "auditor stats --db audit.duckdb --out - | jq .verdicts",
    ],
    "app": [
        "auditor app   # the shipped sample, built on first start",
        "auditor app --db audit.duckdb -- --server.port 8502",
        "auditor app --db audit.duckdb --host 0.0.0.0 --data-root /srv/training-data   # a team (needs accounts)",
    ],
    "users add": [
        "auditor users add ada --role admin --password-stdin --db audit.duckdb < ada.txt",
        "auditor users add lee --role lead --email lee@example.com --db audit.duckdb",
        "auditor users add bob --role lead --password-stdin --replace --db audit.duckdb < bob.txt",
    ],
    "users list": ["auditor users list --db audit.duckdb --json"],
    "users remove": ["auditor users remove bob --db audit.duckdb"],
}


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, but keeps example and exit-code sections line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(("examples:", "exit codes:")):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def attach(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every command under ``parser`` the shared formatter and, where the table has them, its examples."""
    parser.formatter_class = HelpFormatter
    if path in EXAMPLES and not parser.epilog:
        parser.epilog = "examples:\n" + "".join(f"  {line}\n" for line in EXAMPLES[path])
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                attach(sub, f"{path} {name}".strip())
