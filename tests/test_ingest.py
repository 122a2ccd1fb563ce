"""Ingest of every supported format on the real sample files, and every bad-input case the issue lists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.ingest import IngestError, detect_format, ingest_path
from auditor.store import StoreLockedError, open_store, table_counts

from conftest import CRANFIELD, MSMARCO

TABLES = ["queries", "documents", "qrels", "candidates", "ingests"]


def snapshot(con) -> dict[str, list]:
    """Every row of the content tables, sorted: two equal snapshots mean nothing was written."""
    return {t: sorted(map(repr, con.execute(f"SELECT {_columns(t)} FROM {t}").fetchall())) for t in TABLES}


def _columns(table: str) -> str:
    """Every column but the timestamps, which differ between two otherwise equal states."""
    return {"candidates": "* EXCLUDE (added_at)", "ingests": "* EXCLUDE (ingested_at)"}.get(table, "*")


def msmarco_rows() -> list[dict]:
    return [json.loads(line) for line in MSMARCO.read_text().splitlines()]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------------------------
# Formats on real data


def test_cranfield_beir_counts_and_ids(store):
    summary = ingest_path(store, CRANFIELD)
    assert summary.format == "beir" and summary.split == "test"
    assert (summary.documents, summary.queries) == (1400, 225)
    assert summary.positives == 1612 and summary.judged_negatives == 225
    counts = table_counts(store)
    assert counts["documents"] == 1400 and counts["queries"] == 225 and counts["qrels"] == 1837
    # Source ids and graded relevance are kept: qrels line "1<TAB>184<TAB>3".
    assert store.execute("SELECT relevant, grade FROM qrels WHERE query_id = '1' AND doc_id = '184'").fetchone() == (True, 3)
    # Score 0 is a judged non-relevant pair, kept as such.
    assert store.execute("SELECT count(*) FROM qrels WHERE grade = 0 AND NOT relevant").fetchone()[0] == 225
    title, text = store.execute("SELECT title, text FROM documents WHERE doc_id = '1'").fetchone()
    assert title.startswith("experimental investigation of the aerodynamics") and text.startswith("an experimental study")


def test_msmarco_flag_keeps_given_negatives_with_teacher_scores(store):
    rows = msmarco_rows()
    summary = ingest_path(store, MSMARCO)
    assert summary.format == "flag"
    assert summary.queries == 10 and summary.positives == 10 and summary.candidates == 250
    first = rows[0]
    qid, prompt = store.execute("SELECT query_id, prompt FROM queries WHERE text = ?", [first["query"]]).fetchone()
    assert prompt == first["prompt"]
    got = store.execute(
        """
        SELECT d.text, c.source, c.source_rank, c.source_score FROM candidates c JOIN documents d USING (doc_id)
        WHERE c.query_id = ? ORDER BY c.source_rank
        """,
        [qid],
    ).fetchall()
    assert [g[0] for g in got] == first["neg"]
    assert {g[1] for g in got} == {"given"}
    assert [g[2] for g in got] == list(range(1, 26))
    assert [g[3] for g in got] == pytest.approx(first["neg_scores"])
    pos_score = store.execute("SELECT teacher_score FROM qrels WHERE query_id = ? AND relevant", [qid]).fetchone()[0]
    assert pos_score == pytest.approx(first["pos_scores"][0])


@pytest.fixture
def triplet_rows():
    rows = msmarco_rows()
    return [{"anchor": r["query"], "positive": r["pos"][0], "negative": n} for r in rows for n in r["neg"][:3]]


def test_triplets_jsonl_merges_repeated_queries(store, tmp_path, triplet_rows):
    path = tmp_path / "triplets.jsonl"
    write_jsonl(path, triplet_rows)
    assert detect_format(path) == "triplets"
    summary = ingest_path(store, path)
    assert summary.queries == 10 and summary.positives == 10 and summary.candidates == 30
    # 30 records name 10 queries and 10 positives: 20 + 20 duplicates merged, each text stored once.
    assert summary.duplicates == 40
    assert store.execute("SELECT count(*), count(DISTINCT text) FROM documents").fetchone() == (40, 40)


@pytest.mark.parametrize("layout", ["numbered", "list"])
def test_ntuples(store, tmp_path, layout):
    rows = msmarco_rows()
    if layout == "numbered":
        recs = [{"query": r["query"], "positive": r["pos"][0], **{f"negative_{i + 1}": n for i, n in enumerate(r["neg"][:4])}} for r in rows]
    else:
        recs = [{"anchor": r["query"], "positive": r["pos"][0], "neg": r["neg"][:4]} for r in rows]
    path = tmp_path / "ntuple.jsonl"
    write_jsonl(path, recs)
    assert detect_format(path) == "ntuple"
    summary = ingest_path(store, path)
    assert summary.candidates == 40
    ranks = store.execute("SELECT DISTINCT source_rank FROM candidates ORDER BY 1").fetchall()
    assert [r[0] for r in ranks] == [1, 2, 3, 4]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_tabular_triplets(store, tmp_path, triplet_rows, suffix):
    path = tmp_path / f"triplets{suffix}"
    df = pd.DataFrame(triplet_rows)
    df.to_parquet(path) if suffix == ".parquet" else df.to_csv(path, index=False)
    summary = ingest_path(store, path)
    assert summary.format == "triplets" and summary.candidates == 30 and summary.queries == 10


def test_reingest_is_idempotent(store):
    ingest_path(store, CRANFIELD)
    ingest_path(store, MSMARCO)
    before = snapshot(store)
    again = ingest_path(store, MSMARCO)
    again_beir = ingest_path(store, CRANFIELD)
    assert again.nothing_new and again_beir.nothing_new
    assert snapshot(store) == before


def test_progress_callback_reaches_total(store):
    seen = []
    ingest_path(store, MSMARCO, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: message names file, line and field; the store is unchanged


def _bad_flag_cases(rows):
    good = [json.dumps(r) for r in rows[:4]]

    def with_line(line: str) -> list[str]:
        return good[:2] + [line] + good[2:]

    r = dict(rows[0])
    return {
        "malformed": (with_line('{"query": "x", "pos": ["a"'), 3, None, "malformed JSON"),
        "missing": (with_line(json.dumps({k: v for k, v in r.items() if k != "pos"})), 3, "pos", "missing"),
        "empty_string": (with_line(json.dumps({**r, "query": "  "})), 3, "query", "blank: empty or only whitespace"),
        "empty_list": (with_line(json.dumps({**r, "pos": []})), 3, "pos", "empty list"),
        "wrong_type": (with_line(json.dumps({**r, "pos": "a single string"})), 3, "pos", "expected a list"),
        "number_query": (with_line(json.dumps({**r, "query": 42})), 3, "query", "expected a string"),
        "bad_scores": (with_line(json.dumps({**r, "neg_scores": r["neg_scores"][:3]})), 3, "neg_scores", "has 3 values"),
        "not_object": (with_line("[1, 2]"), 3, None, "expected a JSON object"),
    }


@pytest.mark.parametrize("case", list(_bad_flag_cases(msmarco_rows())))
def test_bad_flag_lines_are_named_and_nothing_is_written(store, tmp_path, case):
    lines, lineno, field, words = _bad_flag_cases(msmarco_rows())[case]
    ingest_path(store, CRANFIELD)
    before = snapshot(store)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError) as info:
        ingest_path(store, path, fmt="flag")
    message = str(info.value)
    assert f"{path}:{lineno}" in message and words in message
    if field:
        assert f"field '{field}'" in message
    assert snapshot(store) == before


def test_non_utf8_bytes(store, tmp_path):
    rows = msmarco_rows()
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(rows[0]).encode() + b"\n" + '{"query": "caf\xe9", "pos": ["a"], "neg": []}\n'.encode("latin-1"))
    with pytest.raises(IngestError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 0xe9"):
        ingest_path(store, path)
    assert table_counts(store)["queries"] == 0


def test_empty_file(store, tmp_path):
    ingest_path(store, MSMARCO)
    before = snapshot(store)
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(IngestError, match="empty.jsonl: file is empty"):
        ingest_path(store, path)
    assert snapshot(store) == before


def test_wrong_format_guess_suggests_the_right_one(store, tmp_path, triplet_rows):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, triplet_rows)
    with pytest.raises(IngestError, match=r"t.jsonl:1: field 'query': missing for format flag \(keys: anchor, negative, positive\); it looks like triplets: try --format triplets"):
        ingest_path(store, path, fmt="flag")
    with pytest.raises(IngestError, match="format beir expects a folder"):
        ingest_path(store, path, fmt="beir")


def _beir_copy(tmp_path):
    dst = tmp_path / "beir"
    shutil.copytree(CRANFIELD, dst)
    for f in dst.rglob("*"):
        f.chmod(0o644 if f.is_file() else 0o755)
    return dst


def test_unknown_ids_in_qrels(store, tmp_path):
    beir = _beir_copy(tmp_path)
    with open(beir / "qrels" / "test.tsv", "a") as fh:
        fh.write("1\t99999\t2\n")
    n_lines = len((beir / "qrels" / "test.tsv").read_text().splitlines())
    with pytest.raises(IngestError, match=rf"test.tsv:{n_lines}: field 'corpus-id': unknown id '99999'"):
        ingest_path(store, beir)
    assert table_counts(store)["documents"] == 0


def test_bad_grade_in_qrels(store, tmp_path):
    beir = _beir_copy(tmp_path)
    text = (beir / "qrels" / "test.tsv").read_text().splitlines()
    text[5] = "1\t29\thigh"
    (beir / "qrels" / "test.tsv").write_text("\n".join(text) + "\n")
    ingest_path(store, MSMARCO)
    before = snapshot(store)
    with pytest.raises(IngestError, match=r"test.tsv:6: field 'score': expected an integer, got 'high'"):
        ingest_path(store, beir)
    assert snapshot(store) == before


def test_duplicate_id_with_different_text(store, tmp_path):
    beir = _beir_copy(tmp_path)
    with open(beir / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "7", "title": "", "text": "a different text for id 7"}) + "\n")
    ingest_path(store, MSMARCO)
    before = snapshot(store)
    with pytest.raises(IngestError, match=r"corpus.jsonl:1401: field '_id': duplicate id '7' with different text \(first seen on line 7\)"):
        ingest_path(store, beir)
    assert snapshot(store) == before


def test_same_id_different_text_than_store(store, tmp_path):
    ingest_path(store, CRANFIELD)
    before = snapshot(store)
    beir = _beir_copy(tmp_path)
    lines = (beir / "corpus.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"_id": "1", "title": "changed", "text": "changed text"})
    (beir / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match="document id '1' is already in the store with a different text"):
        ingest_path(store, beir)
    assert snapshot(store) == before


def test_skip_bad_stores_valid_lines_and_reports_rejects(store, tmp_path):
    lines, *_ = _bad_flag_cases(msmarco_rows())["missing"]
    lines = lines + ['{"query": "broken"']
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = tmp_path / "rejects.jsonl"
    summary = ingest_path(store, path, skip_bad=True, rejects_path=report)
    assert summary.queries == 4 and summary.skipped == 2
    rejects = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(3, "pos"), (6, None)]
    assert "missing" in rejects[0]["reason"] and "malformed JSON" in rejects[1]["reason"]


def test_skip_bad_on_beir_qrels(store, tmp_path):
    beir = _beir_copy(tmp_path)
    with open(beir / "qrels" / "test.tsv", "a") as fh:
        fh.write("1\t99999\t2\n1\t29\tx\n")
    report = tmp_path / "rejects.jsonl"
    summary = ingest_path(store, beir, skip_bad=True, rejects_path=report)
    assert summary.documents == 1400 and summary.skipped == 2
    reasons = [json.loads(x)["reason"] for x in report.read_text().splitlines()]
    assert any("unknown id '99999'" in r for r in reasons) and any("expected an integer" in r for r in reasons)


def test_second_process_gets_a_clear_lock_message(tmp_path):
    path = tmp_path / "held.duckdb"
    open_store(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="open in another process"):
            open_store(path)
        cli = subprocess.run(
            [sys.executable, "-m", "auditor", "info", "--db", str(path)], capture_output=True, text=True
        )
        assert cli.returncode == 4 and "open in another process" in cli.stderr and "Traceback" not in cli.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# Property: random corrupted lines never half-write


_ROWS = msmarco_rows()


@st.composite
def corrupted_file(draw):
    rows = [json.dumps(r) for r in _ROWS[:5]]
    n = draw(st.integers(min_value=1, max_value=3))
    for _ in range(n):
        i = draw(st.integers(min_value=0, max_value=len(rows) - 1))
        kind = draw(st.sampled_from(["truncate", "bytes", "drop_key", "retype", "blank_value"]))
        try:
            record = json.loads(rows[i])
        except ValueError:
            record = None
        if kind == "truncate":
            rows[i] = rows[i][: draw(st.integers(min_value=0, max_value=max(0, len(rows[i]) - 1)))]
        elif kind == "bytes":
            rows[i] = rows[i][:10] + draw(st.text(min_size=1, max_size=5)) + rows[i][10:]
        elif record is not None:
            key = draw(st.sampled_from(["query", "pos", "neg", "pos_scores", "neg_scores"]))
            if kind == "drop_key":
                record.pop(key, None)
            elif kind == "retype":
                record[key] = draw(st.one_of(st.integers(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2)))
            else:
                record[key] = "" if key == "query" else [""]
            rows[i] = json.dumps(record)
    return rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=corrupted_file())
def test_corrupted_lines_never_half_write(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("prop")
    con = open_store(tmp / "s.duckdb")
    try:
        ingest_path(con, MSMARCO)
        before = snapshot(con)
        path = tmp / "corrupt.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        try:
            summary = ingest_path(con, path, fmt="flag")
        except IngestError as exc:
            assert str(path) in str(exc)
            assert snapshot(con) == before
        else:
            # Accepted: the file was still valid; everything it holds is now stored, nothing else changed.
            after = snapshot(con)
            assert summary.queries == len(after["queries"]) - len(before["queries"])
            assert set(before["documents"]) <= set(after["documents"])
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_ingest_and_info(tmp_path):
    db = tmp_path / "x.duckdb"
    run = lambda *a: subprocess.run([sys.executable, "-m", "auditor", *a], capture_output=True, text=True)  # noqa: E731
    out = run("ingest", str(CRANFIELD), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "new documents:        1,400" in out.stdout
    out = run("ingest", str(MSMARCO), "--db", str(db))
    assert out.returncode == 0 and "new candidates:       250" in out.stdout
    info = run("info", "--db", str(db))
    assert "documents" in info.stdout and "1,660" in info.stdout
    assert "given" in info.stdout and "teacher scores on 250" in info.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": "p", "neg": []}\n')
    out = run("ingest", str(bad), "--db", str(db))
    assert out.returncode == 3 and f"{bad}:1: field 'pos': expected a list" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_tabular_bad_row_is_named_and_skip_bad_keeps_the_rest(store, tmp_path, triplet_rows, suffix):
    rows = [dict(r) for r in triplet_rows]
    rows[4]["positive"] = ""  # the fifth data row
    path = tmp_path / f"bad{suffix}"
    df = pd.DataFrame(rows)
    df.to_parquet(path) if suffix == ".parquet" else df.to_csv(path, index=False)
    where = f"{path}:line 6" if suffix == ".csv" else f"{path}:row 5"
    ingest_path(store, MSMARCO)
    before = snapshot(store)
    with pytest.raises(IngestError, match=re.escape(f"{where}: field 'positive': ")):
        ingest_path(store, path)
    assert snapshot(store) == before
    report = tmp_path / "rejects.jsonl"
    summary = ingest_path(store, path, skip_bad=True, rejects_path=report)
    assert summary.skipped == 1
    assert [json.loads(x)["line"] for x in report.read_text().splitlines()] == [6 if suffix == ".csv" else 5]
    assert store.execute("SELECT count(*) FROM candidates WHERE source = 'given'").fetchone()[0] == 250


def test_skip_bad_default_report_for_a_generic_file_name(store, tmp_path, monkeypatch):
    folder = tmp_path / "my-set"
    folder.mkdir()
    path = folder / "train.jsonl"
    path.write_text(MSMARCO.read_text().splitlines()[0] + "\n{broken\n")
    monkeypatch.chdir(tmp_path)
    summary = ingest_path(store, path, skip_bad=True)
    assert summary.dataset == "my-set/train" and summary.skipped == 1
    assert Path(summary.rejects_path) == tmp_path / "my-set_train.rejects.jsonl"


def test_exit_codes_tell_usage_bad_data_busy_store_and_full_disk_apart(tmp_path, monkeypatch, capsys):
    """Scripts branch on the exit code: 2 usage, 3 a refused input file, 4 a store in use, 5 a full disk (README,
    "Exit codes"); each with a one-line message, never a traceback."""
    import errno

    import duckdb

    from auditor import cli
    from auditor.ingest.errors import IngestError
    from auditor.store import StoreLockedError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"], "neg": "n"}\n')
    db = tmp_path / "s.duckdb"
    assert cli.main(["ingest", str(bad), "--db", str(db)]) == cli.EXIT_BAD_DATA
    assert f"{bad}:1: field 'neg'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main(["export", "--db", str(db), "--format", "nope"])
    assert usage.value.code == cli.EXIT_USAGE
    assert cli.main(["mine", "--db", str(tmp_path / "missing.duckdb")]) == cli.EXIT_USAGE
    assert cli.exit_code(StoreLockedError("busy")) == cli.EXIT_STORE_BUSY
    assert cli.exit_code(IngestError("f.jsonl:3", "pos", "expected a list")) == cli.EXIT_BAD_DATA
    assert cli.exit_code(ValueError("a bug")) is None  # bugs keep their traceback

    # a full disk, wherever it surfaces: an OSError, or DuckDB's IO error (raised from it or naming it)
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("auditor.ingest.ingest_path", full)
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n')
    assert cli.main(["ingest", str(good), "--db", str(db)]) == cli.EXIT_NO_SPACE
    err = capsys.readouterr().err
    assert "no space left on device" in err and "nothing half-written was kept" in err and "Traceback" not in err
    io_error = duckdb.IOException('Could not write file "s.duckdb.wal": No space left on device')
    assert cli.exit_code(io_error) == cli.EXIT_NO_SPACE
    wrapped = StoreLockedError("could not write")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert cli.exit_code(wrapped) == cli.EXIT_NO_SPACE
    assert "exit codes:" in cli.build_parser().format_help()
