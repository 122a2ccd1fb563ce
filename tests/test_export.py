"""Export: formats load back, confirmed false negatives never exported as negatives, relabel, atomic writes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor import export as export_mod
from auditor import files
from auditor import review
from auditor.cli import main as cli_main


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _text(doc_id: str) -> str:
    return f"Title {doc_id} text of {doc_id} <b>x</b>"


def _confirm(con):
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ann")
    review.record_verdict(con, query_id="q1", doc_id="n2", verdict="true_negative", annotator="ann")
    review.record_verdict(con, query_id="q3", doc_id="n8", verdict="false_negative", annotator="bob")


def test_triplets_pair_every_positive_with_every_negative(handbuilt_store, tmp_path):
    con = handbuilt_store
    _confirm(con)
    out = tmp_path / "t.jsonl"
    s = export_mod.export(con, out, fmt="triplet", negatives=3, drop_unreviewed_suspicious=True)
    rows = _lines(out)
    assert all(set(r) == {"anchor", "positive", "negative"} for r in rows)
    assert s.rows == len(rows)
    by_query = {}
    for r in rows:
        by_query.setdefault(r["anchor"], []).append((r["positive"], r["negative"]))
    # q1: n1 confirmed FN and out, n2 suspicious confirmed TN so usable, n5.. belongs to q2
    assert [n for _, n in by_query["question q1?"]] == [_text("n2"), _text("n3"), _text("n4")]
    # q3 has two positives x two remaining negatives (n8 is a confirmed FN)
    assert sorted(by_query["question q3?"]) == sorted(
        (_text(p), _text(n)) for p in ("p3a", "p3b") for n in ("n9", "n1"))
    # q2: its suspicious n5 is unreviewed, so dropped by default -> short query, reported
    assert s.short_queries == 2 and s.short_query_ids == ["q2", "q3"]
    assert s.queries_without_negatives == 0 and s.confirmed_false_negatives == 2


def test_triplets_load_as_sentence_transformers_input_examples(handbuilt_store, tmp_path):
    try:
        from sentence_transformers.sentence_transformer.readers import InputExample
    except ImportError:  # older sentence-transformers
        from sentence_transformers.readers import InputExample

    out = tmp_path / "t.jsonl"
    export_mod.export(handbuilt_store, out, fmt="triplet", negatives=2)
    examples = [InputExample(texts=[r["anchor"], r["positive"], r["negative"]]) for r in _lines(out)]
    assert examples and all(len(e.texts) == 3 and all(isinstance(t, str) and t for t in e.texts) for e in examples)


def test_confirmed_false_negative_never_a_negative_in_any_format(handbuilt_store, tmp_path):
    con = handbuilt_store
    _confirm(con)
    for fmt in ("triplet", "ntuple", "rich"):
        for strategy in ("top", "random", "simans", "band-mix"):
            for drop in (True, False):
                out = tmp_path / f"{fmt}-{strategy}-{drop}.jsonl"
                export_mod.export(con, out, fmt=fmt, negatives=10, strategy=strategy,
                                  drop_unreviewed_suspicious=drop)
                text = out.read_text(encoding="utf-8")
                for r in _lines(out):
                    negs = ([r["negative"]] if fmt == "triplet" else r["neg"] if fmt == "ntuple"
                            else [n["text"] for n in r["negatives"]])
                    anchor = r.get("anchor") or r.get("query")
                    if anchor == "question q1?":
                        assert _text("n1") not in negs
                    if anchor == "question q3?":
                        assert _text("n8") not in negs
                if not drop:  # unreviewed suspicious candidates are allowed: q2's n5 appears
                    assert _text("n5") in text
                else:
                    assert _text("n5") not in text


def test_relabel_adds_false_negatives_to_positives(handbuilt_store, tmp_path):
    con = handbuilt_store
    _confirm(con)
    out = tmp_path / "n.jsonl"
    s = export_mod.export(con, out, fmt="ntuple", negatives=5, relabel=True)
    rows = {r["query"]: r for r in _lines(out)}
    assert all(set(r) == {"query", "pos", "neg"} for r in rows.values())  # no teacher scores: no scores
    assert rows["question q1?"]["pos"] == [_text("p1"), _text("n1")]  # labeled first, then relabeled
    assert _text("n8") in rows["question q3?"]["pos"]
    assert _text("n1") not in rows["question q1?"]["neg"]
    assert s.relabeled == 2
    trip = tmp_path / "t.jsonl"
    export_mod.export(con, trip, fmt="triplet", negatives=5, relabel=True)
    assert any(r["positive"] == _text("n1") and r["anchor"] == "question q1?" for r in _lines(trip))
    plain = tmp_path / "p.jsonl"
    export_mod.export(con, plain, fmt="ntuple", negatives=5)
    q1 = next(r for r in _lines(plain) if r["query"] == "question q1?")
    assert _text("n1") not in q1["pos"] + q1["neg"]


def test_rich_layout_carries_bands_scores_and_verdicts(handbuilt_store, tmp_path):
    con = handbuilt_store
    _confirm(con)
    out = tmp_path / "r.jsonl"
    export_mod.export(con, out, fmt="rich", negatives=3, relabel=True)
    rows = {r["query_id"]: r for r in _lines(out)}
    q1 = rows["q1"]
    assert q1["query"] == "question q1?"
    assert [(p["doc_id"], p["origin"]) for p in q1["positives"]] == [("p1", "label"), ("n1", "relabel")]
    first = q1["negatives"][0]
    assert first["doc_id"] == "n2" and first["band"] == "suspicious" and first["verdict"] == "true_negative"
    assert first["rule"] == "relative_margin" and first["rank"] == 2 and first["source"] == "dense"
    assert first["s_neg"] == pytest.approx(0.78) and first["delta"] == pytest.approx(-0.02)
    assert q1["negatives"][1]["verdict"] is None


def test_export_is_deterministic_for_a_seed(handbuilt_store, tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    export_mod.export(handbuilt_store, a, strategy="random", negatives=2, seed=1)
    export_mod.export(handbuilt_store, b, strategy="random", negatives=2, seed=1)
    assert a.read_bytes() == b.read_bytes()
    outs = set()
    for seed in range(8):
        export_mod.export(handbuilt_store, c, strategy="random", negatives=2, seed=seed, fmt="ntuple")
        outs.add(c.read_bytes())
    assert len(outs) > 1


def test_failure_mid_export_leaves_old_file_and_no_partial_file(handbuilt_store, tmp_path, monkeypatch):
    out = tmp_path / "train.jsonl"
    out.write_text("previous export\n", encoding="utf-8")

    def boom(tmp, final):
        assert tmp.exists() and tmp.stat().st_size > 0  # the data was written to the temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "_finish", boom)
    with pytest.raises(KeyboardInterrupt):
        export_mod.export(handbuilt_store, out, negatives=2)
    assert out.read_text(encoding="utf-8") == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("hand.duckdb")) == ["train.jsonl"]
    monkeypatch.undo()
    # a failing COPY itself leaves nothing either, and the connection stays usable
    monkeypatch.setattr(export_mod, "_rows_sql", lambda *a, **k: "SELECT error('disk full')")
    with pytest.raises(Exception, match="disk full"):
        export_mod.export(handbuilt_store, tmp_path / "new.jsonl", negatives=2)
    assert not (tmp_path / "new.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.undo()
    s = export_mod.export(handbuilt_store, out, negatives=2)
    assert s.rows == len(_lines(out)) > 0


def test_short_queries_listed_in_a_file(handbuilt_store, tmp_path):
    con = handbuilt_store
    con.execute("INSERT INTO queries VALUES ('q4', 'lonely?', md5('q4'), 'hand', NULL)")
    con.execute("INSERT INTO qrels VALUES ('q4', 'p1', true, 1, NULL, 'hand')")
    ids = tmp_path / "short.txt"
    s = export_mod.export(con, tmp_path / "o.jsonl", negatives=2, short_ids_path=ids)
    assert s.queries_without_negatives == 1 and "q4" in s.short_query_ids
    assert ids.read_text().split() == s.short_query_ids
    assert "lonely?" not in (tmp_path / "o.jsonl").read_text()


def test_bad_arguments(handbuilt_store, tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_mod.export(handbuilt_store, tmp_path / "x.jsonl", fmt="csv")
    with pytest.raises(ValueError, match="strategy"):
        export_mod.export(handbuilt_store, tmp_path / "x.jsonl", strategy="best")
    from auditor.store import StoreError

    with pytest.raises(StoreError, match="folder"):
        export_mod.export(handbuilt_store, tmp_path / "missing" / "x.jsonl")


def test_cli_export_with_stats_and_report(handbuilt_store_path, tmp_path, capsys):
    out, st, rep = tmp_path / "o.jsonl", tmp_path / "s.json", tmp_path / "r.html"
    rc = cli_main(["export", "--db", str(handbuilt_store_path), "--out", str(out), "--format", "ntuple",
                   "--negatives", "2", "--keep-unreviewed-suspicious", "--stats", str(st), "--report", str(rep)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 3 ntuple lines" in printed
    stats = json.loads(st.read_text())
    assert stats["export"]["rows"] == 3 and stats["bands"]["counts"]["suspicious"] == 3
    assert rep.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    rc = cli_main(["export", "--db", str(handbuilt_store_path), "--out", str(out), "--negatives", "0"])
    assert rc == 2 and "negatives" in capsys.readouterr().err


@pytest.mark.slow
def test_export_on_planted_cranfield(planted_cranfield, tmp_path):
    """Integration: the mined Cranfield store (hidden positives) exports in every format, and reviewing a hidden
    positive as a false negative keeps it out of the negatives."""
    from conftest import copy_store

    from auditor.store import open_store

    path = copy_store(planted_cranfield["path"], tmp_path / "p.duckdb")
    con = open_store(path)
    try:
        item = review.next_item(con, annotator="it")
        review.record_verdict(con, query_id=item["query_id"], doc_id=item["doc_id"], verdict="false_negative",
                              annotator="it")
        s = export_mod.export(con, tmp_path / "r.jsonl", fmt="rich", negatives=5, drop_unreviewed_suspicious=False)
        assert s.queries_written >= 200
        rows = {r["query_id"]: r for r in _lines(tmp_path / "r.jsonl")}
        assert item["doc_id"] not in [n["doc_id"] for n in rows[item["query_id"]]["negatives"]]
        t = export_mod.export(con, tmp_path / "t.jsonl", fmt="triplet", negatives=5)
        assert t.rows == len(_lines(tmp_path / "t.jsonl")) > 0
    finally:
        con.close()


# ---- integrity: blank texts, file types, standard output, temporary files, signals (issue 8) --------------------

REPO = Path(__file__).resolve().parent.parent


def _strings(value) -> list[str]:
    """Every string in a decoded row, nested ones included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _blank_out(con, doc_id: str, text: str) -> None:
    con.execute("UPDATE documents SET title = NULL, text = ? WHERE doc_id = ?", [text, doc_id])


