"""Export of cleaned training data as JSONL or Parquet, streamed by DuckDB and written atomically.

The negatives of each query come from :func:`auditor.select.selection_sql` (the one place where the choice is made:
confirmed false negatives and, by default, unreviewed suspicious candidates never get in). This module only shapes
rows and writes them:

``triplet``    sentence-transformers ``{"anchor", "positive", "negative"}``: one line per (positive, negative) pair of
               a query, every positive paired with each of the query's negatives, so no positive and no negative is
               lost (a query with 2 positives and 5 negatives gives 10 lines). Lines of a query are adjacent, ordered
               by positive then negative slot.
``ntuple``     FlagEmbedding ``{"query", "pos": [...], "neg": [...], "pos_scores": [...], "neg_scores": [...],
               "prompt"?, "type"?}``: one line per query. ``pos_scores`` / ``neg_scores`` appear on a query's line
               only when the training file gave a teacher score for every text of the query (``qrels.teacher_score``,
               the ``given`` candidates' ``source_score``): FlagEmbedding softmaxes them for distillation without a
               temperature, so model cosines would carry no signal. ``scores="model"`` writes the model's cosines for
               the other queries (never mixed within a query), ``scores="none"`` no scores. ``prompt`` appears on the
               lines of queries that have one and is left out of the others (FlagEmbedding then uses the trainer's
               instruction; ``""`` would replace it with none); ``type`` likewise, where the store has such a column.
               In Parquet, a left-out key is a null.
``st-ntuple``  sentence-transformers n-tuples ``{"anchor", "positive", "negative_1", ..., "negative_N"}``: one line
               per query with its best positive (highest grade, then labeled before relabeled, then doc id) and
               exactly N negatives; a dataset needs the same columns in every row, so queries short of N are not
               written (they are counted and listed as short).
``rich``       one line per query with ids and texts: ``query_id``, ``query``, ``positives`` [{doc_id, text, origin,
               score}], ``negatives`` [{doc_id, text, slot, band, rule, s_neg, s_pos_min, delta, rank, source,
               verdict, score}], ``score_source`` (``teacher`` or ``model``).

Texts are those the scorer embedded: the query text, and a document's ``title text`` (the BEIR convention used by
:mod:`auditor.mine`). A text that is empty or only whitespace is never written: such a positive or negative is left
out (the next candidate takes a blank negative's slot), a query with no usable positive is not written, and both are
counted (``empty_texts_skipped``, ``queries_without_usable_positive``). With ``relabel``, confirmed false negatives
(any annotator's current verdict) join the positives of their query (``origin`` ``"relabel"``). Queries with no
negative at all are not written; queries with fewer than N are written with what they have (except ``st-ntuple``);
both are counted, and ``short_query_ids`` lists every query short of N.

Writing: the selection is materialised once in temporary tables, then ``COPY (SELECT ...) TO tmp (FORMAT json |
parquet)`` writes a temporary file in the destination folder, renamed over the destination with ``os.replace`` only
when complete. A failed or interrupted export (Ctrl-C, or SIGTERM, which is turned into Ctrl-C for the duration)
removes the temporary file and leaves any older file untouched; temporary files of killed exports (their process is
gone) are removed by the next export into the same folder. ``-`` as the destination writes JSONL to standard output.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from auditor.config import ExportConfig
from auditor.select import Selection
from auditor.signals import interrupt_on_signals
from auditor.store import StoreError
from auditor.ingest.rules import BLANK_RE
from auditor.sql import lit, query_ids_sql

FORMATS = ("triplet", "ntuple", "st-ntuple", "rich")
FILE_TYPES = ("jsonl", "parquet")
#: ntuple scores (ExportConfig.scores): teacher only, teacher else model cosines, or none
SCORE_CHOICES = ("teacher", "model", "none")
STDOUT = "-"
#: Prefix of the temporary folders of app exports and of exports to standard output.
TEMP_FOLDER_PREFIX = "auditor-export-"
_STDOUT_PREFIX = f"{TEMP_FOLDER_PREFIX}stdout-"  #: then the writing process's id
Progress = Callable[[int, int], None]

#: A text made only of blank characters: never written. Ingest's own rule (auditor.ingest.limits.BLANK_CHARS), so an
#: export never holds a text its ingest would refuse.
_BLANK_PATTERN = lit(BLANK_RE)
#: Order of a query's positives: highest grade first, labeled before relabeled, then doc id.
_POSITIVE_ORDER = "grade DESC NULLS LAST, origin, doc_id"
#: Name of a temporary file written by temp_path_for: .<name>.<pid>-<8 hex digits>.tmp
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


@dataclass
class ExportSummary:
    """What an export wrote and what it could not."""

    path: str
    format: str
    strategy: str
    negatives_per_query: int
    seed: int
    relabel: bool
    drop_unreviewed_suspicious: bool
    config: str
    model: str
    file_type: str = "jsonl"
    rule: str = ""  #: the risk rule in words (auditor.select.Selection.rule)
    fn_budget: float | None = ExportConfig.fn_budget
    target_rate: float | None = ExportConfig.target_rate
    max_risk: float | None = ExportConfig.max_risk  #: the explicit override, when given
    keep_n: bool = ExportConfig.keep_n
    risk_applied: bool = True  #: False when the store has no risk for the model (mined by an older auditor)
    tradeoff: float = 0.0  #: the solved lam of key = h - lam * p (auditor.tradeoff)
    candidates_above_max_risk: int = 0  #: with max_risk: unreviewed candidates of the model above it
    kept_by_lowest_risk: int = 0  #: negatives taken only so that their query keeps N (not eligible)
    queries_kept_by_lowest_risk: int = 0
    expected_false_negatives: float | None = None  #: sum of P(false negative) over the written negatives
    estimate: dict[str, Any] | None = None  #: auditor.estimate.export_estimate of this export
    rows: int = 0  #: lines (rows) written
    queries_with_positives: int = 0
    queries_written: int = 0
    negatives_written: int = 0  #: distinct (query, negative) pairs
    positives_written: int = 0  #: distinct (query, positive) pairs, relabeled ones included
    relabeled: int = 0  #: confirmed false negatives added as positives (relabel only)
    confirmed_false_negatives: int = 0  #: (query, doc) pairs some annotator marked false_negative
    short_queries: int = 0  #: queries with a usable positive that got fewer than N negatives (zero included)
    queries_without_negatives: int = 0  #: of those, queries that got none and were not written
    short_query_ids: list[str] = field(default_factory=list)
    short_ids_path: str | None = None
    empty_texts_skipped: int = 0  #: blank queries, positives and negatives left out
    queries_without_usable_positive: int = 0  #: queries whose text or every positive is blank: not written
    score_source: dict[str, int] | None = None  #: ntuple / rich: queries scored by "teacher" and by "model"
    #: queries left out because their line would be larger than ingest takes (auditor.ingest.limits.MAX_RECORD_BYTES)
    oversized_query_ids: list[str] = field(default_factory=list)
    scores: str = ExportConfig.scores  #: ntuple: which scores were written (teacher | model | none)
    lines_without_scores: int = 0  #: ntuple: lines written without pos_scores / neg_scores
    lines_without_prompt: int = 0  #: ntuple: lines without a prompt in a file where other lines have one
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Tables:
    """Names of one export's temporary tables (unique, so exports on one connection can run side by side)."""

    sel: str  #: the negatives: query_id, doc_id, slot, band, rule, s_neg, rank, source
    pos: str  #: the usable positives: query_id, doc_id, origin, grade (and blank flags)
    score: str  #: ntuple / rich: query_id, doc_id, role ('pos' | 'neg'), score, score_source
    blank_docs: str  #: doc_id of every document whose embedded text is blank
    blank_queries: str  #: query_id of every query whose text is blank
    raw: str  #: scratch

    @classmethod
    def fresh(cls) -> _Tables:
        tag = uuid.uuid4().hex[:12]
        return cls(*(f"_export_{kind}_{tag}" for kind in ("sel", "pos", "score", "blank_docs", "blank_q", "raw")))

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        for name in (self.sel, self.pos, self.score, self.blank_docs, self.blank_queries, self.raw):
            con.execute(f"DROP TABLE IF EXISTS {name}")




