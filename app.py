"""auditor's web app: review suspected false negatives, tune bands, load data, export.

Start it with `auditor app [--db FILE]` (or `AUDITOR_DB=FILE streamlit run app.py`). The store is opened once per
process and shared by every browser session; the first start without a store builds one from the shipped sample.
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

# Less empty space above the page title than Streamlit's default.
st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 2.5rem;}</style>")

nav = st.navigation(
    [
        st.Page("pages/review.py", title="Review", icon=":material/rule:", default=True),
        st.Page("pages/histograms.py", title="Histograms & bands", icon=":material/bar_chart:"),
        st.Page("pages/load.py", title="Load data", icon=":material/upload_file:"),
        st.Page("pages/export.py", title="Export", icon=":material/download:"),
    ]
)

_common.ensure_store()  # first start without a store: build the sample, with a progress bar

with st.sidebar:
    st.caption(f"Store: `{_common.db_path().name}`")

nav.run()
