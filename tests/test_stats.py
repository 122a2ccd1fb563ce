"""Statistics: the pure estimators against hand-computed values, then compute_stats and the HTML report."""

from __future__ import annotations

import json

import pytest

from auditor import review, stats
from auditor.report import render_html, write_report


def test_wilson_interval_hand_values():
    z2 = stats.Z95**2
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx((z2 / 10) / (1 + z2 / 10))  # 0.2775
    assert hi == pytest.approx(0.2775, abs=1e-4)
    assert stats.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert stats.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert stats.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)


def test_horvitz_thompson_and_hajek_hand_values():
    ys, pis = [1, 0, 1], [0.5, 0.25, 0.1]
    assert stats.horvitz_thompson_total(ys, pis) == pytest.approx(1 / 0.5 + 1 / 0.1)  # 12
    assert stats.hajek_rate(ys, pis) == pytest.approx(12 / (2 + 4 + 10))  # 0.75
    assert stats.hajek_rate([], []) is None
    with pytest.raises(ValueError):
        stats.horvitz_thompson_total([1], [0])


def test_stratified_total_is_sum_of_band_size_times_rate():
    # 100 items, 3 of 10 sampled are FN -> 30; 50 items, 1 of 5 -> 10; a stratum with no sample adds nothing
    assert stats.stratified_total([(100, 3, 10), (50, 1, 5), (20, 0, 0)]) == pytest.approx(40)
    # equals Horvitz-Thompson with pi = n_b / N_b
    ht = stats.horvitz_thompson_total([1] * 3, [10 / 100] * 3) + stats.horvitz_thompson_total([1], [5 / 50])
    assert ht == pytest.approx(40)


def test_cohen_kappa_hand_value():
    pairs = [("fn", "fn"), ("fn", "tn"), ("tn", "tn"), ("tn", "tn")]
    # p_o = 3/4; p_e = 1/2*1/4 + 1/2*3/4 = 1/2 -> kappa = 1/2
    assert stats.cohen_kappa(pairs) == pytest.approx(0.5)
    assert stats.cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert stats.cohen_kappa([("a", "a")]) is None
    assert stats.cohen_kappa([]) is None