def _doc_text(t: str) -> str:
    from auditor.texts import doc_text_sql

    return doc_text_sql(t)


def _blank(text_sql: str) -> str:
    return f"regexp_full_match({text_sql}, {_BLANK_PATTERN})"


def _positive_order(p: str) -> str:
    return f"{p}.grade DESC NULLS LAST, {p}.origin, {p}.doc_id"


def _blank_document(d: str) -> str:
    """Whether document ``d``'s embedded text (``title text``) is blank, without building that text (2x faster)."""
    return f"({_blank(f'{d}.text')} AND ({d}.title IS NULL OR {_blank(f'{d}.title')}))"


def file_type_for(out_path: str | Path, file_type: str | None = None) -> str:
    """``file_type`` when given, else from the extension: ``.parquet`` is Parquet, anything else JSONL."""
    if file_type is not None:
        if file_type not in FILE_TYPES:
            raise ValueError(f"unknown file type {file_type!r}: use one of {', '.join(FILE_TYPES)}")
        return file_type
    return "parquet" if Path(str(out_path)).suffix.lower() == ".parquet" else "jsonl"


# --- the rows of each layout ---------------------------------------------------------------------------------------


def _rows_sql(fmt: str, t: _Tables, negatives: int, extra_columns: str = "", scores: str = ExportConfig.scores) -> str:
    """The SELECT whose rows are the output lines, over the materialised selection, positives and scores."""
    dtext_p, dtext_n = _doc_text("dp"), _doc_text("dn")
    if fmt == "triplet":
        return f"""
            SELECT q.text AS anchor, {dtext_p} AS positive, {dtext_n} AS negative
            FROM {t.sel} s
            JOIN {t.pos} p ON p.query_id = s.query_id
            JOIN queries q ON q.query_id = s.query_id
            JOIN documents dp ON dp.doc_id = p.doc_id
            JOIN documents dn ON dn.doc_id = s.doc_id
            ORDER BY s.query_id, p.doc_id, s.slot
        """
    if fmt == "ntuple":
        keep = {"teacher": "pos.score_source = 'teacher'", "model": "true"}.get(scores)
        score_columns = (f""",
                   CASE WHEN {keep} THEN pos.pos_scores END AS pos_scores,
                   CASE WHEN {keep} THEN neg.neg_scores END AS neg_scores""" if keep else "")
        return f"""
            WITH pos AS (
                SELECT p.query_id, list({dtext_p} ORDER BY {_positive_order('p')}) AS pos,
                       list(sc.score ORDER BY {_positive_order('p')}) AS pos_scores,
                       any_value(sc.score_source) AS score_source
                FROM {t.pos} p JOIN documents dp ON dp.doc_id = p.doc_id
                JOIN {t.score} sc ON sc.query_id = p.query_id AND sc.doc_id = p.doc_id AND sc.role = 'pos'
                GROUP BY p.query_id
            ),
            neg AS (
                SELECT s.query_id, list({dtext_n} ORDER BY s.slot) AS neg, list(sc.score ORDER BY s.slot) AS neg_scores
                FROM {t.sel} s JOIN documents dn ON dn.doc_id = s.doc_id
                JOIN {t.score} sc ON sc.query_id = s.query_id AND sc.doc_id = s.doc_id AND sc.role = 'neg'
                GROUP BY s.query_id
            )
            SELECT q.text AS query, pos.pos, neg.neg{score_columns}{extra_columns}
            FROM neg JOIN pos USING (query_id) JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    if fmt == "st-ntuple":  # the tables hold one positive and exactly N negatives per query (_keep_full_rows)
        columns = ", ".join(f"neg.neg[{i}] AS negative_{i}" for i in range(1, int(negatives) + 1))
        return f"""
            WITH neg AS (
                SELECT s.query_id, list({dtext_n} ORDER BY s.slot) AS neg
                FROM {t.sel} s JOIN documents dn ON dn.doc_id = s.doc_id GROUP BY s.query_id
            )
            SELECT q.text AS anchor, {dtext_p} AS positive, {columns}
            FROM neg JOIN {t.pos} p USING (query_id) JOIN documents dp ON dp.doc_id = p.doc_id
            JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    if fmt == "rich":
        return f"""
            WITH pos AS (
                SELECT p.query_id,
                       list({{'doc_id': p.doc_id, 'text': {dtext_p}, 'origin': p.origin, 'score': sc.score}}
                            ORDER BY {_positive_order('p')}) AS positives,
                       any_value(sc.score_source) AS score_source
                FROM {t.pos} p JOIN documents dp ON dp.doc_id = p.doc_id
                JOIN {t.score} sc ON sc.query_id = p.query_id AND sc.doc_id = p.doc_id AND sc.role = 'pos'
                GROUP BY p.query_id
            ),
            verdicts AS (
                SELECT query_id, doc_id,
                       CASE WHEN bool_or(verdict = 'false_negative') THEN 'false_negative'
                            WHEN bool_or(verdict = 'true_negative') THEN 'true_negative'
                            ELSE 'unsure' END AS verdict
                FROM current_verdicts GROUP BY query_id, doc_id
            ),
            neg AS (
                SELECT s.query_id,
                       list({{'doc_id': s.doc_id, 'text': {dtext_n}, 'slot': s.slot, 'band': s.band,
                              'rule': s.rule, 's_neg': s.s_neg, 's_pos_min': m.s_pos_min,
                              'delta': s.s_neg - m.s_pos_min, 'rank': s.rank, 'source': s.source,
                              'verdict': v.verdict, 'score': sc.score}} ORDER BY s.slot) AS negatives
                FROM {t.sel} s
                JOIN documents dn ON dn.doc_id = s.doc_id
                JOIN {t.score} sc ON sc.query_id = s.query_id AND sc.doc_id = s.doc_id AND sc.role = 'neg'
                LEFT JOIN scores m ON m.model = $model AND m.query_id = s.query_id AND m.doc_id = s.doc_id
                LEFT JOIN verdicts v ON v.query_id = s.query_id AND v.doc_id = s.doc_id
                GROUP BY s.query_id
            )
            SELECT neg.query_id, q.text AS query, pos.positives, neg.negatives, pos.score_source
            FROM neg JOIN pos USING (query_id) JOIN queries q ON q.query_id = neg.query_id
            ORDER BY neg.query_id
        """
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def _flag_extra_columns(con: duckdb.DuckDBPyConnection, t: _Tables) -> str:
    """``prompt`` (and ``type``, where the store has it) for the FlagEmbedding layout, when a written query has one.

    Null for the others: the JSONL writer leaves the key out of their lines (:func:`_without_nulls`), so FlagEmbedding
    falls back to the trainer's instruction (``""`` would replace it with none, a null would read as "None").
    """
    out = ""
    has_type = bool(con.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'queries' AND column_name = 'type'"
    ).fetchall())
    for column in ("prompt", "type") if has_type else ("prompt",):
        used = con.execute(
            f"SELECT 1 FROM queries WHERE {column} IS NOT NULL AND query_id IN (SELECT query_id FROM {t.sel}) LIMIT 1"
        ).fetchall()
        if used:
            out += f", nullif(q.{column}, '') AS {column}"
    return out


