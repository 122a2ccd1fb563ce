"""Ingest of training sets into the store: BEIR folders, FlagEmbedding JSONL, triplets and n-tuples.

Design: DuckDB reads and checks the whole file in SQL (fast, flat memory); only when a check fails does Python re-read
the file to name the exact line and field. Everything happens in one transaction: a failed ingest leaves the store as
it was; re-ingesting the same file adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from auditor.ingest.diagnose import scan_jsonl
from auditor.ingest.errors import IngestError
from auditor.ingest.formats import FORMATS, Field, detect_format, first_record_keys, layout_for, tabular_columns
from auditor.ingest.merge import merge
from auditor.ingest.stage import (
    beir_split_file, first_problem, pair_projection, scan_tabular, stage_beir, stage_pairs,
)
from auditor.store import transaction

__all__ = ["IngestError", "IngestSummary", "detect_format", "ingest_path", "FORMATS"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_STEPS = 4


@dataclass
class IngestSummary:
    path: str
    format: str
    dataset: str
    split: str | None = None
    queries: int = 0
    documents: int = 0
    positives: int = 0
    judged_negatives: int = 0
    candidates: int = 0
    duplicates: int = 0
    negatives_dropped_as_positive: int = 0
    queries_without_judgments: int = 0
    skipped: int = 0
    rejects_path: str | None = None
    nothing_new: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"ingested {self.path} as {self.format}" + (f" (split {self.split})" if self.split else "")
            + f" into dataset {self.dataset!r}",
            f"  new queries:          {self.queries:,}",
            f"  new documents:        {self.documents:,}",
            f"  new positives:        {self.positives:,}",
        ]
        if self.judged_negatives:
            out.append(f"  judged non-relevant:  {self.judged_negatives:,}")
        out.append(f"  new candidates:       {self.candidates:,}")
        out.append(f"  duplicates merged:    {self.duplicates:,}")
        if self.negatives_dropped_as_positive:
            out.append(f"  negatives that were also positives (kept as positives): {self.negatives_dropped_as_positive:,}")
        if self.queries_without_judgments:
            out.append(f"  queries without judgments in this split (not loaded): {self.queries_without_judgments:,}")
        if self.skipped:
            out.append(f"  bad lines skipped:    {self.skipped:,} (reasons in {self.rejects_path})")
        if self.nothing_new:
            out.append("  nothing new: everything in this input is already in the store")
        return out


def fingerprint(path: Path) -> str:
    """Cheap identity of an input (size, mtime-free): sha256 of size + first and last MiB of every file."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


