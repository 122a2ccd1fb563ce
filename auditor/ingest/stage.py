"""Reading input files into temporary staging tables, in SQL.

Every format ends up in the same four staging tables, which `auditor.ingest.merge` then folds into the store:
``s_queries(query_id, text, text_hash, prompt)``, ``s_docs(doc_id, title, text, text_hash)``,
``s_qrels(query_id, doc_id, relevant, grade, teacher_score)``, ``s_cands(query_id, doc_id, source_rank,
source_score)``. Ids are the source's own where it has them (BEIR ``_id``), else the first 16 hex digits of the md5
of the text, so the same text always gets the same id and is stored once.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from auditor.ingest.checks import _q, record_is_bad
from auditor.ingest.diagnose import field_problem, find_id_lines, scan_jsonl
from auditor.ingest.errors import IngestError
from auditor.ingest.formats import (
    BEIR_CORPUS_FIELDS, BEIR_QUERY_FIELDS, Field, PairLayout, tabular_columns, tabular_source,
)

#: Largest single JSON record DuckDB will read (bytes); long documents are fine up to this.
MAX_RECORD_BYTES = 64 * 1024 * 1024



def read_raw(
    con: duckdb.DuckDBPyConnection, table: str, path: Path, keys: list[str], specs: list[Field],
    pairs: list[tuple[str, str]], projection: str = "*",
) -> None:
    """Read a file into temp table `table`: `projection` over its keys as JSON columns, plus a `_bad` flag.

    One pass: DuckDB parses, checks every field and extracts what staging needs without materialising the raw JSON.
    """
    if path.suffix in (".parquet", ".csv"):
        present = tabular_columns(path)
        cols = ", ".join(f"to_json({_q(k)}) AS {_q(k)}" if k in present else f"NULL::JSON AS {_q(k)}" for k in keys)
        src = tabular_source(path)
    else:
        spec = ", ".join(f"{_lit_str(k)}: 'JSON'" for k in keys)
        cols = "*"
        src = (
            f"read_json('{_lit(path)}', format = 'newline_delimited', columns = {{{spec}}}, "
            f"maximum_object_size = {MAX_RECORD_BYTES})"
        )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {table} AS "
        f"SELECT {projection}, {record_is_bad(specs, pairs)} AS _bad FROM (SELECT {cols} FROM {src})"
    )


def _lit(path: Path) -> str:
    return str(path).replace("'", "''")


def _lit_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def first_problem(
    con: duckdb.DuckDBPyConnection, path: Path, keys: list[str], specs: list[Field], pairs: list[tuple[str, str]],
    projection: str = "*", table: str = "raw",
) -> IngestError | None:
    """Load `path` into temp `table` and check it; the first bad line as an IngestError, or None if all good."""
    try:
        read_raw(con, table, path, keys, specs, pairs, projection)
    except duckdb.Error as exc:
        return locate(path, specs, pairs) or IngestError(str(path), None, f"cannot read: {_short(exc)}")
    n_bad, n_rows = con.execute(f"SELECT count(*) FILTER (WHERE _bad), count(*) FROM {table}").fetchone()
    if n_rows == 0:
        return IngestError(str(path), None, "file is empty: no records")
    if n_bad:
        err = locate(path, specs, pairs)
        if err is None:
            raise RuntimeError(f"{path}: {n_bad} records failed the SQL checks but no line was found bad (bug)")
        return err
    return None


def locate(path: Path, specs: list[Field], pairs: list[tuple[str, str]]) -> IngestError | None:
    """Scan the file in Python for the first bad line; counts the others for the message."""
    if path.suffix in (".parquet", ".csv"):
        return _locate_tabular(path, specs)
    first, more = None, 0
    for lineno, _raw, problems in scan_jsonl(path, specs, pairs):
        if problems:
            if first is None:
                p = problems[0]
                first = (f"{path}:{lineno}", p.field, p.message)
            else:
                more += 1
    if first is None:
        return None
    return IngestError(*first, more=more)


def scan_tabular(path: Path, specs: list[Field]) -> Iterator[tuple[str, str, str]]:
    """(where, field, message) for every bad row of a Parquet or CSV file, in file order."""
    is_csv = path.suffix == ".csv"
    cur = duckdb.connect().execute(f"SELECT * FROM {tabular_source(path)}")
    names = [d[0] for d in cur.description]
    row_no = 0
    while batch := cur.fetchmany(10_000):
        for row in batch:
            row_no += 1
            record = {k: _plain(v) for k, v in zip(names, row)}
            for spec in specs:
                msg = field_problem(spec, record)
                if msg:
                    # CSV: the header is line 1 (a quoted field spanning lines would shift this; rows never do)
                    where = f"{path}:line {row_no + 1}" if is_csv else f"{path}:row {row_no}"
                    yield where, spec.name, msg
                    break


def _locate_tabular(path: Path, specs: list[Field]) -> IngestError | None:
    try:
        bad = list(scan_tabular(path, specs))
    except duckdb.Error as exc:
        return IngestError(str(path), None, f"cannot read as {path.suffix[1:]}: {_short(exc)}")
    return IngestError(*bad[0], more=len(bad) - 1) if bad else None


def _plain(v: object) -> object:
    return list(v) if isinstance(v, tuple) else v


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]


# --------------------------------------------------------------------------------------------------------------
# Pair formats: FlagEmbedding, sentence-transformers triplets and n-tuples


def pair_projection(layout: PairLayout) -> str:
    """What staging needs from each record of a pair format (TRY_CAST: bad records are flagged, not fatal)."""
    def text(k: str) -> str:
        return f"json_extract_string({_q(k)}, '$')"

    pos = f"TRY_CAST({_q(layout.positives)} AS VARCHAR[])" if layout.positives_is_list else f"[{text(layout.positives)}]"
    if layout.negatives_is_list:
        neg = f"coalesce(TRY_CAST({_q(layout.negatives[0])} AS VARCHAR[]), [])"
    else:
        neg = "[" + ", ".join(text(k) for k in layout.negatives) + "]"
    pos_scores = f"TRY_CAST({_q(layout.pos_scores)} AS DOUBLE[])" if layout.pos_scores else "NULL::DOUBLE[]"
    neg_scores = f"TRY_CAST({_q(layout.neg_scores)} AS DOUBLE[])" if layout.neg_scores else "NULL::DOUBLE[]"
    prompt = text(layout.prompt) if layout.prompt else "NULL::VARCHAR"
    return (
        f"md5({text(layout.query)}) AS q_hash, {text(layout.query)} AS query, {pos} AS pos, {neg} AS neg, "
        f"{pos_scores} AS pos_scores, {neg_scores} AS neg_scores, {prompt} AS prompt"
    )


def stage_pairs(con: duckdb.DuckDBPyConnection, layout: PairLayout) -> None:
    """From the checked `recs` table (see pair_projection), fill the staging tables."""
    ranked = layout.negatives_is_list or len(layout.negatives) > 1
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_queries AS
        SELECT substr(q_hash, 1, 16) AS query_id, any_value(query) AS text, q_hash AS text_hash,
               any_value(prompt) AS prompt, count(*) AS occurrences
        FROM recs WHERE NOT _bad GROUP BY q_hash
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE pairs AS
        SELECT substr(q_hash, 1, 16) AS query_id, md5(t) AS d_hash, t AS text, kind, idx, score FROM (
            SELECT q_hash, unnest(pos) AS t, unnest(coalesce(pos_scores, [])) AS score,
                   unnest(range(1, len(pos) + 1)) AS idx, 'pos' AS kind FROM recs WHERE NOT _bad
            UNION ALL
            SELECT q_hash, unnest(neg), unnest(coalesce(neg_scores, [])), unnest(range(1, len(neg) + 1)), 'neg'
            FROM recs WHERE NOT _bad
        ) WHERE t IS NOT NULL
        """
    )
    con.execute("DROP TABLE recs")  # free memory before the heavy grouping: under the memory ceiling a spill is slow
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_docs AS
        SELECT substr(d_hash, 1, 16) AS doc_id, NULL::VARCHAR AS title, any_value(text) AS text,
               d_hash AS text_hash, count(*) AS occurrences
        FROM pairs GROUP BY d_hash
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_qrels AS
        SELECT query_id, substr(d_hash, 1, 16) AS doc_id, TRUE AS relevant, NULL::INTEGER AS grade,
               max(score) AS teacher_score, NULL::BIGINT AS line
        FROM pairs WHERE kind = 'pos' GROUP BY ALL
        """
    )
    rank = "min(idx)" if ranked else "NULL::INTEGER"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE s_cands AS
        SELECT query_id, substr(d_hash, 1, 16) AS doc_id, {rank} AS source_rank, max(score) AS source_score
        FROM pairs WHERE kind = 'neg' GROUP BY ALL
        """
    )
    con.execute("DROP TABLE pairs")


