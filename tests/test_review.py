"""The review queue: order, exclusion, double annotation, undo, concurrency, context (hand-built store, which has no
risk rows: its `risk` order is the band-and-delta order; the export-aware default is tested in test_risk.py)."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import HANDBUILT_CANDIDATES, HANDBUILT_RISK_ORDER, build_handbuilt_store

from auditor import review
from auditor.bands import mark_bands_written
from auditor.store import StoreError

BAND_SIZE = {b: sum(1 for c in HANDBUILT_CANDIDATES if c[5] == b) for b in ("suspicious", "ambiguous", "too_easy")}


def _keys(df):
    return list(zip(df["query_id"], df["doc_id"]))


def test_risk_queue_order_and_columns(handbuilt_store):
    df = review.build_queue(handbuilt_store, mode="risk")
    assert _keys(df) == HANDBUILT_RISK_ORDER
    for col in ("query_id", "doc_id", "band", "rule", "s_neg", "s_pos_min", "s_pos_max", "delta", "ratio", "rank",
                "sources", "weight", "risk", "sampling_prob"):
        assert col in df.columns
    assert list(df["risk"]) == sorted(df["risk"], reverse=True)
    assert df["sampling_prob"].isna().all()
    first = df.iloc[0]
    assert first["sources"] == ["bm25", "dense"] and first["rule"] == "inversion"
    assert first["delta"] == pytest.approx(0.05) and first["ratio"] == pytest.approx(0.85 / 0.8)
    assert review.risk_of("suspicious", 0.05) == pytest.approx(first["risk"])


def test_stratified_queue_interleaves_bands_with_sampling_probabilities(handbuilt_store):
    df = review.build_queue(handbuilt_store, mode="stratified", seed=7)
    assert sorted(_keys(df)) == sorted(HANDBUILT_RISK_ORDER)
    seen = {b: 0 for b in BAND_SIZE}
    positions = []
    for band, prob in zip(df["band"], df["sampling_prob"]):
        seen[band] += 1
        # the j-th item of a band has inclusion probability j / N_b
        assert prob == pytest.approx(seen[band] / BAND_SIZE[band])
        positions.append(seen[band])
    assert positions == sorted(positions), "round robin: every band's j-th item before any band's (j+1)-th"
    # deterministic for a seed; the seed does change the order within bands
    again = review.build_queue(handbuilt_store, mode="stratified", seed=7)
    assert _keys(again) == _keys(df)
    orders = {tuple(_keys(review.build_queue(handbuilt_store, mode="stratified", seed=s))) for s in range(6)}
    assert len(orders) > 1


def test_next_item_is_head_of_queue_and_respects_skip_and_filters(handbuilt_store):
    item = review.next_item(handbuilt_store, annotator="ann", mode="risk")
    assert (item["query_id"], item["doc_id"]) == HANDBUILT_RISK_ORDER[0]
    assert item["sources"] == ["bm25", "dense"] and item["mode"] == "risk" and item["rank"] == 1
    item = review.next_item(handbuilt_store, annotator="ann", skip=[HANDBUILT_RISK_ORDER[0]], mode="risk")
    assert (item["query_id"], item["doc_id"]) == HANDBUILT_RISK_ORDER[1]
    item = review.next_item(handbuilt_store, annotator="ann", bands=["too_easy"], mode="risk")
    assert (item["query_id"], item["doc_id"]) == ("q3", "n1")
    item = review.next_item(handbuilt_store, annotator="ann", source="bm25", bands=["ambiguous"], mode="risk")
    assert (item["query_id"], item["doc_id"]) == ("q2", "n6")
    item = review.next_item(handbuilt_store, annotator="ann", query_id="q3", mode="risk")
    assert (item["query_id"], item["doc_id"]) == ("q3", "n8")
    strat = review.next_item(handbuilt_store, annotator="ann", mode="stratified", bands=["ambiguous"], seed=3)
    head = review.build_queue(handbuilt_store, mode="stratified", bands=["ambiguous"], seed=3).iloc[0]
    assert (strat["doc_id"], strat["sampling_prob"]) == (head["doc_id"], pytest.approx(head["sampling_prob"]))
    assert review.next_item(handbuilt_store, annotator="ann", query_id="nope", mode="risk") is None
    with pytest.raises(ValueError, match="mode"):
        review.next_item(handbuilt_store, annotator="ann", mode="fastest")


def test_verdicts_exclude_items_single_annotation(handbuilt_store):
    con = handbuilt_store
    q, d = HANDBUILT_RISK_ORDER[0]
    review.record_verdict(con, query_id=q, doc_id=d, verdict="false_negative", annotator="ann")
    assert (q, d) not in _keys(review.build_queue(con, annotator="ann", mode="risk"))
    # one annotator is enough when the item is not routed to double annotation
    assert (q, d) not in _keys(review.build_queue(con, annotator="bob", mode="risk"))
    assert len(review.build_queue(con, mode="risk")) == len(HANDBUILT_RISK_ORDER) - 1


def test_double_annotation_routes_items_to_a_second_annotator(handbuilt_store):
    con = handbuilt_store
    for q, d in HANDBUILT_RISK_ORDER:
        review.record_verdict(con, query_id=q, doc_id=d, verdict="true_negative", annotator="ann")
    assert review.next_item(con, annotator="ann", double_annotation=1.0, mode="risk") is None
    assert len(review.build_queue(con, annotator="bob", double_annotation=1.0, mode="risk")) == len(HANDBUILT_RISK_ORDER)
    # half the items: exactly those the md5 rule routes to two annotators remain open for bob
    routed = {k for k in HANDBUILT_RISK_ORDER if review.needs_two_annotators(*k, 0.5)}
    assert 0 < len(routed) < len(HANDBUILT_RISK_ORDER)
    assert set(_keys(review.build_queue(con, annotator="bob", double_annotation=0.5, mode="risk"))) == routed
    for q, d in routed:
        review.record_verdict(con, query_id=q, doc_id=d, verdict="unsure", annotator="bob")
    assert review.next_item(con, annotator="cy", double_annotation=0.5, mode="risk") is None


def test_undo_takes_back_latest_verdict_and_walks_back(handbuilt_store):
    con = handbuilt_store
    assert review.undo_last(con, annotator="ann") is None
    e1 = review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ann")
    e2 = review.record_verdict(con, query_id="q2", doc_id="n5", verdict="true_negative", annotator="ann")
    review.record_verdict(con, query_id="q1", doc_id="n2", verdict="unsure", annotator="bob")
    undone = review.undo_last(con, annotator="ann")
    assert undone == {"query_id": "q2", "doc_id": "n5", "verdict": "true_negative", "event_id": e2}
    assert ("q2", "n5") in _keys(review.build_queue(con, annotator="ann", mode="risk"))
    assert review.undo_last(con, annotator="ann")["event_id"] == e1
    assert review.undo_last(con, annotator="ann") is None
    current = con.execute("SELECT annotator, doc_id FROM current_verdicts").fetchall()
    assert current == [("bob", "n2")]
    # nothing was deleted: 3 verdicts + 2 undo events
    assert con.execute("SELECT count(*), count(*) FILTER (WHERE verdict = 'undo') FROM verdicts").fetchall() == [(5, 2)]


def test_changed_mind_is_a_new_event_and_latest_wins(handbuilt_store):
    con = handbuilt_store
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ann")
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="true_negative", annotator="ann", note="on reflection")
    assert con.execute("SELECT verdict, note FROM current_verdicts").fetchall() == [("true_negative", "on reflection")]
    review.undo_last(con, annotator="ann")
    assert con.execute("SELECT verdict FROM current_verdicts").fetchall() == [("false_negative",)]


def test_record_verdict_validates(handbuilt_store):
    with pytest.raises(ValueError, match="verdict must be one of"):
        review.record_verdict(handbuilt_store, query_id="q1", doc_id="n1", verdict="relevant", annotator="a")
    with pytest.raises(ValueError, match="annotator"):
        review.record_verdict(handbuilt_store, query_id="q1", doc_id="n1", verdict="unsure", annotator=" ")
    with pytest.raises(ValueError, match="sampling_prob"):
        review.record_verdict(handbuilt_store, query_id="q1", doc_id="n1", verdict="unsure", annotator="a",
                              sampling_prob=0)


def test_record_verdicts_is_all_or_nothing_and_fills_band(handbuilt_store):
    con = handbuilt_store
    rows = [{"query_id": "q1", "doc_id": "n1", "verdict": "false_negative", "annotator": "llm"},
            {"query_id": "q1", "doc_id": "nope", "verdict": "true_negative", "annotator": "llm"}]
    with pytest.raises(StoreError, match="unknown document id 'nope'"):
        review.record_verdicts(con, rows)
    with pytest.raises(ValueError, match="row 2"):
        review.record_verdicts(con, [rows[0], {**rows[0], "verdict": "maybe"}])
    assert con.execute("SELECT count(*) FROM verdicts").fetchall() == [(0,)]
    assert review.record_verdicts(con, rows[:1]) == 1
    assert con.execute("SELECT band, origin FROM verdicts").fetchall() == [("suspicious", "import")]


def test_concurrent_writers_lose_nothing(handbuilt_store):
    con = handbuilt_store
    per_thread, n_threads = 40, 6
    errors: list[BaseException] = []

    def work(t: int) -> None:
        cur = con.cursor()
        try:
            for i in range(per_thread):
                q, d = HANDBUILT_RISK_ORDER[(t + i) % len(HANDBUILT_RISK_ORDER)]
                review.record_verdict(cur, query_id=q, doc_id=d, verdict="unsure", annotator=f"ann{t}", note=str(i))
                if i % 10 == 0:
                    review.next_item(cur, annotator=f"ann{t}", mode="risk")
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            cur.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    total, distinct = con.execute("SELECT count(*), count(DISTINCT event_id) FROM verdicts").fetchall()[0]
    assert total == distinct == per_thread * n_threads
    per_ann = dict(con.execute("SELECT annotator, count(*) FROM verdicts GROUP BY 1").fetchall())
    assert per_ann == {f"ann{t}": per_thread for t in range(n_threads)}


def test_progress_counts_per_band(handbuilt_store):
    con = handbuilt_store
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ann")
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="true_negative", annotator="bob")
    review.record_verdict(con, query_id="q3", doc_id="n8", verdict="unsure", annotator="bob")
    prog = review.review_progress(con).set_index("band")
    assert list(prog.index) == ["suspicious", "ambiguous", "too_easy"]
    assert prog.loc["suspicious", "total"] == 3 and prog.loc["suspicious", "reviewed"] == 1
    assert prog.loc["suspicious", "false_negative"] == 1 and prog.loc["suspicious", "true_negative"] == 0
    assert prog.loc["ambiguous", "unsure"] == 1 and prog.loc["ambiguous", "remaining"] == 3
    mine = review.review_progress(con, annotator="ann").set_index("band")
    assert mine.loc["ambiguous", "reviewed"] == 0 and mine.loc["suspicious", "reviewed"] == 1


def test_item_context(handbuilt_store):
    ctx = review.item_context(handbuilt_store, "q3", "n8")
    assert ctx["query"] == "question q3?"
    assert [p["doc_id"] for p in ctx["positives"]] == ["p3a", "p3b"]
    cand = ctx["candidate"]
    assert cand["band"] == "ambiguous" and cand["s_neg"] == pytest.approx(0.5) and cand["sources"] == ["dense"]
    assert cand["text"] == "text of n8 <b>x</b>"  # raw text: escaping is the page's job
    assert [o["doc_id"] for o in ctx["others"]] == ["n9", "n1"]
    texts = review.sibling_texts(handbuilt_store, [o["doc_id"] for o in ctx["others"]])  # when the page lists them
    assert set(texts) == {"n9", "n1"} and all(len(snippet) <= review.SNIPPET_CHARS for _, snippet in texts.values())
    listed = review.others_with_texts(handbuilt_store, ctx)
    assert [(o["doc_id"], o["snippet"]) for o in listed] == [("n9", texts["n9"][1]), ("n1", texts["n1"][1])]
    assert ctx["others_texts"] == texts  # read once per context: the page's reruns reuse it
    with pytest.raises(StoreError, match="unknown document"):
        review.item_context(handbuilt_store, "q3", "no-such-doc")
    with pytest.raises(StoreError, match="unknown query"):
        review.item_context(handbuilt_store, "zz", "n8")


def test_queue_sees_rebanding_at_once(handbuilt_store):
    con = handbuilt_store
    assert review.next_item(con, annotator="a", mode="risk")["doc_id"] == "n1"
    con.execute("UPDATE bands SET band = 'too_easy', rule = 'low_weight' WHERE band = 'suspicious'")
    mark_bands_written(con)  # what every band write of auditor does (the queue does not hash every band per request)
    item = review.next_item(con, annotator="a", mode="risk")
    assert (item["query_id"], item["doc_id"], item["band"]) == ("q3", "n8", "ambiguous")


def test_no_bands_gives_clear_message(store):
    with pytest.raises(StoreError, match="no scored candidates|mine"):
        review.build_queue(store, mode="risk")


def test_two_stores_do_not_share_cache(tmp_path):
    from auditor.store import open_store

    a = open_store(tmp_path / "a.duckdb")
    b = open_store(tmp_path / "b.duckdb")
    try:
        build_handbuilt_store(a)
        build_handbuilt_store(b)
        b.execute("DELETE FROM bands WHERE doc_id = 'n1' AND query_id = 'q1'")
        assert review.next_item(a, annotator="x", mode="risk")["doc_id"] == "n1"
        assert review.next_item(b, annotator="x", mode="risk")["doc_id"] == "n5"
    finally:
        a.close()
        b.close()


def test_stratified_walk_keeps_items_judged_in_risk_order(handbuilt_store):
    """Risk-first review must not hollow out the random sample: the riskiest items stay in the stratified walk."""
    first_risk = HANDBUILT_RISK_ORDER[0]
    review.record_verdict(handbuilt_store, query_id=first_risk[0], doc_id=first_risk[1], verdict="false_negative",
                          annotator="ann", queue_mode="risk")
    risk = _keys(review.build_queue(handbuilt_store, annotator="ann", mode="risk"))
    strat = _keys(review.build_queue(handbuilt_store, mode="stratified", annotator="ann"))
    assert first_risk not in risk
    assert first_risk in strat and len(strat) == len(HANDBUILT_CANDIDATES)
    # Once judged in a stratified walk it leaves that walk too.
    review.record_verdict(handbuilt_store, query_id=first_risk[0], doc_id=first_risk[1], verdict="false_negative",
                          annotator="ann", queue_mode="stratified", sampling_prob=0.25)
    assert first_risk not in _keys(review.build_queue(handbuilt_store, mode="stratified", annotator="ann"))


def test_filtered_stratified_walk_is_not_a_band_sample(handbuilt_store):
    item = review.next_item(handbuilt_store, annotator="ann", mode="stratified", query_id="q1")
    assert item["query_id"] == "q1" and item["mode"] == "stratified_filtered"
    unfiltered = review.next_item(handbuilt_store, annotator="ann", mode="stratified")
    assert unfiltered["mode"] == "stratified"
    event = review.record_verdict(handbuilt_store, query_id=item["query_id"], doc_id=item["doc_id"],
                                  verdict="true_negative", annotator="ann", queue_mode=item["mode"],
                                  sampling_prob=item["sampling_prob"])
    assert handbuilt_store.execute("SELECT queue_mode FROM verdicts WHERE event_id = ?", [event]).fetchall() == [
        ("stratified_filtered",)]


@pytest.mark.parametrize("mode", ["stratified", "risk", "export"])
def test_given_negatives_without_a_rank_can_be_claimed_in_every_order(handbuilt_store, mode):
    """A negative given by the training file but never mined has no rank: claiming it (the app's path, and `auditor
    queue --claim`) once crashed on int(NA). It comes back with rank None, in every order."""
    from auditor.review import queue

    handbuilt_store.execute("UPDATE scores SET rank = NULL WHERE doc_id IN ('n1', 'n5', 'n8')")
    got = queue.claim(handbuilt_store, annotator="ann", limit=20, mode=mode)
    assert got, mode
    unranked = [it for it in got if it["doc_id"] in {"n1", "n5", "n8"}]
    assert unranked and all(it["rank"] is None for it in unranked)
    assert all(isinstance(it["rank"], int) for it in got if it["doc_id"] not in {"n1", "n5", "n8"})
    assert json.dumps(got)  # items serialise (auditor queue --json)
