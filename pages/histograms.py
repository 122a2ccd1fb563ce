"""Histograms & bands page (leads): score geometry, and thresholds whose effect is previewed live before saving.

All counting happens in DuckDB (auditor.bands.preview_bands / histogram): the page stays fast on a million candidates.
Axes are clipped to the 0.5th-99.5th percentile (a ratio over a near-zero positive must not squeeze everything into
one bar), every active threshold is drawn, and only the open tab is computed. Names from the data or from users
(configurations, sources) are shown as plain text, in Plotly labels too.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from auditor import bands
from auditor.config import DEFAULT_BAND_CONFIG, BandConfig
from auditor.store import StoreError
from auditor.ui_helpers import (
    band_counts_by_source, percentile_range, plotly_text, rule_label, scored_models, scores_version,
)
from pages import _charts
from pages import _common as ui

ui.require_app()
ui.require("tune")

ss = st.session_state
con = ui.cursor()
BINS = 60


# Histograms and per-source counts depend only on the stored scores and bands, not on the sliders: computed in SQL
# once per version of the store (scores_version changes whenever mining or band assignment writes).
@st.cache_data(max_entries=64, show_spinner=False)
def _histogram(db: str, model: str, version: tuple, what: str) -> dict:
    """One tab's histograms, binned over the 0.5th-99.5th percentile of the values (the clipped rest is counted)."""
    cur = ui.cursor()

    def clipped(column: str, where: str | None = None, lo=None, hi=None) -> dict:
        p_lo, p_hi, n = percentile_range(cur, column, model, where=where)
        lo = p_lo if lo is None else lo
        hi = p_hi if hi is None else hi
        h = bands.histogram(cur, column, model, bins=BINS, where=where, lo=lo, hi=hi)
        return {**h, "total": n, "clipped": n - h["n"]}

    if what == "scores":
        lo_n, hi_n, _ = percentile_range(cur, "s_neg", model)
        lo_p, hi_p, _ = percentile_range(cur, "s_pos_min", model)
        if lo_n is None or lo_p is None:
            return {"s_neg": clipped("s_neg"), "s_pos": clipped("s_pos_min")}
        lo, hi = min(lo_n, lo_p), max(hi_n, hi_p)
        return {"s_neg": clipped("s_neg", lo=lo, hi=hi), "s_pos": clipped("s_pos_min", lo=lo, hi=hi)}
    if what == "ratio":
        return {"ratio": clipped("ratio", where="s_pos_min > 0")}
    if what == "rank":
        return {"rank": clipped("rank")}
    if what == "delta":  # with the verdicts laid over it: where confirmed false and true negatives fall
        h = clipped("delta")
        out = {"delta": h}
        for verdict in ("false_negative", "true_negative"):
            out[verdict] = bands.histogram(
                cur, "delta", model, bins=BINS, lo=h["lo"], hi=h["hi"], clamp=True,
                where=f"(query_id, doc_id) IN (SELECT query_id, doc_id FROM current_verdicts WHERE verdict = "
                      f"'{verdict}')")
        return out
    return {what: clipped(what)}


@st.cache_data(max_entries=16, show_spinner=False)
def _estimate(db: str, model: str, selection_json: str, version: tuple) -> dict:
    from auditor.estimate import export_estimate
    from auditor.select import Selection

    return export_estimate(ui.cursor(), Selection.from_json(selection_json), model)


def _risk_version(model: str) -> tuple:
    """Changes when the risk is refitted or a verdict lands (what the estimate depends on, besides the scores)."""
    return tuple(con.execute(
        "SELECT (SELECT max(fit_id) FROM risk_fits WHERE model = ?), (SELECT max(event_id) FROM verdicts)", [model]
    ).fetchall()[0])


