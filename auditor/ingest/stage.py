"""From checked records to staging tables, in SQL.

Every format ends up in the same four staging tables, which `auditor.ingest.merge` then folds into the store:
``s_queries(query_id, text, text_hash, prompt)``, ``s_docs(doc_id, title, text, text_hash)``,
``s_qrels(query_id, doc_id, relevant, grade, teacher_score)``, ``s_cands(query_id, doc_id, source_rank,
source_score)``. Ids are the source's own where it has them (BEIR ``_id``), else the first 16 hex digits of the md5
of the text, so the same text always gets the same id and is stored once.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb

from auditor.ingest.diagnose import BOM
from auditor.ingest.errors import IngestError
from auditor.ingest.formats import PairLayout
from auditor.ingest.limits import GRADE_RANGE
from auditor.ingest.read import Problem, Rejects
from auditor.ingest.rules import BLANK_RE, ID, Field, problem_sql, split_problem
from auditor.sql import ident, lit

# --------------------------------------------------------------------------------------------------------------
# Pair formats: FlagEmbedding, sentence-transformers triplets and n-tuples


def pair_projection(layout: PairLayout) -> str:
    """What staging needs from each record of a pair format (TRY_CAST: bad records are flagged, not fatal)."""
    def text(k: str) -> str:
        return f"json_extract_string({ident(k)}, '$')"

    if layout.labels:
        return _labeled_projection(layout, text)
    pos = f"TRY_CAST({ident(layout.positives)} AS VARCHAR[])" if layout.positives_is_list else f"[{text(layout.positives)}]"
    if layout.negatives_is_list:
        neg = f"coalesce(TRY_CAST({ident(layout.negatives[0])} AS VARCHAR[]), [])"
        neg_rank = "NULL::BIGINT[]"
    else:
        neg = "[" + ", ".join(text(k) for k in layout.negatives) + "]"
        neg_rank = "[" + ", ".join(map(str, layout.negative_ranks)) + "]::BIGINT[]" if layout.negative_ranks else "NULL::BIGINT[]"
    pos_scores = f"TRY_CAST({ident(layout.pos_scores)} AS DOUBLE[])" if layout.pos_scores else "NULL::DOUBLE[]"
    neg_scores = f"TRY_CAST({ident(layout.neg_scores)} AS DOUBLE[])" if layout.neg_scores else "NULL::DOUBLE[]"
    if layout.scores:  # one list: the positive's score, then each present negative's, in key order
        all_scores = f"TRY_CAST({ident(layout.scores)} AS DOUBLE[])"
        pos_scores = f"{all_scores}[1:1]"
        if layout.negatives_is_list:
            neg_scores = f"{all_scores}[2:]"
        else:  # numbered negatives a record may lack: each present one takes the next score
            present = [f"(CASE WHEN {text(k)} IS NULL THEN 0 ELSE 1 END)" for k in layout.negatives]
            neg_scores = "[" + ", ".join(
                f"CASE WHEN {text(k)} IS NULL THEN NULL ELSE {all_scores}[1 + {' + '.join(present[:i + 1])}] END"
                for i, k in enumerate(layout.negatives)) + "]"
    prompt = _prompt(layout, text)
    return (
        f"md5({text(layout.query)}) AS q_hash, {text(layout.query)} AS query, {pos} AS pos, {neg} AS neg, "
        f"{neg_rank} AS neg_rank, {pos_scores} AS pos_scores, {neg_scores} AS neg_scores, {prompt} AS prompt"
    )


def _prompt(layout: PairLayout, text) -> str:
    """A record's prompt; a blank one is no prompt (the query keeps the prompt it has, or none): FlagEmbedding reads
    "" as "no instruction", and the store keeps one prompt per query."""
    if not layout.prompt:
        return "NULL::VARCHAR"
    value = text(layout.prompt)
    return f"CASE WHEN regexp_full_match({value}, {lit(BLANK_RE)}) THEN NULL ELSE {value} END"


def _labeled_projection(layout: PairLayout, text) -> str:
    """labeled-pair / labeled-list: the documents labelled 1 are the positives, those labelled 0 the negatives (in
    their order: a labeled-list's negatives are ranked, as mine_hard_negatives writes them hardest first)."""
    def positive(label_sql: str) -> str:
        return f"{label_sql} IN ('1', 'true')"

    if layout.format == "labeled-list":
        docs = f"TRY_CAST({ident(layout.positives)} AS VARCHAR[])"
        labels = f"json_extract_string({ident(layout.labels)}, '$[*]')"
        pick = f"[{docs}[i] for i in range(1, len({docs}) + 1) if {{cond}}]"
        pos = pick.format(cond=positive(f"{labels}[i]"))
        neg = pick.format(cond="NOT " + positive(f"{labels}[i]"))
    else:
        label = f"json_extract_string({ident(layout.labels)}, '$')"
        pos = f"CASE WHEN {positive(label)} THEN [{text(layout.positives)}] ELSE []::VARCHAR[] END"
        neg = f"CASE WHEN {positive(label)} THEN []::VARCHAR[] ELSE [{text(layout.positives)}] END"
    prompt = _prompt(layout, text)
    return (
        f"md5({text(layout.query)}) AS q_hash, {text(layout.query)} AS query, {pos} AS pos, {neg} AS neg, "
        f"NULL::BIGINT[] AS neg_rank, NULL::DOUBLE[] AS pos_scores, NULL::DOUBLE[] AS neg_scores, {prompt} AS prompt"
    )


def stage_pairs(con: duckdb.DuckDBPyConnection, layout: PairLayout) -> None:
    """From the checked `recs` table (see pair_projection; bad records already removed), fill the staging tables.

    Keys only: every (query, text) pair is staged as hashes plus a pointer to where its text sits in `recs` (record
    row, list, position), never as the text itself. Grouping tens of millions of passages (most of them repeats of a
    few million) by hash is then cheap, and only the texts of documents the store does not hold yet are copied out of
    `recs`, once each, by their first pointer. Staging full texts cost a second and third copy of the whole input,
    spilled to disk under the memory ceiling (bench/scale.py).
    """
    ranked = layout.negatives_is_list or bool(layout.negative_ranks) or layout.format == "labeled-list"
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_queries AS
        SELECT substr(q_hash, 1, 16) AS query_id, any_value(query) AS text, q_hash AS text_hash,
               any_value(prompt) AS prompt, count(*) AS occurrences
        FROM recs GROUP BY q_hash
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE pairs AS
        SELECT substr(q_hash, 1, 16) AS query_id, md5(t) AS d_hash, kind, idx, score, ptr FROM (
            {_unnest_texts("q_hash, ")}
        ) WHERE t IS NOT NULL
        """
    )
    # One row per distinct text: how often it occurs and where it first occurs (record row, list, position).
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_doc_keys AS
        SELECT d_hash, count(*) AS occurrences, min(ptr) AS ptr FROM pairs GROUP BY d_hash
        """
    )
    # The texts of the documents that are new to the store, read back from `recs` by their first pointer (a semi
    # join: the pointers are the hash table, the texts stream past it).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE s_doc_texts AS
        SELECT u.ptr, u.t AS text FROM ({_unnest_texts("")}) u
        SEMI JOIN (SELECT ptr FROM s_doc_keys WHERE substr(d_hash, 1, 16) NOT IN (SELECT doc_id FROM documents)) n
             ON n.ptr = u.ptr
        """
    )
    con.execute("DROP TABLE recs")
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_docs AS
        SELECT substr(d_hash, 1, 16) AS doc_id, NULL::VARCHAR AS title, t.text, d_hash AS text_hash, k.occurrences
        FROM s_doc_keys k LEFT JOIN s_doc_texts t USING (ptr)
        """
    )
    con.execute("DROP TABLE s_doc_keys; DROP TABLE s_doc_texts")
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


#: A text's place in `recs` as one number: record row, list (positives 0, negatives 1) and 1-based position, in bits
#: 24.., 23 and 0..22. A record is at most MAX_RECORD_BYTES (16 MiB) and a list item takes at least 3 bytes ("",
#: would be blank and refused before), so a position is below 2**23.
_PTR = "(rowid * 16777216 + {neg} * 8388608 + {k})"


def _unnest_texts(extra: str) -> str:
    """Every positive and negative text of `recs`, one row each: ``{extra}kind, ptr, t, score, idx`` where `kind` is
    its list ('pos' | 'neg'), `ptr` its place in `recs` (see _PTR), `idx` the rank it stands for (its position, or the
    number of an n-tuple's negative_<n> key) and `score` the teacher's score."""
    pos_k, neg_k = "unnest(range(1, len(pos) + 1))", "unnest(range(1, len(neg) + 1))"
    return f"""
            SELECT {extra}'pos' AS kind, {_PTR.format(neg=0, k=pos_k)} AS ptr, unnest(pos) AS t,
                   unnest(coalesce(pos_scores, [])) AS score, unnest(range(1, len(pos) + 1)) AS idx
            FROM recs
            UNION ALL
            SELECT {extra}'neg', {_PTR.format(neg=1, k=neg_k)}, unnest(neg), unnest(coalesce(neg_scores, [])),
                   unnest(coalesce(neg_rank, range(1, len(neg) + 1)))
            FROM recs"""


# --------------------------------------------------------------------------------------------------------------
# BEIR folders


def beir_files(folder: Path, split: str | None) -> tuple[Path, Path, Path]:
    """corpus.jsonl, queries.jsonl and the qrels file of the split; a missing one is refused by name."""
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).is_file():
            raise IngestError(str(folder), None, f"not a BEIR folder: no {name} (expected corpus.jsonl, queries.jsonl, "
                                                 "qrels/<split>.tsv)")
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
    return folder / "corpus.jsonl", folder / "queries.jsonl", qrels_dir / f"{split}.tsv"


def stage_beir_texts(con: duckdb.DuckDBPyConnection) -> None:
    """s_docs and s_queries from the checked raw_corpus and raw_queries tables."""
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
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_queries AS
        SELECT json_extract_string(_id, '$') AS query_id, any_value(json_extract_string(text, '$')) AS text,
               md5(any_value(json_extract_string(text, '$'))) AS text_hash, NULL::VARCHAR AS prompt,
               count(*) AS occurrences
        FROM raw_queries GROUP BY 1
        """
    )


def finish_beir(con: duckdb.DuckDBPyConnection) -> int:
    """Keep the queries that have a judgment; returns how many were left out."""
    left_out = con.execute(
        "SELECT count(*) FROM s_queries WHERE query_id NOT IN (SELECT query_id FROM s_qrels)"
    ).fetchone()[0]
    con.execute("DELETE FROM s_queries WHERE query_id NOT IN (SELECT query_id FROM s_qrels)")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE s_cands (query_id VARCHAR, doc_id VARCHAR, source_rank INTEGER, source_score DOUBLE)"
    )
    con.execute("DROP TABLE raw_corpus; DROP TABLE raw_queries")
    return left_out


_QREL_FIELDS = [Field("query-id", ID), Field("corpus-id", ID)]


def _parse_qrel_line(raw: bytes) -> tuple[str, str, int] | tuple[str | None, str]:
    """(query-id, corpus-id, grade), or (field, reason) when the line is bad. Ids are checked later, by the rules."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
    try:
        parts = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))
    except csv.Error as exc:
        return None, f"malformed line: {exc}"
    if len(parts) == 4:  # TREC layout: qid iteration docid score
        parts = [parts[0], parts[2], parts[3]]
    if len(parts) != 3:
        return None, f"expected 3 tab-separated columns, got {len(parts)}"
    qid, did, score = (p.strip() for p in parts)
    try:
        grade = int(score)
    except ValueError:
        return "score", f"expected an integer, got {score[:50]!r}"
    if not GRADE_RANGE[0] <= grade <= GRADE_RANGE[1]:
        return "score", f"grade {grade} is outside the 32-bit range {GRADE_RANGE[0]}..{GRADE_RANGE[1]}"
    return qid, did, grade


def _read_qrels(path: Path) -> tuple[list[tuple[str, str, int, int]], list[Problem]]:
    rows: list[tuple[str, str, int, int]] = []
    problems: list[Problem] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            if lineno == 1 and raw.split(b"\t")[0].strip().lower() in (b"query-id", b"query_id", b"qid"):
                continue
            parsed = _parse_qrel_line(raw)
            if len(parsed) == 2:
                problems.append(Problem(lineno, parsed[0], parsed[1]))
            else:
                rows.append((*parsed, lineno))
    return rows, problems


def stage_qrels(con: duckdb.DuckDBPyConnection, path: Path, rejects: Rejects | None = None) -> int:
    """Parse a qrels TSV (line-exact messages), check its ids by the rule table, then against the staged and stored
    texts; bad lines stop the ingest, or, with `rejects`, are reported and left out. Returns the judgments kept."""
    import pyarrow as pa

    rows, problems = _read_qrels(path)
    if not rows and not problems:
        raise IngestError(str(path), None, "file is empty: no judgments")
    table = pa.table(
        {
            "query_id": pa.array([r[0] for r in rows], pa.string()),
            "doc_id": pa.array([r[1] for r in rows], pa.string()),
            "grade": pa.array([r[2] for r in rows], pa.int32()),
            "line": pa.array([r[3] for r in rows], pa.int64()),
        }
    )
    con.register("qrels_arrow", table)
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE raw_qrels AS
            SELECT query_id, doc_id, grade, line, {problem_sql(_QREL_FIELDS)} AS _problem FROM (
                SELECT *, to_json(query_id) AS "query-id", to_json(doc_id) AS "corpus-id" FROM qrels_arrow)
            """
        )
    finally:
        con.unregister("qrels_arrow")
    bad = con.execute("SELECT line, _problem FROM raw_qrels WHERE _problem IS NOT NULL ORDER BY line").fetchall()
    problems += [Problem(line, *split_problem(text)) for line, text in bad]
    con.execute("DELETE FROM raw_qrels WHERE _problem IS NOT NULL")
    kept = len(rows) - len(bad)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE s_qrels AS
        SELECT query_id, doc_id, bool_or(grade > 0) AS relevant, max(grade) AS grade, NULL::DOUBLE AS teacher_score,
               min(line) AS line
        FROM raw_qrels GROUP BY query_id, doc_id
        """
    )
    con.execute("DROP TABLE raw_qrels")
    for col, field, what, staged, stored in (
        ("query_id", "query-id", "queries.jsonl", "raw_queries", "queries"),
        ("doc_id", "corpus-id", "corpus.jsonl", "raw_corpus", "documents"),
    ):
        unknown = con.execute(
            f"""
            DELETE FROM s_qrels WHERE {col} NOT IN (SELECT json_extract_string(_id, '$') FROM {staged})
              AND {col} NOT IN (SELECT {col} FROM {stored})
            RETURNING {col}, line
            """
        ).fetchall()
        problems += [Problem(line, field, f"unknown id {value!r}: not in {what} nor in the store")
                     for value, line in unknown]
        kept -= len(unknown)
    problems.sort(key=lambda p: p.line or 0)
    if problems and rejects is None:
        first = problems[0]
        raise IngestError(f"{path}:{first.line}", first.field, first.message, more=len(problems) - 1)
    for p in problems:
        rejects.add(path, p.line, p.field, p.message, None)
    if not con.execute("SELECT count(*) FROM s_qrels").fetchone()[0]:
        raise IngestError(str(path), None, f"no valid judgments: all {len(problems):,} lines were rejected"
                          + (f" (reasons in {rejects.path})" if rejects else ""))
    return kept