# --------------------------------------------------------------------------------------------------------------
# BEIR folders


def beir_split_file(folder: Path, split: str | None) -> Path:
    qrels_dir = folder / "qrels"
    files = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not files:
        raise IngestError(str(qrels_dir), None, "no qrels/<split>.tsv file: a BEIR folder needs its judgments")
    names = [f.stem for f in files]
    if split is None:
        split = "train" if "train" in names else (names[0] if len(names) == 1 else None)
        if split is None:
            raise IngestError(str(qrels_dir), None, f"several splits ({', '.join(names)}) and no 'train': pass --split")
    if split not in names:
        raise IngestError(str(qrels_dir), None, f"no split {split!r}; found: {', '.join(names)}")
    return qrels_dir / f"{split}.tsv"


BadLine = Callable[[int, str, str], None]


def stage_beir(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    qrels_path: Path,
    load: Callable[[Path, list[str], list[Field]], None],
    on_bad_qrel: BadLine | None = None,
) -> int:
    """Stage corpus, queries and qrels of a BEIR folder. Returns the number of queries left out (no judgment).

    `load(path, keys, specs)` fills temp table `raw` with checked records (raising, or skipping bad lines);
    `on_bad_qrel(line, field, reason)`, when given, is told of bad qrels lines instead of raising.
    """
    corpus, queries = folder / "corpus.jsonl", folder / "queries.jsonl"
    for path, specs, table in ((corpus, BEIR_CORPUS_FIELDS, "raw_corpus"), (queries, BEIR_QUERY_FIELDS, "raw_queries")):
        load(path, [s.name for s in specs], specs)
        con.execute(f"ALTER TABLE raw RENAME TO {table}")
    _check_unique_ids(con, "raw_corpus", corpus, "concat_ws(' ', json_extract_string(title, '$'), json_extract_string(text, '$'))")
    _check_unique_ids(con, "raw_queries", queries, "json_extract_string(text, '$')")
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_docs AS
        SELECT json_extract_string(_id, '$') AS doc_id, any_value(nullif(json_extract_string(title, '$'), '')) AS title,
               any_value(json_extract_string(text, '$')) AS text, NULL::VARCHAR AS text_hash, count(*) AS occurrences
        FROM raw_corpus GROUP BY 1
        """
    )
    # The embedded text of a document is "title text" (the BEIR convention); its hash keys the embedding cache.
    con.execute("UPDATE s_docs SET text_hash = md5(CASE WHEN title IS NULL THEN text ELSE title || ' ' || text END)")
    _stage_qrels(con, qrels_path, on_bad_qrel)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_queries AS
        SELECT json_extract_string(_id, '$') AS query_id, any_value(json_extract_string(text, '$')) AS text,
               md5(any_value(json_extract_string(text, '$'))) AS text_hash, NULL::VARCHAR AS prompt,
               count(*) AS occurrences
        FROM raw_queries GROUP BY 1
        """
    )
    left_out = con.execute(
        "SELECT count(*) FROM s_queries WHERE query_id NOT IN (SELECT query_id FROM s_qrels)"
    ).fetchone()[0]
    con.execute("DELETE FROM s_queries WHERE query_id NOT IN (SELECT query_id FROM s_qrels)")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE s_cands (query_id VARCHAR, doc_id VARCHAR, source_rank INTEGER, source_score DOUBLE)"
    )
    con.execute("DROP TABLE raw_corpus; DROP TABLE raw_queries")
    return left_out


