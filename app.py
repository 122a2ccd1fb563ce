"""auditor's web app: review suspected false negatives, tune bands, load data, export.

Start it with `auditor app [--db FILE]` (or `AUDITOR_DB=FILE streamlit run app.py`). The store is opened once per
process and shared by every browser session; the first start without a store builds one from the shipped sample.

Once the store has an account (`auditor users add`), every page asks to sign in and shows only what the account's
role allows (annotator: Review; lead: also Histograms & bands, Export, Team; admin: also Load data). Without
accounts the app is a local single-user tool that only answers on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in sys.path:  # so that `pages._common` imports however the app was started (streamlit, AppTest)
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from pages import _common  # noqa: E402

st.set_page_config(page_title="auditor", page_icon=":material/fact_check:", layout="wide")

# Less empty space around the page than Streamlit's default: the review screen must fit 1366x768.
st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 1.5rem; padding-left: 2rem; padding-right: 2rem;}"
        "</style>")

_common.ensure_store()  # first start without a store: build the sample, with a progress bar
user = _common.gate()  # with accounts and nobody signed in: only the sign-in page, whatever the URL; then stop

pages = [st.Page("pages/review.py", title="Review", icon=":material/rule:", default=True)]
if user.can("tune"):
    pages.append(st.Page("pages/histograms.py", title="Histograms & bands", icon=":material/bar_chart:"))
if user.can("load"):
    pages.append(st.Page("pages/load.py", title="Load data", icon=":material/upload_file:"))
if user.can("export"):
    pages.append(st.Page("pages/export.py", title="Export", icon=":material/download:"))
if user.can("guidelines"):
    pages.append(st.Page("pages/team.py", title="Team", icon=":material/group:"))
nav = st.navigation(pages)

with st.sidebar:
    if _common.accounts_enabled():
        st.caption("Signed in as")
        st.text(f"{user.name} ({user.role})")
        st.button("Sign out", icon=":material/logout:", type="tertiary", on_click=_common.sign_out, key="sign_out")
    else:
        st.caption("Local single-user mode: only this computer (127.0.0.1) can open the app. To work as a team, "
                   "add accounts with `auditor users add`.")
    st.caption(f"Store: {_common.md(_common.db_path().name)}")
    _common.sync_cookie()
    _common.keyboard_script()
    if user.can("tune"):
        _common.preload_charts()  # the first chart of the Histograms page comes up without the wait

nav.run()
