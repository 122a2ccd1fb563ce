"""Ingest of training sets into the store: BEIR folders, FlagEmbedding JSONL, triplets, n-tuples and labeled pairs /
lists (sentence-transformers' mine_hard_negatives outputs).

Design: DuckDB reads the whole file and checks every record against the rule table in the same pass (fast, flat
memory); only when a record is bad does Python look at lines, to name the exact line and field. Everything happens in
one transaction: a failed or interrupted ingest leaves the store as it was; re-ingesting the same file adds nothing.
What ingest accepts is stated in `auditor.ingest.limits` and `auditor.ingest.rules`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from auditor.ingest.containers import STDIN, STDIN_NAME, display_path, logical_name, unpacked
from auditor.ingest.diagnose import first_keys, key_lines
from auditor.ingest.errors import IngestError
from auditor.ingest.formats import (
    BEIR_CORPUS_FIELDS, BEIR_QUERY_FIELDS, FORMATS, PairLayout, detect_format, guess_pair_format, is_tabular,
    layout_for, layout_for_columns, tabular_columns,
)
from auditor.ingest.merge import merge
from auditor.ingest.read import (
    Rejects, Source, every_query_has_a_positive, jsonl_keys, jsonl_source, load_checked, one_prompt_per_query,
    refuse_unreadable, unique_ids,
)
from auditor.ingest.scratch import Scratch, scratch_space
from auditor.signals import interrupt_on_signals
from auditor.ingest.stage import beir_files, finish_beir, pair_projection, stage_beir_texts, stage_pairs, stage_qrels
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
    records: int = 0  # valid records read (lines, rows; for BEIR corpus + queries + judgments)
    rejects_path: str | None = None
    nothing_new: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"ingested {self.path} as {self.format}" + (f" (split {self.split})" if self.split else "")
            + f" into dataset {self.dataset!r}",
            f"  records read:         {self.records:,}",
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
    columns: dict[str, str] | None = None,
) -> IngestSummary:
    """Load one training set into the store, all or nothing (or, with skip_bad, all valid records).

    A file from which no valid record can be read is refused; SIGTERM during an ingest rolls it back like Ctrl-C.
    ``path`` may be ``-`` (standard input), gzipped JSON lines, a JSON array, a folder of Parquet shards or a
    ``datasets`` save_to_disk folder (:mod:`auditor.ingest.containers`). ``columns`` maps the roles query, positive
    and negative (and scores, label, prompt) to the file's own column names, e.g. ``{"query": "question", "positive":
    "answer"}`` for sentence-transformers' mine_hard_negatives output (:func:`auditor.ingest.formats.parse_columns`).
    """
    if str(path) != STDIN and not Path(path).exists():
        raise IngestError(str(path), None, "no such file or folder")
    shown = display_path(path)
    with unpacked(path) as (read_path, translate):
        try:
            return _ingest(con, read_path, shown, fmt, split, name, skip_bad, rejects_path, progress, columns)
        except IngestError as exc:
            raise translate(exc) from None


def _ingest(
    con: duckdb.DuckDBPyConnection, path: Path, shown: Path, fmt: str, split: str | None, name: str | None,
    skip_bad: bool, rejects_path: str | Path | None, progress: Progress | None, columns: dict[str, str] | None,
) -> IngestSummary:
    if fmt == "auto":  # with columns, the layout (and so the format) comes from the columns named
        fmt = "columns" if columns else detect_format(path)
    elif fmt not in FORMATS:
        raise IngestError(str(path), None, f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    if columns and fmt == "beir":
        raise IngestError(str(path), None, "--columns applies to training files, not to format beir")
    dataset = name or _default_name(logical_name(shown))
    summary = IngestSummary(path=str(shown), format=fmt, dataset=dataset)
    if rejects_path is None:  # dataset names may hold a '/' (msmarco-mined/train): keep the report in one file
        rejects_path = Path.cwd() / f"{dataset.replace('/', '_')}.rejects.jsonl"
    rejects = Rejects(Path(rejects_path)) if skip_bad else None

    step = _stepper(progress)
    # Reading, checking and staging touch only temporary tables; the store changes in one transaction at the end.
    with interrupt_on_signals(con) as guard, scratch_space() as scratch:
        try:
            if fmt == "beir":
                if path.is_file():
                    raise IngestError(str(path), None, "format beir expects a folder with corpus.jsonl, queries.jsonl, qrels/")
                _load_beir(con, path, split, scratch, rejects, summary)
                step()  # read, checked and staged
            else:
                if path.is_dir():
                    raise IngestError(str(path), None, f"format {fmt} expects a file, got a folder")
                layout = _load_pairs(con, path, fmt, scratch, rejects, summary, columns)
                summary.format = layout.format
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
                summary.nothing_new = summary.records > 0 and new == 0
                if not summary.nothing_new:
                    _record_ingest(con, path, shown, summary)
                guard.hold()  # committing: a SIGTERM from now on ends the process after cleanup, not the ingest
            step()  # merged
        finally:
            for t in ("recs", "pairs", "raw_corpus", "raw_queries", "raw_qrels", "s_docs", "s_queries", "s_qrels",
                      "s_cands", "s_doc_keys", "s_doc_texts"):
                con.execute(f"DROP TABLE IF EXISTS temp.{t}")
            if rejects:
                rejects.close()
    step()  # committed
    return summary


def _record_ingest(con: duckdb.DuckDBPyConnection, path: Path, shown: Path, summary: IngestSummary) -> None:
    con.execute(
        """
        INSERT INTO ingests (dataset, path, format, split, content_hash, n_queries, n_documents, n_positives,
                             n_judged_negatives, n_candidates, n_duplicates, n_skipped)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        [summary.dataset, str(shown) if str(shown) == STDIN_NAME else str(shown.resolve()), summary.format,
         summary.split, fingerprint(path), summary.queries,
         summary.documents, summary.positives, summary.judged_negatives, summary.candidates, summary.duplicates,
         summary.skipped],
    )