def test_blank_texts_are_never_exported_and_are_counted(handbuilt_store, tmp_path):
    con = handbuilt_store
    _blank_out(con, "n3", "\u00a0 ")  # a negative of q1: the next candidate takes its slot
    _blank_out(con, "p2", " \t\n")  # q2's only positive: q2 cannot be written
    _blank_out(con, "p3b", "")  # one of q3's two positives
    for fmt in export_mod.FORMATS:
        out = tmp_path / f"{fmt}.jsonl"
        s = export_mod.export(con, out, fmt=fmt, negatives=3, drop_unreviewed_suspicious=False)
        rows = _lines(out)
        assert rows and all(t.strip() for r in rows for t in _strings(r)), fmt
        assert "question q2?" not in out.read_text(encoding="utf-8")
        assert (s.empty_texts_skipped, s.queries_without_usable_positive) == (3, 1), fmt
        assert s.queries_with_positives == 3 and s.queries_written == 2
    q1 = next(r for r in _lines(tmp_path / "ntuple.jsonl") if r["query"] == "question q1?")
    assert q1["neg"] == [_text("n1"), _text("n2"), _text("n4")]  # n4 moved up into the blank n3's slot
    q3 = next(r for r in _lines(tmp_path / "ntuple.jsonl") if r["query"] == "question q3?")
    assert q3["pos"] == [_text("p3a")]


