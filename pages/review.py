"""Review page: one suspected false negative at a time, one key per verdict.

Every verdict is an event written at once (auditor.review.record_verdict); undo appends an 'undo' event. The queue
itself is computed by the library from the store on each step, so two annotators never get in each other's way.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from auditor import review
from auditor.risk import describe
from auditor.store import StoreError
from auditor.ui_helpers import (
    VERDICT_LABELS, annotator_verdicts, band_config_of, banded_pairs, candidate_sources, explain_rule,
)
from pages import _common as ui

ui.require_app()

ss = st.session_state
name = ui.annotator()
con = ui.cursor()

pairs = banded_pairs(con)
if not pairs:
    ui.page_header("Review", "Suspected false negatives, one at a time.")
    ui.stop_until_loaded(
        "Nothing to review yet: this store has no banded candidates. Load a training set and mine candidates on the "
        "**Load data** page (or run `auditor mine --db FILE`)."
    )

# ---- sidebar: who, queue mode, filters --------------------------------------------------------------------------
with st.sidebar:
    st.markdown(f"**Reviewing as** {ui.md(name)}")
    if ui.oidc_configured():
        st.button("Sign out", icon=":material/logout:", type="tertiary", on_click=st.logout)
    elif st.button("Switch annotator", icon=":material/logout:", type="tertiary"):
        for key in ("annotator", "current", "skip"):
            ss.pop(key, None)
        st.rerun()
    labels = [f"{c} · {m}" for c, m, _ in pairs]
    choice = st.selectbox("Band configuration · model", labels, key="band_choice", disabled=len(pairs) == 1)
    config_name, model, _ = pairs[labels.index(choice)]
    mode = st.radio(
        "Queue order",
        ["export", "risk", "stratified"],
        key="queue_mode",
        format_func={"export": "What the export will write", "risk": "Highest risk first",
                     "stratified": "Stratified random (per band)"}.get,
        help="What the export will write: the negatives the current export settings would put in the training "
        "file, most likely false negative first; a confirmed false negative leaves the export and its replacement "
        "comes up. Highest risk: every candidate, most likely false negative first. Stratified random samples each "
        "band at random and stores each item's sampling probability, for unbiased false-negative rates per band.",
    )
    bands = st.multiselect(
        "Bands", list(ui.BAND_LABELS), default=list(ui.BAND_LABELS), format_func=ui.BAND_LABELS.get, key="f_bands"
    )
    sources = candidate_sources(con)
    source = st.selectbox("Source", ["(all)"] + sources, key="f_source")
    query_filter = st.text_input("Query id", key="f_query", placeholder="all queries").strip()

filters = (config_name, model, mode, tuple(bands), source, query_filter)
if ss.get("filters") != filters:
    ss["filters"] = filters
    ss["current"] = None
skip: list[tuple[str, str]] = ss.setdefault("skip", [])


def _fetch() -> dict | None:
    return review.next_item(
        con,
        annotator=name,
        mode=mode,
        model=model,
        config=config_name,
        bands=bands or None,
        source=None if source == "(all)" else source,
        query_id=query_filter or None,
        skip=skip,
    )


# ---- actions (callbacks run before the page is drawn again) -----------------------------------------------------
def _verdict(verdict: str) -> None:
    item = ss.get("current")
    if not item:
        return
    review.record_verdict(
        ui.cursor(),
        query_id=item["query_id"],
        doc_id=item["doc_id"],
        verdict=verdict,
        annotator=name,
        note=(ss.get("note") or "").strip() or None,
        band=item["band"],
        queue_mode=item["mode"],
        sampling_prob=item.get("sampling_prob") if item["mode"].startswith("stratified") else None,
    )
    ui.refitter().notify(item["model"])  # the risk model learns from the verdicts, in the background
    ss["flash"] = f"{VERDICT_LABELS[verdict]} saved for {item['query_id']} / {item['doc_id']}"
    ss["note"] = ""
    ss["current"] = None


def _skip() -> None:
    item = ss.get("current")
    if item:
        skip.append((item["query_id"], item["doc_id"]))
        ss["flash"] = f"Skipped {item['query_id']} / {item['doc_id']} for this session"
    ss["current"] = None


def _undo() -> None:
    undone = review.undo_last(ui.cursor(), annotator=name)
    if undone is None:
        ss["flash"] = "Nothing to undo"
        return
    pair = (undone["query_id"], undone["doc_id"])
    if pair in skip:
        skip.remove(pair)
    ss["flash"] = f"Undid {VERDICT_LABELS.get(undone['verdict'], undone['verdict'])} on {pair[0]} / {pair[1]}"
    ss["current"] = None


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


# ---- header and progress -----------------------------------------------------------------------------------------
ui.page_header("Review", "Is the candidate relevant to the query? Judge it against the labeled positive.")
if ss.get("flash"):
    st.toast(ui.md(ss.pop("flash")), icon=":material/check_circle:", duration=2)

prog = review.review_progress(con, model=model, config=config_name)
total, done = int(prog["total"].sum()), int(prog["reviewed"].sum())
cols = st.columns([2, 1, 1, 1])
with cols[0]:
    st.metric("Reviewed (everyone)", f"{done:,} / {total:,}", f"{annotator_verdicts(con, name):,} by you",
              delta_color="off", delta_arrow="off")
    st.progress(done / total if total else 0.0)
for col, (_, row) in zip(cols[1:], prog.iterrows()):
    with col:
        b = row["band"]
        st.metric(ui.BAND_LABELS[b], f"{int(row['reviewed']):,} / {int(row['total']):,}",
                  _plural(int(row['false_negative']), "false negative"), delta_color="off", delta_arrow="off",
                  help=ui.BAND_HELP[b])
        st.progress(int(row["reviewed"]) / int(row["total"]) if int(row["total"]) else 0.0)

# ---- the item ----------------------------------------------------------------------------------------------------
try:
    if ss.get("current") is None:
        ss["current"] = _fetch()
    item = ss["current"]
except (StoreError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

if item is None:
    st.success(
        "Queue empty: nothing left for you with these filters."
        + (" Some items were skipped in this session." if skip else "")
    )
    c1, c2 = st.columns(2)
    c1.button("Undo last verdict", icon=":material/undo:", shortcut="Z", on_click=_undo, key="undo_empty")
    if skip and c2.button("Bring skipped items back", icon=":material/replay:"):
        skip.clear()
        st.rerun()
    st.stop()

ctx_key = (item["query_id"], item["doc_id"], model, config_name)
if ss.get("ctx_key") != ctx_key:  # reruns that keep the item (a note typed, a panel opened) reuse its context
    ss["ctx"] = review.item_context(con, item["query_id"], item["doc_id"], model=model, config=config_name)
    ss["ctx_key"] = ctx_key
ctx = ss["ctx"]
cand = ctx["candidate"]
cfg = band_config_of(con, config_name)

left, right = st.columns([4, 3], gap="large")
with left:
    ui.plain(f"Query · {ctx['query_id']}", ctx["query"])
    with st.container(border=True):
        st.markdown(f"**Candidate** &nbsp; {ui.band_badge(cand['band'])}")
        st.caption(ui.md(f"{cand['doc_id']} · found by: {', '.join(cand['sources']) or 'n/a'}"))
        if cand.get("title"):
            st.text(cand["title"])
        st.text(cand["text"])
    positives = ctx["positives"]
    if not positives:
        st.warning("This query has no labeled positive.")
    elif len(positives) == 1:
        pos = positives[0]
        grade = f" · grade {pos['grade']}" if pos.get("grade") is not None else ""
        ui.plain(f"Labeled positive · {pos['doc_id']}{grade}", pos["text"], title=pos.get("title") or None)
    else:
        st.caption(f"{len(positives)} labeled positives")
        for tab, pos in zip(st.tabs([f"Positive {i + 1}" for i in range(len(positives))]), positives):
            with tab:
                grade = f" · grade {pos['grade']}" if pos.get("grade") is not None else ""
                ui.plain(f"Labeled positive · {pos['doc_id']}{grade}", pos["text"], title=pos.get("title") or None,
                         height=320)

with right:
    with st.container(border=True):
        st.markdown(f"{ui.band_badge(cand['band'])} &nbsp; **Why it is here**")
        risk = ctx.get("risk")
        if risk and risk.get("p_fn") is not None:
            st.metric("P(false negative)", describe(risk["p_fn"]),
                      help="estimated probability that this candidate is relevant (a false negative): from the "
                      "dense model, BM25 and closeness to the positive, recalibrated by the verdicts so far")
            if risk["drivers"]:
                st.text("; ".join(risk["drivers"]))
        st.write(explain_rule(cand.get("rule"), cand, cfg))
        m1, m2 = st.columns(2)
        m1.metric("s_neg", f"{cand['s_neg']:.3f}" if cand["s_neg"] is not None else "n/a",
                  help="similarity of query and candidate")
        m2.metric("s_pos (min)", f"{cand['s_pos_min']:.3f}" if cand["s_pos_min"] is not None else "n/a",
                  help="similarity of query and its labeled positive (the lowest, when there are several)")
        m3, m4 = st.columns(2)
        m3.metric("delta", f"{cand['delta']:+.3f}" if cand["delta"] is not None else "n/a",
                  help="s_neg - s_pos: above 0 the candidate outscores the positive")
        m4.metric("rank", f"{cand['rank']}" if cand["rank"] is not None else "> depth",
                  help="rank of the candidate in the model's corpus search, positives excluded")
    st.markdown("**Your verdict**")
    b1, b2 = st.columns(2)
    b1.button("False negative", key="v_fn", shortcut="F", type="primary", icon=":material/check:",
              on_click=_verdict, args=("false_negative",), width="stretch", help="relevant to the query (key F)")
    b2.button("True negative", key="v_tn", shortcut="T", icon=":material/close:", on_click=_verdict,
              args=("true_negative",), width="stretch", help="not relevant (key T)")
    b3, b4, b5 = st.columns([1.3, 1, 1])  # "Unsure" plus its key hint needs the most room
    b3.button("Unsure", key="v_un", shortcut="U", icon=":material/help:", on_click=_verdict, args=("unsure",),
              width="stretch", help="cannot tell (key U)")
    b4.button("Skip", key="v_skip", shortcut="S", icon=":material/skip_next:", on_click=_skip, width="stretch",
              help="leave it for later in this session (key S)")
    b5.button("Undo", key="v_undo", shortcut="Z", icon=":material/undo:", on_click=_undo, width="stretch",
              help="take back your last verdict (key Z)")
    st.text_input("Note (optional)", key="note", placeholder="saved with the next verdict")
    st.caption("Keys: **F** false negative · **T** true negative · **U** unsure · **S** skip · **Z** undo")

others = ctx["others"]
with st.expander(f"The query's other candidates ({len(others)})", expanded=False):
    if others:
        df = pd.DataFrame(others)[["rank", "band", "s_neg", "delta", "doc_id", "title", "snippet"]]
        st.dataframe(
            df,
            hide_index=True,
            width="stretch",
            column_config={
                "s_neg": st.column_config.NumberColumn(format="%.3f"),
                "delta": st.column_config.NumberColumn(format="%+.3f"),
                "snippet": st.column_config.TextColumn("text", width="large"),
            },
        )
    else:
        st.caption("No other candidates for this query.")
