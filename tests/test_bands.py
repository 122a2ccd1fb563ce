"""Band rules on hand-built score tables: every rule, boundaries, negative cosines, ties, several positives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auditor import bands
from auditor.config import BandConfig
from auditor.store import StoreError

M = "m"

#: Every rule off except the one under test (and inversion, which cannot be switched off).
BARE = BandConfig(relative_margin=None, near_duplicate=None, top_rank=None, anchor_max_outscored=None,
                  use_cross_encoder=False, ambiguous_min_weight=1.0)


def add(con, q, d, s_neg, s_pos=(0.5,), sim_to_pos=None, rank=None, ce_neg=None, ce_pos=None, model=M):
    s_pos = list(s_pos)
    con.execute(
        "INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos, rank, ce_neg, "
        "ce_pos) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [model, q, d, s_neg, min(s_pos), sum(s_pos) / len(s_pos), max(s_pos), sim_to_pos, rank, ce_neg, ce_pos],
    )


def banded(con, cfg, config="t"):
    bands.assign_bands(con, config, M, cfg)
    return {(q, d): (b, r) for q, d, b, r in con.execute(
        "SELECT query_id, doc_id, band, rule FROM bands WHERE config = ? AND model = ?", [config, M]).fetchall()}


def test_inversion_is_on_and_fires_at_equality(store):
    add(store, "q", "above", 0.6)
    add(store, "q", "equal", 0.5)
    add(store, "q", "below", 0.4999)
    got = banded(store, BARE)
    assert got[("q", "above")] == ("suspicious", "inversion")
    assert got[("q", "equal")] == ("suspicious", "inversion")
    assert got[("q", "below")][0] != "suspicious"


def test_relative_margin_is_strict_at_the_threshold(store):
    # s_pos 0.5, margin 0.25: threshold 0.375 exactly (binary-exact numbers, no rounding)
    add(store, "q", "at", 0.375)
    add(store, "q", "just_above", 0.3751)
    got = banded(store, BandConfig(**{**BARE.__dict__, "relative_margin": 0.25}))
    assert got[("q", "just_above")] == ("suspicious", "relative_margin")
    assert got[("q", "at")][0] != "suspicious"


def test_relative_margin_is_sign_safe_for_negative_cosines(store):
    # s_pos -0.5, margin 0.25: sign-safe threshold -0.5 - 0.125 = -0.625. A naive 0.75 * s_pos = -0.375 would let
    # -0.5625 through as a negative although it is within 25% of the positive.
    add(store, "q", "close", -0.5625, s_pos=(-0.5,))
    add(store, "q", "far", -0.7, s_pos=(-0.5,))
    got = banded(store, BandConfig(**{**BARE.__dict__, "relative_margin": 0.25}))
    assert got[("q", "close")] == ("suspicious", "relative_margin")
    assert got[("q", "far")][0] != "suspicious"


def test_absolute_margin_cap_near_duplicate_and_top_rank_fire_at_the_threshold(store):
    add(store, "q1", "margin_at", 0.375)  # 0.5 - 0.125
    add(store, "q1", "margin_below", 0.3749)
    add(store, "q2", "cap_at", 0.25, s_pos=(0.75,))
    add(store, "q2", "cap_below", 0.2499, s_pos=(0.75,))
    add(store, "q3", "dup_at", 0.1, sim_to_pos=0.875)
    add(store, "q3", "dup_below", 0.1, sim_to_pos=0.8749)
    add(store, "q4", "rank_at", 0.1, rank=3)
    add(store, "q4", "rank_below", 0.1, rank=4)
    add(store, "q4", "unranked", 0.1, rank=None)
    def only(**rule):
        return banded(store, BandConfig(**{**BARE.__dict__, **rule}), "cfg_" + "_".join(rule))

    got = only(absolute_margin=0.125)
    assert got[("q1", "margin_at")] == ("suspicious", "absolute_margin")
    assert got[("q1", "margin_below")][0] != "suspicious"
    got = only(absolute_cap=0.25)
    assert got[("q2", "cap_at")] == ("suspicious", "absolute_cap")
    assert got[("q2", "cap_below")][0] != "suspicious"
    got = only(near_duplicate=0.875)
    assert got[("q3", "dup_at")] == ("suspicious", "near_duplicate")
    assert got[("q3", "dup_below")][0] != "suspicious"
    got = only(top_rank=3)
    assert got[("q4", "rank_at")] == ("suspicious", "top_rank")
    assert got[("q4", "rank_below")][0] != "suspicious"
    assert got[("q4", "unranked")][0] != "suspicious"


def test_cross_encoder_rule_needs_both_scores_and_can_be_switched_off(store):
    add(store, "q", "ce_tie", 0.1, ce_neg=2.0, ce_pos=2.0)
    add(store, "q", "ce_below", 0.1, ce_neg=1.9, ce_pos=2.0)
    add(store, "q", "ce_missing", 0.1, ce_neg=3.0, ce_pos=None)
    got = banded(store, BandConfig(**{**BARE.__dict__, "use_cross_encoder": True}))
    assert got[("q", "ce_tie")] == ("suspicious", "cross_encoder")
    assert got[("q", "ce_below")][0] != "suspicious"
    assert got[("q", "ce_missing")][0] != "suspicious"
    assert banded(store, BARE, "off")[("q", "ce_tie")][0] != "suspicious"


def test_first_matching_rule_is_recorded_in_priority_order(store):
    # satisfies inversion, near_duplicate, cross_encoder, relative margin, cap and top rank at once
    add(store, "q", "all", 0.9, sim_to_pos=0.99, rank=1, ce_neg=5.0, ce_pos=1.0)
    # the same minus the inversion
    add(store, "q2", "no_inv", 0.45, sim_to_pos=0.99, rank=1, ce_neg=5.0, ce_pos=1.0)
    add(store, "q3", "no_inv_dup", 0.45, sim_to_pos=0.1, rank=1, ce_neg=5.0, ce_pos=1.0)
    add(store, "q4", "only_rel_cap_rank", 0.45, sim_to_pos=0.1, rank=1)
    cfg = BandConfig(relative_margin=0.2, near_duplicate=0.95, absolute_cap=0.4, top_rank=5,
                     anchor_max_outscored=None, use_cross_encoder=True)
    got = banded(store, cfg)
    assert got[("q", "all")][1] == "inversion"
    assert got[("q2", "no_inv")][1] == "near_duplicate"
    assert got[("q3", "no_inv_dup")][1] == "cross_encoder"
    assert got[("q4", "only_rel_cap_rank")][1] == "relative_margin"
    assert bands.RULE_ORDER.index("inversion") < bands.RULE_ORDER.index("top_rank") < bands.RULE_ORDER.index("simans")


def test_simans_weight_ambiguous_low_weight_and_easy_rank(store):
    cfg = BandConfig(relative_margin=None, near_duplicate=None, top_rank=None, anchor_max_outscored=None,
                     simans_a=20.0, simans_b=-0.15, ambiguous_min_weight=0.5, easy_rank=10)
    add(store, "q", "peak", 0.35, rank=2)  # delta -0.15: weight 1
    add(store, "q", "far", -0.2, rank=3)  # delta -0.7: weight exp(-20 * 0.3025) ~ 0.002
    add(store, "q", "deep", 0.35, rank=11)  # at the peak but beyond easy_rank
    add(store, "q", "unranked", 0.35, rank=None)
    got = banded(store, cfg)
    assert got[("q", "peak")] == ("ambiguous", "simans")
    assert got[("q", "far")] == ("too_easy", "low_weight")
    assert got[("q", "deep")] == ("too_easy", "easy_rank")
    assert got[("q", "unranked")] == ("too_easy", "easy_rank")
    w = dict(store.execute("SELECT doc_id, weight FROM bands WHERE config = 't'").fetchall())
    assert w["peak"] == pytest.approx(1.0)
    assert w["far"] == pytest.approx(math.exp(-20 * 0.55 ** 2))


def test_ties_get_the_same_band(store):
    for i in range(4):
        add(store, "q", f"t{i}", 0.47, rank=i + 1)
    cfg = BandConfig(**{**BARE.__dict__, "relative_margin": 0.06})  # threshold 0.47: strict, so none fires
    got = banded(store, cfg)
    assert len({v for v in got.values()}) == 1
    cfg = BandConfig(**{**BARE.__dict__, "relative_margin": 0.07})
    assert {v for v in banded(store, cfg, "u").values()} == {("suspicious", "relative_margin")}


def test_several_positives_use_the_min_anchor_by_default(store):
    add(store, "q", "between", 0.6, s_pos=(0.5, 0.9))
    assert banded(store, BARE)[("q", "between")] == ("suspicious", "inversion")
    got = banded(store, BandConfig(**{**BARE.__dict__, "anchor": "max"}), "max")
    assert got[("q", "between")][0] != "suspicious"
    got = banded(store, BandConfig(**{**BARE.__dict__, "anchor": "mean"}), "mean")  # mean 0.7
    assert got[("q", "between")][0] != "suspicious"


def test_positive_relative_rules_skip_queries_with_a_weak_anchor(store):
    # query "weak": its positive is outscored by 3 candidates; "strong": by 1
    for i in range(3):
        add(store, "weak", f"w{i}", 0.6 + i / 100)
    add(store, "weak", "w_close", 0.49)
    add(store, "strong", "s0", 0.6)
    add(store, "strong", "s_close", 0.49)
    cfg = BandConfig(**{**BARE.__dict__, "relative_margin": 0.05, "anchor_max_outscored": 2})
    got = banded(store, cfg)
    assert got[("strong", "s0")] == ("suspicious", "inversion")
    assert got[("strong", "s_close")] == ("suspicious", "relative_margin")
    assert all(got[("weak", d)][0] != "suspicious" for d in ("w0", "w1", "w2", "w_close"))
    # at the limit the rules still apply
    cfg = BandConfig(**{**BARE.__dict__, "relative_margin": 0.05, "anchor_max_outscored": 3})
    assert banded(store, cfg, "limit3")[("weak", "w0")] == ("suspicious", "inversion")


def test_assign_replaces_rows_and_preview_matches_without_writing(store):
    for i in range(30):
        add(store, f"q{i % 5}", f"d{i}", 0.2 + i / 50, sim_to_pos=i / 30, rank=i % 10 + 1)
    cfg = BandConfig()
    before = store.execute("SELECT count(*) FROM bands").fetchall()[0][0]
    p = bands.preview_bands(store, cfg, M, min_negatives=5)
    assert store.execute("SELECT count(*) FROM bands").fetchall()[0][0] == before == 0
    counts = bands.assign_bands(store, "default", M, cfg)
    assert counts == p["candidates"]
    assert sum(counts.values()) == 30 == p["total_candidates"]
    assert p["total_queries"] == 5
    assert sum(p["rules"].values()) == 30
    per_query_ok = store.execute(
        "SELECT count(*) FROM (SELECT query_id, count(*) FILTER (WHERE band <> 'suspicious') ok FROM bands "
        "GROUP BY 1) WHERE ok < 5").fetchall()[0][0]
    assert p["short_queries"] == per_query_ok
    # a second assignment with another config replaces, never duplicates
    bands.assign_bands(store, "default", M, BandConfig(relative_margin=0.5))
    assert store.execute("SELECT count(*) FROM bands WHERE config = 'default'").fetchall()[0][0] == 30


def test_preview_of_a_large_store_is_estimated_from_whole_queries(store):
    # 400 queries x 10 candidates with scores falling with the index: every query bands alike
    store.execute(f"""
        INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos, rank)
        SELECT '{M}', 'q' || q, 'd' || d, 0.55 - 0.05 * d + 0.001 * (q % 7), 0.5, 0.5, 0.5, 0.3, d + 1
        FROM range(400) a(q), range(10) b(d)""")
    cfg = BandConfig()
    exact = bands.preview_bands(store, cfg, M, min_negatives=9, max_candidates=None)
    est = bands.preview_bands(store, cfg, M, min_negatives=9, max_candidates=1000)
    assert (exact["sampled"], est["sampled"]) == (False, True) and 600 < est["sample_candidates"] < 1600
    assert est["sample_candidates"] % 10 == 0  # whole queries: each query's window (n_outscoring) stays exact
    assert est["total_candidates"] == exact["total_candidates"] == 4000
    for band in bands.BANDS:  # every query bands alike, so the scaled sample is exact up to rounding
        assert abs(est["candidates"][band] - exact["candidates"][band]) <= 0.02 * 4000
    assert abs(est["total_queries"] - 400) <= 8 and abs(est["short_queries"] - exact["short_queries"]) <= 8
    # the same sample on every call (a slider moving back and forth sees stable numbers)
    assert bands.preview_bands(store, cfg, M, min_negatives=9, max_candidates=1000) == est


def test_named_configs_round_trip_and_unknown_name_is_explained(store):
    add(store, "q", "d", 0.1)
    cfg = BandConfig(relative_margin=0.1, absolute_cap=0.8)
    bands.save_band_config(store, "strict", cfg)
    assert bands.load_band_config(store, "strict") == cfg
    assert bands.load_band_config(store, "default") == BandConfig()  # never saved: the defaults
    assert "strict" in bands.list_band_configs(store)
    with pytest.raises(StoreError, match="no band configuration named 'nope'.*strict"):
        bands.load_band_config(store, "nope")
    with pytest.raises(ValueError, match="anchor"):
        bands.save_band_config(store, "bad", BandConfig(anchor="median"))
    with pytest.raises(ValueError, match="finite"):
        bands.band_sql(BandConfig(relative_margin=float("nan")))


def test_latest_model_and_clear_error_without_scores(store):
    assert bands.latest_model(store) is None
    with pytest.raises(StoreError, match="auditor mine"):
        bands.assign_bands(store)
    add(store, "q", "d", 0.1, model="a")
    add(store, "q", "d", 0.1, model="b")
    bands.mark_latest_model(store, "b")
    assert bands.latest_model(store) == "b"
    with pytest.raises(StoreError, match="no scores for model 'c'"):
        bands.assign_bands(store, model="c")


def test_histogram_counts_match_numpy(store):
    rng = np.random.default_rng(0)
    vals = rng.uniform(-0.2, 0.9, 500)
    for i, v in enumerate(vals):
        add(store, f"q{i % 7}", f"d{i}", float(v), rank=i % 50 + 1)
    h = bands.histogram(store, "s_neg", M, bins=20)
    expected, edges = np.histogram(vals, bins=20, range=(vals.min(), vals.max()))
    assert h["n"] == 500
    assert h["counts"] == expected.tolist()
    assert h["edges"] == pytest.approx(edges.tolist())
    bands.assign_bands(store, "default", M, BandConfig())
    by_band = [bands.histogram(store, "s_neg", M, bins=10, band=b, lo=-0.2, hi=0.9)["n"] for b in bands.BANDS]
    assert sum(by_band) == 500
    assert bands.histogram(store, "weight", M, bins=5)["n"] == 500
    with pytest.raises(ValueError, match="cannot histogram"):
        bands.histogram(store, "text; DROP TABLE scores", M)


def test_the_plain_words_name_exactly_the_active_rules():
    everything = BandConfig(absolute_margin=0.02, absolute_cap=0.9, consensus_rank=3, easy_rank=40)
    off = BandConfig(near_duplicate=None, use_cross_encoder=False, relative_margin=None, top_rank=None)
    for cfg in (BandConfig(), everything, off):
        rule_sql = bands.band_sql(cfg)[0]
        words = bands.band_definitions(cfg)["suspicious"]
        for rule in bands.SUSPICION_RULES:
            assert (f"'{rule.name}'" in rule_sql) == rule.active(cfg), rule.name
            assert not rule.active(cfg) or rule.words(cfg) in words, rule.name
        assert words.count(";") == sum(r.active(cfg) for r in bands.SUSPICION_RULES) - 1
    assert "within 0.020 of the labeled positive" in bands.band_definitions(everything)["suspicious"]
    assert bands.band_definitions(off)["suspicious"].count(";") == 0  # the inversion alone
    assert "ranked beyond 40" in bands.band_definitions(everything)["too_easy"]