@pytest.mark.slow
def test_empty_cranfield_documents_are_never_exported(mined_cranfield_path, tmp_path):
    """Cranfield documents 471 and 995 are empty; 995 is a judged positive of query 125."""
    from conftest import copy_store

    from auditor.store import open_store

    con = open_store(copy_store(mined_cranfield_path, tmp_path / "c.duckdb"))
    try:
        assert con.execute("SELECT count(*) FROM documents WHERE doc_id IN ('471', '995') AND text = ''"
                           ).fetchall()[0][0] == 2
        for fmt in export_mod.FORMATS:
            out = tmp_path / f"{fmt}.jsonl"
            s = export_mod.export(con, out, fmt=fmt, negatives=5, drop_unreviewed_suspicious=False)
            rows = _lines(out)
            assert all(t.strip() for r in rows for t in _strings(r)), fmt
            assert s.empty_texts_skipped == 1 and s.queries_without_usable_positive == 0, fmt
        triplets = _lines(tmp_path / "triplet.jsonl")
        q125 = con.execute("SELECT text FROM queries WHERE query_id = '125'").fetchall()[0][0]
        assert any(r["anchor"] == q125 for r in triplets)  # its other positives are still there
    finally:
        con.close()


def _parquet_rows(path) -> list[dict]:
    import duckdb

    with duckdb.connect() as reader:
        cur = reader.execute(f"SELECT * FROM read_parquet('{path}')")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def test_parquet_from_the_extension_or_the_file_type(handbuilt_store, tmp_path):
    for fmt in export_mod.FORMATS:
        jsonl, parquet = tmp_path / f"{fmt}.jsonl", tmp_path / f"{fmt}.parquet"
        a = export_mod.export(handbuilt_store, jsonl, fmt=fmt, negatives=2, drop_unreviewed_suspicious=False)
        b = export_mod.export(handbuilt_store, parquet, fmt=fmt, negatives=2, drop_unreviewed_suspicious=False)
        assert parquet.read_bytes()[:4] == b"PAR1" and (a.file_type, b.file_type) == ("jsonl", "parquet")
        assert _parquet_rows(parquet) == _lines(jsonl) and b.rows == a.rows == len(_lines(jsonl))
    forced = tmp_path / "forced.parquet"
    export_mod.export(handbuilt_store, forced, file_type="jsonl", negatives=2)
    assert _lines(forced)  # JSONL, whatever the name says
    export_mod.export(handbuilt_store, tmp_path / "x.json", negatives=2)
    assert _lines(tmp_path / "x.json")
    with pytest.raises(ValueError, match="file type"):
        export_mod.export(handbuilt_store, tmp_path / "x.jsonl", file_type="csv")


