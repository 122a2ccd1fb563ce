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
    with pytest.raises(IngestError) as err:
        ingest_path(store, triplets)
    assert "--columns query=question,positive=answer" in str(err.value)
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


# -- issue 16: records up to the documented size in CSV; one prompt per query; Parquet types that are not text ------


def test_csv_reads_a_record_up_to_the_documented_limit(store, tmp_path):
    """README promises 16 MiB per record; DuckDB's CSV reader stops at 2 MiB lines unless told otherwise."""
    from auditor.ingest.limits import MAX_RECORD_BYTES

    big = "flutter " * ((MAX_RECORD_BYTES // 2) // 8)  # 8 MiB, one cell
    path = tmp_path / "big.csv"
    path.write_text('anchor,positive,negative\nq one,"' + big + '",short negative\nq two,p two,n two\n')
    s = ingest_path(store, path)
    assert (s.records, s.queries) == (2, 2)
    assert store.execute("SELECT max(length(text)) FROM documents").fetchall()[0][0] == len(big)
    too_big = tmp_path / "too_big.csv"
    too_big.write_text('anchor,positive,negative\nq1,p1,n1\nq3,"' + "x" * (MAX_RECORD_BYTES + 10) + '",n3\n')
    with pytest.raises(IngestError) as err:
        ingest_path(store, too_big)
    assert f"{too_big}:line 3" in str(err.value) and "limit" in str(err.value)
    assert store.execute("SELECT count(*) FROM queries").fetchall()[0][0] == 2


def test_one_query_given_two_prompts_is_refused_naming_the_second_line(store, tmp_path):
    """A query is stored once (its id is the hash of its text) with one prompt: two different prompts for the same
    query text would lose one silently, so the second is refused; the same prompt twice, or once, is fine."""
    rows = [
        {"query": "q1", "pos": ["p1"], "neg": ["n1"], "prompt": "Represent this query: "},
        {"query": "q2", "pos": ["p2"], "neg": ["n2"]},
        {"query": "q1", "pos": ["p1b"], "neg": ["n1b"], "prompt": "Represent this query: "},
        {"query": "q1", "pos": ["p1c"], "neg": ["n1c"]},
    ]
    fine = _jsonl(tmp_path / "fine.jsonl", rows)
    bad = _jsonl(tmp_path / "bad.jsonl", [*rows, {"query": "q1", "pos": ["p1d"], "neg": ["n1d"], "prompt": "query: "}])
    with pytest.raises(IngestError) as err:
        ingest_path(store, bad)
    assert str(err.value).startswith(f"{bad}:5: field 'prompt'") and "line 1" in str(err.value)
    assert store.execute("SELECT count(*) FROM queries").fetchall()[0][0] == 0
    s = ingest_path(store, fine)
    assert s.queries == 2
    assert store.execute("SELECT prompt FROM queries WHERE text = 'q1'").fetchall() == [("Represent this query: ",)]


def test_parquet_binary_columns_are_utf8_text_and_dates_are_refused(store, tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "binary.parquet"
    pq.write_table(pa.table({
        "anchor": pa.array(["café au lait".encode(), b"plain query"], pa.binary()),
        "positive": pa.array(["crème brûlée", "p2"]),
        "negative": pa.array([b"n1", "naïve".encode()], pa.large_binary()),
    }), good)
    s = ingest_path(store, good)
    assert s.records == 2
    texts = {r[0] for r in store.execute("SELECT text FROM queries UNION ALL SELECT text FROM documents").fetchall()}
    assert {"café au lait", "plain query", "naïve", "n1"} <= texts
    assert not any("\\x" in t for t in texts)

    bad = tmp_path / "latin1.parquet"
    pq.write_table(pa.table({"anchor": ["q9", "q10"], "positive": ["p9", "p10"],
                             "negative": pa.array([b"ok", "caf\xe9".encode("latin-1")], pa.binary())}), bad)
    with pytest.raises(IngestError) as err:
        ingest_path(store, bad)
    assert str(err.value).startswith(f"{bad}:row 2: field 'negative'") and "UTF-8" in str(err.value)

    dated = tmp_path / "dated.parquet"
    pq.write_table(pa.table({"anchor": ["q11"], "positive": ["p11"],
                             "negative": pa.array([datetime.datetime(2024, 5, 1, 12, 0)], pa.timestamp("us"))}), dated)
    with pytest.raises(IngestError) as err:
        ingest_path(store, dated)
    assert f"{dated}" in str(err.value) and "'negative'" in str(err.value) and "timestamp" in str(err.value)
    day = tmp_path / "day.parquet"
    pq.write_table(pa.table({"anchor": [datetime.date(2024, 5, 1)], "positive": ["p12"], "negative": ["n12"]}), day)
    with pytest.raises(IngestError) as err:
        ingest_path(store, day)
    assert "'anchor'" in str(err.value) and "date" in str(err.value)
    assert store.execute("SELECT count(*) FROM queries").fetchall()[0][0] == 2


# -- issue 16: mine_hard_negatives' output_scores and labeled outputs -------------------------------------------------


def _scores(con) -> dict[tuple[str, str], float]:
    rows = con.execute(
        """SELECT q.text, d.text, r.teacher_score FROM qrels r JOIN queries q USING (query_id)
           JOIN documents d USING (doc_id) WHERE r.relevant
           UNION ALL SELECT q.text, d.text, c.source_score FROM candidates c JOIN queries q USING (query_id)
           JOIN documents d USING (doc_id)""").fetchall()
    return {(q, d): s for q, d, s in rows}


def test_output_scores_are_stored_as_the_given_scores(store, tmp_path, capsys):
    """mine_hard_negatives(output_scores=True) adds `scores`: the positive's score, then each negative's."""
    triplets = _jsonl(tmp_path / "scored-triplets.jsonl", [
        {"anchor": "qa", "positive": "pa", "negative": "na", "scores": [0.91, 0.42]},
        {"anchor": "qb", "positive": "pb", "negative": "nb", "scores": [0.8, 0.75]}])
    s = ingest_path(store, triplets)
    assert s.format == "triplets"
    assert _scores(store) == {("qa", "pa"): 0.91, ("qa", "na"): 0.42, ("qb", "pb"): 0.8, ("qb", "nb"): 0.75}
    ntuple = _jsonl(tmp_path / "scored-ntuple.jsonl", [
        {"question": "qc", "answer": "pc", "negative_1": "nc1", "negative_2": "nc2", "scores": [0.9, 0.6, 0.5]}])
    db = str(tmp_path / "cli.duckdb")
    assert cli.main(["ingest", str(ntuple), "--db", db, "--columns", "query=question,positive=answer"]) == 0
    from auditor.store import open_store

    con = open_store(db)
    try:
        assert _scores(con) == {("qc", "pc"): 0.9, ("qc", "nc1"): 0.6, ("qc", "nc2"): 0.5}
    finally:
        con.close()
    wrong = _jsonl(tmp_path / "wrong.jsonl", [
        {"anchor": "qd", "positive": "pd", "negative": "nd", "scores": [0.9, 0.5]},
        {"anchor": "qe", "positive": "pe", "negative": "ne", "scores": [0.9]}])
    with pytest.raises(IngestError) as err:
        ingest_path(store, wrong)
    assert str(err.value).startswith(f"{wrong}:2: field 'scores'") and "1 values for 2 texts" in str(err.value)
    assert cli.main(["ingest", str(wrong), "--db", db]) == cli.EXIT_BAD_DATA
    assert len(_scores(store)) == 4  # nothing of the refused file stored


def test_labeled_pair_and_labeled_list_outputs_are_read(store, tmp_path):
    """label 1 is a positive, 0 a negative; a labeled-list's negatives keep their order as rank."""
    pair = _jsonl(tmp_path / "labeled-pair.jsonl", [
        {"query": "qa", "answer": "pa", "label": 1},
        {"query": "qa", "answer": "na1", "label": 0},
        {"query": "qa", "answer": "na2", "label": 0},
        {"query": "qb", "answer": "pb", "label": 1},
        {"query": "qb", "answer": "nb", "label": 0}])
    s = ingest_path(store, pair)
    assert (s.format, s.records, s.queries, s.positives, s.candidates) == ("labeled-pair", 5, 2, 2, 3)
    assert _pairs(store) == {("qa", "pa"), ("qb", "pb")}

    listed = _jsonl(tmp_path / "labeled-list.jsonl", [
        {"anchor": "qc", "positive": ["pc", "nc1", "nc2"], "labels": [1, 0, 0]},
        {"anchor": "qd", "positive": ["pd", "nd1"], "labels": [1, 0]}])
    s = ingest_path(store, listed)
    assert (s.format, s.records, s.queries, s.positives, s.candidates) == ("labeled-list", 2, 2, 2, 3)
    assert {("qc", "pc"), ("qd", "pd")} <= _pairs(store)
    ranks = store.execute("""SELECT d.text, c.source_rank FROM candidates c JOIN documents d USING (doc_id)
                             JOIN queries q USING (query_id) WHERE q.text = 'qc' ORDER BY 2""").fetchall()
    assert ranks == [("nc1", 1), ("nc2", 2)]

    csv_pair = tmp_path / "labeled.csv"  # CSV cells are text: "1" and "0" are labels too
    csv_pair.write_text("question,answer,label\nqe,pe,1\nqe,ne,0\n")
    s = ingest_path(store, csv_pair, columns={"query": "question", "positive": "answer"})
    assert (s.format, s.positives, s.candidates) == ("labeled-pair", 1, 1)


@pytest.mark.parametrize("rows, line, field, words", [
    ([{"query": "q", "answer": "p", "label": 1}, {"query": "q", "answer": "n", "label": 2}], 2, "label", "0 or 1"),
    ([{"query": "q", "answer": "p", "label": 1}, {"query": "r", "answer": "n", "label": 0}], 2, "label",
     "no positive"),
    ([{"query": "q", "answer": ["p", "n"], "labels": [1, 0]}, {"query": "r", "answer": ["p2", "n2"], "labels": [1]}],
     2, "labels", "1 values for 2 entries"),
    ([{"query": "q", "answer": ["p", "n"], "labels": [1, "yes"]}], 1, "labels", "0 or 1"),
])
def test_bad_labels_are_refused_by_line_and_field(store, tmp_path, rows, line, field, words):
    bad = _jsonl(tmp_path / "bad-labels.jsonl", rows)
    with pytest.raises(IngestError) as err:
        ingest_path(store, bad)
    assert str(err.value).startswith(f"{bad}:{line}: field '{field}'") and words in str(err.value)
    assert store.execute("SELECT count(*) FROM queries").fetchall()[0][0] == 0


def test_labeled_outputs_with_scores_instead_of_labels_are_refused_with_a_reason(store, tmp_path):
    """output_scores=True replaces labeled-pair's labels by scores: which rows are positives is lost."""
    scored = _jsonl(tmp_path / "scored-pair.jsonl", [{"query": "q", "answer": "p", "score": 0.9},
                                                      {"query": "q", "answer": "n", "score": 0.3}])
    with pytest.raises(IngestError) as err:
        ingest_path(store, scored)
    assert str(scored) in str(err.value) and "label" in str(err.value) and "output_scores" in str(err.value)
    with pytest.raises(IngestError) as err:
        ingest_path(store, scored, columns={"query": "query", "positive": "answer"})
    assert "output_scores" in str(err.value)


def test_scores_follow_the_negatives_a_record_holds_and_parquet_labeled_lists_read(store, tmp_path):
    """Plain valid inputs, read as carefully as hostile ones: a record lacking negative_2 gives its scores to the
    negatives it holds; a Parquet labeled-list (native lists, boolean labels) and a CSV labeled-pair detected from
    its header; a list of binary texts decoded as UTF-8."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gappy = _jsonl(tmp_path / "gappy.jsonl", [
        {"anchor": "qa", "positive": "pa", "negative_1": "na1", "negative_3": "na3", "scores": [0.9, 0.5, 0.3]},
        {"anchor": "qb", "positive": "pb", "negative_1": "nb1", "negative_2": "nb2", "negative_3": "nb3",
         "scores": [0.8, 0.7, 0.6, 0.4]}])
    s = ingest_path(store, gappy)
    assert (s.format, s.candidates) == ("ntuple", 5)
    assert _scores(store) == {("qa", "pa"): 0.9, ("qa", "na1"): 0.5, ("qa", "na3"): 0.3, ("qb", "pb"): 0.8,
                              ("qb", "nb1"): 0.7, ("qb", "nb2"): 0.6, ("qb", "nb3"): 0.4}

    listed = tmp_path / "labeled-list.parquet"
    pq.write_table(pa.table({
        "query": ["qc", "qd"],
        "answer": pa.array([["pc".encode(), "nc".encode(), "café".encode()], [b"nd", b"pd"]], pa.list_(pa.binary())),
        "labels": pa.array([[True, False, False], [False, True]]),
    }), listed)
    s = ingest_path(store, listed)
    assert (s.format, s.positives, s.candidates) == ("labeled-list", 2, 3)
    assert {("qc", "pc"), ("qd", "pd")} <= _pairs(store)
    assert store.execute("SELECT count(*) FROM documents WHERE text = 'café'").fetchall()[0][0] == 1

    csv_pair = tmp_path / "auto.csv"
    csv_pair.write_text("anchor,positive,label\nqe,pe,1\nqe,ne,0\nqe,pe2,1\n")
    s = ingest_path(store, csv_pair)
    assert (s.format, s.records, s.positives, s.candidates) == ("labeled-pair", 3, 2, 1)


def test_skip_bad_reports_prompt_conflicts_and_queries_without_positives(store, tmp_path):
    prompts = _jsonl(tmp_path / "prompts.jsonl", [
        {"query": "q1", "pos": ["p1"], "neg": ["n1"], "prompt": "a: "},
        {"query": "q1", "pos": ["p2"], "neg": ["n2"], "prompt": "b: "},
        {"query": "q2", "pos": ["p3"], "neg": ["n3"]}])
    report = tmp_path / "prompts.rejects.jsonl"
    s = ingest_path(store, prompts, skip_bad=True, rejects_path=report)
    assert (s.records, s.skipped, s.queries) == (2, 1, 2)
    rejected = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejected] == [(2, "prompt")]

    labeled = _jsonl(tmp_path / "labels.jsonl", [
        {"query": "q3", "answer": "p4", "label": 1}, {"query": "q4", "answer": "n4", "label": 0},
        {"query": "q3", "answer": "n5", "label": 0}])
    report = tmp_path / "labels.rejects.jsonl"
    s = ingest_path(store, labeled, skip_bad=True, rejects_path=report)
    assert (s.records, s.skipped, s.queries, s.candidates) == (2, 1, 1, 1)
    assert [json.loads(line)["line"] for line in report.read_text().splitlines()] == [2]


def test_a_prompt_differing_from_the_stored_querys_is_refused(store, tmp_path):
    first = _jsonl(tmp_path / "first.jsonl", [{"query": "q1", "pos": ["p1"], "neg": ["n1"], "prompt": "a: "}])
    ingest_path(store, first)
    same = _jsonl(tmp_path / "same.jsonl", [{"query": "q1", "pos": ["p2"], "neg": ["n2"], "prompt": "a: "},
                                            {"query": "q1", "pos": ["p3"], "neg": ["n3"]}])
    assert ingest_path(store, same).candidates == 2
    other = _jsonl(tmp_path / "other.jsonl", [{"query": "q2", "pos": ["p4"], "neg": ["n4"]},
                                              {"query": "q1", "pos": ["p5"], "neg": ["n5"], "prompt": "b: "}])
    with pytest.raises(IngestError) as err:
        ingest_path(store, other)
    assert str(err.value).startswith(f"{other}:2: field 'prompt'") and "'a: '" in str(err.value)
    assert store.execute("SELECT count(*) FROM queries").fetchall()[0][0] == 1


def test_a_blank_prompt_is_no_prompt(store, tmp_path):
    """FlagEmbedding reads "" as "no instruction": a line with a blank prompt keeps the query's prompt, in the file
    and against the store (bench/fuzz.py found a valid variant refused for it)."""
    instruction = "Represent this sentence for searching relevant passages: "
    first = _jsonl(tmp_path / "a.jsonl", [{"query": "lift of a wing", "pos": ["lift"], "neg": ["drag"],
                                           "prompt": instruction}])
    ingest_path(store, first)
    again = _jsonl(tmp_path / "b.jsonl", [{"query": "lift of a wing", "pos": ["lift"], "neg": ["more drag"],
                                           "prompt": ""},
                                          {"query": "lift of a wing", "pos": ["lift"], "neg": ["form drag"],
                                           "prompt": " "}])
    s = ingest_path(store, again)
    assert s.candidates == 2
    assert store.execute("SELECT prompt FROM queries").fetchall() == [(instruction,)]
