"""The false-negative risk: lexical signal, fused prior, calibration on verdicts, propagation, the trade-off of the
export, the default queue and the export estimate. Planted Cranfield (hidden positives as an answer key) for the real
thing, the hand-built store and small arrays for hand-computed cases."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from auditor import review, risk
from auditor.review import cache, queue, snapshots
from auditor.review.background import BackgroundWork
from auditor.review.refit import BackgroundRefit
from auditor.config import DEFAULT_MODEL, RiskConfig
from auditor.estimate import export_estimate, stratified_correction, strata_edges
from auditor.frontier import baseline_curve, frontier_ratio
from auditor.planted import read_answer_key
from auditor.select import Selection, select_negatives
from auditor.store import SharedStore, open_store

from conftest import HANDBUILT_MODEL, copy_store

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


def test_refit_needs_enough_verdicts_then_calibrates_and_records_them(planted):
    con, key = planted
    items = queue.build_queue(con, limit=40)[["query_id", "doc_id"]].itertuples(index=False)
    items = [tuple(x) for x in items]
    _judge(con, items[:4], key)
    few = risk.fit(con, M)
    assert not few.calibrated and "uncalibrated" in few.note and few.n_labels == 4
    _judge(con, items[4:], key)
    n_fn = sum(x in key for x in items)
    assert 3 <= n_fn <= len(items) - 3  # both verdicts present, else the test proves nothing
    fitted = risk.fit(con, M)
    assert fitted.n_labels == 40 and fitted.n_false_negative == n_fn and fitted.calibrated
    assert fitted.queries_adjusted == len({q for q, _ in items})  # every judged query has its own correction
    # verdicts are carried as certainties, the rest as calibrated probabilities in (0, 1)
    labeled = dict(((q, d), p) for q, d, p in con.execute(
        "SELECT query_id, doc_id, p_fn FROM risk WHERE origin = 'verdict'").fetchall())
    assert labeled == {x: (1.0 if x in key else 0.0) for x in items}
    lo, hi, n_model = con.execute(
        "SELECT min(p_fn), max(p_fn), count(*) FROM risk WHERE origin = 'model'").fetchall()[0]
    assert 0 < lo and hi < 1 and n_model > 10_000
    # the calibration keeps the prior's order within a query that has no verdict of its own
    judged_queries = {q for q, _ in items}
    rows = con.execute("SELECT query_id, prior, p_model FROM risk WHERE model = ? ORDER BY query_id, prior",
                       [M]).fetchall()
    for q in {q for q, _, _ in rows} - judged_queries:
        ps = [pm for qq, _, pm in rows if qq == q]
        assert ps == sorted(ps)
    # the written probabilities are the pure calibration's (auditor.calibration), computed again here
    from auditor.calibration import fit_calibration, sigmoid

    lab = con.execute(f"""SELECT l.query_id, -ln(s.fused_rank), l.y FROM ({risk.LABELS_SQL}) l
                          JOIN scores s ON s.query_id = l.query_id AND s.doc_id = l.doc_id""").fetchall()
    cal = fit_calibration(np.array([r[1] for r in lab]), np.array([r[2] for r in lab]),
                          np.array([r[0] for r in lab], dtype=object))
    assert (cal.intercept, cal.slope) == pytest.approx((fitted.intercept, fitted.slope))
    q, d = next(x for x in con.execute("SELECT query_id, doc_id FROM risk WHERE origin = 'model' AND query_id = ?",
                                        [items[0][0]]).fetchall())
    fr, pm = con.execute("SELECT s.fused_rank, r.p_model FROM scores s JOIN risk r USING (model, query_id, doc_id) "
                         "WHERE query_id = ? AND doc_id = ?", [q, d]).fetchall()[0]
    assert pm == pytest.approx(float(sigmoid(cal.logit(np.array([-np.log(fr)]), np.array([q], dtype=object))[0])))
    row = con.execute("SELECT n_labels, last_event_id FROM risk_fits ORDER BY fit_id DESC LIMIT 1").fetchall()[0]
    assert row == (40, risk.last_event_id(con))
    assert not risk.is_stale(con, M)


def test_calibration_recovers_a_known_level_and_keeps_the_order():
    from auditor.calibration import fit_calibration, sigmoid

    rng = np.random.default_rng(0)
    x = -np.log(rng.integers(1, 50, 4000))  # prior log-odds of fused ranks 1..49
    groups = np.array([f"q{i % 40}" for i in range(4000)], dtype=object)
    y = (rng.random(4000) < sigmoid(1.5 + x)).astype(float)  # the truth: odds e^1.5 times the prior's
    cal = fit_calibration(x, y, groups)
    assert cal.intercept == pytest.approx(1.5, abs=0.25) and cal.slope == pytest.approx(1.0, abs=0.15)
    assert len(cal.offsets) == 40 and max(abs(v) for v in cal.offsets.values()) < 0.8
    # a sample that covers a narrow range of the prior cannot flatten it: the slope stays near 1
    narrow = (x > -1.2) & (x < -0.9)
    flat = fit_calibration(x[narrow], y[narrow], groups[narrow])
    assert 0.4 < flat.slope < 1.6


def test_background_refit_runs_after_enough_verdicts_and_warms_the_queue(tmp_path, planted_cranfield):
    store = SharedStore(copy_store(planted_cranfield["path"], tmp_path / "bg.duckdb"))
    con = store.cursor()
    refit = BackgroundRefit(store, RiskConfig(refit_every=3, min_labels=3, min_per_class=1))
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
    assert cache.refresh(con) == 0  # the refit rebuilt the queue's tables for the new fit itself
    store.close()


def test_background_refits_take_at_most_their_share_of_the_time(tmp_path, planted_cranfield):
    store = SharedStore(copy_store(planted_cranfield["path"], tmp_path / "share.duckdb"))
    con = store.cursor()
    refit = BackgroundRefit(store, RiskConfig(refit_every=1, min_labels=3, min_per_class=1,
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
        BackgroundRefit(store, RiskConfig(refit_max_share=0))
    store.close()


def test_after_a_refit_a_command_gets_the_new_order_and_the_app_the_old_one_until_rebuilt(tmp_path, planted_cranfield):
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
    fresh = list(top(con, limit=40).items())
    assert dict(fresh) == stored(dict(fresh))  # no background owner (a command): answered by the fit in force
    work = BackgroundWork.of(store)  # the app's process: the store has a background owner
    _judge(con, [k for k, _ in fresh[:20]], key)
    risk.fit(con, M)
    stale = top(con)  # the previous order at once, the new one built behind it by the owner
    assert stale == dict(fresh[20:]) and stale != stored(stale)
    work.wait()
    assert top(con) == stored(top(con))  # the rebuilt page is the new fit's
    store.close()
    assert work.submit("late", lambda cur: None) is None  # closing the store closed its owner


# ---- the default queue: what a verdict would change ------------------------------------------------------------------


def _queue(con, annotator="ada", **kw) -> list[dict]:
    return queue.build_queue(con, annotator=annotator, double_annotation=0, **kw).to_dict(orient="records")


def _pool(con, sel=None) -> dict:
    """(query, doc) -> (slot, gain, audit) of the review pool computed from scratch (no snapshot, no patch)."""
    from auditor.audit import design
    from auditor.gain import review_pool_sql

    sel = sel or Selection()
    t = sel.tradeoff(con, M)
    pool = review_pool_sql(sel, M, t, design(con, sel.config, M, sel.negatives))
    rows = con.execute(f"SELECT query_id, doc_id, slot, gain, audit FROM ({pool})").fetchall()
    return {(q, d): (slot, g, a) for q, d, slot, g, a in rows}


def test_default_queue_asks_what_would_change_the_export_most_and_follows_a_verdict(planted):
    con, key = planted
    exported = {(q, d) for q, d in select_negatives(con, 5).project("query_id, doc_id").fetchall()}
    items = _queue(con)
    queued = [(it["query_id"], it["doc_id"]) for it in items]
    assert exported <= set(queued)  # every exported negative may be a false negative: all are asked about
    outside = [it for it in items if (it["query_id"], it["doc_id"]) not in exported]
    assert outside and all(it["gain"] > 0 for it in outside)  # hard candidates the export leaves out for their risk
    # the order: audit items at every 4th place, the others by expected gain
    assert [i for i, it in enumerate(items[:40]) if it["audit"]] == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]
    gains = [it["gain"] for it in items if not it["audit"]]
    assert gains == sorted(gains, reverse=True)
    assert all(it["sampling_prob"] is not None and (it["query_id"], it["doc_id"]) in exported
               for it in items if it["audit"])
    first = items[0]
    q, d = first["query_id"], first["doc_id"]
    review.record_verdict(con, query_id=q, doc_id=d, verdict="false_negative", annotator="ada", queue_mode="export")
    after = {(a, b) for a, b in select_negatives(con, 5).project("query_id, doc_id").fetchall()}
    assert (q, d) not in after and len([1 for a, _ in after if a == q]) == 5  # out of the export, replaced
    queued = {(it["query_id"], it["doc_id"]) for it in _queue(con)}
    assert (q, d) not in queued and after <= queued  # the replacement is asked about at once
    bob = {(it["query_id"], it["doc_id"]) for it in _queue(con, annotator="bob")}
    assert (q, d) not in bob  # one verdict is enough


def test_a_confirmed_hard_true_negative_enters_the_export(planted):
    con, key = planted
    exported = {(q, d) for q, d in select_negatives(con, 5).project("query_id, doc_id").fetchall()}
    hard = next(it for it in _queue(con) if (it["query_id"], it["doc_id"]) not in exported and not it["audit"])
    review.record_verdict(con, query_id=hard["query_id"], doc_id=hard["doc_id"], verdict="true_negative",
                          annotator="ada", queue_mode="export")
    after = {(q, d) for q, d in select_negatives(con, 5).project("query_id, doc_id").fetchall()}
    assert (hard["query_id"], hard["doc_id"]) in after


@pytest.mark.parametrize("settings", [dict(), dict(max_risk=0.02), dict(strategy="band-mix", max_risk=0.02)])
def test_default_queue_stays_the_pool_through_every_kind_of_verdict(planted, monkeypatch, settings):
    """The queue patches its snapshot after verdicts, selecting again only the queries whose verdict flags changed;
    after each verdict of every kind it must be exactly the pool computed from scratch minus what was judged."""
    con, _ = planted
    sel = Selection(negatives=5, **settings)
    from auditor import gain

    reselected: list = []
    original = gain.review_pool_sql

    def spy(*args, **kw):
        if kw.get("query_ids") is not None or kw.get("queries") is not None:
            reselected.append(kw.get("query_ids") or kw.get("queries"))
        return original(*args, **kw)

    monkeypatch.setattr(snapshots, "review_pool_sql", spy)

    def queued() -> set:
        return {(it["query_id"], it["doc_id"]) for it in _queue(con, annotator=None, selection=sel)}

    def judged() -> set:
        return set(con.execute("SELECT query_id, doc_id FROM current_verdicts").fetchall())

    first = _pool(con, sel)
    assert queued() == set(first)
    exported = [k for k, (slot, _, _) in first.items() if slot is not None]
    outside = [k for k, (slot, _, _) in first.items() if slot is None]
    steps = [
        ("unsure", exported[1], "ada", False),  # changes no flag: nothing to select again
        ("true_negative", exported[0], "ada", True),
        ("false_negative", exported[2], "ada", True),  # leaves the export, a replacement enters
        ("true_negative", exported[2], "ada", True),  # the same annotator changes the verdict: it comes back
        ("false_negative", exported[3], "bob", True),
        ("undo", None, "bob", True),  # takes bob's false negative back
    ] + ([("true_negative", outside[0], "ada", True)] if outside else [])
    for verdict, item, who, may_reselect in steps:
        reselected.clear()
        if verdict == "undo":
            review.undo_last(con, annotator=who)
        else:
            review.record_verdict(con, query_id=item[0], doc_id=item[1], verdict=verdict, annotator=who,
                                  queue_mode="export")
        assert queued() == set(_pool(con, sel)) - judged(), (verdict, item)
        if not may_reselect:
            assert reselected == [], f"a {verdict} verdict selected {reselected} again"


def test_default_queue_follows_the_export_settings(planted):
    con, _ = planted
    three = Selection(negatives=3)
    items = {(it["query_id"], it["doc_id"]) for it in _queue(con, selection=three)}
    assert {(q, d) for q, d in select_negatives(con, 3).project("query_id, doc_id").fetchall()} <= items
    # the export saves its settings; the queue follows them by default
    from auditor.select import current_selection, save_selection

    save_selection(con, three)
    assert current_selection(con) == three
    assert {(it["query_id"], it["doc_id"]) for it in _queue(con)} == items


def test_cli_queue_json_is_the_default_queue(planted, tmp_path, capsys):
    from auditor.cli import main

    con, _ = planted
    path = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    con.close()
    assert main(["queue", "--db", path, "--limit", "8", "--json", "--negatives", "2"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert len(items) == 8 and all(0 <= it["p_fn"] <= 1 for it in items)
    assert [it["audit"] for it in items] == [False, False, False, True] * 2
    gains = [it["gain"] for it in items if not it["audit"]]
    assert gains == sorted(gains, reverse=True)


# ---- automatic cleaning: the trade-off and the max-risk override ---------------------------------------------------


def test_default_export_meets_its_budget_and_keeps_n_per_query(planted):
    con, key = planted
    rows = select_negatives(con, 5).project("query_id, doc_id, p_fn, s_neg").fetchall()
    assert len(rows) == 225 * 5  # every query keeps its five
    plain = con.execute("""SELECT s.query_id, s.doc_id, r.p_fn FROM scores s JOIN risk r USING (model, query_id, doc_id)
                           QUALIFY row_number() OVER (PARTITION BY s.query_id ORDER BY s.s_neg DESC, s.doc_id) <= 5
                        """).fetchall()
    assert sum(p for *_, p, _ in rows) <= 0.15 * sum(p for *_, p in plain) + 1e-9
    assert sum(tuple(r[:2]) in key for r in rows) < sum(tuple(r[:2]) in key for r in plain) / 4
    # the smallest charge that meets the budget: a slightly smaller one would not
    t = Selection().tradeoff(con, M)
    looser = select_negatives(con, 5, tradeoff=type(t)(lam=t.lam * 0.97)).project("p_fn").fetchall()
    assert sum(p for (p,) in looser) > 0.15 * sum(p for *_, p in plain)


def test_max_risk_override_skips_risky_candidates_and_fills_by_the_trade_off(planted):
    con, key = planted
    rows = select_negatives(con, 5, max_risk=0.05).project("query_id, doc_id, p_fn, eligible").fetchall()
    assert len(rows) == 225 * 5 and all(p <= 0.05 for _, _, p, ok in rows if ok)
    # a threshold no candidate meets: each query takes its five best trade-offs instead of none (not the easiest)
    strict = select_negatives(con, 5, max_risk=0.0).project("query_id, doc_id, eligible, key").fetchall()
    assert len(strict) == 225 * 5 and not any(ok for *_, ok, _ in strict)
    best = con.sql(f"""SELECT query_id, doc_id FROM ({Selection().keyed_sql(M, Selection().tradeoff(con, M))})
                       QUALIFY row_number() OVER (PARTITION BY query_id ORDER BY key DESC, doc_id) <= 5""").fetchall()
    assert {tuple(r[:2]) for r in strict} == set(best)
    lowest = con.execute("SELECT query_id, doc_id FROM risk QUALIFY row_number() OVER (PARTITION BY query_id "
                         "ORDER BY p_fn, doc_id) <= 5").fetchall()
    assert {tuple(r[:2]) for r in strict} != set(lowest)
    assert len(select_negatives(con, 5, max_risk=0.0, keep_n=False).fetchall()) == 0


def test_trade_off_solve_against_a_hand_computed_case():
    from auditor.tradeoff import solve_arrays

    # one query, four candidates, 2 negatives: hardness h, risk p
    qi = np.zeros(4, dtype=np.int64)
    h = np.array([1.0, 0.8, 0.5, 0.0])
    p = np.array([0.5, 0.1, 0.05, 0.01])
    none = np.zeros(4, dtype=bool)
    # plain top-2 by s_neg (= h here) holds 0.6 expected false negatives; a budget of 0.25 allows 0.15: the pair
    # (0.8, 0.5) with 0.15 exactly. Keys h - lam p: (0.8, 0.5) beat 1.0 once 1 - 0.5 lam < 0.5 - 0.05 lam, i.e.
    # lam > 0.5 / 0.45 = 1.11..., the smallest lam that meets the budget
    t = solve_arrays(qi, h, p, p, h, none, none, 2, fn_budget=0.25)
    assert t.lam == pytest.approx(0.5 / 0.45, rel=1e-3) and t.budget_met
    assert t.expected == pytest.approx(0.075) and t.plain_expected == pytest.approx(0.3)
    assert t.safe_risk == pytest.approx(0.1)
    # a confirmed true negative has risk 0: the hardest candidate, confirmed, needs no charge at all
    tn = np.array([True, False, False, False])
    t0 = solve_arrays(qi, h, np.where(tn, 0, p), p, h, none, tn, 2, fn_budget=0.25)
    assert t0.lam == 0.0
    # a confirmed false negative is never chosen: budget 0.25 of plain's 0.6 = 0.15 is met by (0.8, 0.5) at lam 0
    fn = np.array([True, False, False, False])
    assert solve_arrays(qi, h, p, p, h, fn, none, 2, fn_budget=0.25).lam == 0.0
    # an absolute target rate: 0.03 per negative is reached only by the two safest
    t2 = solve_arrays(qi, h, p, p, h, none, none, 2, target_rate=0.03)
    assert t2.expected == pytest.approx(0.03) and t2.lam > 0


def test_trade_off_solves_on_a_query_sample_of_a_large_store(planted):
    from auditor.select import solve

    con, _ = planted
    full = solve(con, Selection(), M, use_cache=False)
    part = solve(con, Selection(), M, sample_queries=100, use_cache=False)
    assert (full.sampled, full.queries) == (False, 225) and (part.sampled, part.queries) == (True, 100)
    assert part.lam == pytest.approx(full.lam, rel=0.5)  # an estimate of the same number


def test_a_refit_never_makes_the_export_worse_than_the_verdicts_alone(planted):
    """200 verdicts from the default queue in 10 rounds; then the export with the calibrated risk against the export
    with the same verdicts and the uncalibrated prior: judged at equal hardness, the refit must not be worse."""
    con, key = planted
    from auditor.frontier import baseline_curve, dense_ranking, frontier_ratio

    for _ in range(10):
        _judge(con, [(it["query_id"], it["doc_id"]) for it in _queue(con, annotator="sim", limit=20)], key)
        risk.fit(con, M)

    def judged_export() -> float:
        rows = select_negatives(con, 5).project("query_id, doc_id, s_neg").fetchall()
        cont = sum((q, d) in key for q, d, _ in rows) / len(rows)
        return frontier_ratio(curve, cont, sum(s for *_, s in rows) / len(rows))

    curve = baseline_curve(dense_ranking(con, M, 100), key, n=5)
    calibrated = judged_export()
    risk.fit(con, M, RiskConfig(min_labels=10**9))  # the same verdicts, no calibration
    verdicts_alone = judged_export()
    automatic = frontier_ratio(curve, *(lambda r: (sum((q, d) in key for q, d, _ in r) / len(r),
                                                   sum(s for *_, s in r) / len(r)))(
        select_negatives(con, 5, view="automatic").project("query_id, doc_id, s_neg").fetchall()))
    assert verdicts_alone < automatic  # the fixture: verdicts alone improve the export
    assert calibrated <= verdicts_alone


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


def test_stratified_correction_against_a_hand_computed_case():
    # ten audited candidates: risks .1 (x5) and .3 (x5); false negatives: one of the low, three of the high
    audit_p = [0.1] * 5 + [0.3] * 5
    audit_y = [1, 0, 0, 0, 0] + [1, 1, 1, 0, 0]
    edges = strata_edges(audit_p)
    assert edges == [0.1, 0.1, 0.3, 0.3]  # quintiles: .1 falls in stratum 2, .3 in stratum 4
    # unreviewed exported negatives: 100 at risk .1 (stratum 2), 50 at risk .3 (stratum 4)
    strata = [(2, 100, 10.0, 9.0), (4, 50, 15.0, 10.5)]
    value, lo, hi = stratified_correction(audit_y, audit_p, strata, 150)
    # residuals: stratum 2 mean (0.9 - 4 x 0.1) / 5 = 0.1, stratum 4 mean (3 x 0.7 - 2 x 0.3) / 5 = 0.3
    assert value == pytest.approx(10 + 100 * 0.1 + 15 + 50 * 0.3)
    # variances: stratum 2 residuals (.9, -.1 x4): sample variance 0.2 > floor .09; stratum 4 (.7 x3, -.3 x2): 0.3
    var = 9.0 + 10.5 + 100**2 * 0.2 / 5 + 50**2 * 0.3 / 5
    from scipy.stats import t as student

    half = student.ppf(0.975, 9) * np.sqrt(var)
    assert (lo, hi) == pytest.approx((max(value - half, 0), min(value + half, 150)))  # clipped to [0, |U|]
    # no false negative found in a stratum: its spread is the risk's own, p (1 - p), not zero
    value0, lo0, hi0 = stratified_correction([0] * 10, audit_p, strata, 150)
    var0 = 9.0 + 10.5 + 100**2 * 0.09 / 5 + 50**2 * 0.21 / 5
    assert value0 == pytest.approx(10 - 100 * 0.1 + 15 - 50 * 0.3) and hi0 == pytest.approx(
        value0 + student.ppf(0.975, 9) * np.sqrt(var0))
    assert stratified_correction([1], [0.5], strata, 150) is None


def test_export_estimate_says_nothing_before_calibration_then_states_an_interval(planted):
    con, key = planted
    before = export_estimate(con, Selection(), M)
    assert before["status"] == "uncalibrated" and before["rate"] is None and "%" not in before["message"].split(
        "random")[0]  # no percentage of false negatives, only the audit plan
    assert before["audit"]["pending"] > 0 and before["audit"]["reviewed"] == 0
    for _ in range(10):
        _judge(con, [(it["query_id"], it["doc_id"]) for it in _queue(con, annotator="sim", limit=20)], key)
        risk.fit(con, M)
    after = export_estimate(con, Selection(), M)
    assert after["status"] == "estimated" and after["audit"]["reviewed"] >= 10
    rows = select_negatives(con, 5).project("query_id, doc_id").fetchall()
    actual = sum(tuple(r) in key for r in rows) / len(rows)
    assert after["ci95"][0] <= actual <= after["ci95"][1]
    assert after["negatives"] == len(rows) and after["confirmed_true_negatives"] > 0


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