@st.cache_data(max_entries=32, show_spinner=False)
def _by_source(db: str, config: str, model: str, version: tuple) -> dict:
    return band_counts_by_source(ui.cursor(), config, model)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _export_risk(model: str) -> None:
    """How many false negatives the export would still hold, and which risk threshold meets a target rate."""
    from auditor.select import current_selection

    if not con.execute("SELECT 1 FROM risk WHERE model = ? LIMIT 1", [model]).fetchall():
        st.caption("No false-negative risk for this model yet: run `auditor mine` again to compute it.")
        return
    selection = current_selection(con)
    version = (scores_version(con), _risk_version(model))
    est = _estimate(str(ui.db_path()), model, selection.to_json(), version)
    audit = est["audit"]
    st.markdown(f"**The export** ({selection.negatives} negatives per query, {selection.rule}; the settings of the "
                "latest export)")
    c1, c2, c3 = st.columns(3)
    if est["status"] == "estimated":
        c1.metric("Estimated false negatives", _pct(est["rate"]),
                  f"95%: {_pct(est['ci95'][0])} – {_pct(est['ci95'][1])}", delta_color="off", delta_arrow="off",
                  border=True, help="the calibrated risk of the unreviewed exported negatives, corrected by the "
                                    "audit sample (a random share of the export reviewed in the default queue)")
    else:
        c1.metric("Estimated false negatives", "not yet", border=True)
    c1.caption(est["message"])
    c2.metric("Audit items reviewed", f"{audit['reviewed']:,}",
              f"{audit['pending']:,} waiting", delta_color="off", delta_arrow="off", border=True,
              help=f"a random {100 * audit['rate']:.1f}% of the export; every {audit['every']}th item of the default "
                   "review queue is one")
    c3.metric("Mean s_neg", f"{est['mean_s_neg']:.3f}" if est["mean_s_neg"] is not None else "n/a", border=True,
              help="mean similarity of query and exported negative: how hard the negatives are")
    c3.caption(f"{est['confirmed_true_negatives']:,} exported negatives confirmed true negatives")


def _save(name: str, cfg: BandConfig) -> None:
    with st.spinner("Assigning bands…"):
        counts = bands.assign_bands(con, name, model, cfg)
    ui.store_changed()
    ui.warm_queue(model, name)
    ss.pop("h_confirm", None)
    ss["h_base_next"] = name
    ss["h_saved_msg"] = (f"Saved '{name}': " + ", ".join(
        f"{counts.get(bd, 0):,} {ui.BAND_LABELS[bd].lower()}" for bd in bands.BANDS))
    st.rerun()


ui.page_header("Histograms & bands", "How negatives score against their positive, and what each threshold would do.")
models = scored_models(con)
if not models:
    ui.stop_until_loaded("No scores yet: load a training set and mine candidates on the **Load data** page.")

configs = bands.list_band_configs(con)
config_names = sorted(set(configs) | {DEFAULT_BAND_CONFIG}, key=lambda n: (n != DEFAULT_BAND_CONFIG, n))
if "h_base_next" in ss:  # just saved: show the saved configuration (a widget's value is set before it is drawn)
    ss["h_base"] = ss.pop("h_base_next")
    ss["h_loaded"] = None
top = st.columns([2, 2, 1])
model = top[0].selectbox("Model", models, key="h_model")
base_name = top[1].selectbox("Start from band configuration", config_names, key="h_base")
min_neg = top[2].number_input("N negatives per query", 1, 1000, 5, key="h_min_neg",
                              help="queries left with fewer non-suspicious negatives than this are counted as short")
base = configs.get(base_name) or BandConfig()

# Load the chosen configuration into the sliders when the choice changes.
if ss.get("h_loaded") != (base_name, model):
    ss["h_loaded"] = (base_name, model)
    ss["th_rel_on"], ss["th_rel"] = base.relative_margin is not None, float(base.relative_margin or 0.05)
    ss["th_abs_on"], ss["th_abs"] = base.absolute_margin is not None, float(base.absolute_margin or 0.05)
    ss["th_cap_on"], ss["th_cap"] = base.absolute_cap is not None, float(base.absolute_cap or 0.9)
    ss["th_dup_on"], ss["th_dup"] = base.near_duplicate is not None, float(base.near_duplicate or 0.95)
    ss["th_rank_on"], ss["th_rank"] = base.easy_rank is not None, int(base.easy_rank or 100)
    ss["th_top_on"], ss["th_top"] = base.top_rank is not None, int(base.top_rank or 5)
    ss["th_anchor_on"], ss["th_anchor"] = base.anchor_max_outscored is not None, int(base.anchor_max_outscored or 20)
    ss["th_a"], ss["th_b"], ss["th_w"] = float(base.simans_a), float(base.simans_b), float(base.ambiguous_min_weight)
elif "th_rel" not in ss and "_th_kept" in ss:
    # Back from another page: Streamlit dropped the sliders' state with their widgets; put the thresholds back.
    ss.update(ss["_th_kept"])

