"""Export: formats load back, confirmed false negatives never exported as negatives, relabel, atomic writes."""

from __future__ import annotations

import json

import pytest

from auditor import export as export_mod
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
    assert all(set(r) == {"query", "pos", "neg"} for r in rows.values())
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

    monkeypatch.setattr(export_mod, "_finish", boom)
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