def _load_pairs(
    con: duckdb.DuckDBPyConnection, path: Path, fmt: str, scratch: Scratch, rejects: Rejects | None,
    summary: IngestSummary, column_map: dict[str, str] | None = None,
) -> PairLayout:
    """Read a pair-format file into the checked `recs` table; the layout comes from the keys of all its records."""
    columns = None
    if is_tabular(path):
        columns = tabular_columns(path)
        src, keys = Source(path, path), set(columns)
        where = f"{path}:line 1" if path.suffix.lower() == ".csv" else str(path)
    else:
        src, keys = jsonl_keys(con, jsonl_source(path, scratch), scratch)
        refuse_unreadable(src, rejects)
        _, first, _ = first_keys(src.read_path)
        if first == 0 and not src.left_out:
            raise IngestError(str(path), None, "file is empty: no records")
        where = f"{path}:{src.line_of[0] if src.line_of else first}" if first else str(path)
    if column_map:
        layout = layout_for_columns(fmt, keys, where, column_map, _first_record(src.read_path))
    else:
        layout = layout_for(fmt, keys, where)
    unread = layout.unread_text_keys(keys)
    if unread:
        if columns is None:
            found = key_lines(src.read_path, {unread[0]})
            line = found.get(unread[0])
            where = f"{path}:{src.line_of[line - 1] if src.line_of and line else line}" if line else str(path)
        guess = guess_pair_format(keys)
        hint = f"; try --format {guess}" if guess and guess != fmt else ""
        raise IngestError(where, unread[0], f"holds texts that format {fmt} does not read (it reads "
                                            f"{', '.join(layout.keys())}): they would be lost{hint}")
    src, summary.records = load_checked(con, src, "recs", layout.fields(), scratch, rejects, layout.same_length(),
                                        pair_projection(layout), columns)
    if layout.prompt:
        summary.records -= one_prompt_per_query(con, src, layout.prompt, rejects)
    if layout.labels:
        summary.records -= every_query_has_a_positive(con, src, layout.labels, rejects)
    return layout


def _first_record(path: Path) -> dict:
    """The first record's values (for --columns: whether a column holds one text or a list)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
            rows = batch.to_pylist()
            if rows:
                return rows[0]
        return {}
    if path.suffix.lower() == ".csv":
        return {}  # CSV cells are texts
    import json

    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    value = json.loads(raw.decode("utf-8-sig"))
                except ValueError:
                    return {}
                return value if isinstance(value, dict) else {}
    return {}


def _load_beir(
    con: duckdb.DuckDBPyConnection, folder: Path, split: str | None, scratch: Scratch, rejects: Rejects | None,
    summary: IngestSummary,
) -> None:
    corpus, queries, qrels = beir_files(folder, split)
    summary.split = qrels.stem
    for path, fields, table, text_sql in (
        (corpus, BEIR_CORPUS_FIELDS, "raw_corpus",
         "concat_ws(' ', json_extract_string(title, '$'), json_extract_string(text, '$'))"),
        (queries, BEIR_QUERY_FIELDS, "raw_queries", "json_extract_string(text, '$')"),
    ):
        src, n = load_checked(con, jsonl_source(path, scratch), table, fields, scratch, rejects)
        unique_ids(con, src, table, text_sql)
        summary.records += n
    stage_beir_texts(con)
    summary.records += stage_qrels(con, qrels, rejects)
    summary.queries_without_judgments = finish_beir(con)


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