controls, results = st.columns([1, 2], gap="large")
with controls:
    with st.container(border=True):
        st.markdown(f"{ui.band_badge('suspicious')} **rules**")
        st.caption("Any rule that fires marks the candidate a likely false negative; inversion (s_neg >= s_pos) "
                   "always applies where the positive is a usable anchor (see the last switch).")
        on = st.toggle("Relative margin (% of the positive)", key="th_rel_on")
        rel = st.slider("s_neg above this share of s_pos", 0.0, 0.5, step=0.005, key="th_rel", disabled=not on,
                        format="%.3f",
                        help="margin m: suspicious when s_neg > s_pos - |s_pos| * m (0.05 = the 95% rule)")
        on_abs = st.toggle("Absolute margin", key="th_abs_on")
        abs_m = st.slider("s_neg within this of s_pos", 0.0, 0.5, step=0.005, key="th_abs", disabled=not on_abs,
                          format="%.3f")
        on_cap = st.toggle("Absolute cap", key="th_cap_on")
        cap = st.slider("s_neg at or above", 0.0, 1.0, step=0.01, key="th_cap", disabled=not on_cap)
        on_dup = st.toggle("Near-duplicate of a positive", key="th_dup_on")
        dup = st.slider("sim(positive, candidate) at or above", 0.5, 1.0, step=0.01, key="th_dup", disabled=not on_dup)
        on_top = st.toggle("Top of the model's search", key="th_top_on",
                           help="the very top ranks are where unlabeled positives concentrate (pooling bias)")
        top_rank = st.slider("rank at or above", 1, 50, key="th_top", disabled=not on_top)
        on_anchor = st.toggle("Skip margin rules for weak positives", key="th_anchor_on",
                              help="a positive that many candidates outscore is a weak anchor: 'above the positive' "
                              "is no evidence there, so inversion and margin rules are not applied to its query")
        anchor_max = st.slider("positive outscored by at most", 0, 200, key="th_anchor", disabled=not on_anchor)
    with st.container(border=True):
        st.markdown(f"{ui.band_badge('ambiguous')} or {ui.band_badge('too_easy')}")
        st.caption("SimANS weight exp(-a (delta - b)^2): high weight and not suspicious = ambiguous.")
        a = st.slider("a (width)", 1.0, 100.0, step=1.0, key="th_a")
        b = st.slider("b (centre of delta)", -1.0, 0.5, step=0.01, key="th_b")
        w = st.slider("minimum weight", 0.01, 0.99, step=0.01, key="th_w")
        on_rank = st.toggle("Too easy beyond a rank", key="th_rank_on")
        rank = st.number_input("rank", 1, 100000, key="th_rank", disabled=not on_rank)

ss["_th_kept"] = {k: ss[k] for k in list(ss.keys()) if isinstance(k, str) and k.startswith("th_")}

cfg = replace(
    base,
    relative_margin=rel if on else None,
    absolute_margin=abs_m if on_abs else None,
    absolute_cap=cap if on_cap else None,
    near_duplicate=dup if on_dup else None,
    easy_rank=int(rank) if on_rank else None,
    top_rank=int(top_rank) if on_top else None,
    anchor_max_outscored=int(anchor_max) if on_anchor else None,
    simans_a=a,
    simans_b=b,
    ambiguous_min_weight=w,
)

