"""Planted false negatives: hiding positives, and counting what each band and the export catch."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from auditor.evaluate import evaluate, format_report
from auditor.planted import hide_positives, read_answer_key, read_qrels
from auditor.store import StoreError, open_store

from conftest import CRANFIELD, copy_store


def run_cli(argv: list[str]) -> int:
    """The scoring commands through argparse, as `auditor` wires them."""
    from auditor.commands import scoring

    parser = argparse.ArgumentParser(prog="auditor")
    scoring.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_counts_on_a_hand_built_case(handbuilt_store):
    key = [("q1", "n1"), ("q1", "n3"), ("q3", "n9"), ("q2", "n99"), ("qX", "d")]
    r = evaluate(handbuilt_store, key, negatives=2)
    assert r["known_false_negatives"] == 4  # qX is not a query of this store
    assert r["known_in_candidates"] == 3
    b = r["bands"]
    assert (b["suspicious"]["candidates"], b["suspicious"]["known_fn"]) == (3, 1)
    assert b["suspicious"]["precision"] == pytest.approx(1 / 3) and b["suspicious"]["recall"] == pytest.approx(1 / 4)
    assert (b["ambiguous"]["candidates"], b["ambiguous"]["known_fn"]) == (4, 2)
    assert (b["too_easy"]["candidates"], b["too_easy"]["known_fn"]) == (3, 0)
    assert r["rules"]["inversion"]["known_fn"] == 1
    # export of 2: q1 n3 n4, q2 n6 n7, q3 n8 n9 -> n3 and n9 are known false negatives
    assert (r["export"]["negatives"], r["export"]["known_fn"], r["export"]["queries_full"]) == (6, 2, 3)
    # plain top-2 by score: q1 n1 n2, q2 n5 n6, q3 n8 n9 -> n1 and n9
    assert (r["plain_top"]["negatives"], r["plain_top"]["known_fn"]) == (6, 2)
    text = format_report(r)
    assert "suspicious" in text and "33.3%" in text


def test_hide_positives_keeps_the_best_graded_one(tmp_path):
    s = hide_positives(CRANFIELD, tmp_path / "out", keep=1, seed=7)
    original = read_qrels(CRANFIELD / "qrels" / "test.tsv")
    kept = read_qrels(s.qrels_path)
    hidden = read_answer_key(s.answer_key)
    pos = {(q, d): g for q, d, g in original if g > 0}
    kept_pos = {(q, d) for q, d, g in kept if g > 0}
    assert s.queries == 225 and s.kept == 225 == len(kept_pos)
    assert s.hidden == len(hidden) == len(pos) - 225
    assert kept_pos | set(hidden) == set(pos) and not kept_pos & set(hidden)
    best = {}
    for (q, d), g in pos.items():
        best[q] = max(best.get(q, 0), g)
    assert all(pos[(q, d)] == best[q] for q, d in kept_pos)
    # judged non-relevant rows are kept as they were; corpus and queries are copied
    assert sorted(r for r in kept if r[2] <= 0) == sorted(r for r in original if r[2] <= 0)
    assert (tmp_path / "out" / "corpus.jsonl").read_bytes() == (CRANFIELD / "corpus.jsonl").read_bytes()
    # deterministic for a seed
    s2 = hide_positives(CRANFIELD, tmp_path / "again", keep=1, seed=7)
    assert read_answer_key(s2.answer_key) == hidden


def test_keep_two_and_bad_inputs(tmp_path):
    s = hide_positives(CRANFIELD, tmp_path / "k2", keep=2)
    assert s.kept == sum(min(2, n) for n in _positives_per_query().values())
    with pytest.raises(StoreError, match="not a BEIR folder"):
        hide_positives(tmp_path, tmp_path / "x")
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\n1\t2\nonly-one-field\n")
    with pytest.raises(StoreError, match=r"bad.tsv:3: expected query-id and corpus-id"):
        read_answer_key(bad)
    with pytest.raises(StoreError, match="does not exist"):
        read_answer_key(tmp_path / "missing.tsv")


def _positives_per_query() -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(CRANFIELD / "qrels" / "test.tsv") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row["score"]) > 0:
                counts[row["query-id"]] = counts.get(row["query-id"], 0) + 1
    return counts


def test_default_cleaning_beats_plain_mining_on_planted_cranfield(planted_cranfield):
    con = open_store(planted_cranfield["path"], read_only=True)
    r = evaluate(con, planted_cranfield["answer_key"], negatives=5)
    con.close()
    assert r["known_false_negatives"] == 1387
    plain, cleaned = r["plain_top"], r["export"]
    assert plain["fn_share"] > 0.2  # top-5 mining is full of hidden positives (about 27%)
    assert cleaned["fn_share"] < plain["fn_share"] / 2
    assert cleaned["queries_full_share"] >= 0.95
    assert r["bands"]["suspicious"]["precision"] > r["bands"]["ambiguous"]["precision"]


def test_cli_hide_positives_and_evaluate_json(tmp_path, planted_cranfield, capsys):
    assert run_cli(["hide-positives", str(CRANFIELD), str(tmp_path / "h"), "--seed", "3"]) == 0
    assert "answer key" in capsys.readouterr().out
    db = copy_store(planted_cranfield["path"], tmp_path / "e.duckdb")
    assert run_cli(["evaluate", "--db", str(db), "--answer-key", str(planted_cranfield["answer_key"]),
                    "--negatives", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["negatives_per_query"] == 3 and set(out["bands"]) == {"suspicious", "ambiguous", "too_easy"}
    # a stricter named config coexists with the default one
    assert run_cli(["band", "--db", str(db), "--config", "strict", "--relative-margin", "0.2", "--top-rank", "off"]) == 0
    assert "strict" in capsys.readouterr().out
    con = open_store(db, read_only=True)
    configs = dict(con.execute("SELECT config, count(*) FROM bands GROUP BY 1").fetchall())
    con.close()
    assert configs["strict"] == configs["default"]
    assert run_cli(["band", "--db", str(db), "--preview", "--near-duplicate", "0.9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_queries"] == 225
