"""Round trips: every training layout, in JSONL and in Parquet, ingests back into a fresh store holding the same
queries, positives and negatives (sets of texts per query) as the export chose from the source store."""

from __future__ import annotations

import pytest

from auditor import export as export_mod
from auditor.ingest import ingest_path
from auditor.select import select_negatives
from auditor.store import open_store

LAYOUTS = [(fmt, file_type) for fmt in ("triplet", "ntuple", "st-ntuple") for file_type in ("jsonl", "parquet")]

TrainingSet = dict[str, tuple[frozenset[str], frozenset[str]]]  # query text -> (positive texts, negative texts)


def _doc_text(title: str | None, text: str) -> str:
    return text if title is None else f"{title} {text}"


def expected_training_set(con, fmt: str, n: int, drop_unreviewed_suspicious: bool) -> TrainingSet:
    """What the export should write, worked out from the source store without auditor.export: labeled positives
    and the selection's negatives, blank texts left out (the next candidate moving up), st-ntuple with one best
    positive (highest grade, then doc id) and only queries with exactly n negatives."""
    queries = dict(con.execute("SELECT query_id, text FROM queries").fetchall())
    positives: dict[str, list[tuple[int, str, str]]] = {}
    for qid, doc_id, grade, title, text in con.execute(
        """SELECT r.query_id, r.doc_id, max(r.grade), any_value(d.title), any_value(d.text)
           FROM qrels r JOIN documents d USING (doc_id) WHERE r.relevant GROUP BY r.query_id, r.doc_id"""
    ).fetchall():
        body = _doc_text(title, text)
        if body.strip():
            positives.setdefault(qid, []).append((-(grade if grade is not None else -1), doc_id, body))
    negatives: dict[str, list[str]] = {}
    rows = select_negatives(con, n + 10, drop_unreviewed_suspicious=drop_unreviewed_suspicious).fetchall()
    texts = {d: _doc_text(t, x) for d, t, x in con.execute("SELECT doc_id, title, text FROM documents").fetchall()}
    for qid, doc_id, *_ in rows:  # ordered by query, slot
        if texts[doc_id].strip() and len(negatives.setdefault(qid, [])) < n:
            negatives[qid].append(texts[doc_id])
    out: TrainingSet = {}
    for qid, pos in positives.items():
        neg = negatives.get(qid, [])
        if not neg or not queries[qid].strip() or (fmt == "st-ntuple" and len(neg) < n):
            continue
        kept = [min(pos)[2]] if fmt == "st-ntuple" else [p[2] for p in pos]
        out[queries[qid]] = (frozenset(kept), frozenset(neg))
    return out


def stored_training_set(con) -> TrainingSet:
    """Per query text of a store: the texts of its labeled positives and of its candidates."""
    rows = con.execute(
        """
        SELECT q.text,
               (SELECT list(CASE WHEN d.title IS NULL THEN d.text ELSE d.title || ' ' || d.text END)
                FROM qrels r JOIN documents d USING (doc_id) WHERE r.relevant AND r.query_id = q.query_id),
               (SELECT list(CASE WHEN d.title IS NULL THEN d.text ELSE d.title || ' ' || d.text END)
                FROM candidates c JOIN documents d USING (doc_id) WHERE c.query_id = q.query_id)
        FROM queries q
        """
    ).fetchall()
    return {q: (frozenset(p or []), frozenset(n or [])) for q, p, n in rows}


def round_trip(source, tmp_path, fmt: str, file_type: str, n: int, drop: bool) -> tuple[TrainingSet, TrainingSet]:
    out = tmp_path / f"train.{fmt}.{file_type}"
    summary = export_mod.export(source, out, fmt=fmt, negatives=n, drop_unreviewed_suspicious=drop)
    assert summary.file_type == file_type and summary.queries_written > 0
    fresh = open_store(tmp_path / "fresh.duckdb")
    try:
        ingested = ingest_path(fresh, out)
        assert ingested.format == {"triplet": "triplets", "ntuple": "flag", "st-ntuple": "ntuple"}[fmt]
        got = stored_training_set(fresh)
    finally:
        fresh.close()
    return expected_training_set(source, fmt, n, drop), got


@pytest.mark.parametrize(("fmt", "file_type"), LAYOUTS)
def test_export_ingests_back_to_the_same_training_set(handbuilt_store, tmp_path, fmt, file_type):
    handbuilt_store.execute("UPDATE documents SET title = NULL, text = ' ' WHERE doc_id = 'n3'")  # a blank one
    expected, got = round_trip(handbuilt_store, tmp_path, fmt, file_type, n=3, drop=False)
    assert len(expected) == 3
    assert got == expected


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "file_type"), LAYOUTS)
def test_cranfield_export_ingests_back_to_the_same_training_set(mined_cranfield_path, tmp_path, fmt, file_type):
    from conftest import copy_store

    source = open_store(copy_store(mined_cranfield_path, tmp_path / "source.duckdb"))
    try:
        expected, got = round_trip(source, tmp_path, fmt, file_type, n=5, drop=True)
    finally:
        source.close()
    assert len(expected) >= 200
    assert got == expected
