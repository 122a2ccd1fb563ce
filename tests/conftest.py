"""Shared fixtures. Expensive ones (a mined Cranfield store) are session-scoped; helpers append theirs below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
CRANFIELD = DATA / "cranfield"
MSMARCO = DATA / "msmarco-mined" / "train.jsonl"


@pytest.fixture
def store(tmp_path):
    """A fresh, empty store file in tmp_path (connection closed after the test)."""
    from auditor.store import open_store

    con = open_store(tmp_path / "store.duckdb")
    yield con
    con.close()


@pytest.fixture(scope="session")
def cranfield_store_path(tmp_path_factory) -> Path:
    """A store with Cranfield ingested (no mining). Copy it before writing to it."""
    from auditor.ingest import ingest_path
    from auditor.store import open_store

    path = tmp_path_factory.mktemp("cranfield") / "cranfield.duckdb"
    con = open_store(path)
    ingest_path(con, CRANFIELD)
    con.close()
    return path


# ---- hand-built scored store (review / export / stats tests; no model needed) --------------------------------------

#: (query_id, doc_id, source(s), s_neg, rank, band, rule, weight) of the hand-built store, model "m", config "default".
HANDBUILT_MODEL = "m"
HANDBUILT_CANDIDATES = [
    ("q1", "n1", ("bm25", "dense"), 0.85, 1, "suspicious", "inversion", 0.2),
    ("q1", "n2", ("dense",), 0.78, 2, "suspicious", "relative_margin", 0.4),
    ("q1", "n3", ("dense",), 0.60, 3, "ambiguous", "simans", 0.9),
    ("q1", "n4", ("dense",), 0.20, 4, "too_easy", "simans", 0.01),
    ("q2", "n5", ("dense",), 0.69, 1, "suspicious", "relative_margin", 0.5),
    ("q2", "n6", ("bm25",), 0.55, 2, "ambiguous", "simans", 1.0),
    ("q2", "n7", ("dense",), 0.10, 3, "too_easy", "simans", 0.0),
    ("q3", "n8", ("dense",), 0.50, 1, "ambiguous", "simans", 0.95),
    ("q3", "n9", ("dense",), 0.44, 2, "ambiguous", "simans", 0.98),
    ("q3", "n1", ("dense",), 0.30, 3, "too_easy", "simans", 0.2),
]
#: query -> [(positive doc_id, s_pos)]
HANDBUILT_POSITIVES = {"q1": [("p1", 0.8)], "q2": [("p2", 0.7)], "q3": [("p3a", 0.9), ("p3b", 0.6)]}
#: Risk-queue order of the hand-built store (suspicious by delta desc, then ambiguous, then too_easy).
HANDBUILT_RISK_ORDER = [
    ("q1", "n1"), ("q2", "n5"), ("q1", "n2"),
    ("q3", "n8"), ("q2", "n6"), ("q3", "n9"), ("q1", "n3"),
    ("q3", "n1"), ("q2", "n7"), ("q1", "n4"),
]


def build_handbuilt_store(con) -> None:
    """Fill an empty store with 3 queries, 13 documents, positives, candidates, scores and bands, by SQL only."""
    docs = ["p1", "p2", "p3a", "p3b"] + [f"n{i}" for i in range(1, 10)]
    for d in docs:
        con.execute(
            "INSERT INTO documents VALUES (?, ?, ?, md5(?), 'hand')", [d, f"Title {d}", f"text of {d} <b>x</b>", d]
        )
    for q in ("q1", "q2", "q3"):
        con.execute("INSERT INTO queries VALUES (?, ?, md5(?), 'hand', NULL)", [q, f"question {q}?", q])
    for q, pos in HANDBUILT_POSITIVES.items():
        for grade, (p, _) in enumerate(pos):
            con.execute("INSERT INTO qrels VALUES (?, ?, true, ?, NULL, 'hand')", [q, p, 2 - grade])
    for q, d, sources, s_neg, rank, band, rule, weight in HANDBUILT_CANDIDATES:
        s_pos = [s for _, s in HANDBUILT_POSITIVES[q]]
        for src in sources:
            con.execute(
                "INSERT INTO candidates (query_id, doc_id, source, source_rank, source_score) VALUES (?, ?, ?, ?, ?)",
                [q, d, src, rank, s_neg],
            )
        con.execute(
            "INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos, rank) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0.1, ?)",
            [HANDBUILT_MODEL, q, d, s_neg, min(s_pos), sum(s_pos) / len(s_pos), max(s_pos), rank],
        )
        con.execute(
            "INSERT INTO bands VALUES ('default', ?, ?, ?, ?, ?, ?)", [HANDBUILT_MODEL, q, d, band, rule, weight]
        )


@pytest.fixture
def handbuilt_store(tmp_path):
    """A store built by SQL inserts (see HANDBUILT_CANDIDATES): scored and banded, no verdicts."""
    from auditor.store import open_store

    con = open_store(tmp_path / "hand.duckdb")
    build_handbuilt_store(con)
    yield con
    con.close()


# ---- the app's stores (helper C) ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mined_cranfield_path(tmp_path_factory) -> Path:
    """The sample store exactly as `auditor app` builds it (Cranfield ingested, mined with the default model, default
    bands), built once per session through auditor.sample.build_sample_store. Copy it (copy_store) before writing."""
    from auditor.sample import build_sample_store

    path = tmp_path_factory.mktemp("mined") / "cranfield-mined.duckdb"
    build_sample_store(path)
    return path


def copy_store(src: Path, dst: Path) -> Path:
    """Copy a closed store file (and its write-ahead log, if any) to dst."""
    import shutil

    shutil.copyfile(src, dst)
    wal = Path(f"{src}.wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{dst}.wal"))
    return dst


@pytest.fixture
def handbuilt_store_path(tmp_path) -> Path:
    """The hand-built store (see HANDBUILT_CANDIDATES) as a closed file, for code that opens the path itself (the app)."""
    from auditor.store import open_store

    path = tmp_path / "hand-app.duckdb"
    con = open_store(path)
    build_handbuilt_store(con)
    con.close()
    return path


# ---- the scoring engine's stores (helper A) ------------------------------------------------------------------------


def seed_embeddings(con, src: Path) -> int:
    """Copy the embedding cache of another (closed) store into `con`; returns the rows copied. Texts are keyed by
    hash, so a store over the same texts then mines without encoding anything."""
    con.execute(f"ATTACH '{src}' AS seed_src (READ_ONLY)")
    try:
        con.execute("INSERT INTO embeddings SELECT * FROM seed_src.embeddings")
    finally:
        con.execute("DETACH seed_src")
    return con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0]


@pytest.fixture(scope="session")
def planted_cranfield(tmp_path_factory, mined_cranfield_path) -> dict:
    """Cranfield with one positive kept per query and the others hidden (auditor.planted), ingested and mined with
    the default model (embeddings reused from the mined sample store, so nothing is encoded again).
    Returns {"path": store file (closed; copy before writing), "answer_key": TSV, "folder": BEIR folder}."""
    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.planted import hide_positives
    from auditor.store import open_store

    base = tmp_path_factory.mktemp("planted")
    hidden = hide_positives(CRANFIELD, base / "cranfield-1pos", keep=1, seed=42)
    path = base / "planted.duckdb"
    con = open_store(path)
    try:
        ingest_path(con, base / "cranfield-1pos")
        seed_embeddings(con, mined_cranfield_path)
        mine(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {"path": path, "answer_key": hidden.answer_key, "folder": base / "cranfield-1pos"}
