"""Verdict files: validation (file, line, field; all or nothing), import, export round trip, CLI."""

from __future__ import annotations

import json

import pytest

from auditor import review
from auditor.cli import main as cli_main
from auditor.store import open_store
from auditor.review.io import VerdictFileError, export_verdicts, import_verdicts


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines),
                    encoding="utf-8")
    return path


GOOD = [
    {"query_id": "q1", "doc_id": "n1", "verdict": "false_negative", "annotator": "llm-judge", "note": "same topic"},
    {"query_id": "q2", "doc_id": "n5", "verdict": "true_negative", "reason": "extra keys are ignored"},
    {"query_id": "q3", "doc_id": "n8", "verdict": "unsure", "annotator": "bob"},
]


def test_import_valid_file(handbuilt_store, tmp_path):
    path = _write(tmp_path / "v.jsonl", GOOD)
    s = import_verdicts(handbuilt_store, path, annotator="script")
    assert s.written == 3 and s.per_verdict == {"false_negative": 1, "true_negative": 1, "unsure": 1}
    assert s.annotators == ["bob", "llm-judge", "script"]
    rows = handbuilt_store.execute(
        "SELECT query_id, doc_id, verdict, annotator, note, origin, band FROM verdicts ORDER BY event_id"
    ).fetchall()
    assert rows == [
        ("q1", "n1", "false_negative", "llm-judge", "same topic", "import", "suspicious"),
        ("q2", "n5", "true_negative", "script", None, "import", "suspicious"),
        ("q3", "n8", "unsure", "bob", None, "import", "ambiguous"),
    ]
    # importing the same file again adds nothing; a changed line is a new event
    again = import_verdicts(handbuilt_store, path, annotator="script")
    assert (again.written, again.unchanged) == (0, 3)
    changed = _write(tmp_path / "v2.jsonl", [{**GOOD[2], "verdict": "false_negative"}])
    assert import_verdicts(handbuilt_store, changed).written == 1
    assert handbuilt_store.execute("SELECT count(*) FROM verdicts").fetchall() == [(4,)]
        # imported verdicts take items out of the queue like any other
    assert ("q1", "n1") not in set(zip(*[review.build_queue(handbuilt_store)[c] for c in ("query_id", "doc_id")]))


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        ([GOOD[0], '{"query_id": "q1", "doc_id": '], ":2:", "malformed JSON"),
        ([GOOD[0], {**GOOD[0], "verdict": "relevant"}], ":2:", "field 'verdict' must be one of"),
        ([GOOD[0], {"doc_id": "n1", "verdict": "unsure", "annotator": "a"}], ":2:", "field 'query_id' is missing"),
        ([GOOD[0], {**GOOD[0], "annotator": None}], ":2:", "field 'annotator' is missing (or pass --annotator"),
        ([GOOD[0], {**GOOD[0], "doc_id": ""}], ":2:", "field 'doc_id' must be a non-empty string"),
        ([GOOD[0], {**GOOD[0], "note": 5}], ":2:", "field 'note' must be a string"),
        ([GOOD[0], "[1, 2]"], ":2:", "must be a JSON object"),
        ([GOOD[0], GOOD[0], {**GOOD[0], "doc_id": "n404"}], ":3:", "field 'doc_id': unknown id 'n404'"),
        ([{**GOOD[0], "query_id": "q404"}], ":1:", "field 'query_id': unknown id 'q404'"),
    ],
)
def test_bad_files_name_line_and_field_and_write_nothing(handbuilt_store, tmp_path, lines, where, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(VerdictFileError) as err:
        import_verdicts(handbuilt_store, path)
    text = str(err.value)
    assert f"{path}{where}" in text and message in text and "nothing was imported" in text
    assert handbuilt_store.execute("SELECT count(*) FROM verdicts").fetchall() == [(0,)]


def test_non_utf8_and_empty_files(handbuilt_store, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(GOOD[0]).encode() + b"\n" + '{"note": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(VerdictFileError, match=r"latin1.jsonl:2: not valid UTF-8"):
        import_verdicts(handbuilt_store, bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(VerdictFileError, match="holds no verdicts"):
        import_verdicts(handbuilt_store, empty)
    with pytest.raises(VerdictFileError, match="no such file"):
        import_verdicts(handbuilt_store, tmp_path / "nope.jsonl")


def test_numeric_ids_are_read_as_ids(handbuilt_store, tmp_path):
    handbuilt_store.execute("INSERT INTO queries VALUES ('7', 'q seven', 'h7', 'hand', NULL)")
    handbuilt_store.execute("INSERT INTO documents VALUES ('12', NULL, 'doc twelve', 'h12', 'hand')")
    path = _write(tmp_path / "v.jsonl", [{"query_id": 7, "doc_id": 12, "verdict": "unsure", "annotator": "a"}])
    assert import_verdicts(handbuilt_store, path).written == 1


def test_export_events_and_current_round_trip(handbuilt_store, tmp_path):
    con = handbuilt_store
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ann")
    review.record_verdict(con, query_id="q1", doc_id="n2", verdict="true_negative", annotator="ann", note="é ok")
    review.undo_last(con, annotator="ann")
    events = tmp_path / "events.jsonl"
    assert export_verdicts(con, events) == 3
    rows = [json.loads(x) for x in events.read_text(encoding="utf-8").splitlines()]
    assert [r["verdict"] for r in rows] == ["false_negative", "true_negative", "undo"]
    assert rows[2]["undoes"] == rows[1]["event_id"] and rows[1]["note"] == "é ok"
    current = tmp_path / "current.jsonl"
    assert export_verdicts(con, current, current_only=True) == 1
    other = open_store(tmp_path / "other.duckdb")
    try:
        from conftest import build_handbuilt_store

        build_handbuilt_store(other)
        assert import_verdicts(other, current).written == 1
        assert other.execute("SELECT query_id, doc_id, verdict, annotator FROM current_verdicts").fetchall() == \
            [("q1", "n1", "false_negative", "ann")]
    finally:
        other.close()


def test_cli_verdicts_and_queue(handbuilt_store_path, tmp_path, capsys):
    db = str(handbuilt_store_path)
    assert cli_main(["queue", "--db", db, "--mode", "risk", "--limit", "3", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [(i["query_id"], i["doc_id"]) for i in items] == [("q1", "n1"), ("q2", "n5"), ("q1", "n2")]
    assert {"band", "rule", "s_neg", "s_pos_min", "delta", "rank", "sources"} <= set(items[0])
    answers = _write(tmp_path / "a.jsonl", [{"query_id": i["query_id"], "doc_id": i["doc_id"],
                                             "verdict": "true_negative"} for i in items])
    assert cli_main(["verdicts", "import", str(answers), "--db", db, "--annotator", "judge"]) == 0
    assert "imported 3 verdicts" in capsys.readouterr().out
    assert cli_main(["queue", "--db", db, "--mode", "risk", "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == "n8"
    assert cli_main(["queue", "--db", db, "--mode", "stratified", "--limit", "0"]) == 0
    assert "sampling" not in capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", [{"query_id": "q1", "doc_id": "zz", "verdict": "unsure"}])
    assert cli_main(["verdicts", "import", str(bad), "--db", db, "--annotator", "x"]) == 3  # bad data
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "doc_id" in err and "Traceback" not in err
    out = tmp_path / "e.jsonl"
    assert cli_main(["verdicts", "export", "--db", db, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
