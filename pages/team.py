"""Team page (leads and admins): the review guidelines, who is working on what, and (admins) the accounts.

Accounts can be managed here while the app runs (the command line cannot open a store the app holds).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from auditor import accounts
from auditor.review import leases
from auditor.ui_helpers import VERDICT_LABELS, get_guidelines, recent_verdicts, safe_markdown, set_guidelines
from pages import _common as ui

ui.require_app()
user = ui.require("guidelines")
ss = st.session_state
con = ui.cursor()

ui.page_header("Team", "Guidelines for the annotators, who holds which items, and the accounts.")

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Review guidelines")
    st.caption("Markdown, shown to every annotator in the Guidelines panel of the Review page. Images are not shown.")
    up = st.file_uploader("Load a Markdown file", type=["md", "markdown", "txt"], key="g_upload")
    if up is not None and ss.get("g_loaded") != up.file_id:
        ss["g_text"] = up.getvalue().decode("utf-8", errors="replace")[:200_000]
        ss["g_loaded"] = up.file_id
    if "g_text" not in ss:
        ss["g_text"] = get_guidelines(con)
    st.text_area("Guidelines", key="g_text", height=260, label_visibility="collapsed")
    if st.button("Save guidelines", type="primary", key="g_save", icon=":material/save:"):
        set_guidelines(con, ss["g_text"])
        st.success("Saved: annotators see these guidelines now.")
    with st.expander("Preview", expanded=False):
        st.markdown(safe_markdown(ss["g_text"]))

with right:
    st.subheader("Who is working")
    held = leases.leases_overview(con)
    if held:
        st.dataframe(pd.DataFrame(held).rename(columns={"held": "items held", "expires_in_s": "lease ends in (s)"}),
                     hide_index=True, width="stretch")
        st.caption("Items held now (a closed tab's items come free when their lease ends)")
        st.dataframe(pd.DataFrame(leases.leases_now(con)).rename(columns={"expires_in_s": "lease ends in (s)"}),
                     hide_index=True, width="stretch", key="t_held")
    else:
        st.caption("Nobody holds review items right now.")
    today = con.execute(
        "SELECT annotator, count(*) AS verdicts FROM current_verdicts "
        "WHERE created_at >= current_date GROUP BY 1 ORDER BY 2 DESC").df()
    if len(today):
        st.caption("Verdicts today")
        st.dataframe(today, hide_index=True, width="stretch")
    latest = recent_verdicts(con, None, 50)
    if latest:
        st.caption("The team's latest verdicts")
        frame = pd.DataFrame(latest)
        frame["verdict"] = frame["verdict"].map(lambda v: VERDICT_LABELS.get(v, v))
        st.dataframe(frame[["when", "annotator", "query_id", "doc_id", "verdict", "note"]], hide_index=True,
                     width="stretch", key="t_latest")

if user.can("accounts") and ui.accounts_enabled():
    st.divider()
    st.subheader("Accounts")
    st.dataframe(pd.DataFrame(accounts.list_users(con)).drop(columns=["created_at"]), hide_index=True,
                 width="stretch", column_config={"password": st.column_config.CheckboxColumn("password")})
    c1, c2 = st.columns(2, gap="large")
    with c1, st.form("add_account", clear_on_submit=True):
        st.markdown("**Add or change an account**")
        name = st.text_input("Name", key="acc_name")
        role = st.selectbox("Role", accounts.ROLES, key="acc_role")
        password = st.text_input("Password (at least 8 characters)", type="password", key="acc_password")
        email = st.text_input("E-mail for OIDC sign-in (optional)", key="acc_email")
        replace = st.checkbox("Change the account if it exists", key="acc_replace")
        if st.form_submit_button("Save account", type="primary"):
            try:
                accounts.add_user(con, name, role, password=password or None, email=email.strip() or None,
                                  replace=replace)
            except accounts.AccountError as exc:
                st.error(str(exc))
            else:
                st.success(ui.md(f"Saved account {name.strip()} ({role})."))
    with c2, st.form("remove_account"):
        st.markdown("**Remove an account** (its verdicts stay)")
        names = [u["name"] for u in accounts.list_users(con) if u["name"] != user.name]
        gone = st.selectbox("Account", names, key="acc_remove", index=None, placeholder="choose")
        if st.form_submit_button("Remove", disabled=not names) and gone:
            accounts.remove_user(con, gone)
            st.rerun()
