"""Review page: one suspected false negative at a time, one key per verdict.

The annotator holds a few items under lease (auditor.review.worklist, auditor.review.queue.claim): nobody else is given them, and
the next one is prefetched while the annotator reads. Every action carries the ids and the serial of the item on
screen; an action about an item that is no longer on screen (a key pressed before the next item was drawn) is
ignored. The item area is a fragment: a verdict reruns it alone, not the sidebar. Every text from the data is escaped
(html.escape) or shown with st.text: markup in a passage is shown, never rendered.
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from auditor import review
from auditor.review import QueueChoice, leases
from auditor.risk import describe
from auditor.store import StoreError
from auditor.ui_helpers import (
    VERDICT_LABELS, apply_history_edits, band_config_of, explain_rule, get_guidelines, highlight_html,
    query_words, recent_verdicts, safe_markdown,
)
from pages import _common as ui

ui.require_app()
user = ui.require("review")
ss = st.session_state
con = ui.cursor()

pairs = ui.banded_pairs()
if not pairs:
    ui.page_header("Review", "Suspected false negatives, one at a time.")
    ui.stop_until_loaded(
        "Nothing to review yet: this store has no banded candidates. Load a training set and mine candidates on the "
        "**Load data** page (or run `auditor mine --db FILE`)."
    )

#: Characters of a passage shown in its box (it scrolls); the whole passage is one click away.
TEXT_LIMIT = 3000
MODE_LABELS = {"export": "What the export will write", "risk": "Highest risk first",
               "stratified": "Stratified random (per band)"}

# ---- sidebar: the queue -----------------------------------------------------------------------------------------
with st.sidebar:
    st.markdown("**Queue**")
    labels = [f"{c} · {m}" for c, m, _ in pairs]
    choice = st.selectbox("Band configuration · model", labels, key="band_choice", disabled=len(pairs) == 1)
    config_name, model, _ = pairs[labels.index(choice)]
    mode = st.radio(
        "Order", list(MODE_LABELS), key="queue_mode", format_func=MODE_LABELS.get,
        help="What the export will write: the negatives the current export settings would put in the training "
        "file, most likely relevant first. Highest risk: every candidate, most likely relevant first. Stratified "
        "random: each band at random, for unbiased rates per band.",
    )
    bands = st.multiselect("Bands", list(ui.BAND_LABELS), default=list(ui.BAND_LABELS),
                           format_func=ui.BAND_LABELS.get, key="f_bands")
    source = st.selectbox("Source", ["(all)"] + ui.candidate_sources(), key="f_source")
    query_filter = st.text_input("Query id", key="f_query", placeholder="all queries").strip()

share = ui.double_annotation()
wl = ui.worklist(user, QueueChoice(
    mode=mode, model=model, config=config_name, bands=tuple(bands) or None,
    source=None if source == "(all)" else source, query_id=query_filter or None, double_annotation=share,
))


# ---- actions: each names the item it is about; anything else is a stale key press and does nothing -------------
def _verdict(verdict: str, query_id: str, doc_id: str, serial: int) -> None:
    if not wl.is_current(query_id, doc_id, serial):
        return
    if not ui.still_signed_in():
        return
    item = wl.current()
    cur = ui.cursor()
    # Only when our lease may have run out (the item sat on screen for longer than a lease) can another hold it.
    others = [] if wl.lease_live() else leases.other_holders(cur, user.name, query_id, doc_id)
    if others and not review.needs_two_annotators(query_id, doc_id, share):
        wl.finish(query_id, doc_id)  # our lease ran out while the item sat on screen, and someone else took it
        ss["last"] = f"Not saved: {query_id} / {doc_id} went to another annotator while it sat idle here."
        return
    wl.judge(item, verdict, (ss.get("note") or "").strip() or None)
    ss["note"] = ""
    ss["last"] = f"{VERDICT_LABELS[verdict]}: saved for {query_id} / {doc_id}"


def _skip(query_id: str, doc_id: str, serial: int) -> None:
    if wl.is_current(query_id, doc_id, serial) and ui.still_signed_in():
        wl.skip(wl.current())
        ss["last"] = f"Skipped {query_id} / {doc_id}: it stays out of your queue until you bring it back"


def _undo(serial: int) -> None:
    if serial != wl.serial or not ui.still_signed_in():
        return
    undone = wl.undo()
    if undone is None:
        ss["last"] = "Nothing to undo"
        return
    what = f"{VERDICT_LABELS.get(undone['verdict'], undone['verdict'])} on {undone['query_id']} / {undone['doc_id']}"
    ss["last"] = f"Undid {what}" + ("" if undone["held"] else " (another annotator holds it now)")


def _bring_back() -> None:
    if not ui.still_signed_in():
        return
    leases.clear_skips(ui.cursor(), user.name)
    wl.reset()


def _history_edit(key: str, rows: list[dict]) -> None:
    """Verdicts changed in the history table become new events (the old ones stay in the audit trail)."""
    changed = apply_history_edits(ui.cursor(), user.name, rows, (ss.get(key) or {}).get("edited_rows", {}))
    if changed:
        ss["last"] = "; ".join(f"Changed {q} / {d} to {VERDICT_LABELS[v]}" for q, d, v in changed)
    ss["hist_gen"] = ss.get("hist_gen", 0) + 1


# ---- drawing ------------------------------------------------------------------------------------------------------
st.html("""<style>
.ad-box {border: 1px solid #DDE0E8; border-radius: .5rem; padding: .45rem .7rem .55rem; background: #fff;}
.ad-query {background: #F6F7FB;}
.ad-head {display: flex; flex-wrap: wrap; gap: .35rem .5rem; align-items: baseline; font-size: .78rem;
          color: #5B6170; margin-bottom: .3rem;}
.ad-label {font-weight: 700; font-size: .9rem; color: #1F2333;}
.ad-title {font-weight: 600; font-size: .9rem; margin-bottom: .2rem;}
.ad-text {white-space: pre-wrap; font-size: .9rem; line-height: 1.45; max-height: 15.5rem; overflow-y: auto;}
.ad-query .ad-text {max-height: 4.6rem; font-size: 1rem; font-weight: 500;}
.ad-tag {border-radius: .7rem; padding: .05rem .5rem; font-size: .72rem; font-weight: 600; background: #E8EAF2;
         color: #2B3040; white-space: nowrap;}
.ad-suspicious {background: #FEE2E2; color: #991B1B;} .ad-ambiguous {background: #FEF3C7; color: #92400E;}
.ad-too_easy {background: #E5E7EB; color: #374151;} .ad-anchor {background: #DBEAFE; color: #1E40AF;}
.ad-near {background: #EDE9FE; color: #5B21B6;} .ad-empty {background: #FDE68A; color: #7C2D12;}
.ad-box mark {background: #FDE68A; color: inherit; padding: 0 .08em; border-radius: .2em;}
.ad-why ul {margin: .2rem 0 .2rem 1.1rem; padding: 0; font-size: .85rem;} .ad-why li {margin: 0;}
.ad-why p {margin: .15rem 0; font-size: .85rem;}
.ad-top {display: flex; flex-wrap: wrap; align-items: baseline; gap: .25rem 1rem;}
.ad-h {font-size: 1.35rem; font-weight: 700;} .ad-prog {margin-left: auto; color: #5B6170; font-size: .85rem;}
.ad-last {color: #166534; font-size: .85rem;}
.ad-pair {display: grid; grid-template-columns: 1fr 1fr; gap: .75rem; margin-top: .6rem;}
@media (max-width: 640px) {
  /* A phone: Streamlit stacks the columns, so the texts would push the verdict buttons below the fold. */
  .ad-pair {grid-template-columns: 1fr;}
  .st-key-verdict_bar {position: fixed; left: 0; right: 0; bottom: 0; z-index: 100; background: #fff;
    padding: .45rem .6rem; border-top: 1px solid #DDE0E8; flex-direction: row !important;}
  .st-key-verdict_bar > div {flex: 1 1 0; min-width: 0;}
  .st-key-verdict_bar button p {font-size: .8rem;}
  [data-testid='stMainBlockContainer'] {padding-bottom: 5rem;}
}
</style>""")

BAND_TAGS = {b: (f"ad-{b}", ui.BAND_LABELS[b]) for b in ui.BAND_LABELS}


def _box(kind: str, label: str, meta: str, text: str | None, words: set[str], *, title: str | None = None,
         tags: tuple[tuple[str, str], ...] = (), limit: int = TEXT_LIMIT) -> str:
    """One passage as escaped HTML: label, tags, its length, the text with the query's words marked."""
    text = text or ""
    n = len(text)
    tags_html = "".join(f'<span class="ad-tag {cls}">{html.escape(t)}</span>' for cls, t in tags)
    if not text.strip():
        tags_html += '<span class="ad-tag ad-empty">Empty text</span>'
    length = f"{n:,} characters" + (f", first {limit:,} shown" if n > limit else "")
    title_html = f'<div class="ad-title">{highlight_html(title, words)}</div>' if title else ""
    return (f'<div class="ad-box ad-{kind}" data-box="{kind}"><div class="ad-head"><span class="ad-label">{label}'
            f'</span>{tags_html}<span>{html.escape(meta)} · {length}</span></div>{title_html}'
            f'<div class="ad-text">{highlight_html(text, words, limit)}</div></div>')


def _whole(text: str | None, what: str, key: str) -> None:
    """The whole of a passage longer than its box shows, rendered only when opened."""
    if text and len(text) > TEXT_LIMIT:
        with st.expander(f"The whole {what} ({len(text):,} characters)", key=key, on_change="rerun") as box:
            if box.open:
                with st.container(height=400):
                    st.text(text)


def _pick_positive(ctx: dict, cand: dict, cfg) -> tuple[int, int | None, int | None]:
    """(index shown by default, index of the anchor, index of the positive nearest to the candidate). By default the
    positive most similar to the query (for a near-duplicate, the one the candidate resembles)."""
    positives, marks = ctx["positives"], ctx.get("marks") or {}
    scored = [(i, marks[p["doc_id"]]) for i, p in enumerate(positives) if p["doc_id"] in marks]
    if not scored:
        return 0, None, None
    anchor = min(scored, key=lambda t: t[1]["s_pos"])[0]
    nearest = max(scored, key=lambda t: t[1]["sim"])[0]
    clearest = max(scored, key=lambda t: t[1]["s_pos"])[0]  # the best example of what this query wants
    return (nearest if cand.get("rule") == "near_duplicate" else clearest), anchor, nearest


@st.fragment
def item_area() -> None:
    try:
        item = wl.current()
    except (StoreError, ValueError) as exc:
        st.error(str(exc))
        return
    serial = wl.serial
    last = f'<span class="ad-last">{html.escape(ss["last"])}</span>' if ss.get("last") else ""
    st.html(f'<div class="ad-top"><span class="ad-h">Is the candidate relevant to the query?</span>{last}'
            f'<span class="ad-prog">{html.escape(_progress())}</span>'
            "</div>")

    if item is None:
        n_skipped = len(leases.skipped(con, user.name))
        st.success("Nothing left for you in this queue." + (f" You skipped {n_skipped} item(s)." if n_skipped else ""))
        c1, c2 = st.columns(2)
        c1.button("Undo last verdict", icon=":material/undo:", on_click=_undo, args=(serial,),
                  **ui.review_button("undo_empty", serial))
        if n_skipped:
            c2.button("Bring skipped items back", icon=":material/replay:", on_click=_bring_back, key="bring_back")
        return

    ctx = wl.context(item)
    cand = ctx["candidate"]
    cfg = band_config_of(con, item.get("config") or config_name)
    words = query_words(ctx["query"])
    q, d = item["query_id"], item["doc_id"]
    # In the query, mark the words the candidate shares with it; in the passages, the words they share with the query.
    in_candidate = words & query_words(f"{cand.get('title') or ''} {cand['text'] or ''}")
    positives = ctx["positives"]
    default, anchor, nearest = _pick_positive(ctx, cand, cfg)
    shown = ss.get(f"pos_{serial}", default)
    if not 0 <= shown < len(positives):  # widget state from another item: never index past this item's positives
        shown = default

    left, right = st.columns([10, 3], gap="small")
    with left:
        if positives:
            pos = positives[shown]
            marks = (ctx.get("marks") or {}).get(pos["doc_id"])
            tags = []
            if shown == anchor:
                tags.append(("ad-anchor", "anchor: compared with"))
            if shown == nearest and marks:
                near = cfg.near_duplicate is not None and marks["sim"] >= cfg.near_duplicate
                tags.append(("ad-near", f"{'near-duplicate' if near else 'nearest'} · similarity {marks['sim']:.2f}"))
            if marks and len(positives) > 1 and marks["s_pos"] >= max(
                    m["s_pos"] for m in (ctx.get("marks") or {}).values()):
                tags.append(("ad-anchor", f"closest to the query · {marks['s_pos']:.2f}"))
            grade = f" · grade {pos['grade']}" if pos.get("grade") is not None else ""
            label = f"Labeled positive {shown + 1} of {len(positives)}" if len(positives) > 1 else "Labeled positive"
            pos_html = _box("positive", label, f"doc {pos['doc_id']}{grade}", pos["text"], words,
                            title=pos.get("title"), tags=tuple(tags))
        else:
            pos = None
            pos_html = ('<div class="ad-box ad-positive" data-box="positive"><div class="ad-head"><span '
                        'class="ad-label">No labeled positive</span></div><div class="ad-text">This query has no '
                        "labeled positive: judge the candidate against the query alone.</div></div>")
        band = cand.get("band")
        cand_html = _box("candidate", "Candidate", f"doc {d} · found by {', '.join(cand['sources']) or 'n/a'}",
                         cand["text"], words, title=cand.get("title"),
                         tags=(BAND_TAGS[band],) if band in BAND_TAGS else ())
        # data-item: which item these texts are (with the serial its buttons carry): the browser test logs an item
        # as on screen once its texts and its verdict buttons are both drawn (a run cut short draws only some).
        st.html(f'<span data-item="{html.escape(q)}/{html.escape(d)}#{serial}" hidden></span>'
                + _box("query", "Query", f"query {q}", ctx["query"], in_candidate, limit=600)
                + f'<div class="ad-pair">{pos_html}{cand_html}</div>')
        if len(positives) > 1:
            def fmt(i: int) -> str:
                extra = " · anchor" if i == anchor else ""
                extra += " · nearest" if i == nearest else ""
                return f"{i + 1}{extra}"

            st.radio("Show positive", range(len(positives)), index=default, format_func=fmt, horizontal=True,
                     key=f"pos_{serial}",
                     help="anchor: the positive the margin rules compare with (the lowest score to the query); "
                          "nearest: the positive most similar to the candidate")
        _whole(pos["text"] if pos else None, "positive", f"whole_pos_{serial}")
        _whole(cand["text"], "candidate", f"whole_cand_{serial}")
        _others(ctx)
    with right:
        with st.container(key="verdict_bar", gap="small"):  # on a phone: pinned to the bottom of the screen (CSS)
            for verdict, kind in (("false_negative", "primary"), ("true_negative", "secondary"),
                                  ("unsure", "secondary")):
                st.button(VERDICT_LABELS[verdict], **ui.review_button(verdict, serial), type=kind,
                          on_click=_verdict, args=(verdict, q, d, serial), width="stretch")
        b1, b2 = st.columns(2)
        b1.button("Skip", **ui.review_button("skip", serial), on_click=_skip, args=(q, d, serial),
                  width="stretch", help="set it aside: it leaves your queue until you bring it back")
        b2.button("Undo", **ui.review_button("undo", serial), on_click=_undo, args=(serial,), width="stretch",
                  help="take back your last verdict")
        st.text_input("Note (optional)", key="note", placeholder="Note (optional)", label_visibility="collapsed",
                      help="saved with your next verdict; Esc or Enter leaves the field so keys judge again")
        # Last on the screen: the marker says the item and its buttons' boxes are drawn (tests, benchmark); a key
        # acts from then on, once Streamlit has the button code (after a page load it may still be loading it).
        st.html(_why(ctx, cand, cfg) + f'<span data-review-item="{html.escape(q)}/{html.escape(d)}#{serial}"></span>')
    wl.prefetch()  # the next items' leases and contexts, in the background, while the annotator reads this one


def _progress() -> str:
    p = wl.progress
    if p is None:  # first view: counted now; after verdicts the worklist recounts in the background
        from auditor.ui_helpers import progress_counts

        p = wl.progress = progress_counts(con, model, config_name, user.name)
    if wl.left is None:
        wl.count_left(ui.cursor())
    # Not "N of every candidate": the queue asks about a small part of them (what would change the export), so that
    # denominator only discourages. What is left in this queue; this session, this annotator, the team.
    from auditor.review.worklist import LEFT_CAP

    left = f"over {LEFT_CAP:,}" if wl.left > LEFT_CAP else f"{wl.left:,}"
    return (f"{left} left in this queue · this session: {wl.judged_here:,} judged · you: {p['mine']:,} in all · "
            f"team: {p['done']:,} items judged")


def _why(ctx: dict, cand: dict, cfg) -> str:
    risk = ctx.get("risk") or {}
    parts = ['<div class="ad-why"><p><b>Why you are asked about this passage</b></p>']
    if risk.get("p_fn") is not None and risk.get("origin") != "prior":
        parts.append(f"<p>Estimated chance it is relevant: <b>{html.escape(describe(risk['p_fn']))}</b></p>")
    elif risk.get("p_fn") is not None:  # before verdicts calibrate it, the risk is a ranking, not a probability
        parts.append("<p>Chance it is relevant: not estimated yet (the team's first verdicts calibrate it)</p>")
    drivers = list(risk.get("drivers") or [])
    rule = cand.get("rule")
    if rule:
        drivers.append(explain_rule(rule, cand, cfg))
    if drivers:
        parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in drivers) + "</ul>")
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    parts.append(f"<p style='color:#5B6170'>similarity to the query {fmt(cand.get('s_neg'), '.3f')} (positive "
                 f"{fmt(cand.get('s_pos_min'), '.3f')}) · rank {cand.get('rank') or '> depth'}</p></div>")
    return "".join(parts)


def _others(ctx: dict) -> None:
    """The query's other candidates, drawn only when opened."""
    others = ctx["others"]
    with st.expander(f"The query's other candidates ({len(others)})", key="exp_others", on_change="rerun") as box:
        if box.open and others:
            df = pd.DataFrame(review.others_with_texts(ui.cursor(), ctx))
            df["band"] = df["band"].map(lambda b: ui.BAND_LABELS.get(b, b))
            st.dataframe(df[["rank", "band", "s_neg", "delta", "doc_id", "title", "snippet"]], hide_index=True,
                         width="stretch", column_config={
                             "s_neg": st.column_config.NumberColumn(format="%.3f"),
                             "delta": st.column_config.NumberColumn(format="%+.3f"),
                             "snippet": st.column_config.TextColumn("text", width="large")})


def _below() -> None:
    """Guidelines and the annotator's last verdicts: drawn only when opened (outside the item's fragment)."""
    with st.expander("Guidelines", icon=":material/menu_book:", key="exp_guidelines", on_change="rerun") as box:
        if box.open:
            text = get_guidelines(con)
            if text.strip():
                st.markdown(safe_markdown(text))
            else:
                st.caption("No guidelines yet: a lead sets them on the Team page.")
    with st.expander("Your last 20 verdicts (change one here)", icon=":material/history:", key="exp_history",
                     on_change="rerun") as box:
        if box.open:
            rows = recent_verdicts(con, user.name, 20)
            if not rows:
                st.caption("No verdicts yet.")
            else:
                key = f"hist_{ss.get('hist_gen', 0)}"
                df = pd.DataFrame([{**r, "verdict": VERDICT_LABELS.get(r["verdict"], r["verdict"])} for r in rows])
                st.data_editor(
                    df[["when", "query_id", "doc_id", "verdict", "note"]], key=key, hide_index=True,
                    width="stretch", disabled=["when", "query_id", "doc_id", "note"],
                    column_config={"verdict": st.column_config.SelectboxColumn(
                        "verdict", options=list(VERDICT_LABELS.values()), required=True)},
                    on_change=_history_edit, args=(key, rows),
                )


@st.fragment(run_every=ui.HEARTBEAT_S)
def _heartbeat() -> None:
    """While this tab is open, keep its items held (short leases: a closed tab's items are soon free again)."""
    try:
        wl.heartbeat()
    except Exception:  # noqa: BLE001 - a missed beat only shortens the lease; the next one or a verdict renews it
        pass


item_area()
_below()
_heartbeat()