with results:
    try:
        preview = bands.preview_bands(con, cfg, model, int(min_neg))
    except (StoreError, ValueError) as exc:
        st.error(ui.md(str(exc)))
        st.stop()
    saved = bands.band_counts(con, base_name, model) if base_name in configs else {}
    stored = {bd: sum(per.values()) for bd, per in saved.items()}
    saved_rules: dict[str, int] = {}
    for per in saved.values():
        for rule, n in per.items():
            saved_rules[rule] = saved_rules.get(rule, 0) + n
    st.markdown("**With these thresholds**")
    cols = st.columns(4)
    total = preview["total_candidates"] or 1
    for col, bd in zip(cols, bands.BANDS):
        n = preview["candidates"][bd]
        diff = n - stored[bd] if stored else None
        col.metric(ui.BAND_LABELS[bd], f"{n:,}", f"{diff:+,} vs saved" if diff else None, delta_color="off",
                   help=ui.BAND_HELP[bd], border=True)
        col.caption(f"{100 * n / total:.1f}% of candidates · {preview['queries'][bd]:,} queries")
    short = preview["short_queries"]
    cols[3].metric(f"Short (< {int(min_neg)} neg.)", f"{short:,}", border=True,
                   help="queries left with fewer than N negatives once suspicious candidates are dropped")
    cols[3].caption(f"of {preview['total_queries']:,} queries")
    if preview.get("sampled"):
        st.caption(f"Counts estimated from a random sample of whole queries ({preview['sample_candidates']:,} of "
                   f"{preview['total_candidates']:,} candidates) so the sliders stay fast; saving assigns every "
                   "candidate exactly.")

    with st.container(border=True):
        st.markdown("**What the bands mean with these thresholds**")
        for bd, text in bands.band_definitions(cfg).items():
            st.markdown(f"{ui.band_badge(bd)} {ui.md(text)}")

    # Only the open tab runs (on_change="rerun"): the first view computes one tab, not eight.
    names = ["Scores", "Delta", "Ratio", "Closeness to the positive", "Rank", "Per source", "Per rule",
             "Export risk"]
    tabs = st.tabs(names, key="h_tab", on_change="rerun")
    version = scores_version(con)
    db = str(ui.db_path())
    if tabs[0].open:
        with tabs[0]:
            h = _histogram(db, model, version, "scores")
            st.plotly_chart(_charts.scores_figure(h["s_pos"], h["s_neg"], cfg.absolute_cap), key="fig_scores")
            st.caption("s_pos is counted once per candidate row (its query's lowest-scoring positive). "
                       + _charts.clip_note(h["s_neg"]))
    if tabs[1].open:
        with tabs[1]:
            verdicts = con.execute("SELECT count(*), max(event_id) FROM verdicts").fetchall()[0]
            hs = _histogram(db, model, (*version, *verdicts), "delta")
            h = hs["delta"]
            st.plotly_chart(_charts.delta_figure(h, cfg.absolute_margin, cfg.simans_a, cfg.simans_b,
                                                 cfg.ambiguous_min_weight, hs["false_negative"],
                                                 hs["true_negative"]), key="fig_delta")
            st.caption(_charts.clip_note(h) + (f" Verdicts laid over it: {hs['false_negative']['n']:,} confirmed "
                       f"false negatives (red), {hs['true_negative']['n']:,} true negatives (green), right axis."
                       if hs["false_negative"]["n"] or hs["true_negative"]["n"] else ""))
    if tabs[2].open:
        with tabs[2]:
            h = _histogram(db, model, version, "ratio")["ratio"]
            st.plotly_chart(_charts.ratio_figure(h, cfg.relative_margin), key="fig_ratio")
            st.caption("Queries whose positive scores at or below 0 are left out of the ratio. " + _charts.clip_note(h))
    if tabs[3].open:
        with tabs[3]:
            h = _histogram(db, model, version, "sim_to_pos")["sim_to_pos"]
            st.plotly_chart(_charts.closeness_figure(h, cfg.near_duplicate), key="fig_close")
            st.caption("Similarity of each candidate to its closest labeled positive. " + _charts.clip_note(h))
    if tabs[4].open:
        with tabs[4]:
            h = _histogram(db, model, version, "rank")["rank"]
            st.plotly_chart(_charts.rank_figure(h, cfg.top_rank, cfg.easy_rank), key="fig_rank")
            st.caption("Rank of each candidate in the model's search for its query (positives excluded). "
                       + _charts.clip_note(h))
    if tabs[5].open:
        with tabs[5]:
            if base_name in configs:
                st.plotly_chart(_charts.band_bars(_by_source(db, base_name, model, version),
                                                  f"Saved bands of '{plotly_text(base_name)}' per source", "source"),
                                key="fig_src")
            else:
                st.caption("Save a configuration to see its bands per source.")
    if tabs[6].open:
        with tabs[6]:
            live = {r: n for r, n in sorted(preview["rules"].items(), key=lambda kv: -kv[1])}
            st.dataframe({"rule": [rule_label(r) for r in live], "candidates (these thresholds)": list(live.values()),
                          "candidates (saved)": [saved_rules.get(r, 0) for r in live]},
                         hide_index=True, width="stretch")

    if tabs[7].open:
        with tabs[7]:
            _export_risk(model)

    with st.container(border=True):
        st.markdown("**Save these thresholds**")
        st.caption("Saving writes the bands of every candidate for this model; the review queue uses them at once.")
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        name = c1.text_input("Configuration name", key="h_save_name", placeholder="a new name, e.g. strict-0.1",
                             help="the name of a saved configuration replaces it, after you confirm")
        target = name.strip()
        existing = set(configs) | {c for c, _, _ in ui.banded_pairs()}  # saved, or banded without a saved row
        if c2.button("Save and apply", type="primary", key="h_save", width="stretch", icon=":material/save:"):
            if not target:
                st.error("Give the configuration a name.")
            elif target in existing and ss.get("h_confirm") != target:
                ss["h_confirm"] = target  # ask first: replacing a configuration re-bands what reviewers see
            else:
                _save(target, cfg)
        if ss.get("h_confirm") and ss["h_confirm"] == target and target in existing:
            st.warning(f"A configuration named {ui.md(target)} exists: replacing it re-bands every candidate of this "
                       "model under that name, and the review queue and exports that use it change at once.")
            r1, r2 = st.columns(2)
            if r1.button(f"Replace {target}", type="primary", key="h_replace", icon=":material/warning:"):
                _save(target, cfg)
            if r2.button("Cancel", key="h_cancel"):
                ss.pop("h_confirm", None)
                st.rerun()
        if ss.get("h_saved_msg"):
            st.success(ui.md(ss.pop("h_saved_msg")))