# --- temporary files, signals, atomic writes --------------------------------------------------------------------


def temp_path_for(out_path: Path) -> Path:
    """A hidden temporary name in the destination folder (same file system, so os.replace is atomic)."""
    return out_path.with_name(f".{out_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.<pid>-<hex>.tmp``) that killed exports left in ``folder``.

    Only files whose writing process is gone are removed, so an export running beside this one keeps its file.
    Returns the files removed.
    """
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _pid_alive(int(match["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


#: COPY options per written file type; "lines" writes the one text column of each row as a line (JSON built in SQL)
_COPY_OPTIONS = {"jsonl": "FORMAT json", "parquet": "FORMAT parquet",
                 "lines": f"FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER {lit(chr(1))}"}


def copy_atomic(
    con: duckdb.DuckDBPyConnection, select_sql: str, out_path: str | Path, params: dict[str, Any] | None = None,
    file_type: str = "jsonl",
) -> None:
    """``COPY (select_sql) TO`` a temporary file beside ``out_path``, then rename it over ``out_path``.

    On any error or interruption the temporary file is removed and an existing ``out_path`` is left as it was.
    ``file_type`` "lines" writes a query of one JSON text column (:func:`_without_nulls`) as JSON lines.
    """
    out_path = Path(out_path)
    if not out_path.parent.exists():
        raise StoreError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    options = _COPY_OPTIONS["lines" if file_type == "lines" else file_type_for(out_path, file_type)]
    remove_stale_temp_files(out_path.parent)
    tmp = temp_path_for(out_path)
    with interrupt_on_signals(con):
        try:
            con.execute(f"COPY ({select_sql}) TO {lit(str(tmp))} ({options})", params or {})
            _finish(tmp, out_path)
        finally:
            tmp.unlink(missing_ok=True)


def _finish(tmp: Path, out_path: Path) -> None:
    """Make the written file durable, then move it into place (a separate step so tests can fail it)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out_path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- export ------------------------------------------------------------------------------------------------------


def export(
    con: duckdb.DuckDBPyConnection,
    out_path: str | Path,
    selection: Selection | None = None,
    *,
    fmt: str = ExportConfig.format,
    scores: str = ExportConfig.scores,
    file_type: str | None = None,
    relabel: bool = ExportConfig.relabel,
    model: str | None = None,
    short_ids_path: str | Path | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> ExportSummary:
    """Write the cleaned training set chosen by ``selection`` to ``out_path`` (atomically; ``-`` is standard output)
    and return what was written.

    ``settings`` (``negatives=5``, ``strategy="random"``, ...) change single fields of ``selection`` (default: the
    export defaults; ``band_mix`` may be a dict). See the module docstring for the layouts. ``file_type`` is
    ``jsonl`` or ``parquet``; by default it follows the extension (``.parquet`` is Parquet, anything else JSONL).
    ``short_ids_path``, when given, receives the ids of queries that got fewer negatives than asked, one per line.
    The settings are saved in the store: the review queue follows the latest export.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if scores not in SCORE_CHOICES:
        raise ValueError(f"unknown scores {scores!r}: use one of {', '.join(SCORE_CHOICES)}")
    if settings.get("band_mix") is not None:
        settings["band_mix"] = tuple(sorted(dict(settings["band_mix"]).items()))
    for name in ("random_window",):
        if settings.get(name) is not None:
            settings[name] = tuple(settings[name])
    settings = {k: v for k, v in settings.items() if v is not None or k in ("max_risk", "fn_budget", "target_rate")}
    selection = replace(selection or Selection(), **settings)
    selection.check()
    file_type = file_type_for(out_path, file_type)
    kw = dict(fmt=fmt, scores=scores, selection=selection, relabel=relabel, model=model, short_ids_path=short_ids_path,
              progress=progress)
    with interrupt_on_signals(con):
        if str(out_path) == STDOUT:
            if file_type == "parquet":
                raise ValueError("Parquet cannot be written to standard output (--out -): give a file name, e.g. "
                                 "--out train.parquet, or write JSONL to standard output (--file-type jsonl)")
            return _export_to_stdout(con, **kw)
        return _export_to_file(con, Path(out_path), file_type, **kw)


def _export_to_stdout(con: duckdb.DuckDBPyConnection, **kw: Any) -> ExportSummary:
    """JSONL to standard output, through a private temporary file: a failed export writes nothing."""
    with to_stdout_through_file("export.jsonl") as tmp:
        summary = _export_to_file(con, tmp, "jsonl", **kw)
    summary.path = STDOUT
    return summary


@contextlib.contextmanager
def to_stdout_through_file(name: str) -> Iterator[Path]:
    """A path in a private temporary folder whose file goes to standard output once the block succeeds.

    The folder carries the process id: one left by a killed process is removed by the next such write.
    """
    _remove_orphan_stdout_folders()
    with tempfile.TemporaryDirectory(prefix=f"{_STDOUT_PREFIX}{os.getpid()}-") as folder:
        tmp = Path(folder) / name
        yield tmp
        sys.stdout.flush()
        with open(tmp, "rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


def _remove_orphan_stdout_folders() -> None:
    for folder in Path(tempfile.gettempdir()).glob(f"{_STDOUT_PREFIX}*"):
        pid = folder.name[len(_STDOUT_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and not folder.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _export_to_file(
    con: duckdb.DuckDBPyConnection,
    out_path: Path,
    file_type: str,
    *,
    fmt: str,
    scores: str,
    selection: Selection,
    relabel: bool,
    model: str | None,
    short_ids_path: str | Path | None,
    progress: Progress | None,
) -> ExportSummary:
    from auditor.bands import require_fresh_bands, resolve_model
    from auditor.select import save_selection

    t0 = time.perf_counter()
    steps = 4
    if progress:
        progress(0, steps)
    model = resolve_model(con, model)
    require_fresh_bands(con, selection.config, model)
    n = int(selection.negatives)
    risk_applied = bool(con.execute("SELECT 1 FROM risk WHERE model = ? LIMIT 1", [model]).fetchall())
    tradeoff = selection.tradeoff(con, model)

    def chosen(k: int) -> str:
        return replace(selection, negatives=k).sql(con, model, tradeoff=tradeoff)

    summary = ExportSummary(
        path=str(out_path), format=fmt, strategy=selection.strategy, negatives_per_query=n, seed=int(selection.seed),
        relabel=bool(relabel), drop_unreviewed_suspicious=bool(selection.drop_unreviewed_suspicious),
        config=selection.config, model=model, file_type=file_type, rule=selection.rule, scores=scores,
        fn_budget=selection.fn_budget, target_rate=selection.target_rate, max_risk=selection.max_risk,
        keep_n=bool(selection.keep_n), risk_applied=risk_applied, tradeoff=tradeoff.lam,
    )
    t = _Tables.fresh()
    try:
        any_blank = _find_blank_texts(con, t)
        _create_positives(con, t, relabel, summary, any_blank)
        _create_selection(con, t, chosen, n, summary)
        if progress:
            progress(1, steps)
        _count_short(con, t, n, summary)
        _count_risk(con, t, summary)
        if fmt == "st-ntuple":
            _keep_full_rows(con, t, n)
        if fmt != "rich":
            _leave_out_oversized(con, t, fmt, summary)
        _count_written(con, t, summary)
        if fmt in ("ntuple", "rich"):
            summary.score_source = _create_scores(con, t, model)
        if progress:
            progress(2, steps)
        extra = _flag_extra_columns(con, t) if fmt == "ntuple" else ""
        params = {"model": model} if fmt == "rich" else None
        if fmt == "ntuple" and scores == "teacher" and not summary.score_source["teacher"]:
            scores = "none"  # no line would carry scores: no score columns (in Parquet too)
        rows_sql = _rows_sql(fmt, t, n, extra, scores)
        if fmt == "ntuple":
            _count_flag_keys(con, t, scores, summary)
            if file_type == "jsonl":
                rows_sql = _without_nulls(con, rows_sql)
                file_type = "lines"
        copy_atomic(con, rows_sql, out_path, params, file_type)
        if progress:
            progress(3, steps)
        summary.rows = _count_rows(con, t, fmt, summary)
        if short_ids_path is not None:
            write_text_atomic(short_ids_path, "".join(f"{q}\n" for q in summary.short_query_ids))
            summary.short_ids_path = str(short_ids_path)
        if risk_applied:  # of the negatives this export selected (not a second selection)
            from auditor.estimate import export_estimate

            summary.estimate = export_estimate(con, selection, model, exported=t.sel)
    finally:
        t.drop(con)
    save_selection(con, selection)
    summary.seconds = round(time.perf_counter() - t0, 3)
    if progress:
        progress(steps, steps)
    return summary


def _find_blank_texts(con: duckdb.DuckDBPyConnection, t: _Tables) -> bool:
    """The documents and queries whose text is blank: one scan, a handful of ids (none in most stores)."""
    con.execute(f"CREATE TEMP TABLE {t.blank_docs} AS SELECT doc_id FROM documents d WHERE {_blank_document('d')}")
    con.execute(f"CREATE TEMP TABLE {t.blank_queries} AS SELECT query_id FROM queries q WHERE {_blank('q.text')}")
    return bool(con.execute(f"SELECT EXISTS (FROM {t.blank_docs}) OR EXISTS (FROM {t.blank_queries})").fetchall()[0][0])


def _create_positives(
    con: duckdb.DuckDBPyConnection, t: _Tables, relabel: bool, summary: ExportSummary, any_blank: bool
) -> None:
    """The usable positives of each query, counting the blank ones left out."""
    relabeled = ""
    if relabel:
        relabeled = """
            UNION ALL
            SELECT DISTINCT v.query_id, v.doc_id, 'relabel', NULL::INTEGER FROM current_verdicts v
            WHERE v.verdict = 'false_negative'
              AND NOT EXISTS (SELECT 1 FROM qrels r WHERE r.relevant AND r.query_id = v.query_id
                              AND r.doc_id = v.doc_id)
        """
    con.execute(
        f"""
        CREATE TEMP TABLE {t.pos} AS
        SELECT p.*, p.doc_id IN (SELECT doc_id FROM {t.blank_docs}) AS doc_blank,
               p.query_id IN (SELECT query_id FROM {t.blank_queries}) AS query_blank
        FROM (SELECT r.query_id, r.doc_id, 'label' AS origin, max(r.grade) AS grade FROM qrels r
              WHERE r.relevant GROUP BY r.query_id, r.doc_id
              {relabeled}) p
        WHERE EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = p.doc_id)
          AND EXISTS (SELECT 1 FROM queries q WHERE q.query_id = p.query_id)
        """
    )
    if not any_blank:
        summary.queries_with_positives = int(con.execute(
            f"SELECT count(DISTINCT query_id) FROM {t.pos}").fetchall()[0][0])
        return
    (summary.queries_with_positives, summary.queries_without_usable_positive, blank_positives,
     blank_queries) = (int(x) for x in con.execute(
        f"""
        SELECT count(DISTINCT query_id),
               count(DISTINCT query_id) - count(DISTINCT query_id) FILTER (WHERE NOT doc_blank AND NOT query_blank),
               count(*) FILTER (WHERE doc_blank AND NOT query_blank),
               count(DISTINCT query_id) FILTER (WHERE query_blank)
        FROM {t.pos}
        """
    ).fetchall()[0])
    summary.empty_texts_skipped += blank_positives + blank_queries
    if blank_positives or blank_queries:
        con.execute(f"DELETE FROM {t.pos} WHERE doc_blank OR query_blank")


def _create_selection(
    con: duckdb.DuckDBPyConnection, t: _Tables, selection: Callable[[int], str], n: int, summary: ExportSummary
) -> None:
    """Up to ``n`` negatives per query, none of them blank: blank candidates give their slot to the next one."""
    spare = _blank_candidates_per_query(con, t)
    if not spare:  # the common case: the selection as it is
        con.execute(f"CREATE TEMP TABLE {t.sel} AS {selection(n)}")
        return
    # Take `spare` more than asked, drop the blank ones and number the rest again: the same choice as if the blank
    # candidates had never been there (exactly so for top, random and simans, whose order is per candidate).
    con.execute(
        f"""
        CREATE TEMP TABLE {t.raw} AS
        SELECT *, sum(CASE WHEN blank THEN 0 ELSE 1 END) OVER (
                      PARTITION BY query_id ORDER BY slot ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS kept
        FROM (SELECT s.*, s.doc_id IN (SELECT doc_id FROM {t.blank_docs}) AS blank
              FROM ({selection(n + spare)}) s)
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE {t.sel} AS
        SELECT query_id, doc_id, kept AS slot, band, rule, s_neg, rank, source, p_fn, eligible FROM {t.raw}
        WHERE NOT blank AND kept <= {n} ORDER BY query_id, slot
        """
    )
    summary.empty_texts_skipped += int(con.execute(  # blank ones the plain selection would have written
        f"""SELECT count(*) FROM {t.raw} WHERE blank AND slot <= {n}
            AND query_id IN (SELECT query_id FROM {t.pos})"""
    ).fetchall()[0][0])
    con.execute(f"DROP TABLE {t.raw}")


def _count_risk(con: duckdb.DuckDBPyConnection, t: _Tables, summary: ExportSummary) -> None:
    """What the risk threshold did: candidates it skipped, negatives kept to hold N, expected false negatives."""
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE NOT eligible), count(DISTINCT query_id) FILTER (WHERE NOT eligible),
                   sum(coalesce(p_fn, 0)) FILTER (WHERE NOT coalesce(v.tn, FALSE))
            FROM {t.sel} s LEFT JOIN (SELECT query_id, doc_id, bool_or(verdict = 'true_negative') AS tn
                                      FROM current_verdicts GROUP BY ALL) v USING (query_id, doc_id)"""
    ).fetchall()[0]
    summary.kept_by_lowest_risk, summary.queries_kept_by_lowest_risk = int(row[0]), int(row[1])
    summary.expected_false_negatives = float(row[2]) if summary.risk_applied and row[2] is not None else None
    if summary.max_risk is not None and summary.risk_applied:
        summary.candidates_above_max_risk = int(con.execute(
            "SELECT count(*) FROM risk WHERE model = ? AND p_fn > ? AND origin <> 'verdict'",
            [summary.model, float(summary.max_risk)],
        ).fetchall()[0][0])


def _blank_candidates_per_query(con: duckdb.DuckDBPyConnection, t: _Tables) -> int:
    """The most blank-text candidates any one query has (0 in almost every store)."""
    return int(con.execute(
        f"""
        SELECT coalesce(max(n), 0) FROM (
            SELECT query_id, count(DISTINCT doc_id) AS n FROM candidates
            WHERE doc_id IN (SELECT doc_id FROM {t.blank_docs}) GROUP BY query_id)
        """
    ).fetchall()[0][0])


def _count_short(con: duckdb.DuckDBPyConnection, t: _Tables, n: int, summary: ExportSummary) -> None:
    """Queries with a usable positive that got fewer than ``n`` negatives (none included)."""
    rows = con.execute(
        f"""
        SELECT p.query_id, coalesce(s.nneg, 0) AS nneg
        FROM (SELECT DISTINCT query_id FROM {t.pos}) p
        LEFT JOIN (SELECT query_id, count(*) AS nneg FROM {t.sel} GROUP BY query_id) s USING (query_id)
        WHERE coalesce(s.nneg, 0) < ? ORDER BY p.query_id
        """,
        [n],
    ).fetchall()
    summary.short_query_ids = [r[0] for r in rows]
    summary.short_queries = len(rows)
    summary.queries_without_negatives = sum(1 for r in rows if r[1] == 0)


def _keep_full_rows(con: duckdb.DuckDBPyConnection, t: _Tables, n: int) -> None:
    """st-ntuple: every row has the same columns, so only queries with exactly ``n`` negatives, and their best
    positive."""
    con.execute(f"""DELETE FROM {t.sel} WHERE query_id IN
                    (SELECT query_id FROM {t.sel} GROUP BY query_id HAVING count(*) < {n})""")
    con.execute(f"""CREATE TEMP TABLE {t.raw} AS SELECT * FROM {t.pos}
                    QUALIFY row_number() OVER (PARTITION BY query_id ORDER BY {_POSITIVE_ORDER}) = 1""")
    con.execute(f"DROP TABLE {t.pos}")
    con.execute(f"ALTER TABLE {t.raw} RENAME TO {t.pos}")


def _leave_out_oversized(con: duckdb.DuckDBPyConnection, t: _Tables, fmt: str, summary: ExportSummary) -> None:
    """Leave out the queries whose line would be larger than ingest takes (limits.MAX_RECORD_BYTES), so an export
    always ingests back: an n-tuple line holds all of a query's texts, a triplet line one of each.

    A cheap bound first (raw bytes, at most 6 bytes of JSON per byte of text), the exact JSON size only for the
    queries near the limit: a normal export pays one scan of lengths.
    """
    from auditor.ingest import limits

    limit = int(limits.MAX_RECORD_BYTES)
    agg = "max" if fmt == "triplet" else "sum"

    def line_bytes(size, only: str = "") -> str:  # bytes of each query's line, by ``size(text expression)``
        return f"""
            SELECT q.query_id, {size('q.text')} + coalesce(p.b, 0) + coalesce(n.b, 0) AS bytes FROM queries q
            JOIN (SELECT x.query_id, {agg}({size(_doc_text('d'))} + 8) AS b
                  FROM {t.pos} x JOIN documents d USING (doc_id) WHERE NOT x.doc_blank AND NOT x.query_blank {only}
                  GROUP BY x.query_id) p USING (query_id)
            JOIN (SELECT x.query_id, {agg}({size(_doc_text('d'))} + 8) AS b
                  FROM {t.sel} x JOIN documents d USING (doc_id) WHERE true {only}
                  GROUP BY x.query_id) n USING (query_id)
        """

    near = [r[0] for r in con.execute(
        f"SELECT query_id FROM ({line_bytes(lambda e: f'strlen({e})')}) WHERE bytes * 6 + 64 > {limit}"
    ).fetchall()]
    if not near:
        return
    only = f"AND x.{query_ids_sql(near)}"
    over = [r[0] for r in con.execute(
        f"SELECT query_id FROM ({line_bytes(lambda e: f'strlen(to_json({e})::VARCHAR)', only)}) "
        f"WHERE bytes + 64 > {limit} ORDER BY query_id"
    ).fetchall()]
    if over:
        con.execute(f"DELETE FROM {t.sel} WHERE query_id IN (SELECT unnest(?::VARCHAR[]))", [over])
        summary.oversized_query_ids = over


def _count_written(con: duckdb.DuckDBPyConnection, t: _Tables, summary: ExportSummary) -> None:
    row = con.execute(
        f"""
        WITH pq AS (SELECT query_id, count(*) AS npos, count(*) FILTER (WHERE origin = 'relabel') AS nrel
                    FROM {t.pos} GROUP BY query_id),
        nq AS (SELECT query_id, count(*) AS nneg FROM {t.sel} GROUP BY query_id)
        SELECT count(*), coalesce(sum(nneg), 0), coalesce(sum(npos), 0), coalesce(sum(nrel), 0),
               (SELECT count(*) FROM (SELECT DISTINCT query_id, doc_id FROM current_verdicts
                                      WHERE verdict = 'false_negative'))
        FROM pq JOIN nq USING (query_id)
        """
    ).fetchall()[0]
    (summary.queries_written, summary.negatives_written, summary.positives_written, summary.relabeled,
     summary.confirmed_false_negatives) = (int(x) for x in row)


def _create_scores(con: duckdb.DuckDBPyConnection, t: _Tables, model: str) -> dict[str, int]:
    """One score per written (query, positive | negative): the teacher's when the training file gave one for every
    text of the query, else the model's cosine for all of them. Returns the number of queries per source.

    Model scores: ``scores.s_neg`` for negatives; for a positive the cosine of the cached query and document vectors
    (``scores`` keeps only min/mean/max over a query's positives), else its ``s_neg`` (a relabeled candidate), else
    the query's ``s_pos_mean`` when the vectors are no longer cached.
    """
    from auditor.texts import query_hash_sql, query_instruction

    m = lit(model)
    query_key = query_hash_sql("q", query_instruction(con, model))  # the cache key mine embedded the query under
    con.execute(
        f"""
        CREATE TEMP TABLE {t.score} AS
        WITH written AS (SELECT DISTINCT query_id FROM {t.sel} WHERE query_id IN (SELECT query_id FROM {t.pos})),
        given AS (
            SELECT query_id, doc_id, max(source_score) AS teacher FROM candidates
            WHERE source = 'given' AND query_id IN (SELECT query_id FROM written) GROUP BY query_id, doc_id),
        labeled AS (
            SELECT query_id, doc_id, max(teacher_score) AS teacher FROM qrels
            WHERE relevant AND query_id IN (SELECT query_id FROM written) GROUP BY query_id, doc_id),
        query_vectors AS (
            SELECT q.query_id, any_value(e.vector) AS vector FROM queries q
            JOIN embeddings e ON e.model = {m} AND e.role = 'query' AND e.text_hash = {query_key}
            WHERE q.query_id IN (SELECT query_id FROM written) GROUP BY q.query_id),
        cosines AS (
            SELECT p.query_id, p.doc_id, max(list_dot_product(qv.vector, e.vector))::DOUBLE AS cosine
            FROM {t.pos} p JOIN query_vectors qv ON qv.query_id = p.query_id
            JOIN documents d ON d.doc_id = p.doc_id
            JOIN embeddings e ON e.model = {m} AND e.role = 'document' AND e.text_hash = d.text_hash
            GROUP BY p.query_id, p.doc_id),
        mean_positive AS (
            SELECT query_id, any_value(s_pos_mean) AS s FROM scores
            WHERE model = {m} AND query_id IN (SELECT query_id FROM written) GROUP BY query_id),
        items AS (
            SELECT p.query_id, p.doc_id, 'pos' AS role, coalesce(l.teacher, g.teacher) AS teacher,
                   coalesce(c.cosine, sn.s_neg, mp.s) AS model
            FROM {t.pos} p
            LEFT JOIN labeled l USING (query_id, doc_id)
            LEFT JOIN given g USING (query_id, doc_id)
            LEFT JOIN cosines c USING (query_id, doc_id)
            LEFT JOIN scores sn ON sn.model = {m} AND sn.query_id = p.query_id AND sn.doc_id = p.doc_id
            LEFT JOIN mean_positive mp ON mp.query_id = p.query_id
            WHERE p.query_id IN (SELECT query_id FROM written)
            UNION ALL
            SELECT s.query_id, s.doc_id, 'neg', g.teacher, s.s_neg
            FROM {t.sel} s LEFT JOIN given g USING (query_id, doc_id)
            WHERE s.query_id IN (SELECT query_id FROM written)
        ),
        per_query AS (
            SELECT query_id, bool_and(coalesce(isfinite(teacher), false)) AS teacher_ok FROM items GROUP BY query_id)
        SELECT i.query_id, i.doc_id, i.role,
               CASE WHEN pq.teacher_ok THEN i.teacher ELSE i.model END AS score,
               CASE WHEN pq.teacher_ok THEN 'teacher' ELSE 'model' END AS score_source
        FROM items i JOIN per_query pq USING (query_id)
        """
    )
    bad = con.execute(
        f"SELECT count(*), any_value(query_id) FROM {t.score} WHERE NOT coalesce(isfinite(score), false)"
    ).fetchall()[0]
    if bad[0]:
        raise StoreError(
            f"{bad[0]:,} model scores of model {model!r} are missing or not finite (query {bad[1]!r} among them): "
            f"run `auditor mine --db FILE --model {model}` again, then export"
        )
    counts = dict(con.execute(
        f"SELECT score_source, count(DISTINCT query_id) FROM {t.score} GROUP BY score_source"
    ).fetchall())
    return {source: int(counts.get(source, 0)) for source in ("teacher", "model")}


def _without_nulls(con: duckdb.DuckDBPyConnection, rows_sql: str) -> str:
    """``rows_sql`` as one JSON object per row with its null keys left out (a JSON merge patch drops them), in order.

    FlagEmbedding tests ``'prompt' in data``: a key present as null would become the instruction "None".
    """
    names = [d[0] for d in con.execute(f"SELECT * FROM ({rows_sql}) LIMIT 0").description]
    fields = ", ".join(f"{lit(n)}: r.{_ident(n)}" for n in names)
    return f"SELECT json_merge_patch('{{}}', to_json({{{fields}}}))::VARCHAR AS line FROM ({rows_sql}) r"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _count_flag_keys(con: duckdb.DuckDBPyConnection, t: _Tables, scores: str, summary: ExportSummary) -> None:
    """How many written lines carry no scores, and (when some carry one) no prompt: the summary says so. From the
    score sources and the queries, not from the lines (building them is the export's main cost)."""
    src = summary.score_source or {"teacher": 0, "model": 0}
    summary.lines_without_scores = {"teacher": src["model"], "model": 0, "none": src["teacher"] + src["model"]}[scores]
    with_prompt, without_prompt = con.execute(
        f"""SELECT count(*) FILTER (WHERE nullif(prompt, '') IS NOT NULL),
                   count(*) FILTER (WHERE nullif(prompt, '') IS NULL)
            FROM queries WHERE query_id IN (SELECT query_id FROM {t.sel})
                           AND query_id IN (SELECT query_id FROM {t.pos})"""
    ).fetchall()[0]
    summary.lines_without_prompt = int(without_prompt) if with_prompt else 0


def _count_rows(con: duckdb.DuckDBPyConnection, t: _Tables, fmt: str, summary: ExportSummary) -> int:
    if fmt != "triplet":
        return summary.queries_written
    return int(con.execute(f"SELECT count(*) FROM {t.sel} s JOIN {t.pos} p USING (query_id)").fetchall()[0][0])


# --- for the app ---------------------------------------------------------------------------------------------------

_app_folders: set[Path] = set()
_app_folders_lock = threading.Lock()


def new_app_export_folder(previous: str | Path | None = None, max_age_s: float = 86_400) -> Path:
    """A fresh folder under the temp dir for one app session's export.

    Removes the session's ``previous`` folder (its last export), folders of app processes that died more than
    ``max_age_s`` ago (their exit cleanup never ran), and, at exit, every folder this process made.
    """
    if previous:
        _remove_app_folder(Path(previous))
    remove_old_temp_folders(max_age_s)
    folder = Path(tempfile.mkdtemp(prefix=TEMP_FOLDER_PREFIX))
    with _app_folders_lock:
        _app_folders.add(folder)
    return folder


def remove_old_temp_folders(max_age_s: float = 86_400, base: str | Path | None = None) -> list[Path]:
    """Remove export folders (``auditor-export-*``) in the temp dir not modified for ``max_age_s`` seconds."""
    base = Path(base or tempfile.gettempdir())
    cutoff = time.time() - max_age_s
    removed = []
    for folder in base.glob(f"{TEMP_FOLDER_PREFIX}*"):
        with contextlib.suppress(OSError):
            if folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _remove_app_folder(folder: Path) -> None:
    if folder.name.startswith(TEMP_FOLDER_PREFIX):  # never anything but an export folder
        shutil.rmtree(folder, ignore_errors=True)
    with _app_folders_lock:
        _app_folders.discard(folder)


def _remove_all_app_folders() -> None:
    for folder in list(_app_folders):
        _remove_app_folder(folder)


atexit.register(_remove_all_app_folders)


def preview_rows(path: str | Path, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` rows of an exported file (JSONL or Parquet) as dicts."""
    path = Path(path)
    if file_type_for(path) == "parquet":
        with duckdb.connect() as reader:
            cur = reader.execute(f"SELECT * FROM read_parquet({lit(str(path))}) LIMIT {int(n)}")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    import json

    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows
