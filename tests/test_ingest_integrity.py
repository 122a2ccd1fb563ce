"""Integrity of ingest (issue 8): every case of the issue, each either stored complete or refused with file, line and
field, the store unchanged and no traceback; limits enforced; nothing left in the temp directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pandas as pd
import pytest

from auditor.ingest import IngestError, ingest_path, limits
from auditor.ingest.scratch import PREFIX, sweep_stale
from auditor.store import StoreError, open_store

from conftest import CRANFIELD, MSMARCO, ROOT
from test_ingest import _beir_copy, msmarco_rows, snapshot, write_jsonl


def refused(con, path, **kw) -> str:
    """Ingest `path` expecting a refusal; returns the message after checking the store did not change."""
    before = snapshot(con)
    with pytest.raises(IngestError) as info:
        ingest_path(con, path, **kw)
    assert snapshot(con) == before
    return str(info.value)


@pytest.fixture
def stocked(store):
    """A store that already holds the MS MARCO sample: refusals must leave it exactly as it is."""
    ingest_path(store, MSMARCO)
    return store


def plain_flag_rows() -> list[dict]:
    """FlagEmbedding records as its own mining script writes them: no pos_scores / neg_scores, no prompt."""
    return [{"query": r["query"], "pos": r["pos"], "neg": r["neg"]} for r in msmarco_rows()]


def given_texts(con) -> set[tuple[str, str, str]]:
    """(query, kind, text) of everything stored, for completeness checks."""
    return set(con.execute(
        """
        SELECT q.text, 'pos', d.text FROM qrels r JOIN queries q USING (query_id) JOIN documents d USING (doc_id)
        WHERE r.relevant
        UNION ALL
        SELECT q.text, 'neg', d.text FROM candidates c JOIN queries q USING (query_id) JOIN documents d USING (doc_id)
        """
    ).fetchall())


# ---------------------------------------------------------------------------------------------------------------
# The plainest FlagEmbedding file, and files that hold nothing


def test_flag_file_without_scores_is_stored_complete(store, tmp_path):
    rows = plain_flag_rows()
    path = tmp_path / "mined.jsonl"
    write_jsonl(path, rows)
    summary = ingest_path(store, path)
    assert (summary.records, summary.queries, summary.positives, summary.candidates) == (10, 10, 10, 250)
    assert not summary.nothing_new
    expected = {(r["query"], "pos", p) for r in rows for p in r["pos"]} | {(r["query"], "neg", n) for r in rows for n in r["neg"]}
    assert given_texts(store) == expected
    assert store.execute("SELECT count(source_score) FROM candidates").fetchone()[0] == 0
    again = ingest_path(store, path)
    assert again.nothing_new and again.records == 10


def test_own_ntuple_export_ingests_again(handbuilt_store, tmp_path):
    from auditor.export import export

    out = tmp_path / "export.jsonl"
    export(handbuilt_store, out, fmt="ntuple", negatives=3)
    con = open_store(tmp_path / "fresh.duckdb")
    try:
        summary = ingest_path(con, out)
        assert summary.queries == 3 and summary.candidates > 0 and not summary.nothing_new
    finally:
        con.close()


@pytest.mark.parametrize("content, words", [
    (b"", "file is empty"),
    (b"\n \n\t\n", "file is empty"),
    (b"\xef\xbb\xbf\n", "file is empty"),
])
def test_file_with_no_record_is_refused(stocked, tmp_path, content, words):
    path = tmp_path / "nothing.jsonl"
    path.write_bytes(content)
    assert words in refused(stocked, path, fmt="flag")


def test_nothing_new_needs_records_read(stocked, tmp_path):
    path = tmp_path / "header-only.csv"
    path.write_text("anchor,positive,negative\n")
    assert f"{path}: file is empty: no records" in refused(stocked, path)
    bad = tmp_path / "all-bad.jsonl"
    write_jsonl(bad, [{"query": " ", "pos": ["p"], "neg": []}, {"query": "q", "pos": [], "neg": []}])
    message = refused(stocked, bad, skip_bad=True, rejects_path=tmp_path / "r.jsonl")
    assert "no valid records: all 2 were rejected" in message


# ---------------------------------------------------------------------------------------------------------------
# Keys first seen late; keys a format would drop


def test_ntuple_negative_first_seen_on_a_late_line_is_read(store, tmp_path):
    rows = msmarco_rows()
    recs = [{"query": r["query"], "positive": r["pos"][0], "negative_1": r["neg"][0], "negative_2": r["neg"][1]}
            for r in rows]
    recs[4]["negative_3"] = rows[4]["neg"][2]  # line 5 is the only one with a third negative
    path = tmp_path / "late.jsonl"
    write_jsonl(path, recs)
    summary = ingest_path(store, path)
    assert summary.candidates == 21
    rank = store.execute(
        "SELECT c.source_rank FROM candidates c JOIN documents d USING (doc_id) WHERE d.text = ?", [rows[4]["neg"][2]]
    ).fetchone()
    assert rank == (3,)


def test_text_key_the_format_does_not_read_is_refused(stocked, tmp_path):
    rows = msmarco_rows()
    recs = [{"anchor": r["query"], "positive": r["pos"][0], "negative": r["neg"][0]} for r in rows]
    recs[3]["negative_2"] = rows[3]["neg"][1]
    path = tmp_path / "triplets.jsonl"
    write_jsonl(path, recs)
    message = refused(stocked, path)
    assert message.startswith(f"{path}:4: field 'negative_2': ") and "would be lost" in message
    assert "--format ntuple" in message


def test_csv_duplicate_header_is_refused(stocked, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("anchor,positive,negative,negative\nq,p,n1,n2\n")
    message = refused(stocked, path)
    assert message.startswith(f"{path}:line 1: field 'negative': column appears twice")


def test_parquet_duplicate_column_is_refused(stocked, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array(["q"]), pa.array(["p"]), pa.array(["n1"]), pa.array(["n2"])],
                            names=["anchor", "positive", "negative", "negative"]), path)
    assert refused(stocked, path).startswith(f"{path}: field 'negative': column appears twice")


# ---------------------------------------------------------------------------------------------------------------
# Invalid values: non-finite or huge scores, blank texts


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity", "1e308", "1e400", "-2e6"])
def test_scores_must_be_finite_and_sane(stocked, tmp_path, score):
    lines = MSMARCO.read_text().splitlines()
    record = json.loads(lines[2])
    text = json.dumps(record).replace(json.dumps(record["neg_scores"][0]), score, 1)
    lines[2] = text
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = refused(stocked, path)
    assert message.startswith(f"{path}:3: field 'neg_scores': item 1 is NaN, infinite or beyond ±1,000,000")


@pytest.mark.parametrize("blank", [" ", "\t", "\n \r\n", "\u3000", "\u00a0\u2003", "\u200b", "\ufeff"])
@pytest.mark.parametrize("field", ["query", "pos", "neg"])
def test_blank_texts_are_refused_in_flag_files(stocked, tmp_path, blank, field):
    rows = plain_flag_rows()
    rows[5][field] = blank if field == "query" else [rows[5][field][0], blank]
    path = tmp_path / "blank.jsonl"
    write_jsonl(path, rows)
    message = refused(stocked, path)
    words = "blank: empty or only whitespace" if field == "query" else "item 2 is blank"
    assert message.startswith(f"{path}:6: field '{field}': ") and words in message


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_blank_texts_are_refused_in_triplets(stocked, tmp_path, suffix):
    rows = [{"anchor": r["query"], "positive": r["pos"][0], "negative": r["neg"][0]} for r in msmarco_rows()]
    rows[6]["negative"] = " \t "
    path = tmp_path / f"t{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
        where = f"{path}:7"
    elif suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
        where = f"{path}:line 8"
    else:
        pd.DataFrame(rows).to_parquet(path)
        where = f"{path}:row 7"
    assert refused(stocked, path).startswith(f"{where}: field 'negative': blank")


def test_blank_beir_query_is_refused_but_blank_passage_is_kept(store, tmp_path):
    beir = _beir_copy(tmp_path)
    lines = (beir / "queries.jsonl").read_text().splitlines()
    original = lines[9]
    lines[9] = json.dumps({"_id": json.loads(original)["_id"], "text": "\t"})
    (beir / "queries.jsonl").write_text("\n".join(lines) + "\n")
    message = refused(store, beir)
    assert message.startswith(f"{beir / 'queries.jsonl'}:10: field 'text': blank")
    lines[9] = original
    (beir / "queries.jsonl").write_text("\n".join(lines) + "\n")
    corpus = (beir / "corpus.jsonl").read_text().splitlines()
    corpus[0] = json.dumps({**json.loads(corpus[0]), "text": "  "})  # real corpora hold empty passages
    (beir / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    assert ingest_path(store, beir).documents == 1400


# ---------------------------------------------------------------------------------------------------------------
# Former tracebacks


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("index", [0, 2])  # line 1 is where the format is detected
def test_deep_nesting_in_a_key_ingest_does_not_read_is_stored(store, tmp_path, index):
    lines = MSMARCO.read_text().splitlines()
    lines[index] = lines[index][:-1] + f', "meta": {_deep(3000)}}}'
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert ingest_path(store, path).queries == 10


def test_deep_nesting_in_a_field_is_refused_by_name(stocked, tmp_path):
    lines = MSMARCO.read_text().splitlines()
    lines[2] = json.dumps({"query": "q", "pos": ["p"]})[:-1] + f', "neg": {_deep(3000)}}}'
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = refused(stocked, path)
    assert message.startswith(f"{path}:3: field 'neg': expected a list of strings, but item 1 is a list")


def test_deep_nesting_on_a_malformed_line_is_named(stocked, tmp_path):
    lines = MSMARCO.read_text().splitlines()
    lines[6] = lines[6][:-1] + ', "meta": ' + "[" * 3000 + "}"
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert refused(stocked, path).startswith(f"{path}:7: malformed JSON")


def test_qrels_grade_beyond_int32_is_refused(stocked, tmp_path):
    beir = _beir_copy(tmp_path)
    qrels = beir / "qrels" / "test.tsv"
    with open(qrels, "a") as fh:
        fh.write("1\t184\t99999999999\n")
    n = len(qrels.read_text().splitlines())
    assert refused(stocked, beir).startswith(f"{qrels}:{n}: field 'score': grade 99999999999 is outside the 32-bit")


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl"])
def test_beir_folder_without_a_file_is_refused(stocked, tmp_path, missing):
    beir = _beir_copy(tmp_path)
    (beir / missing).unlink()
    assert refused(stocked, beir, fmt="beir") == f"{beir}: not a BEIR folder: no {missing} (expected corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"


@pytest.mark.parametrize("bad_id, words", [
    (2**70, "expected a string or an integer that fits in 64 bits, got a number"),
    (1.5, "expected a string or an integer that fits in 64 bits, got a number"),
    ("x" * 1025, "longer than 1,024 characters (1025)"),
    (" ", "blank"),
])
def test_bad_ids_are_refused(stocked, tmp_path, bad_id, words):
    beir = _beir_copy(tmp_path)
    with open(beir / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": bad_id, "title": "", "text": "x"}) + "\n")
    message = refused(stocked, beir)
    assert message.startswith(f"{beir / 'corpus.jsonl'}:1401: field '_id': ") and words in message


def test_integer_ids_within_64_bits_are_kept(store, tmp_path):
    beir = _beir_copy(tmp_path)
    with open(beir / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": 2**64 - 1, "title": "", "text": "x"}) + "\n")
    with open(beir / "qrels" / "test.tsv", "a") as fh:
        fh.write(f"1\t{2**64 - 1}\t1\n")
    ingest_path(store, beir)
    assert store.execute("SELECT text FROM documents WHERE doc_id = ?", [str(2**64 - 1)]).fetchone() == ("x",)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("command", ["info", "ingest"])
def test_a_file_that_is_not_a_store_is_named_as_such(tmp_path, command):
    not_a_store = tmp_path / "some.jsonl"
    shutil.copyfile(MSMARCO, not_a_store)
    args = ["info", "--db", str(not_a_store)] if command == "info" else ["ingest", str(CRANFIELD), "--db", str(not_a_store)]
    out = _cli(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{not_a_store} is not an auditor store" in out.stderr
    assert not_a_store.read_bytes() == MSMARCO.read_bytes()
    with pytest.raises(StoreError, match="not an auditor store"):
        open_store(not_a_store)


# ---------------------------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("size", [limits.MAX_RECORD_BYTES + 50, 40 * 1024 * 1024])  # DuckDB reads the first, not the second
def test_record_over_the_limit_is_refused_by_line(stocked, tmp_path, size):
    rows = plain_flag_rows()
    rows[1]["pos"] = ["word " * (size // 5)]
    path = tmp_path / "big.jsonl"
    write_jsonl(path, rows)
    message = refused(stocked, path)
    assert message.startswith(f"{path}:2: record is ") and f"more than the limit of {limits.MAX_RECORD_BYTES:,}" in message


def test_record_just_under_the_limit_is_stored(store, tmp_path):
    rows = plain_flag_rows()
    passage = "word " * ((limits.MAX_RECORD_BYTES - 200_000) // 5)
    rows[1]["pos"] = [passage]
    path = tmp_path / "big.jsonl"
    write_jsonl(path, rows)
    assert ingest_path(store, path).queries == 10
    assert store.execute("SELECT max(length(text)) FROM documents").fetchone()[0] == len(passage)


# ---------------------------------------------------------------------------------------------------------------
# The right line, in few words; a byte order mark everywhere


def test_lone_surrogate_is_named_on_its_own_line(stocked, tmp_path):
    lines = MSMARCO.read_text().splitlines()
    lines[1] = lines[1].replace('"query": "', '"query": "\\ud800', 1)
    path = tmp_path / "surrogate.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert refused(stocked, path).startswith(f"{path}:2: lone UTF-16 surrogate")


def test_duplicate_key_is_named(stocked, tmp_path):
    lines = MSMARCO.read_text().splitlines()
    lines[3] = lines[3].replace('{"query": ', '{"query": "first", "query": ', 1)
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert refused(stocked, path).startswith(f"{path}:4: key 'query' appears twice")


def _triplet_frame() -> pd.DataFrame:
    return pd.DataFrame([{"anchor": r["query"], "positive": r["pos"][0], "negative": n}
                         for r in msmarco_rows() for n in r["neg"][:2]])


def test_csv_multiline_cells_do_not_shift_line_numbers(stocked, tmp_path):
    df = _triplet_frame()
    df.loc[1, "positive"] = "first line\nsecond line\nthird line"
    df.loc[4, "negative"] = ""
    path = tmp_path / "multi.csv"
    df.to_csv(path, index=False)
    # header line 1, rows 0..3 on lines 2, 3-5, 6, 7; row 4 on line 8
    assert refused(stocked, path).startswith(f"{path}:line 8: field 'negative': missing or null")


def test_short_csv_row_is_named_in_one_line(stocked, tmp_path):
    path = tmp_path / "short.csv"
    text = _triplet_frame().to_csv(index=False).splitlines()
    text[5] = '"a query that is long enough to look like a passage","and its positive"'
    path.write_text("\n".join(text) + "\n")
    message = refused(stocked, path)
    assert message == f"{path}:line 6: expected 3 cells, as in the header, got 2"


def test_csv_read_errors_are_short(stocked, tmp_path):
    path = tmp_path / "quote.csv"
    text = _triplet_frame().to_csv(index=False).splitlines()
    text[3] = 'q,"unterminated,n'
    path.write_text("\n".join(text) + "\n")
    message = refused(stocked, path)
    assert message.startswith(f"{path}:line 4: malformed CSV") and "\n" not in message and len(message) < 300


def test_csv_mixed_line_ends_are_named(stocked, tmp_path):
    path = tmp_path / "mixed.csv"
    text = _triplet_frame().to_csv(index=False, lineterminator="\n").splitlines()
    path.write_bytes(("\n".join(text[:4]) + "\r\n" + "\n".join(text[4:]) + "\n").encode())
    assert refused(stocked, path) == f"{path}:line 4: line ends with CRLF but the header with LF: one file, one line-end style"


def test_utf8_byte_order_mark_is_accepted_everywhere(store, tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + MSMARCO.read_bytes())
    assert ingest_path(store, jsonl).queries == 10
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + _triplet_frame().to_csv(index=False).encode())
    assert ingest_path(store, csv_path).records == 20  # read as triplets: the header's first name is "anchor"
    beir = _beir_copy(tmp_path)
    for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (beir / f).write_bytes(b"\xef\xbb\xbf" + (beir / f).read_bytes())
    summary = ingest_path(store, beir)
    assert (summary.documents, summary.queries, summary.positives) == (1400, 225, 1612)
    assert store.execute("SELECT count(*) FROM queries WHERE text LIKE '﻿%' OR query_id LIKE '﻿%'").fetchone() == (0,)


def test_byte_order_mark_keeps_line_numbers(stocked, tmp_path):
    lines = MSMARCO.read_text().splitlines()
    lines[2] = lines[2].replace('"pos": [', '"pos": [17, ', 1)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    assert refused(stocked, path).startswith(f"{path}:3: field 'pos': expected a list of strings, but item 1 is a number")


def test_crlf_line_endings_are_read(store, tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(MSMARCO.read_bytes().replace(b"\n", b"\r\n"))
    assert ingest_path(store, path).candidates == 250


# ---------------------------------------------------------------------------------------------------------------
# Nothing left behind


def test_stale_scratch_folders_are_swept(tmp_path):
    old = time.time() - limits.STALE_TEMP_SECONDS - 60
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {
        "dead_old": tmp_path / f"{PREFIX}{dead.pid}-abc",
        "no_pid_old": tmp_path / f"{PREFIX}k2j4_x",  # the naming of earlier versions
        "live_old": tmp_path / f"{PREFIX}{os.getppid()}-abc",
        "dead_young": tmp_path / f"{PREFIX}{dead.pid}-young",
    }
    for name, folder in folders.items():
        folder.mkdir()
        (folder / "valid.jsonl").write_text("x")
        if name != "dead_young":
            os.utime(folder, (old, old))
    removed = sweep_stale(tmp_path)
    assert set(removed) == {folders["dead_old"], folders["no_pid_old"]}
    assert folders["live_old"].exists() and folders["dead_young"].exists()


def test_failed_ingest_leaves_no_scratch_folder(stocked, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "bad.jsonl"  # a byte order mark and a malformed line: both need scratch copies
    path.write_bytes(b"\xef\xbb\xbf" + MSMARCO.read_bytes() + b'{"query": "broken\n')
    refused(stocked, path)
    assert list((tmp_path / "tmp").iterdir()) == []
    summary = ingest_path(stocked, path, skip_bad=True, rejects_path=tmp_path / "rejects.jsonl")
    assert summary.skipped == 1 and list((tmp_path / "tmp").iterdir()) == []


def test_sigterm_during_ingest_leaves_store_and_temp_clean(tmp_path):
    db = tmp_path / "store.duckdb"
    con = open_store(db)
    ingest_path(con, CRANFIELD)
    before = snapshot(con)
    con.close()
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    source = tmp_path / "bom.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + MSMARCO.read_bytes())  # the byte order mark makes ingest use scratch space
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            import auditor.ingest as ingest
            from auditor.store import open_store
            real_merge = ingest.merge
            def merge_then_wait(*args, **kwargs):
                counts = real_merge(*args, **kwargs)  # rows inserted, not yet committed
                print("merged", flush=True)
                time.sleep(60)
                return counts
            ingest.merge = merge_then_wait
            con = open_store({str(db)!r})
            try:
                ingest.ingest_path(con, {str(source)!r})
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(130)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch_root)},
    )
    try:
        assert child.stdout.readline().strip() == "merged"
        assert [p.name.startswith(PREFIX) for p in scratch_root.iterdir()] == [True]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 130
        assert child.stdout.read().strip() == "interrupted"
    finally:
        child.kill()
    assert list(scratch_root.iterdir()) == []
    con = open_store(db)
    try:
        assert snapshot(con) == before
    finally:
        con.close()