def ingest_path(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    fmt: str = "auto",
    split: str | None = None,
    name: str | None = None,
    skip_bad: bool = False,
    rejects_path: str | Path | None = None,
    progress: Progress | None = None,
) -> IngestSummary:
    """Load one training set into the store, all or nothing (or, with skip_bad, all valid records)."""
    path = Path(path)
    if not path.exists():
        raise IngestError(str(path), None, "no such file or folder")
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise IngestError(str(path), None, f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    dataset = name or _default_name(path)
    summary = IngestSummary(path=str(path), format=fmt, dataset=dataset)
    if rejects_path is None:  # dataset names may hold a '/' (msmarco-mined/train): keep the report in one file
        rejects_path = Path.cwd() / f"{dataset.replace('/', '_')}.rejects.jsonl"
    rejects = _Rejects(Path(rejects_path)) if skip_bad else None

    step = _stepper(progress)
    # Reading, checking and staging touch only temporary tables; the store changes in one transaction at the end.
    with tempfile.TemporaryDirectory(prefix="auditor-ingest-") as tmp:
        try:
            if fmt == "beir":
                if path.is_file():
                    raise IngestError(str(path), None, "format beir expects a folder with corpus.jsonl, queries.jsonl, qrels/")
                qrels = beir_split_file(path, split)
                summary.split = qrels.stem
                _load_beir(con, path, qrels, rejects, Path(tmp), summary)
                step()  # read, checked and staged
            else:
                if path.is_dir():
                    raise IngestError(str(path), None, f"format {fmt} expects a file, got a folder")
                if path.suffix in (".parquet", ".csv"):
                    keys, where = tabular_columns(path), str(path)
                else:
                    keys, lineno = first_record_keys(path)
                    where = f"{path}:{lineno}"
                layout = layout_for(fmt, keys, where)
                fields = layout.fields()
                pairs = [(layout.positives, layout.pos_scores), (layout.negatives[0], layout.neg_scores)]
                pairs = [(t, s) for t, s in pairs if s]
                _load_checked(con, path, [f.name for f in fields], fields, pairs, rejects, Path(tmp),
                              projection=pair_projection(layout), table="recs")
                step()  # read and checked
                stage_pairs(con, layout)
            step()  # staged
            with transaction(con):
                counts = merge(con, dataset, str(path))
                for key, value in counts.items():
                    setattr(summary, key, int(value))
                if rejects:
                    summary.skipped = rejects.count
                    summary.rejects_path = str(rejects.path) if rejects.count else None
                new = sum(counts[k] for k in ("queries", "documents", "positives", "judged_negatives", "candidates"))
                summary.nothing_new = new == 0
                if not summary.nothing_new:
                    _record_ingest(con, path, summary)
            step()  # merged
        finally:
            for t in ("raw", "recs", "raw_corpus", "raw_queries", "s_docs", "s_queries", "s_qrels", "s_cands"):
                con.execute(f"DROP TABLE IF EXISTS temp.{t}")
    if rejects:
        rejects.close()
    step()  # committed
    return summary


def _record_ingest(con: duckdb.DuckDBPyConnection, path: Path, summary: IngestSummary) -> None:
    con.execute(
        """
        INSERT INTO ingests (dataset, path, format, split, content_hash, n_queries, n_documents, n_positives,
                             n_judged_negatives, n_candidates, n_duplicates, n_skipped)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        [summary.dataset, str(path.resolve()), summary.format, summary.split, fingerprint(path), summary.queries,
         summary.documents, summary.positives, summary.judged_negatives, summary.candidates, summary.duplicates,
         summary.skipped],
    )


class _Rejects:
    """The --skip-bad report: one JSON line per rejected input line, with file, line, field and reason."""

    def __init__(self, path: Path):
        self.path, self.count, self._fh = path, 0, None

    def add(self, file: Path, line: int, field: str | None, reason: str, raw: bytes | None) -> None:
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")
        record = {"file": str(file), "line": line, "field": field, "reason": reason}
        if raw is not None:
            record["text"] = raw.decode("utf-8", errors="replace").rstrip("\n")[:2000]
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._fh:
            self._fh.close()


def _load_checked(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    keys: list[str],
    specs: list[Field],
    pairs: list[tuple[str, str]],
    rejects: _Rejects | None,
    tmp: Path,
    projection: str = "*",
    table: str = "raw",
) -> None:
    """Load `path` into temp `table`, all checks passed; with rejects, drop bad lines and report them."""
    err = first_problem(con, path, keys, specs, pairs, projection, table)
    if err is None:
        return
    if rejects is None:
        raise err
    if path.suffix in (".parquet", ".csv"):
        try:
            bad_rows = list(scan_tabular(path, specs))
        except duckdb.Error:
            bad_rows = []
        if not bad_rows:
            raise err  # unreadable as a whole, not a bad row: nothing valid to keep
        for where, field, message in bad_rows:
            rejects.add(path, int(where.rsplit(" ", 1)[1]), field, message, None)
        con.execute(f"DELETE FROM {table} WHERE _bad")
        return
    good = tmp / path.name
    with open(good, "wb") as out:
        for lineno, raw, problems in scan_jsonl(path, specs, pairs):
            if problems:
                p = problems[0]
                rejects.add(path, lineno, p.field, p.message, raw)
            else:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    err = first_problem(con, good, keys, specs, pairs, projection, table)
    if err is not None:
        raise err


def _load_beir(
    con: duckdb.DuckDBPyConnection, folder: Path, qrels: Path, rejects: _Rejects | None, tmp: Path,
    summary: IngestSummary,
) -> None:
    summary.queries_without_judgments = stage_beir(
        con, folder, qrels, load=lambda p, keys, specs: _load_checked(con, p, keys, specs, [], rejects, tmp),
        on_bad_qrel=(lambda line, field, reason: rejects.add(qrels, line, field, reason, None)) if rejects else None,
    )


def _default_name(path: Path) -> str:
    """The folder or file name; for generic file names (train.jsonl) the folder's."""
    if path.is_dir():
        return path.resolve().name
    if path.stem.lower() in {"train", "dev", "test", "data", "triplets", "corpus"}:
        return f"{path.resolve().parent.name}/{path.stem}"
    return path.stem


def _stepper(progress: Progress | None) -> Callable[[], None]:
    """Each call marks one stage of ingest as finished."""
    state = {"done": 0}

    def step() -> None:
        state["done"] = min(state["done"] + 1, _STEPS)
        if progress:
            progress(state["done"], _STEPS)

    return step