def test_cli_parquet_by_extension(handbuilt_store_path, tmp_path, capsys):
    out = tmp_path / "train.parquet"
    assert cli_main(["export", "--db", str(handbuilt_store_path), "--out", str(out), "--negatives", "2"]) == 0
    assert out.read_bytes()[:4] == b"PAR1" and "(parquet)" in capsys.readouterr().out


def _run_cli(args: list[str], cwd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "auditor", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=120, **kw)


def test_out_dash_writes_jsonl_to_standard_output(handbuilt_store_path, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = ["export", "--db", str(handbuilt_store_path), "--format", "ntuple", "--negatives", "2"]
    r = _run_cli([*args, "--out", "-"], cwd=work)
    assert r.returncode == 0, r.stderr
    assert list(work.iterdir()) == []  # no file named '-'
    assert b"wrote 3 ntuple lines (jsonl) to standard output" in r.stderr
    _run_cli([*args, "--out", str(tmp_path / "file.jsonl")], cwd=work)
    assert r.stdout.decode() == (tmp_path / "file.jsonl").read_text(encoding="utf-8")
    refused = _run_cli([*args, "--out", "-", "--file-type", "parquet"], cwd=work)
    assert refused.returncode == 2 and refused.stdout == b""
    assert b"Parquet cannot be written to standard output" in refused.stderr


def test_stats_refuses_an_unknown_band_config(handbuilt_store_path, capsys):
    rc = cli_main(["stats", "--db", str(handbuilt_store_path), "--band-config", "nope"])
    err = capsys.readouterr().err
    assert rc == 2 and "'nope'" in err and "known: default" in err
    assert cli_main(["stats", "--db", str(handbuilt_store_path), "--band-config", "default"]) == 0


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_export_removes_temp_files_of_killed_exports(handbuilt_store, tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = [tmp_path / f".train.jsonl.{dead}-0123abcd.tmp", tmp_path / f".other.jsonl.{dead}-89abcdef.tmp"]
    kept = [tmp_path / f".train.jsonl.{alive}-00ff00ff.tmp",  # an export running beside this one
            tmp_path / ".train.jsonl.tmp", tmp_path / "notes.12-0123abcd.tmp"]  # not ours
    for p in stale + kept:
        p.write_bytes(b"x" * 248)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    export_mod.export(handbuilt_store, tmp_path / "train.jsonl", negatives=2)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # only during the export


_SLOW_EXPORT = """
import sys
import auditor.export as export_mod
from auditor.cli import main

rows_sql = export_mod._rows_sql
# The export's COPY runs until interrupted: a hook standing in for a very large store.
export_mod._rows_sql = lambda *a, **k: (
    f"SELECT r.* FROM ({rows_sql(*a, **k)}) r WHERE (SELECT sum(hash(i) % 7) FROM range(100000000000) t(i)) >= 0")
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_export_leaves_no_temp_file_and_the_old_file(handbuilt_store_path, tmp_path):
    out = tmp_path / "out" / "train.jsonl"
    out.parent.mkdir()
    out.write_text("previous export\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_EXPORT, "export", "--db", str(handbuilt_store_path), "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.parent.glob(".train.jsonl.*.tmp")):  # the COPY has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert [p.name for p in out.parent.iterdir()] == ["train.jsonl"]
    assert out.read_text(encoding="utf-8") == "previous export\n"


# ---- layouts: FlagEmbedding scores, sentence-transformers n-tuples ---------------------------------------------


def _msmarco_rows() -> list[dict]:
    from conftest import MSMARCO

    return [json.loads(line) for line in MSMARCO.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def msmarco_scored(store):
    """The MS MARCO sample ingested (teacher scores from the file), its given negatives scored and banded by SQL
    under model "m" with s_neg = teacher score / 100, so model and teacher scores differ."""
    from conftest import MSMARCO

    from auditor.ingest import ingest_path

    ingest_path(store, MSMARCO)
    store.execute(
        """
        INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, rank)
        SELECT 'm', c.query_id, c.doc_id, c.source_score / 100, p.s, p.s, p.s, c.source_rank
        FROM candidates c JOIN (SELECT query_id, max(teacher_score) / 100 AS s FROM qrels GROUP BY query_id) p
        USING (query_id)
        """
    )
    store.execute("INSERT INTO bands SELECT 'default', 'm', query_id, doc_id, 'ambiguous', 'simans', 1 FROM scores")
    return store


def test_ntuple_carries_the_teacher_scores_of_the_training_file(msmarco_scored, tmp_path):
    out = tmp_path / "flag.jsonl"
    s = export_mod.export(msmarco_scored, out, fmt="ntuple", negatives=25)
    assert s.score_source == {"teacher": 10, "model": 0}
    given = {r["query"]: r for r in _msmarco_rows()}
    rows = _lines(out)
    assert len(rows) == 10
    for r in rows:
        src = given[r["query"]]
        assert set(r) == {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt"}  # the store has no 'type'
        assert r["prompt"] == src["prompt"]
        teacher = dict(zip(src["pos"] + src["neg"], src["pos_scores"] + src["neg_scores"]))
        assert sorted(r["neg"]) == sorted(src["neg"]) and r["pos"] == src["pos"]
        assert r["pos_scores"] == pytest.approx([teacher[t] for t in r["pos"]])
        assert r["neg_scores"] == pytest.approx([teacher[t] for t in r["neg"]])


def test_ntuple_never_mixes_teacher_and_model_scores_in_a_query(msmarco_scored, tmp_path):
    con = msmarco_scored
    qid, other = (r[0] for r in con.execute("SELECT query_id FROM queries ORDER BY query_id LIMIT 2").fetchall())
    # a mined candidate of the first query (no teacher score): that query's scores all come from the model
    doc = con.execute("SELECT doc_id FROM qrels WHERE query_id = ? AND relevant", [other]).fetchall()[0][0]
    con.execute("INSERT INTO candidates (query_id, doc_id, source, source_rank, source_score) "
                "VALUES (?, ?, 'mined:m', 1, 0.99)", [qid, doc])
    con.execute("INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, rank) "
                "SELECT 'm', ?, ?, 0.99, s_pos_min, s_pos_mean, s_pos_max, 1 "
                "FROM scores WHERE query_id = ? LIMIT 1", [qid, doc, qid])
    con.execute("INSERT INTO bands VALUES ('default', 'm', ?, ?, 'ambiguous', 'simans', 1)", [qid, doc])
    qtext = con.execute("SELECT text FROM queries WHERE query_id = ?", [qid]).fetchall()[0][0]
    out = tmp_path / "flag.jsonl"
    s = export_mod.export(con, out, fmt="ntuple", negatives=5)  # default: teacher scores only
    assert s.score_source == {"teacher": 9, "model": 1} and s.lines_without_scores == 1
    by_query = {r["query"]: r for r in _lines(out)}
    assert "pos_scores" not in by_query[qtext] and "neg_scores" not in by_query[qtext]
    assert all("neg_scores" in r for q, r in by_query.items() if q != qtext)
    s = export_mod.export(con, out, fmt="ntuple", negatives=5, scores="model")
    assert s.lines_without_scores == 0
    row = next(r for r in _lines(out) if r["query"] == qtext)
    model = dict(con.execute("SELECT d.text, s.s_neg FROM scores s JOIN documents d USING (doc_id) "
                             "WHERE s.query_id = ?", [qid]).fetchall())
    assert row["neg_scores"][0] == pytest.approx(0.99)
    assert row["neg_scores"] == pytest.approx([model[t] for t in row["neg"]])
    s_pos = con.execute("SELECT s_pos_mean FROM scores WHERE query_id = ? LIMIT 1", [qid]).fetchall()[0][0]
    assert row["pos_scores"] == pytest.approx([s_pos])  # no cached vectors here: the query's s_pos_mean
    rich = tmp_path / "rich.jsonl"
    export_mod.export(con, rich, fmt="rich", negatives=5)
    sources = {r["query_id"]: r["score_source"] for r in _lines(rich)}
    assert sources.pop(qid) == "model" and set(sources.values()) == {"teacher"}


def test_ntuple_leaves_out_keys_it_has_no_value_for(msmarco_scored, tmp_path):
    """FlagEmbedding reads `prompt` whenever the key exists ("" = no instruction, null = the text "None") and
    softmaxes scores without a temperature: a line without a prompt or teacher scores leaves those keys out."""
    import pyarrow.parquet as pq

    from auditor.ingest import ingest_path

    con = msmarco_scored
    hostile = 'a "quoted", \\ back\nslash\x01 café ✓'
    first, second = (r[0] for r in con.execute("SELECT query_id FROM queries ORDER BY query_id LIMIT 2").fetchall())
    con.execute("UPDATE queries SET prompt = NULL WHERE query_id = ?", [first])
    con.execute("UPDATE queries SET prompt = '' WHERE query_id = ?", [second])
    con.execute("UPDATE queries SET text = ? WHERE query_id = ?", [hostile, first])
    out = tmp_path / "flag.jsonl"
    s = export_mod.export(con, out, fmt="ntuple", negatives=3, scores="none")
    assert s.lines_without_prompt == 2 and s.lines_without_scores == 10
    raw = out.read_text(encoding="utf-8")
    assert "None" not in raw and "null" not in raw and '"prompt":""' not in raw.replace(" ", "")
    rows = _lines(out)
    assert len(rows) == 10 and all(set(r) <= {"query", "pos", "neg", "prompt"} for r in rows)
    assert sum("prompt" in r for r in rows) == 8 and any(r["query"] == hostile for r in rows)
    assert all("prompt" not in r for r in rows if r["query"] == hostile)
    # the product's own export is a valid input: read back as FlagEmbedding, same queries and prompts
    from auditor.store import open_store

    back = open_store(tmp_path / "back.duckdb")
    try:
        ingest_path(back, out)
        got = dict(back.execute("SELECT text, prompt FROM queries").fetchall())
        assert got == {r["query"]: r.get("prompt") for r in rows}
    finally:
        back.close()
    export_mod.export(con, tmp_path / "flag.parquet", fmt="ntuple", negatives=3)
    table = pq.read_table(tmp_path / "flag.parquet").to_pylist()
    assert sum(r["prompt"] is None for r in table) == 2 and all(r["pos_scores"] for r in table)


def test_ntuple_writes_type_only_when_the_store_has_it(msmarco_scored, tmp_path):
    con = msmarco_scored
    con.execute("ALTER TABLE queries ADD COLUMN type VARCHAR")
    export_mod.export(con, tmp_path / "a.jsonl", fmt="ntuple", negatives=2)
    assert "type" not in _lines(tmp_path / "a.jsonl")[0]  # the column exists but holds nothing
    con.execute("UPDATE queries SET type = 'normal'")
    export_mod.export(con, tmp_path / "b.jsonl", fmt="ntuple", negatives=2)
    assert {r["type"] for r in _lines(tmp_path / "b.jsonl")} == {"normal"}


@pytest.mark.slow
def test_ntuple_model_scores_are_the_cosines_of_each_text(mined_cranfield_path, tmp_path):
    """Cranfield has no teacher: every score is the model's cosine, per positive and per negative."""
    from conftest import copy_store

    from auditor.store import open_store

    con = open_store(copy_store(mined_cranfield_path, tmp_path / "c.duckdb"))
    try:
        out = tmp_path / "flag.jsonl"
        s = export_mod.export(con, out, fmt="ntuple", negatives=5, scores="model")
        assert s.score_source == {"teacher": 0, "model": s.queries_written} and s.queries_written == 225
        per_query = {
            text: (mn, mx, dict(zip(docs, negs))) for text, mn, mx, docs, negs in con.execute(
                """SELECT q.text, any_value(s.s_pos_min), any_value(s.s_pos_max),
                          list(CASE WHEN d.title IS NULL THEN d.text ELSE d.title || ' ' || d.text END),
                          list(s.s_neg)
                   FROM scores s JOIN queries q USING (query_id) JOIN documents d USING (doc_id)
                   WHERE q.query_id <> '125' GROUP BY q.text""").fetchall()  # 125: its empty positive is left out
        }
        checked = 0
        for r in _lines(out):
            assert "prompt" not in r and len(r["pos_scores"]) == len(r["pos"]) >= 1
            assert len(r["neg_scores"]) == len(r["neg"]) >= 1
            assert all(math.isfinite(x) for x in r["pos_scores"] + r["neg_scores"])
            if r["query"] in per_query:
                mn, mx, s_neg = per_query[r["query"]]
                assert (min(r["pos_scores"]), max(r["pos_scores"])) == pytest.approx((mn, mx), abs=1e-5)
                assert r["neg_scores"] == pytest.approx([s_neg[t] for t in r["neg"]])
                checked += 1
        assert checked == 224
    finally:
        con.close()


def test_st_ntuple_has_n_negative_columns_and_only_full_rows(handbuilt_store, tmp_path):
    out = tmp_path / "st.jsonl"
    s = export_mod.export(handbuilt_store, out, fmt="st-ntuple", negatives=3, drop_unreviewed_suspicious=True)
    rows = _lines(out)
    # band cleaning: q1 keeps n3, n4 and q2 keeps n6, n7 (their suspicious ones are unreviewed): short of 3
    assert [list(r) for r in rows] == [["anchor", "positive", "negative_1", "negative_2", "negative_3"]]
    assert rows[0] == {"anchor": "question q3?", "positive": _text("p3a"),  # grade 2 beats p3b's grade 1
                       "negative_1": _text("n8"), "negative_2": _text("n9"), "negative_3": _text("n1")}
    assert (s.rows, s.queries_written, s.negatives_written, s.positives_written) == (1, 1, 3, 1)
    assert s.short_query_ids == ["q1", "q2"] and s.short_queries == 2
    wide = export_mod.export(handbuilt_store, tmp_path / "w.parquet", fmt="st-ntuple", negatives=2,
                             drop_unreviewed_suspicious=True)
    assert wide.rows == 3
    assert [list(r) for r in _parquet_rows(tmp_path / "w.parquet")] == [
        ["anchor", "positive", "negative_1", "negative_2"]] * 3


@pytest.mark.parametrize("fmt", ["triplet", "ntuple", "st-ntuple"])
def test_an_export_never_holds_a_text_its_ingest_refuses(handbuilt_store, tmp_path, fmt):
    """Texts of only invisible characters (zero-width space, BOM, word joiner) are blank to ingest: the export leaves
    them out like whitespace, so its own output ingests back."""
    from auditor.ingest import ingest_path
    from auditor.store import open_store

    con = handbuilt_store
    invisible = {"n2": "\u200b\u200b", "n3": "\ufeff \u2060", "n6": "\u180e"}
    for doc_id, text in invisible.items():
        con.execute("UPDATE documents SET title = NULL, text = ? WHERE doc_id = ?", [text, doc_id])
    out = tmp_path / f"{fmt}.jsonl"
    s = export_mod.export(con, out, fmt=fmt, negatives=2, drop_unreviewed_suspicious=False)
    assert s.empty_texts_skipped >= 1
    raw = out.read_text(encoding="utf-8")
    assert not any(ch in raw for ch in "\u200b\ufeff\u2060\u180e")
    back = open_store(tmp_path / "back.duckdb")
    try:
        ingest_path(back, out)
    finally:
        back.close()


@pytest.mark.parametrize("fmt", ["ntuple", "triplet"])
def test_a_query_whose_line_would_be_too_large_to_ingest_is_left_out(handbuilt_store, tmp_path, fmt):
    """Three negatives of 6 MiB each make an 18 MiB n-tuple line (ingest takes 16 MiB): that query is left out and
    named, so the export ingests back; a triplet line holds one negative, so it stays within the limit."""
    from auditor.ingest import ingest_path
    from auditor.ingest.limits import MAX_RECORD_BYTES
    from auditor.store import open_store

    con = handbuilt_store
    big = MAX_RECORD_BYTES * 3 // 8
    negatives = [r[0] for r in con.execute(
        "SELECT doc_id FROM candidates WHERE query_id = 'q2' ORDER BY source_rank LIMIT 3").fetchall()]
    for i, doc_id in enumerate(negatives):
        con.execute("UPDATE documents SET title = NULL, text = ? WHERE doc_id = ?", [f"{i} " + "é" * (big // 2),
                                                                                     doc_id])
    out = tmp_path / f"{fmt}.jsonl"
    s = export_mod.export(con, out, fmt=fmt, negatives=3, drop_unreviewed_suspicious=False)
    if fmt == "ntuple":
        assert s.oversized_query_ids == ["q2"]
        assert "question q2?" not in {r["query"] for r in _lines(out)}
    else:
        assert s.oversized_query_ids == []
    assert max(len(line.encode()) for line in out.read_text(encoding="utf-8").splitlines()) < MAX_RECORD_BYTES
    back = open_store(tmp_path / "back.duckdb")
    try:
        ingest_path(back, out)
    finally:
        back.close()


def test_the_report_paints_bands_in_the_apps_colours(handbuilt_store, tmp_path):
    """One colour table: a band is the same colour in the HTML report as on the app's pages."""
    from auditor.bands import BAND_COLOURS, BAND_LABELS
    from auditor.report import write_report
    from auditor.stats import compute_stats
    from pages._common import BAND_COLORS

    assert BAND_COLORS is BAND_COLOURS
    path = tmp_path / "r.html"
    write_report(compute_stats(handbuilt_store), path)
    text = path.read_text(encoding="utf-8")
    for band, colour in BAND_COLOURS.items():
        assert f'"color":"{colour}"' in text.replace(" ", "") and f'"name":"{BAND_LABELS[band]}"' in text


@pytest.mark.parametrize("fmt", ["triplet", "ntuple"])
def test_an_export_in_slices_of_queries_writes_the_same_file(planted_cranfield, tmp_path, monkeypatch, fmt):
    """A large store's selection runs a slice of queries at a time (its windows then fit in DuckDB's memory): the
    file must be the one the single pass writes, with the same summary and estimate."""
    from conftest import copy_store

    from auditor import select
    from auditor.store import open_store

    con = open_store(copy_store(planted_cranfield["path"], tmp_path / "s.duckdb"))
    whole = export_mod.export(con, tmp_path / "whole.jsonl", fmt=fmt, negatives=5)
    monkeypatch.setattr(select, "SLICE_CANDIDATES", 2000)
    assert len(select.query_slices(con)) > 3
    sliced = export_mod.export(con, tmp_path / "sliced.jsonl", fmt=fmt, negatives=5)
    assert (tmp_path / "sliced.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert (sliced.rows, sliced.estimate) == (whole.rows, whole.estimate) and whole.rows > 0
