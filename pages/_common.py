"""Streamlit helpers shared by the pages: the store, who is signed in and what they may do, band colours, safe text.

This is the one module of the app that knows about both Streamlit and the store. Pages stay thin: they lay out
widgets and call the library (auditor.review, auditor.bands, auditor.export, ...).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from auditor import config
from auditor.bands import BAND_COLOURS
from auditor.bands import BAND_LABELS as _BAND_LABELS
from auditor.ui_helpers import VERDICT_KEYS
from auditor.store import SharedStore

#: Colour and label of each band, used on every page (red = likely false negative).
BAND_COLORS, BAND_LABELS = BAND_COLOURS, _BAND_LABELS  # auditor.bands: the one table, shared with the report
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
    from auditor.review.refit import BackgroundRefit

    return BackgroundRefit(_shared_store(path))


def refitter():
    """The process-wide background refit of the risk model (one fit at a time, never on the annotator's clock)."""
    return _refitter(str(db_path()))


def warm_queue(model: str | None, config: str) -> None:
    """After mining or banding: the review queue's first pages, built and kept by the store's background owner
    (auditor.review.queue.warm, what `auditor mine` and `auditor band` end with); the page does not wait."""
    from auditor.review import QueueChoice
    from auditor.review.background import BackgroundWork
    from auditor.review.queue import warm

    choice = QueueChoice(model=model, config=config)
    BackgroundWork.of(store()).submit(("warm", model, config), lambda cur: warm(cur, choice))


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


# ---- caches of small look-ups that change only when data is loaded, mined or banded ----------------------------


@st.cache_data(ttl=60, show_spinner=False)
def _banded_pairs(db: str) -> list[tuple[str, str, int]]:
    from auditor.ui_helpers import banded_pairs

    return banded_pairs(cursor())


@st.cache_data(ttl=60, show_spinner=False)
def _sources(db: str) -> list[str]:
    from auditor.ui_helpers import candidate_sources

    return candidate_sources(cursor())


def banded_pairs() -> list[tuple[str, str, int]]:
    """(band config, model, candidates) of every banded configuration (cached; see store_changed)."""
    return _banded_pairs(str(db_path()))


def candidate_sources() -> list[str]:
    return _sources(str(db_path()))


def store_changed() -> None:
    """Data was loaded, mined or banded in this process: drop the cached look-ups."""
    _banded_pairs.clear()
    _sources.clear()


# ---- who is using the app --------------------------------------------------------------------------------------

COOKIE = "auditor_session"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _is_loopback(address: str | None) -> bool:
    address = (address or "").strip().strip("[]")
    return address in LOOPBACK or address.startswith("127.")


def accounts_enabled() -> bool:
    from auditor.accounts import has_accounts

    return has_accounts(cursor())


def request_host() -> str | None:
    """The host name the browser asked for (the Host header, without its port), or None outside a web request."""
    host = (st.context.headers or {}).get("Host")
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8501
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _local_only_guard() -> None:
    """Without accounts the app serves only this computer: refuse to run when bound elsewhere, reached remotely, or
    asked for under a name other than a loopback one. The last is DNS rebinding: a web page's own name, made to
    resolve to 127.0.0.1, lets that page's scripts drive this app from the user's browser; its requests carry that
    name in Host, which only a loopback name passes."""
    host = request_host()
    if host is not None and not _is_loopback(host):
        st.title("Open this app as localhost")
        st.error(md(f"This local app answers only to http://localhost or http://127.0.0.1; it was asked for as "
                         f"{host!r}, which another web site can point at this computer (DNS rebinding)."))
        st.stop()
    address = st.get_option("server.address")
    client = st.context.ip_address
    if not _is_loopback(address) or (client is not None and not _is_loopback(client)):
        st.title("This app has no accounts")
        st.error(
            "Without accounts, auditor is a local single-user tool and only answers on this computer "
            f"(127.0.0.1); this server listens on {address or 'every interface'}. Add accounts first "
            "(`auditor users add NAME --role admin --password-stdin --db FILE`), or start it with "
            "`auditor app` (which binds 127.0.0.1)."
        )
        st.stop()


def authenticate_session():
    """The signed-in account of this browser session (auditor.accounts.User), or None. Never draws anything.

    Without accounts: the local user (an admin). With accounts: the account of the session token this browser holds
    (in the session, or in its cookie after a reload), or the OIDC user's e-mail mapped to an account. The token is
    looked up in the store on every run, so a removed account or a changed role takes effect at once.
    """
    from auditor import accounts

    con = cursor()
    if not accounts.has_accounts(con):
        return accounts.local_user()
    ss = st.session_state
    token = ss.get("_token")
    if token is None and not ss.get("_signed_out"):
        token = st.context.cookies.get(COOKIE)
        token = token if isinstance(token, str) else None
    user = accounts.session_user(con, token) if token else None
    if user is not None:
        ss["_token"] = token
        return user
    ss.pop("_token", None)
    if oidc_configured() and st.user.get("is_logged_in", False):
        return accounts.user_by_email(con, st.user.get("email"))
    return None


def _cookie_script(token: str | None) -> str:
    """JavaScript that stores the session token in a cookie (or deletes it): a reload then finds the session."""
    secure = "; Secure" if str(st.context.url or "").startswith("https:") else ""
    if token:
        from auditor.accounts import SESSION_MAX_SECONDS

        value, age = token, SESSION_MAX_SECONDS
    else:
        value, age = "", 0
    return (f"<script>document.cookie = '{COOKIE}={value}; Path=/; Max-Age={age}; SameSite=Strict{secure}';"
            "</script>")


def sync_cookie() -> None:
    """Write (or clear) the session cookie when it differs from what this browser session last wrote."""
    ss = st.session_state
    token = ss.get("_token")
    if ss.get("_cookie") != token:
        st.html(_cookie_script(token), unsafe_allow_javascript=True)
        ss["_cookie"] = token


def sign_in_form() -> None:
    """The sign-in page: name and password, and the organisation's sign-in when OIDC is configured."""
    from auditor import accounts

    ss = st.session_state
    if ss.get("_signed_out"):
        sync_cookie()  # clear the cookie of the session that just ended
    _, mid, _ = st.columns([1, 2, 1])
    with mid:
        st.title("Sign in to auditor")
        st.caption("This app has accounts: sign in with the name and password your admin gave you.")
        if oidc_configured() and st.user.get("is_logged_in", False):
            st.error("No account is registered for the e-mail address you signed in with. Ask an admin to add it "
                     "(`auditor users add NAME --role annotator --email ADDRESS`).")
            st.button("Sign out", on_click=st.logout, key="oidc_out")
            return
        with st.form("sign_in"):
            name = st.text_input("Name", key="signin_name", autocomplete="username")
            password = st.text_input("Password", type="password", key="signin_password",
                                     autocomplete="current-password")
            ok = st.form_submit_button("Sign in", type="primary")
        if ok:
            con = cursor()
            try:
                user = accounts.authenticate(con, name, password)
            except accounts.AccountError as exc:
                st.error(str(exc))
                return
            if user is None:
                st.error("Wrong name or password.")
                return
            ss["_token"] = accounts.new_session(con, user.name)
            ss.pop("_signed_out", None)
            st.rerun()
        if oidc_configured():
            st.button("Sign in with your organisation's account", on_click=st.login, key="oidc_in",
                      icon=":material/login:")


def sign_out() -> None:
    """End this browser's session: its token, its held review items, its cookie (on the next run)."""
    from auditor import accounts

    ss = st.session_state
    wl = ss.get("_worklist")
    if wl is not None:
        wl.release()
    accounts.end_session(cursor(), ss.get("_token"))
    keep = {"_cookie": ss.get("_cookie")}
    for key in list(ss.keys()):
        del ss[key]
    ss.update(keep)
    ss["_signed_out"] = True
    if oidc_configured() and st.user.get("is_logged_in", False):
        st.logout()


#: The address of every page of app.py (its file name), answered with the sign-in form before sign-in.
PAGE_PATHS = ("review", "histograms", "load", "export", "team")


def gate():
    """app.py's door: the signed-in user, or (after drawing only the sign-in page, whatever the URL) a stop."""
    user = authenticate_session()
    if user is None:
        st.session_state.pop("_viewer", None)
        # Every page's address answers with the form too (Streamlit would say "Page not found" first), and the
        # visitor stays on the address asked for, which then opens after sign-in.
        st.navigation([st.Page(sign_in_form, title="Sign in", url_path="signin", default=True)]
                      + [st.Page(sign_in_form, title="Sign in", url_path=path) for path in PAGE_PATHS],
                      position="hidden").run()
        st.stop()
    if not accounts_enabled():
        _local_only_guard()
    st.session_state["_viewer"] = user
    return user


def require(action: str):
    """A page's first line: the signed-in user when allowed to ``action`` (auditor.accounts.PERMISSIONS); otherwise
    the sign-in form, or a refusal, and the page stops. Works when a page script runs on its own, too."""
    user = authenticate_session()
    if user is None:
        sign_in_form()
        st.stop()
    if not accounts_enabled():
        _local_only_guard()
    if not user.can(action):
        st.error(f"Your role ({user.role}) cannot open this page.")
        st.stop()
    if action != "review":  # left the Review page (a lead or admin lands there): give back what it held
        wl = st.session_state.pop("_worklist", None)
        if wl is not None:
            wl.release()
    st.session_state["_viewer"] = user
    return user


#: Actions inside a fragment re-check the sign-in at most this often (a removed account stops within this time).
RECHECK_S = 15.0


def still_signed_in() -> bool:
    """For actions inside a fragment (which skips app.py): is this session's account still valid?"""
    ss = st.session_state
    user = ss.get("_viewer")
    if user is None:
        return False
    if time.monotonic() - ss.get("_checked", 0.0) < RECHECK_S:
        return True
    current = authenticate_session()
    ok = current is not None and current.name == user.name
    if ok:
        ss["_checked"] = time.monotonic()
    return ok


#: The app's leases are short and the open Review page renews them every HEARTBEAT_S seconds (pages/review.py): a
#: closed tab's items are free for others within APP_LEASE_S, not the CLI's 10 minutes (auditor.review.leases.LEASE_SECONDS).
APP_LEASE_S = 120
HEARTBEAT_S = 30


def worklist(user, choice):
    """This browser session's review worklist for ``choice`` (auditor.review.worklist.Worklist); a new queue choice or
    another account gives back what the old one held. After verdicts, in the background, it refits the risk model
    and recounts the progress."""
    from auditor.ui_helpers import progress_counts
    from auditor.review.worklist import Worklist

    ss = st.session_state
    key = (user.name, choice)
    wl = ss.get("_worklist")
    if wl is None or wl.key != key:
        if wl is not None:
            wl.release()
        refit = refitter()
        name = user.name
        wl = Worklist(store().cursor, name, choice, key=key, ttl=APP_LEASE_S,
                      after_verdicts=lambda con, model: refit.notify(model),
                      progress=lambda con, model, config: progress_counts(con, model, config, name))
        ss["_worklist"] = wl
    return wl


#: The Review page's buttons that keys press: action -> (key, prefix of the button's widget key; the item's serial
#: follows it, so a key can only press the buttons of the item on screen).
REVIEW_BUTTONS = {
    **{verdict: (k, f"v_{verdict}_") for verdict, k in VERDICT_KEYS.items()},
    "skip": ("S", "v_skip_"),
    "undo": ("Z", "v_undo_"),
    "undo_empty": ("Z", "undo_empty_"),  # "Undo last verdict" when the queue is empty
}

#: Each key, then the prefixes of the button keys it presses (the first one on the page).
REVIEW_KEYS = {key: [p for k, p in REVIEW_BUTTONS.values() if k == key] for key, _ in REVIEW_BUTTONS.values()}


def review_button(action: str, serial: int) -> dict:
    """The ``key=`` and ``shortcut=`` (its hint; KEYBOARD_JS presses it) of a Review page button."""
    key, prefix = REVIEW_BUTTONS[action]
    return {"key": f"{prefix}{serial}", "shortcut": key}


#: Keys go to the app, not to a text field the annotator has finished with: Esc leaves any field, Enter leaves a
#: one-line field after submitting it (the value is sent first). A review key outside a field presses the button of
#: that key that is on the page at that moment (Streamlit's own shortcut handling could lose a key pressed while its
#: buttons re-registered). Streamlit loads a button's code lazily: after a page load (sign-in, reload, a new tab) the
#: button's box is on the page, with the item, a moment before the button inside it is drawn; a key pressed then
#: acts once that box's button is drawn (within 5 s, if the box is still there; keys pressed meanwhile and a key
#: held down do nothing more: the serial guard would drop them anyway, and they might judge in another order). The
#: buttons keep ``shortcut=`` for their key hint; the key never reaches Streamlit's handler. Installed once per tab.
KEYBOARD_JS = """<script>
if (!window.__auditorKeys) {
  window.__auditorKeys = true;
  const REVIEW_KEYS = %s;
  const isField = (t) => t && t.tagName && (t.tagName === 'TEXTAREA' || t.tagName === 'SELECT'
    || t.isContentEditable || (t.tagName === 'INPUT' && !['checkbox', 'radio', 'range', 'button', 'submit',
    'file', 'color'].includes(t.type)));
  // A table (the last-verdicts grid moves and edits cells with letters) or an open menu takes keys itself.
  const isWidget = (t) => t && t.closest && (t.getAttribute('data-testid') === 'data-grid-canvas'
    || t.closest('.stDataFrame, .dvn-scroller, [role="grid"], [role="menu"], [role="listbox"], [role="dialog"]'));
  let waiting = null;  // the box whose button a key waits for: later keys, a burst on the same item, do nothing
  const press = (name, since) => {
    const button = document.querySelector('.' + CSS.escape(name) + ' button');
    if (button) {
      waiting = null;
      if (!button.disabled) button.click();
    } else if (document.querySelector('.' + CSS.escape(name)) && performance.now() - since < 5000) {
      setTimeout(() => press(name, since), 20);
    } else {
      waiting = null;
    }
  };
  window.addEventListener('keydown', (e) => {
    const t = e.target;
    if (isField(t)) {
      if (e.key === 'Escape') { t.blur(); }
      else if (e.key === 'Enter' && t.tagName === 'INPUT' && t.getAttribute('role') !== 'combobox') {
        setTimeout(() => t.blur(), 0);
      }
      return;
    }
    if (isWidget(t)) {
      if (e.key === 'Escape') { t.blur(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || !e.key || e.key.length !== 1) return;
    const prefixes = REVIEW_KEYS[e.key.toUpperCase()];
    if (!prefixes) return;
    for (const prefix of prefixes) {
      const box = document.querySelector('[class*="st-key-' + prefix + '"]');
      if (!box) continue;
      e.preventDefault();
      e.stopImmediatePropagation();  // Streamlit's shortcut handler must not press it a second time
      const name = Array.from(box.classList).find((c) => c.startsWith('st-key-' + prefix));
      if (!e.repeat && waiting === null) { waiting = name; press(name, performance.now()); }
      return;
    }
  }, true);
  // ... and Streamlit's own shortcut handler (on the document, after the table has had the key) must not see it.
  document.body.addEventListener('keydown', (e) => { if (isWidget(e.target)) e.stopPropagation(); });
}
</script>""" % json.dumps(REVIEW_KEYS)


def keyboard_script() -> None:
    st.html(KEYBOARD_JS, unsafe_allow_javascript=True)


def double_annotation() -> float:
    """Share of review items routed to two annotators (AUDITOR_DOUBLE_ANNOTATION, set by `auditor app
    --double-annotation`), read when the page runs."""
    from auditor.config import ReviewConfig

    try:
        return float(os.environ.get("AUDITOR_DOUBLE_ANNOTATION") or ReviewConfig().double_annotation)
    except ValueError:
        return ReviewConfig().double_annotation


def _plotly_chunk() -> str | None:
    """File name of the browser code Streamlit loads for its first Plotly chart (4.7 MB), if it can be found."""
    found = sorted((Path(st.__file__).parent / "static" / "static" / "js").glob("PlotlyChart.*.js"))
    return found[0].name if found else None


def preload_charts() -> None:
    """Have the browser load and compile the Plotly code two seconds after the first page, once per session: on a
    busy machine that is most of a chart page's first render, and the lead is on another page meanwhile."""
    ss = st.session_state
    name = _plotly_chunk()
    if ss.get("_charts_preloaded") or not name:
        return
    ss["_charts_preloaded"] = True
    st.html(
        "<script>setTimeout(() => { const s = document.querySelector('script[type=\"module\"][src*=\"static/js/"
        f"index.\"]'); if (s) import(new URL('{name}', s.src).href).catch(() => {{}}); }}, 2000);</script>",
        unsafe_allow_javascript=True,
    )


def data_root() -> Path:
    """The only folder whose files the Load page may read on the server (AUDITOR_DATA_ROOT, `auditor app
    --data-root`; default: the shipped data/ folder)."""
    return Path(os.environ.get("AUDITOR_DATA_ROOT") or config.SAMPLE_DIR).expanduser().resolve()


def max_ingest_bytes() -> int:
    """Largest single file the Load page ingests from a server path (AUDITOR_MAX_INGEST_MB, default 2048)."""
    try:
        return int(float(os.environ.get("AUDITOR_MAX_INGEST_MB") or 2048) * 1_000_000)
    except ValueError:
        return 2048 * 1_000_000


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
