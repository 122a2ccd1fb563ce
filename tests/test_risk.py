"""The false-negative risk: lexical signal, fused prior, refit on verdicts, propagation, the export-aware queue and
the export estimate. Planted Cranfield (hidden positives as an answer key) for the real thing, the hand-built store
for hand-computed cases."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from auditor import queue, review, risk
from auditor.config import DEFAULT_MODEL, RiskConfig
from auditor.estimate import model_estimate, recommend, sample_estimate
from auditor.frontier import baseline_curve, frontier_ratio
from auditor.planted import read_answer_key
from auditor.select import Selection, select_negatives
from auditor.store import SharedStore, open_store

from conftest import HANDBUILT_CANDIDATES, HANDBUILT_MODEL, copy_store

M = DEFAULT_MODEL


@pytest.fixture
def planted(tmp_path, planted_cranfield):
    con = open_store(copy_store(planted_cranfield["path"], tmp_path / "p.duckdb"))
    key = set(read_answer_key(planted_cranfield["answer_key"]))
    yield con, key
    con.close()


def _judge(con, items, key, annotator="sim"):
    for q, d in items:
        review.record_verdict(con, query_id=q, doc_id=d, annotator=annotator, queue_mode="export",
                              verdict="false_negative" if (q, d) in key else "true_negative")


# ---- lexical signal and prior --------------------------------------------------------------------------------------


def test_bm25_pair_scores_match_bm25s_own_scoring():
    import bm25s

    from auditor.lexical import build_index, pair_signals

    docs = ["the shock wave over a flat plate", "boundary layer on a flat plate at high speed",
            "heat transfer in a hypersonic boundary layer", "a plate of pasta"]
    index = build_index(docs)
    queries = ["flat plate boundary layer"]
    got = pair_signals(index, queries, np.array([0, 0, 0]), np.array([0, 2, 3]), np.array([0]), np.array([1]), 10)
    # bm25s scores the same query over the corpus; the pair score is divided by the query's best score
    retriever = bm25s.BM25()
    retriever.index(index.tokenizer.tokenize(docs, update_vocab=False, return_as="ids", show_progress=False),
                    show_progress=False)
    ids = sorted(set(index.tokenizer.tokenize(queries, update_vocab=False, return_as="ids",
                                              show_progress=False)[0]) - {0})
    full = retriever.get_scores_from_ids(ids)
    assert got["bm25"] == pytest.approx(full[[0, 2, 3]] / full.max())
    # ranks among the non-positive documents (document 1 is the positive): 0 and 2 share terms, 3 only "plate"
    assert got["bm25_rank"][0] < got["bm25_rank"][1] or got["bm25_rank"][1] < got["bm25_rank"][0]
    assert set(got["bm25_rank"][:2]) == {1, 2} and got["bm25_rank"][2] == 3
    # closeness to the positive: document 0 shares "flat plate" with it, 3 only "plate", on the positive's own scale
    assert 0 < got["lex_to_pos"][2] < got["lex_to_pos"][0] <= 1


def test_mining_stores_the_lexical_signal_the_fused_rank_and_the_prior(planted):
    con, _ = planted
    rows, with_bm25, bad_ranks = con.execute(
        """SELECT count(*), count(bm25), (SELECT count(*) FROM (
               SELECT query_id FROM scores GROUP BY query_id
               HAVING min(fused_rank) <> 1 OR max(fused_rank) <> count(*) OR count(DISTINCT fused_rank) <> count(*)))
           FROM scores""").fetchall()[0]
    assert rows == 225 * 50 and with_bm25 == rows and bad_ranks == 0  # fused ranks are 1..n within each query
    assert con.execute("SELECT count(*) FROM scores WHERE lex_to_pos < 0 OR lex_to_pos > 1").fetchall()[0][0] == 0
    prior_ok = con.execute(
        "SELECT bool_and(abs(r.prior - 1.0 / (1 + s.fused_rank)) < 1e-12), count(*) FROM risk r JOIN scores s "
        "USING (model, query_id, doc_id)").fetchall()[0]
    assert prior_ok == (True, rows)
    fit = risk.current_fit(con, M)
    assert fit["n_labels"] == 0 and fit["blend"] == 0  # nothing to learn from yet: the prior is in force


def test_the_prior_ranks_hidden_positives_above_the_dense_order(planted):
    con, key = planted
    hits = {(q, d) for q, d in key}
    rows = con.execute("SELECT query_id, doc_id, rank, fused_rank FROM scores").fetchall()
    top_dense = [(q, d) in hits for q, d, r, _ in rows if r <= 10]
    top_fused = [(q, d) in hits for q, d, _, f in rows if f <= 10]
    assert np.mean(top_fused) > np.mean(top_dense)  # the independent views find more of them at the top


# ---- refit on verdicts --------------------------------------------------------------------------------------------


def test_refit_needs_enough_verdicts_then_learns_and_records_them(planted):
    con, key = planted
    items = queue.build_queue(con, limit=40)[["query_id", "doc_id"]].itertuples(index=False)
    items = [tuple(x) for x in items]
    _judge(con, items[:4], key)
    few = risk.fit(con, M)
    assert few.blend == 0 and "prior only" in few.note and few.n_labels == 4
    _judge(con, items[4:], key)
    n_fn = sum(x in key for x in items)
    assert 3 <= n_fn <= len(items) - 3  # both verdicts present, else the test proves nothing
    fitted = risk.fit(con, M)
    assert fitted.n_labels == 40 and fitted.n_false_negative == n_fn
    assert fitted.blend == pytest.approx(40 / (40 + RiskConfig.prior_weight))
    assert set(fitted.coefficients) == {name for name, _ in risk.FEATURES}
    # verdicts are carried as certainties, the rest as blended probabilities in (0, 1)
    labeled = dict(((q, d), p) for q, d, p in con.execute(
        "SELECT query_id, doc_id, p_fn FROM risk WHERE origin = 'verdict'").fetchall())
    assert labeled == {x: (1.0 if x in key else 0.0) for x in items}
    lo, hi, n_model = con.execute(
        "SELECT min(p_fn), max(p_fn), count(*) FROM risk WHERE origin = 'model'").fetchall()[0]
    assert 0 < lo and hi < 1 and n_model > 10_000
    row = con.execute("SELECT n_labels, last_event_id FROM risk_fits ORDER BY fit_id DESC LIMIT 1").fetchall()[0]
    assert row == (40, risk.last_event_id(con))
    assert not risk.is_stale(con, M)


def test_background_refit_runs_after_enough_verdicts_and_warms_the_queue(tmp_path, planted_cranfield):
    store = SharedStore(copy_store(planted_cranfield["path"], tmp_path / "bg.duckdb"))
    con = store.cursor()
    refit = risk.BackgroundRefit(store.cursor, RiskConfig(refit_every=3, min_labels=3, min_per_class=1))
    key = set(read_answer_key(planted_cranfield["answer_key"]))
    items = [tuple(x) for x in queue.build_queue(con, limit=2)[["query_id", "doc_id"]].itertuples(index=False)]
    _judge(con, items, key)
    assert refit.notify(M, wait=True) is False  # 2 new verdicts: not due yet
    before = risk.current_fit(con, M)["fit_id"]
    fn = next(x for x in queue.build_queue(con, mode="risk", limit=400)[["query_id", "doc_id"]]
              .itertuples(index=False) if tuple(x) in key)
    _judge(con, [tuple(fn)], key)
    assert refit.notify(M, wait=True) is True
    assert refit.fits == 1 and refit.last_error is None
    assert risk.current_fit(con, M)["fit_id"] > before and not risk.is_stale(con, M)
    assert queue.refresh(con) == 0  # the refit rebuilt the queue's tables for the new fit itself
    store.close()


def test_background_refits_take_at_most_their_share_of_the_time(tmp_path, planted_cranfield):
    store = SharedStore(copy_store(planted_cranfield["path"], tmp_path / "share.duckdb"))
    con = store.cursor()
    refit = risk.BackgroundRefit(store.cursor, RiskConfig(refit_every=1, min_labels=3, min_per_class=1,
                                                          refit_max_share=0.25))
    key = set(read_answer_key(planted_cranfield["answer_key"]))
    items = [tuple(x) for x in queue.build_queue(con, mode="risk", limit=6)[["query_id", "doc_id"]]
             .itertuples(index=False)]
    _judge(con, items[:3], key)
    assert refit.notify(M, wait=True) is True
    first_end, took = time.monotonic(), refit.last_seconds
    assert took > 0
    _judge(con, items[3:], key)
    assert refit.notify(M) is False and refit.fits == 1  # due, but held back for 3x the time the last one took
    deadline = time.monotonic() + 60
    while refit.fits < 2 and time.monotonic() < deadline:  # the held-back fit starts by itself
        time.sleep(0.05)
    assert refit.fits == 2 and not risk.is_stale(con, M)
    assert time.monotonic() - first_end >= 3 * took * 0.9
    refit.wait()
    with pytest.raises(ValueError, match="refit_max_share"):
        risk.BackgroundRefit(store.cursor, RiskConfig(refit_max_share=0))
    store.close()


def test_after_a_refit_a_caller_gets_the_new_order_unless_it_accepts_the_old_one(tmp_path, planted_cranfield):
    store = SharedStore(copy_store(planted_cranfield["path"], tmp_path / "stale.duckdb"))
    con = store.cursor()
    key = set(read_answer_key(planted_cranfield["answer_key"]))

    def top(cur, limit=20, **kw):
        df = queue.build_queue(cur, mode="risk", limit=limit, **kw)
        return {(q, d): p for q, d, p in df[["query_id", "doc_id", "p_fn"]].itertuples(index=False)}

    def stored(items):
        return {(q, d): con.execute("SELECT p_fn FROM risk WHERE model = ? AND query_id = ? AND doc_id = ?",
                                    [M, q, d]).fetchall()[0][0] for q, d in items}

    _judge(con, list(top(con)), key)
    risk.fit(con, M)
    first = list(top(con, limit=40).items())  # the queue's table at this fit
    _judge(con, [k for k, _ in first[:20]], key)
    risk.fit(con, M)  # a new fit: new P for every candidate
    cur = con.cursor()  # a command's own connection, closed right after its answer
    fresh = list(top(cur, limit=40).items())
    cur.close()
    assert dict(fresh) == stored(dict(fresh))  # a command is answered by the fit in force
    _judge(con, [k for k, _ in fresh[:20]], key)
    risk.fit(con, M)
    stale = top(con, stale_ok=True)  # the app's worklist: the previous order at once, the new one built behind it
    assert stale == dict(fresh[20:]) and stale != stored(stale)
    queue.wait_for_rebuilds()
    assert top(con) == stored(top(con))  # the rebuilt table is the new fit's
    store.close()


# ---- export-aware queue --------------------------------------------------------------------------------------------


def test_export_queue_serves_the_riskiest_exported_negative_and_follows_a_verdict(planted):
    con, key = planted
    exported = {(q, d): p for q, d, p in select_negatives(con, 5).project("query_id, doc_id, p_fn").fetchall()}
    item = queue.next_item(con, annotator="ada")
    assert item["mode"] == "export" and (item["query_id"], item["doc_id"]) in exported
    assert item["p_fn"] == max(exported.values())
    q, d = item["query_id"], item["doc_id"]
    review.record_verdict(con, query_id=q, doc_id=d, verdict="false_negative", annotator="ada", queue_mode="export")
    after = {(a, b) for a, b in select_negatives(con, 5).project("query_id, doc_id").fetchall()}
    assert (q, d) not in after and len([1 for a, _ in after if a == q]) == 5  # out of the export, replaced
    (replacement,) = {x for x in after if x[0] == q} - set(exported)
    queued = [tuple(x) for x in queue.build_queue(con, annotator="ada")[["query_id", "doc_id"]]
              .itertuples(index=False)]
    assert (q, d) not in queued and replacement in queued  # the replacement enters the queue at once
    assert set(queued) == after  # the queue is exactly the export minus what was judged
    # another annotator's queue no longer shows the judged item either (one verdict is enough)
    bob = {tuple(x) for x in queue.build_queue(con, annotator="bob")[["query_id", "doc_id"]].itertuples(index=False)}
    assert (q, d) not in bob and replacement in bob


@pytest.mark.parametrize("settings", [dict(max_risk=0.02), dict(strategy="band-mix", max_risk=0.02)])
def test_export_queue_stays_the_export_through_every_kind_of_verdict(planted, monkeypatch, settings):
    """The queue patches its snapshot of the export after verdicts, re-selecting only queries whose selection may
    have changed; after each verdict of every kind it must still be exactly the export minus what was judged."""
    con, _ = planted
    sel = Selection(negatives=5, **settings)
    reselected: list = []
    original = Selection.sql

    def spy(self, con, model=None, queries=None, query_ids=None):
        if query_ids is not None or queries is not None:
            reselected.append(query_ids or queries)
        return original(self, con, model, queries=queries, query_ids=query_ids)

    monkeypatch.setattr(Selection, "sql", spy)

    def export() -> dict:
        rows = select_negatives(con, 5, **settings).project("query_id, doc_id, eligible").fetchall()
        return {(q, d): ok for q, d, ok in rows}

    def queued() -> set:
        df = queue.build_queue(con, selection=sel, double_annotation=0)
        return set(df[["query_id", "doc_id"]].itertuples(index=False, name=None))

    def judged() -> set:
        return set(con.execute("SELECT query_id, doc_id FROM current_verdicts").fetchall())

    first = export()
    assert queued() == set(first)
    eligible = [k for k, ok in first.items() if ok]
    kept = [k for k, ok in first.items() if not ok]  # taken only to keep a query at N
    assert kept, "the settings should leave some queries short of eligible negatives"
    outside = [k for k in con.execute("SELECT query_id, doc_id FROM bands ORDER BY ALL LIMIT 400").fetchall()
               if k not in first]
    steps = [
        ("true_negative", eligible[0], "ada", False),  # confirms an exported negative: nothing to re-select
        ("unsure", eligible[1], "ada", False),
        ("true_negative", kept[0], "ada", False),  # a kept-for-N negative becomes eligible: the same set
        ("false_negative", eligible[2], "ada", True),  # leaves the export, a replacement enters
        ("true_negative", eligible[2], "ada", True),  # the same annotator changes the verdict: it comes back
        ("false_negative", eligible[3], "bob", True),
        ("undo", None, "bob", True),  # takes bob's false negative back
        ("true_negative", outside[0], "ada", True),  # not exported: may become eligible and enter
    ]
    for verdict, item, who, may_reselect in steps:
        reselected.clear()
        if verdict == "undo":
            review.undo_last(con, annotator=who)
        else:
            review.record_verdict(con, query_id=item[0], doc_id=item[1], verdict=verdict, annotator=who,
                                  queue_mode="export")
        assert queued() == set(export()) - judged(), (verdict, item)
        if not may_reselect:
            assert reselected == [], f"a {verdict} on an exported eligible negative re-selected {reselected}"


def test_export_queue_follows_the_export_settings(planted):
    con, _ = planted
    three = Selection(negatives=3)
    items = queue.build_queue(con, selection=three)
    assert items.groupby("query_id").size().max() == 3 and len(items) == 225 * 3
    # the export saves its settings; the queue follows them by default
    from auditor.select import current_selection, save_selection

    save_selection(con, three)
    assert current_selection(con) == three
    assert len(queue.build_queue(con)) == 225 * 3


def test_cli_queue_json_is_the_export_queue(planted, tmp_path, capsys):
    from auditor.cli import main

    con, _ = planted
    path = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    con.close()
    assert main(["queue", "--db", path, "--limit", "3", "--json", "--negatives", "2"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert len(items) == 3 and all(0 <= it["p_fn"] <= 1 for it in items)
    assert [it["p_fn"] for it in items] == sorted((it["p_fn"] for it in items), reverse=True)


# ---- automatic cleaning: threshold and keep-N ---------------------------------------------------------------------


def test_risk_threshold_skips_risky_candidates_but_keeps_n_per_query(planted):
    con, key = planted
    rows = select_negatives(con, 5).project("query_id, doc_id, p_fn, eligible").fetchall()
    assert len(rows) == 225 * 5  # every query keeps its five
    assert all(p <= 0.05 for _, _, p, ok in rows if ok)
    plain = select_negatives(con, 5, max_risk=None).project("query_id, doc_id").fetchall()
    assert sum(tuple(r[:2]) in key for r in rows) < sum(tuple(r) in key for r in plain) / 3
    # a threshold no candidate meets: each query takes its five lowest-risk candidates instead of none
    strict = select_negatives(con, 5, max_risk=0.0).project("query_id, doc_id, p_fn, eligible").fetchall()
    assert len(strict) == 225 * 5 and not any(ok for *_, ok in strict)
    lowest = con.execute(
        "SELECT query_id, doc_id FROM (SELECT *, row_number() OVER (PARTITION BY query_id ORDER BY p_fn, doc_id) AS r "
        "FROM risk) WHERE r <= 5").fetchall()
    assert {tuple(r[:2]) for r in strict} == set(lowest)
    assert len(select_negatives(con, 5, max_risk=0.0, keep_n=False).fetchall()) == 0


# ---- propagation --------------------------------------------------------------------------------------------------


def _embed(con, role, text_hash, vec):
    con.execute("INSERT INTO embeddings VALUES (?, ?, ?, ?)", [HANDBUILT_MODEL, role, text_hash, list(vec)])


def test_a_confirmed_false_negative_lifts_its_near_duplicates(handbuilt_store):
    con = handbuilt_store
    unit = np.eye(4)
    near = np.array([0.95, np.sqrt(1 - 0.95**2), 0, 0])  # cosine 0.95 with unit[0]
    docs = {d: h for d, h in con.execute("SELECT doc_id, text_hash FROM documents").fetchall()}
    qs = {q: h for q, h in con.execute("SELECT query_id, text_hash FROM queries").fetchall()}
    for d, h in docs.items():
        _embed(con, "document", h, {"n1": unit[0], "n2": near}.get(d, unit[3]))
    # q3 is a near-duplicate of q1 (cosine 0.95) and has n1 among its candidates too; q2 is unrelated
    for q, vec in (("q1", unit[1]), ("q2", unit[2]), ("q3", 0.95 * unit[1] + np.sqrt(1 - 0.95**2) * unit[2])):
        _embed(con, "query", qs[q], vec)
    risk.update_fused_rank(con, HANDBUILT_MODEL)
    risk.fit(con, HANDBUILT_MODEL)
    before = dict(((q, d), p) for q, d, p in con.execute("SELECT query_id, doc_id, p_fn FROM risk").fetchall())
    assert before[("q1", "n2")] < 0.9 and before[("q3", "n1")] < 0.9
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ada")
    summary = risk.fit(con, HANDBUILT_MODEL)
    after = {(q, d): (p, o) for q, d, p, o in con.execute("SELECT query_id, doc_id, p_fn, origin FROM risk").fetchall()}
    assert after[("q1", "n1")] == (1.0, "verdict")
    assert after[("q1", "n2")][1] == "propagated" and after[("q1", "n2")][0] == pytest.approx(0.95)
    assert after[("q3", "n1")][1] == "propagated" and after[("q3", "n1")][0] == pytest.approx(0.95)
    assert after[("q1", "n3")] == (before[("q1", "n3")], "prior")  # not similar: untouched
    assert summary.propagated == 2


# ---- the export estimate ------------------------------------------------------------------------------------------


def test_export_estimate_against_a_hand_computed_case(handbuilt_store):
    con = handbuilt_store
    # P(false negative) by hand: q1 n1 .9 (above the threshold), the others as listed
    p = {("q1", "n1"): 0.9, ("q1", "n2"): 0.04, ("q1", "n3"): 0.02, ("q1", "n4"): 0.01, ("q2", "n5"): 0.03,
         ("q2", "n6"): 0.05, ("q2", "n7"): 0.0, ("q3", "n8"): 0.02, ("q3", "n9"): 0.01, ("q3", "n1"): 0.0}
    for (q, d), v in p.items():
        con.execute("INSERT INTO risk VALUES (?, ?, ?, ?, ?, ?, 'model', NULL)", [HANDBUILT_MODEL, q, d, v, v, v])
    sel = Selection(negatives=2, max_risk=0.05)
    # export of 2 by s_neg among p <= .05: q1 n2 (.04) n3 (.02); q2 n5 (.03) n6 (.05); q3 n8 (.02) n9 (.01)
    m = model_estimate(con, sel, HANDBUILT_MODEL)
    assert m["negatives"] == 6 and m["expected_false_negatives"] == pytest.approx(0.17)
    assert m["expected_rate"] == pytest.approx(0.17 / 6) and m["kept_by_lowest_risk"] == 0
    assert m["calibrated"] is False
    # a reviewed true negative counts 0
    review.record_verdict(con, query_id="q1", doc_id="n2", verdict="true_negative", annotator="ada",
                          queue_mode="stratified", sampling_prob=0.5)
    assert model_estimate(con, sel, HANDBUILT_MODEL)["expected_false_negatives"] == pytest.approx(0.13)
    # stratified sample: suspicious n2 (tn, above); ambiguous n3 false negative, n9 true negative
    review.record_verdict(con, query_id="q1", doc_id="n3", verdict="false_negative", annotator="ada",
                          queue_mode="stratified", sampling_prob=0.25)
    review.record_verdict(con, query_id="q3", doc_id="n9", verdict="true_negative", annotator="ada",
                          queue_mode="stratified", sampling_prob=0.5)
    s = sample_estimate(con, sel, HANDBUILT_MODEL)
    # the export is now q1 n2 (reviewed tn) n4; q2 n5 n6; q3 n8 n9 (reviewed tn): 6 negatives, 4 unreviewed
    per = {r["band"]: r for r in s["per_band"]}
    assert per["ambiguous"]["unreviewed_exported"] == 2 and (per["ambiguous"]["judged"], per["ambiguous"][
        "false_negative"]) == (2, 1)
    assert per["suspicious"]["unreviewed_exported"] == 1 and per["suspicious"]["judged"] == 1
    assert per["too_easy"]["unreviewed_exported"] == 1 and per["too_easy"]["judged"] == 0
    assert s["unsampled"] == ["too_easy"] and s["rate"] is None
    from auditor.stats import wilson_interval

    amb, sus = wilson_interval(1, 2), wilson_interval(0, 1)
    assert s["ci95"] == pytest.approx([2 / 6 * amb[0] + 1 / 6 * sus[0], 2 / 6 * amb[1] + 1 / 6 * sus[1] + 1 / 6])
    rec = recommend(con, sel, HANDBUILT_MODEL, targets=(0.02,))
    best = rec["for_target_rate"]["0.02"]
    assert best["expected_rate"] <= 0.02 and all(
        p["expected_rate"] > 0.02 for p in rec["sweep"] if p["max_risk"] > best["max_risk"])


# ---- judging at equal hardness ------------------------------------------------------------------------------------


def test_frontier_ratio_interpolates_the_rank_window_baseline():
    # one query, ten ranked documents with cosines .9 .. .45; known false negatives at ranks 1, 2 and 6
    ranking = {"query_id": np.array(["q"] * 10, dtype=object), "doc_id": np.array([f"d{i}" for i in range(1, 11)],
                                                                                   dtype=object),
               "rank": np.arange(1, 11), "s": np.linspace(0.9, 0.45, 10)}
    key = {("q", "d1"), ("q", "d2"), ("q", "d6")}
    curve = baseline_curve(ranking, key, n=5, max_rank=10, step=5)
    assert [(c["ranks"], c["contamination"]) for c in curve] == [("1-5", 0.4), ("6-10", 0.2)]
    assert curve[0]["mean_s"] == pytest.approx(0.8) and curve[1]["mean_s"] == pytest.approx(0.55)
    # an export at mean .675 (half way) with 15% contamination: baseline there 30%, ratio 0.5
    assert frontier_ratio(curve, 0.15, 0.675) == pytest.approx(0.5)


def test_evaluate_reports_the_frontier_ratio_on_planted_cranfield(planted):
    from auditor.evaluate import evaluate

    con, key = planted
    r = evaluate(con, sorted(key), negatives=5)
    assert len(r["baseline"]) == 20 and r["baseline"][0]["ranks"] == "1-5"
    assert r["plain_top"]["frontier_ratio"] == pytest.approx(1.0, abs=0.02)  # plain top-5 is the baseline's r = 0
    cleaned = r["export"]
    assert cleaned["queries_full_share"] == 1.0
    assert cleaned["frontier_ratio"] < 0.6 and cleaned["mean_s_neg"] >= 0.5  # issue 9's bar for automatic cleaning


def test_threshold_sweep_on_a_query_sample_of_a_large_store(handbuilt_store):
    con = handbuilt_store
    for q, d, *_ in HANDBUILT_CANDIDATES:
        con.execute("INSERT INTO risk VALUES (?, ?, ?, 0.04, 0.04, 0.04, 'model', NULL)", [HANDBUILT_MODEL, q, d])
    sel = Selection(negatives=2)
    full = recommend(con, sel, HANDBUILT_MODEL)
    assert (full["sampled"], full["queries"]) == (False, 3)
    # past sample_queries the sweep runs on that many queries: 2 queries x 2 negatives, every p_fn .04
    part = recommend(con, sel, HANDBUILT_MODEL, sample_queries=2)
    assert (part["sampled"], part["queries"]) == (True, 2)
    top = [p for p in part["sweep"] if p["max_risk"] >= 0.05]
    assert top and all(p["expected_rate"] == pytest.approx(0.04) for p in top)
    assert [p["max_risk"] for p in part["sweep"]] == [p["max_risk"] for p in full["sweep"]]
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_sweep_queries'").fetchall()[0][0] == 0