@pytest.fixture
def reviewed(handbuilt_store):
    con = handbuilt_store
    rv = review.record_verdict
    # risk-ordered review of the suspicious band
    rv(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ann", queue_mode="risk")
    rv(con, query_id="q1", doc_id="n2", verdict="true_negative", annotator="ann", queue_mode="risk")
    rv(con, query_id="q2", doc_id="n5", verdict="false_negative", annotator="ann", queue_mode="risk")
    # a random sample of 2 of the 4 ambiguous items
    rv(con, query_id="q3", doc_id="n8", verdict="false_negative", annotator="ann", queue_mode="stratified",
       sampling_prob=0.25)
    rv(con, query_id="q2", doc_id="n6", verdict="true_negative", annotator="ann", queue_mode="stratified",
       sampling_prob=0.5)
    # a second annotator on three items
    rv(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="bob")
    rv(con, query_id="q2", doc_id="n6", verdict="true_negative", annotator="bob")
    rv(con, query_id="q3", doc_id="n8", verdict="unsure", annotator="bob")
    return con


def test_compute_stats_verdict_figures(reviewed):
    st = stats.compute_stats(reviewed, negatives=3)
    json.dumps(st)  # JSON-serialisable
    v = st["verdicts"]
    bands = {r["band"]: r for r in v["per_band"]}
    sus, amb, easy = bands["suspicious"], bands["ambiguous"], bands["too_easy"]
    assert (sus["size"], sus["judged"], sus["false_negative"], sus["sample"]) == (3, 3, 2, "risk-ordered")
    assert sus["rate"] == pytest.approx(2 / 3) and sus["ci95"] == pytest.approx(list(stats.wilson_interval(2, 3)))
    assert sus["estimated_false_negatives"] == pytest.approx(2.0)
    assert (amb["size"], amb["judged"], amb["false_negative"], amb["sample"]) == (4, 2, 1, "random")
    assert amb["inclusion_prob"] == pytest.approx(0.5) and amb["estimated_false_negatives"] == pytest.approx(2.0)
    assert easy["judged"] == 0 and easy["rate"] is None and easy["estimated_false_negatives"] is None
    est = v["estimated_total_false_negatives"]
    assert est["estimate"] == pytest.approx(4.0) and est["biased_upward"] is True
    assert est["bands_without_verdicts"] == ["too_easy"] and est["confirmed_total"] == 3
    assert v["per_rank_bucket"][0] == {"ranks": "1-3", "judged": 5, "false_negative": 3, "rate": pytest.approx(0.6),
                                       "ci95": pytest.approx(list(stats.wilson_interval(3, 5)))}
    assert all(b["judged"] == 0 for b in v["per_rank_bucket"][1:])
    per_source = {r["source"]: (r["judged"], r["false_negative"]) for r in v["per_source"]}
    assert per_source == {"bm25": (2, 1), "dense": (4, 3)}
    only = {r["only_source"]: (r["judged"], r["false_negative"]) for r in v["only_in_one_source"]}
    assert only == {"bm25": (1, 0), "dense": (3, 2)}
    # nothing was routed to double annotation (share 0): the overlaps are accidents and give no kappa
    assert v["agreement"]["items"] == 0 and v["agreement"]["kappa"] is None
    # with every item routed: pairs (fn, fn), (tn, tn), (fn, unsure): p_o = 2/3, p_e = 2/3*1/3 + 1/3*1/3 = 1/3
    routed = stats.compute_stats(reviewed, negatives=3, double_annotation=1.0)["verdicts"]["agreement"]
    assert routed["items"] == 3 and routed["kappa"] == pytest.approx(0.5)
    assert v["items_reviewed"] == 5 and v["annotators"] == 2


def test_compute_stats_shape_geometry_bands(reviewed):
    st = stats.compute_stats(reviewed, negatives=3)
    sh = st["shape"]
    assert (sh["queries"], sh["documents"], sh["positives"], sh["candidates"]) == (3, 13, 4, 10)
    assert sh["single_positive_share"] == pytest.approx(2 / 3)
    assert {r["source"]: r["candidates"] for r in sh["per_source"]} == {"bm25": 2, "dense": 9}
    sc = st["scores"]
    assert sc["inversion_rate"] == pytest.approx(0.1) and sc["queries_with_inversion"] == 1
    assert sc["s_neg"]["max"] == pytest.approx(0.85) and sc["delta"]["min"] == pytest.approx(-0.6)
    assert sum(sc["histograms"]["s_neg"]["counts"]) == 10 and sum(sc["histograms"]["s_pos"]["counts"]) == 3
    pr = st["positive_rank"]
    # q1's positive (0.8) is beaten by n1 (0.85): rank 2; q2 and q3 rank 1
    assert pr["mrr"] == pytest.approx((0.5 + 1 + 1) / 3) and pr["success_at_1"] == pytest.approx(2 / 3)
    b = st["bands"]
    assert b["counts"] == {"suspicious": 3, "ambiguous": 4, "too_easy": 3}
    assert b["per_source"]["bm25"] == {"suspicious": 1, "ambiguous": 1, "too_easy": 0}
    # with 3 negatives: q2 keeps n6, n7 (n5 confirmed FN); q3 keeps n9, n1 (n8 confirmed FN)
    assert st["short_queries"]["count"] == 2 and st["short_queries"]["ids"] == ["q2", "q3"]
    k1 = st["judged_at_k"]["by_k"][0]
    assert k1["k"] == 1 and k1["judged"] == 0 and k1["judged_or_reviewed"] == pytest.approx(1.0)


def test_stats_without_scores_reports_shape_only(store):
    store.execute("INSERT INTO queries VALUES ('q', 'x', 'h', 'd', NULL)")
    st = stats.compute_stats(store)
    assert st["model"] is None and st["shape"]["queries"] == 1 and "mine" in st["note"]


def test_report_is_self_contained_and_escapes_data(reviewed, tmp_path):
    reviewed.execute(
        "INSERT INTO candidates (query_id, doc_id, source) VALUES ('q1', 'n3', '<script>alert(1)</script>')"
    )
    st = stats.compute_stats(reviewed, double_annotation=1.0)  # every item routed to two: the report shows kappa
    out = write_report(st, tmp_path / "r.html")
    html_text = out.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<scriptsrc=" not in html_text.replace(" ", "")  # no external script
    assert "Plotly.newPlot" in html_text and len(html_text) > 1_000_000  # plotly.js inlined: works offline
    assert "False-negative rate per band" in html_text and "Cohen" in html_text
    assert render_html({"shape": {}}).startswith("<!DOCTYPE html>")  # degrades on an empty store


def test_cli_stats(handbuilt_store_path, capsys, tmp_path):
    from auditor.cli import main

    assert main(["stats", "--db", str(handbuilt_store_path), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["bands"]["counts"]["ambiguous"] == 4
    assert main(["stats", "--db", str(handbuilt_store_path), "--out", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    assert "suspicious" in text and json.loads((tmp_path / "s.json").read_text())["model"] == "m"


@pytest.mark.slow
def test_stats_and_report_on_planted_cranfield(planted_cranfield, tmp_path):
    """Integration on the mined Cranfield store: real shape figures, a stratified sample gives a random-sample rate."""
    from conftest import copy_store

    from auditor.store import open_store

    con = open_store(copy_store(planted_cranfield["path"], tmp_path / "p.duckdb"))
    try:
        queue = review.build_queue(con, mode="stratified", limit=12, seed=1)
        for i, it in enumerate(queue.itertuples()):
            review.record_verdict(con, query_id=it.query_id, doc_id=it.doc_id, annotator="ann",
                                  verdict="false_negative" if i % 3 == 0 else "true_negative",
                                  queue_mode="stratified", sampling_prob=it.sampling_prob)
        st = stats.compute_stats(con)
    finally:
        con.close()
    json.dumps(st)
    assert st["shape"]["documents"] == 1400 and st["shape"]["queries"] == 225
    assert st["shape"]["single_positive_share"] == pytest.approx(1.0)  # one positive kept per query
    assert 0 < st["positive_rank"]["mrr"] <= 1 and st["scores"]["s_neg"]["n"] > 0
    sampled = [b for b in st["verdicts"]["per_band"] if b["judged"]]
    assert sampled and all(b["sample"] == "random" for b in sampled)
    assert sum(b["judged"] for b in sampled) == 12
    assert st["verdicts"]["estimated_total_false_negatives"]["estimate"] is not None
    assert "Plotly.newPlot" in render_html(st)
