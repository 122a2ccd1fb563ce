"""Inputs as other tools write them: sentence-transformers' mine_hard_negatives columns (--columns), compressed
JSON lines, JSON arrays, standard input; and texts that are not text (only control characters)."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import pytest

from auditor import cli
from auditor.ingest import IngestError, ingest_path

ROWS = [
    {"question": "what causes wing flutter", "answer": "flutter is an aeroelastic vibration of wings",
     "negative": "laminar boundary layers on flat plates"},
    {"question": "heat transfer in hypersonic flow", "answer": "hypersonic heating measured on cones",
     "negative": "panel flutter at supersonic speeds"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pairs(con) -> set[tuple[str, str]]:
    return set(con.execute(
        """SELECT q.text, d.text FROM qrels r JOIN queries q USING (query_id) JOIN documents d USING (doc_id)
           WHERE r.relevant""").fetchall())


@pytest.mark.parametrize("text", ["\x00\x00", "\x07\x08\x1b", "\x7f", "\x9b\x80 \t"])
def test_a_text_of_only_control_characters_is_refused_as_blank(store, tmp_path, text):
    bad = _jsonl(tmp_path / "ctl.jsonl", [{"query": "a real query", "pos": [text], "neg": ["a negative"]}])
    with pytest.raises(IngestError) as err:
        ingest_path(store, bad)
    assert f"{bad}:1" in str(err.value) and "'pos'" in str(err.value) and "blank" in str(err.value)
    assert store.execute("SELECT count(*) FROM documents").fetchall()[0][0] == 0
    fine = _jsonl(tmp_path / "fine.jsonl", [{"query": "a real query", "pos": ["text\x07with a bell"], "neg": ["n"]}])
    ingest_path(store, fine)  # a control character inside real text is text


def test_mine_hard_negatives_columns_are_mapped_with_columns(store, tmp_path, capsys):
    """mine_hard_negatives keeps its input's names (question/answer): refused without --columns, with a hint; read
    with it, in its triplet and n-tuple shapes."""
    triplets = _jsonl(tmp_path / "st-triplets.jsonl", ROWS)
    with pytest.raises(IngestError):
        ingest_path(store, triplets)
    s = ingest_path(store, triplets, columns={"query": "question", "positive": "answer"})
    assert s.format == "triplets" and s.queries == 2 and s.candidates == 2
    assert _pairs(store) == {(r["question"], r["answer"]) for r in ROWS}
    ntuples = _jsonl(tmp_path / "st-ntuple.jsonl", [
        {"query": r["question"] + "?", "answer": r["answer"], "negative_1": r["negative"], "negative_2": "another"}
        for r in ROWS])
    db = str(tmp_path / "cli.duckdb")
    assert cli.main(["ingest", str(ntuples), "--db", db, "--columns", "query=query,positive=answer"]) == 0
    assert "as ntuple" in capsys.readouterr().out
    from auditor.store import open_store

    con = open_store(db)
    try:
        ranks = con.execute("SELECT source_rank, count(*) FROM candidates GROUP BY 1 ORDER BY 1").fetchall()
        assert ranks == [(1, 2), (2, 2)]  # negative_N keeps its rank
    finally:
        con.close()


def test_columns_naming_a_missing_column_says_which_columns_the_file_has(store, tmp_path, capsys):
    triplets = _jsonl(tmp_path / "st.jsonl", ROWS)
    with pytest.raises(IngestError) as err:
        ingest_path(store, triplets, columns={"query": "quesiton", "positive": "answer"})
    assert "quesiton" in str(err.value) and "answer, negative, question" in str(err.value)
    assert cli.main(["ingest", str(triplets), "--db", str(tmp_path / "x.duckdb"), "--columns", "query"]) == \
        cli.EXIT_USAGE
    assert "ROLE=COLUMN" in capsys.readouterr().err


def test_gzip_json_array_and_standard_input(store, tmp_path, monkeypatch):
    """The same three records as .jsonl.gz, as a pretty-printed JSON array, and on standard input: all read; an
    error names the user's file and the line where the bad record starts."""
    rows = [{"query": f"query {i}", "pos": [f"positive {i}"], "neg": [f"negative {i}"]} for i in range(3)]
    gz = tmp_path / "train.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    s = ingest_path(store, gz)
    assert (s.records, s.queries, s.dataset, s.path) == (3, 3, f"{tmp_path.name}/train", str(gz))

    array = tmp_path / "array.json"
    array.write_text(json.dumps([{**r, "query": r["query"] + " (array)"} for r in rows], indent=2))
    s = ingest_path(store, array)
    assert (s.records, s.queries, s.format) == (3, 3, "flag")

    bad = [dict(r, query=r["query"] + " (bad)") for r in rows]
    bad[2]["pos"] = "not a list"
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad, indent=2))
    start = bad_file.read_text().splitlines().index("  {", 2 * 6) + 1  # the line where the third record starts
    with pytest.raises(IngestError) as err:
        ingest_path(store, bad_file)
    assert str(err.value).startswith(f"{bad_file}:{start}: field 'pos'") and "auditor-unpack" not in str(err.value)

    stdin = io.TextIOWrapper(io.BytesIO("".join(json.dumps({**r, "query": r["query"] + " (stdin)"}) + "\n"
                                                for r in rows).encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    s = ingest_path(store, "-", name="piped")
    assert (s.records, s.queries, s.path, s.dataset) == (3, 3, "<stdin>", "piped")
    assert store.execute("SELECT count(*) FROM queries").fetchall()[0][0] == 9


def test_parquet_shards_and_a_datasets_save_to_disk_folder(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"anchor": [f"q{i}a", f"q{i}b"], "positive": [f"p{i}a", f"p{i}b"],
                                 "negative": [f"n{i}a", f"n{i}b"]}), shards / f"train-0000{i}-of-00002.parquet")
    s = ingest_path(store, shards)
    assert (s.format, s.records, s.queries, s.dataset) == ("triplets", 4, 4, "shards")

    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.table({"query": ["sq1", "sq2"], "positive": ["sp1", "sp2"], "negative": ["sn1", "sn2"]})
    with pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:  # what datasets' save_to_disk writes
            writer.write_table(table)
    (saved / "dataset_info.json").write_text("{}")
    (saved / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    s = ingest_path(store, saved)
    assert (s.format, s.records, s.queries) == ("triplets", 2, 2)
