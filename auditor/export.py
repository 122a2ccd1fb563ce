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

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb

from auditor.config import ExportConfig
from auditor.export_sql import FORMATS, _flag_extra_columns, _rows_sql, _Tables, _without_nulls
from auditor.export_steps import (
    ExportSummary, _count_flag_keys, _count_risk, _count_rows, _count_short, _count_written, _create_positives,
    _create_scores, _create_selection, _find_blank_texts, _keep_full_rows, _leave_out_oversized,
)
from auditor.files import (  # noqa: F401 - re-exported: the file helpers the CLI and the app take from here
    FILE_TYPES, STDOUT, TEMP_FOLDER_PREFIX, copy_atomic, file_type_for, new_app_export_folder, remove_old_temp_folders,
    remove_stale_temp_files, temp_path_for, to_stdout_through_file, write_text_atomic,
)
from auditor.select import Selection
from auditor.signals import interrupt_on_signals
from auditor.sql import lit

#: ntuple scores (ExportConfig.scores): teacher only, teacher else model cosines, or none
SCORE_CHOICES = ("teacher", "model", "none")
Progress = Callable[[int, int], None]


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

    def chosen(k: int, queries: str | None = None) -> str:
        return replace(selection, negatives=k).sql(con, model, tradeoff=tradeoff, queries=queries)

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
