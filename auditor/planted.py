"""Planted false negatives: hide judged positives of a densely judged BEIR collection and keep an answer key.

Keeping one positive per query and hiding the others turns the hidden ones into known false negatives of any later
mining run: `auditor evaluate` then counts how many each band catches and how many would reach an export
(DESIGN.md, "Calibrating on densely judged data").
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from auditor.store import StoreError


@dataclass
class HideSummary:
    queries: int  #: queries with at least one judged positive
    kept: int  #: positives kept in the new qrels
    hidden: int  #: positives moved to the answer key
    judged_negatives: int  #: score-0 rows, kept as they were
    qrels_path: Path
    answer_key: Path


def qrels_file(folder: Path, split: str | None = None) -> Path:
    """qrels/<split>.tsv; without a split: train.tsv if present, else the only file."""
    qdir = folder / "qrels"
    if split:
        path = qdir / f"{split}.tsv"
        if not path.is_file():
            raise StoreError(f"{path} does not exist")
        return path
    files = sorted(qdir.glob("*.tsv")) if qdir.is_dir() else []
    if not files:
        raise StoreError(f"{folder} is not a BEIR folder: no qrels/*.tsv")
    train = qdir / "train.tsv"
    if train in files:
        return train
    if len(files) > 1:
        raise StoreError(f"{qdir} holds several splits ({', '.join(f.stem for f in files)}); choose one with --split")
    return files[0]


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of a qrels-style TSV, skipping blank lines and an optional header."""
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, rec in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not rec or not "".join(rec).strip():
                continue
            if lineno == 1 and rec[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            yield lineno, [f.strip() for f in rec]


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    """(query-id, corpus-id, score) rows of a BEIR qrels TSV (header optional), with the line of any bad row."""
    rows = []
    for lineno, rec in _tsv_rows(path):
        if len(rec) < 3:
            raise StoreError(f"{path}:{lineno}: expected query-id, corpus-id, score separated by tabs")
        try:
            score = int(float(rec[2]))
        except ValueError:
            raise StoreError(f"{path}:{lineno}: field 'score': {rec[2]!r} is not a number") from None
        rows.append((rec[0], rec[1], score))
    return rows


def hide_positives(
    beir_dir: str | Path, out_dir: str | Path, keep: int = 1, seed: int = 42, split: str | None = None
) -> HideSummary:
    """Write a copy of a BEIR folder keeping `keep` judged positives per query (highest grade first, ties broken by
    a seeded hash), and ``answer_key.tsv`` (query-id, corpus-id, score) of the hidden ones beside the qrels."""
    src, out = Path(beir_dir), Path(out_dir)
    if keep < 1:
        raise ValueError("keep must be >= 1")
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (src / name).is_file():
            raise StoreError(f"{src} is not a BEIR folder: {name} is missing")
    qpath = qrels_file(src, split)
    if out.resolve() == src.resolve():
        raise StoreError("the output folder must differ from the input folder")
    rows = read_qrels(qpath)
    by_query: dict[str, list[tuple[str, int]]] = {}
    negatives = []
    for qid, did, score in rows:
        if score > 0:
            by_query.setdefault(qid, []).append((did, score))
        else:
            negatives.append((qid, did, score))

    def order(qid: str, item: tuple[str, int]) -> tuple[int, str]:
        did, score = item
        return (-score, hashlib.md5(f"{seed}\x1f{qid}\x1f{did}".encode()).hexdigest())

    kept, hidden = [], []
    for qid, items in by_query.items():
        items = sorted(set(items), key=lambda it: order(qid, it))
        kept += [(qid, d, s) for d, s in items[:keep]]
        hidden += [(qid, d, s) for d, s in items[keep:]]

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        shutil.copyfile(src / name, out / name)
    new_qrels = out / "qrels" / qpath.name
    _write_tsv(new_qrels, sorted(kept + negatives))
    key = out / "answer_key.tsv"
    _write_tsv(key, sorted(hidden))
    return HideSummary(len(by_query), len(kept), len(hidden), len(negatives), new_qrels, key)


def _write_tsv(path: Path, rows: list[tuple[str, str, int]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["query-id", "corpus-id", "score"])
        w.writerows(rows)
    tmp.replace(path)


def read_answer_key(path: str | Path) -> list[tuple[str, str]]:
    """Distinct (query-id, corpus-id) pairs of an answer key TSV (header optional, extra columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"answer key {path} does not exist")
    pairs = set()
    for lineno, rec in _tsv_rows(path):
        if len(rec) < 2 or not rec[0] or not rec[1]:
            raise StoreError(f"{path}:{lineno}: expected query-id and corpus-id separated by a tab")
        pairs.add((rec[0], rec[1]))
    return sorted(pairs)