def _check_unique_ids(con: duckdb.DuckDBPyConnection, table: str, path: Path, text_sql: str) -> None:
    dup = con.execute(
        f"SELECT json_extract_string(_id, '$') FROM {table} GROUP BY 1 HAVING count(DISTINCT {text_sql}) > 1 LIMIT 1"
    ).fetchone()
    if dup:
        lines = find_id_lines(path, "_id", {dup[0]}).get(dup[0], [])
        where = f"{path}:{lines[1]}" if len(lines) > 1 else str(path)
        first = f" (first seen on line {lines[0]})" if lines else ""
        raise IngestError(where, "_id", f"duplicate id {dup[0]!r} with different text{first}")


def _parse_qrel_line(raw: bytes) -> tuple[str, str, int] | tuple[str | None, str]:
    """(query-id, corpus-id, grade), or (field, reason) when the line is bad."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
    parts = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))
    if len(parts) == 4:  # TREC layout: qid iteration docid score
        parts = [parts[0], parts[2], parts[3]]
    if len(parts) != 3:
        return None, f"expected 3 tab-separated columns, got {len(parts)}"
    qid, did, score = (p.strip() for p in parts)
    for name, val in (("query-id", qid), ("corpus-id", did)):
        if not val:
            return name, "empty"
    try:
        return qid, did, int(score)
    except ValueError:
        return "score", f"expected an integer, got {score!r}"


def _stage_qrels(con: duckdb.DuckDBPyConnection, path: Path, on_bad: BadLine | None = None) -> None:
    """Parse a qrels TSV in Python (line-exact messages), then check its ids against the staged and stored texts."""
    rows: list[tuple[str, str, int, int]] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if lineno == 1 and raw.split(b"\t")[0].strip().lower() in (b"query-id", b"query_id", b"qid"):
                continue
            parsed = _parse_qrel_line(raw)
            if len(parsed) == 2:
                if on_bad is None:
                    raise IngestError(f"{path}:{lineno}", parsed[0], parsed[1])
                on_bad(lineno, parsed[0], parsed[1])
                continue
            rows.append((*parsed, lineno))
    if not rows:
        raise IngestError(str(path), None, "file is empty: no judgments")
    import pyarrow as pa

    table = pa.table(
        {
            "query_id": [r[0] for r in rows],
            "doc_id": [r[1] for r in rows],
            "grade": pa.array([r[2] for r in rows], pa.int32()),
            "line": [r[3] for r in rows],
        }
    )
    con.register("qrels_arrow", table)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_qrels AS
        SELECT query_id, doc_id, bool_or(grade > 0) AS relevant, max(grade) AS grade, NULL::DOUBLE AS teacher_score,
               min(line) AS line
        FROM qrels_arrow GROUP BY query_id, doc_id
        """
    )
    con.unregister("qrels_arrow")
    for col, known in (("query_id", "queries"), ("doc_id", "docs")):
        staged = "raw_queries" if known == "queries" else "raw_corpus"
        stored = "queries" if known == "queries" else "documents"
        bad = con.execute(
            f"""
            SELECT {col}, line FROM s_qrels
            WHERE {col} NOT IN (SELECT json_extract_string(_id, '$') FROM {staged})
              AND {col} NOT IN (SELECT {col} FROM {stored})
            ORDER BY line LIMIT 1
            """
        ).fetchone()
        field = "query-id" if col == "query_id" else "corpus-id"
        what = "queries.jsonl" if col == "query_id" else "corpus.jsonl"
        if bad and on_bad is None:
            raise IngestError(f"{path}:{bad[1]}", field, f"unknown id {bad[0]!r}: not in {what} nor in the store")
        if bad:
            unknown = con.execute(
                f"""
                DELETE FROM s_qrels WHERE {col} NOT IN (SELECT json_extract_string(_id, '$') FROM {staged})
                  AND {col} NOT IN (SELECT {col} FROM {stored})
                RETURNING {col}, line
                """
            ).fetchall()
            for value, line in unknown:
                on_bad(line, field, f"unknown id {value!r}: not in {what} nor in the store")
