"""Streamlit helpers shared by the pages: the store, the annotator's identity, band colours, safe text.

This is the one module of the app that knows about both Streamlit and the store. Pages stay thin: they lay out
widgets and call the library (auditor.review, auditor.bands, auditor.export, ...).
"""

from __future__ import annotations

import hmac
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from auditor import config
from auditor.store import SharedStore

#: Colour and label of each band, used on every page (red = likely false negative).
BAND_COLORS = {"suspicious": "#DC2626", "ambiguous": "#D97706", "too_easy": "#64748B"}
BAND_LABELS = {"suspicious": "Suspicious", "ambiguous": "Ambiguous", "too_easy": "Too easy"}
BAND_BADGE = {"suspicious": "red", "ambiguous": "orange", "too_easy": "gray"}
BAND_HELP = {
    "suspicious": "likely false negative: scores close to (or above) the labeled positive",
    "ambiguous": "the informative middle (SimANS): the negatives training should prefer",
    "too_easy": "far below the positive: little training signal",
}

_build_lock = threading.Lock()


def require_app() -> None:
    """Make sure a page runs inside app.py's navigation.

    Streamlit treats a folder named ``pages/`` next to the entry script as an old-style multipage app until the entry
    script has called ``st.navigation`` once in this process; a first request for ``/histograms`` would then run the
    page script alone. Switch to app.py's navigation and run again (same URL, same page).
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - newer Streamlit without the old mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        # Only a fresh browser session can be in this state on a real server (the flag is process-wide and app.py
        # clears it); rerunning a session that carries widget events would drop them (AppTest resets the flag on
        # every run, and the page renders fine standalone there).
        if not st.session_state:
            st.rerun()


def db_path() -> Path:
    """The store this app serves: AUDITOR_DB (set by `auditor app --db FILE`), else the sample store."""
    return Path(os.environ.get("AUDITOR_DB") or config.DEFAULT_APP_DB).expanduser().resolve()


@st.cache_resource(show_spinner=False)
def _shared_store(path: str) -> SharedStore:
    return SharedStore(path)


def store() -> SharedStore:
    """The process-wide store (one DuckDB connection, opened once per process)."""
    return _shared_store(str(db_path()))


@st.cache_resource(show_spinner=False)
def _refitter(path: str):
    from auditor.risk import BackgroundRefit

    return BackgroundRefit(_shared_store(path).cursor)


def refitter():
    """The process-wide background refit of the risk model (one fit at a time, never on the annotator's clock)."""
    return _refitter(str(db_path()))


def cursor():
    """This script run's DuckDB cursor (a cursor per thread, as DuckDB wants)."""
    return store().cursor()


def ensure_store() -> None:
    """Build the sample store with a progress bar when the configured store does not exist yet (first start)."""
    path = db_path()
    if path.exists():
        return
    from auditor.sample import build_sample_store, describe_progress

    st.title("Setting up auditor")
    st.write(
        f"No store at `{path}` yet: building one from the shipped sample (the Cranfield collection), "
        "mining candidates with the default model and banding them. This happens once."
    )
    bar = st.progress(0.0, text="Starting…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=describe_progress(done, total))

    with _build_lock:
        if not path.exists():  # another session may have built it while we waited
            build_sample_store(path, progress=progress)
    bar.progress(1.0, text="Ready")
    st.rerun()


def _secret(section: str, key: str | None = None):
    """A value from secrets.toml, or None when there is no secrets file or no such entry."""
    try:
        if section not in st.secrets:
            return None
        value = st.secrets[section]
        return value if key is None else value.get(key)
    except Exception:  # no secrets file at all
        return None


def oidc_configured() -> bool:
    return bool(_secret("auth"))


def annotator() -> str:
    """Who is reviewing: the OIDC user when [auth] is configured, else a name asked once per browser session.

    Stops the script (after drawing the sign-in form) until the annotator is known.
    """
    if oidc_configured():
        if not st.user.get("is_logged_in", False):
            st.title("Sign in to review")
            st.button("Sign in", type="primary", on_click=st.login)
            st.stop()
        return str(st.user.get("email") or st.user.get("name") or st.user.get("sub"))
    name = st.session_state.get("annotator")
    if name:
        return name
    password = _secret("auditor", "password")
    _, mid, _ = st.columns([1, 2, 1])
    with mid:
        st.title("Who is reviewing?")
        st.caption("Your name is stored with every verdict you give, so the history shows who said what.")
        with st.form("who"):
            typed = st.text_input("Your name", key="annotator_input", placeholder="e.g. ada")
            given = st.text_input("Team password", type="password", key="password_input") if password else None
            ok = st.form_submit_button("Start reviewing", type="primary")
        if ok:
            if not typed.strip():
                st.error("Enter a name: it is stored with each verdict.")
            elif password and not hmac.compare_digest(str(given or ""), str(password)):
                st.error("Wrong password.")
            else:
                st.session_state["annotator"] = typed.strip()
                st.rerun()
    st.stop()


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:&])")


def md(text: object) -> str:
    """Data text (an id, a name, a source) made safe to put inside Markdown: every special character escaped."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def band_badge(band: str | None) -> str:
    """Markdown badge of a band (our own label, never data text)."""
    if not band:
        return ":gray-badge[not banded]"
    return f":{BAND_BADGE.get(band, 'gray')}-badge[{BAND_LABELS.get(band, band)}]"


def plain(label: str, text: str | None, *, title: str | None = None, height: int | None = None) -> None:
    """Show data text as plain text in a bordered box: HTML or Markdown inside it never renders."""
    with st.container(border=True, height=height or "content"):
        st.caption(md(label))
        if title:
            st.text(title)
        st.text(text if text is not None else "")


def progress_callback(bar) -> Callable[[int, int], None]:
    """An auditor progress(done, total) callback that drives an st.progress bar."""

    def update(done: int, total: int) -> None:
        frac = min(1.0, done / total) if total else 0.0
        bar.progress(frac, text=f"{done:,} / {total:,}" if total else "working…")

    return update


def page_header(title: str, caption: str) -> None:
    st.title(title)
    st.caption(caption)


def stop_until_loaded(message: str) -> None:
    """Say what is missing, point to the Load page, and end this page's run."""
    st.info(message)
    st.page_link("pages/load.py", label="Go to Load data", icon=":material/upload_file:")
    st.stop()
