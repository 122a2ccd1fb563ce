"""Every page of the app rendered headless (Streamlit AppTest) against real store files: sign-in and roles, the review
screen, histograms, load, export, team.

Most tests use the hand-built store (fast, known queue order); some run on the mined Cranfield sample.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from conftest import CRANFIELD, HANDBUILT_RISK_ORDER, copy_store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 60
PASSWORD = "correct-horse-battery"
PAGES = ("pages/review.py", "pages/histograms.py", "pages/load.py", "pages/export.py", "pages/team.py")


def _add_users(db: Path, **roles: str) -> None:
    from auditor import accounts
    from auditor.store import open_store

    con = open_store(db)
    try:
        for name, role in roles.items():
            accounts.add_user(con, name, role, password=PASSWORD)
    finally:
        con.close()


def _app(monkeypatch, db: Path, *, user: str | None = "ada", page: str | None = None, mode: str | None = "risk",
         sign_in: bool = False) -> AppTest:
    """The app on ``db``; without accounts the local user is ``user``; with ``sign_in`` it signs in as ``user``."""
    monkeypatch.setenv("AUDITOR_DB", str(db))
    monkeypatch.setenv("AUDITOR_USER", user or "local")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if mode:
        at.session_state["queue_mode"] = mode  # the hand-built store has no risk rows: band-and-delta order
    at.run()
    if sign_in:
        _sign_in(at, user)
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _sign_in(at: AppTest, name: str, password: str = PASSWORD) -> AppTest:
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_password").input(password)
    at.button[0].click().run()
    return at


def _events(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db))
    try:
        return con.execute(
            "SELECT query_id, doc_id, verdict, annotator, note, band, queue_mode, sampling_prob, undoes "
            "FROM verdicts ORDER BY event_id"
        ).fetchall()
    finally:
        con.close()


def _wl(at: AppTest):
    return at.session_state["_worklist"]


def _current(at: AppTest) -> tuple[str, str]:
    return _wl(at).current_key()


def _press(at: AppTest, action: str) -> AppTest:
    """Click a verdict button of the item on screen (keys carry the item's serial)."""
    at.button(key=f"v_{action}_{_wl(at).serial}").click().run()
    assert not at.exception, at.exception
    return at


def _html(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def _box(at: AppTest, kind: str) -> str:
    return next(h.proto.body for h in at.get("html") if f'data-box="{kind}"' in h.proto.body)


def _pages(at: AppTest) -> set[str]:
    """The pages this session may open: those app.py put into its navigation (AppTest cannot switch to others)."""
    allowed = set()
    for page in PAGES:
        try:
            at.switch_page(page)
        except ValueError:  # "Could not find a navigation page": not in this session's navigation
            continue
        allowed.add(Path(page).name)
    if allowed:
        at.switch_page("pages/review.py")
    return allowed


# ---- sign-in and roles -------------------------------------------------------------------------------------------


def test_without_accounts_the_local_user_reviews_and_sees_every_page(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, user="grace")
    assert _pages(at) == {Path(p).name for p in PAGES}
    assert any("Local single-user mode" in c.value for c in at.caption)
    _press(at, "false_negative")
    assert _events(handbuilt_store_path)[0][3] == "grace"  # the verdict carries the local identity


def test_an_anonymous_visitor_sees_only_the_sign_in_form(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, ada="admin")
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["annotator"] = "ada"  # a typed name (the old way) opens nothing
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Sign in to auditor"]
    assert {b.label for b in at.button} == {"Sign in"}
    assert not at.metric and not at.slider and not at.get("file_uploader") and not at.get("plotly_chart")
    assert "data-review-item" not in _html(at)
    assert _pages(at) == set()  # no page of the app is in the navigation, whatever the URL asks for
    assert _events(handbuilt_store_path) == []


def test_wrong_password_is_refused_and_right_one_signs_in(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, ada="annotator")
    at = _app(monkeypatch, handbuilt_store_path, user="ada")
    _sign_in(at, "ada", "not-the-password")
    assert "Wrong name or password" in at.error[0].value
    assert "_worklist" not in at.session_state
    _sign_in(at, "ada")
    assert not at.exception and _current(at) == HANDBUILT_RISK_ORDER[0]
    assert "ada (annotator)" in [t.value for t in at.text]


@pytest.mark.parametrize("role,pages", [
    ("annotator", {"review.py"}),
    ("lead", {"review.py", "histograms.py", "export.py", "team.py"}),
    ("admin", {"review.py", "histograms.py", "load.py", "export.py", "team.py"}),
])
def test_each_role_gets_its_pages_and_no_other(monkeypatch, handbuilt_store_path, role, pages):
    _add_users(handbuilt_store_path, **{"someone": role})
    at = _app(monkeypatch, handbuilt_store_path, user="someone", sign_in=True)
    assert _pages(at) == pages
    titles = {"histograms.py": "Histograms & bands", "load.py": "Load data", "export.py": "Export", "team.py": "Team"}
    for page in pages - {"review.py"}:
        at.switch_page(f"pages/{page}").run()
        assert not at.exception and [t.value for t in at.title] == [titles[page]]


def test_a_page_run_on_its_own_still_checks_the_role(monkeypatch, handbuilt_store_path):
    """pages/*.py guard themselves too (a page script run outside app.py's navigation)."""
    _add_users(handbuilt_store_path, ada="annotator")
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    at = AppTest.from_file(str(Path(APP).parent / "pages" / "load.py"), default_timeout=TIMEOUT).run()
    assert [t.value for t in at.title] == ["Sign in to auditor"] and not at.get("file_uploader")
    _sign_in(at, "ada")
    assert any("cannot open this page" in e.value for e in at.error)
    assert not at.get("file_uploader")


def test_verdicts_carry_the_signed_in_identity_and_sign_out_ends_the_session(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, ada="annotator", bob="annotator")
    at = _app(monkeypatch, handbuilt_store_path, user="ada", sign_in=True)
    at.session_state["annotator"] = "bob"  # whatever the client puts in its session, the account decides
    _press(at, "true_negative")
    assert _events(handbuilt_store_path)[0][3] == "ada"
    # AppTest runs app.py (and its sidebar) only in a session's first run: sign out from a fresh sign-in
    at = _app(monkeypatch, handbuilt_store_path, user="ada", sign_in=True)
    at.button(key="sign_out").click().run()
    assert [t.value for t in at.title] == ["Sign in to auditor"]
    con = duckdb.connect(str(handbuilt_store_path))
    sessions, leases = con.execute("SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM leases)").fetchone()
    con.close()
    assert sessions == 1  # this browser's session is gone; the first one (another browser) is not
    assert leases == 0  # ada's held items are free again


def test_oidc_sign_in_maps_the_email_to_an_account(monkeypatch, handbuilt_store_path):
    from auditor import accounts
    from auditor.store import open_store

    con = open_store(handbuilt_store_path)
    accounts.add_user(con, "lee", "lead", email="lee@example.com")
    con.close()
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    secrets = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
               "client_id": "auditor", "client_secret": "y",
               "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = secrets
    at.user = {"is_logged_in": False}
    at.run()
    assert "Sign in with your organisation's account" in [b.label for b in at.button]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = secrets
    at.user = {"is_logged_in": True, "email": "Lee@example.com"}
    at.session_state["queue_mode"] = "risk"
    at.run()
    assert not at.exception and _pages(at) == {"review.py", "histograms.py", "export.py", "team.py"}
    at.run()
    assert _current(at) == HANDBUILT_RISK_ORDER[0]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = secrets
    at.user = {"is_logged_in": True, "email": "stranger@example.com"}
    at.run()
    assert "No account is registered" in at.error[0].value and _pages(at) == set()


# ---- the review screen -------------------------------------------------------------------------------------------


def test_review_shows_query_positive_candidate_and_why(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    assert _current(at) == HANDBUILT_RISK_ORDER[0]  # ("q1", "n1"): suspicious by inversion
    assert "question q1?" in _box(at, "query")
    assert "text of p1 &lt;b&gt;x&lt;/b&gt;" in _box(at, "positive")  # the positive, its HTML escaped
    cand = _box(at, "candidate")
    assert "text of n1 &lt;b&gt;x&lt;/b&gt;" in cand and "Suspicious" in cand and "<b>x</b>" not in cand
    why = _html(at)
    assert "Why you are asked about this passage" in why
    assert "at or above the labeled positive (0.80): an inversion" in why
    assert "Estimated chance" not in why  # this store has no risk at all
    labels = {b.label: b.proto.shortcut.upper() for b in at.button if b.proto.shortcut}
    assert labels == {"Relevant — a false negative": "F", "Not relevant": "T", "Unsure": "U", "Skip": "S",
                      "Undo": "Z"}
    # what is left in this queue, not "N of <every candidate>"; this session's figures, the annotator's, the team's
    assert "10 left in this queue · this session: 0 judged · you: 0 in all · team: 0 items judged" in why
    _press(at, "true_negative")
    assert "9 left in this queue · this session: 1 judged · you: 1 in all · team: 1 items judged" in _html(at)


def test_the_other_candidates_are_listed_with_their_texts_when_opened(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    at.text_input(key="f_query").input("q3").run()
    assert _current(at) == ("q3", "n8")
    (box,) = [e for e in at.expander if e.label.startswith("The query's other candidates")]
    assert box.label.endswith("(2)") and not at.dataframe  # closed: the siblings' texts are not read
    at.session_state["exp_others"] = True
    at.run()
    (df,) = [d.value for d in at.dataframe]
    assert list(df["doc_id"]) == ["n9", "n1"] and df["snippet"].str.startswith("text of n").all()


def test_verdicts_land_in_store_undo_takes_back_and_note_is_kept(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    at.text_input(key="note").input("same topic as the positive").run()
    _press(at, "false_negative")
    assert _current(at) == HANDBUILT_RISK_ORDER[1]
    _press(at, "true_negative")
    assert _current(at) == HANDBUILT_RISK_ORDER[2]
    assert _events(handbuilt_store_path) == [
        ("q1", "n1", "false_negative", "ada", "same topic as the positive", "suspicious", "risk", None, None),
        ("q2", "n5", "true_negative", "ada", None, "suspicious", "risk", None, None),
    ]
    _press(at, "undo")
    events = _events(handbuilt_store_path)
    assert len(events) == 3 and events[2][2] == "undo" and events[2][:2] == ("q2", "n5")
    assert _current(at) == HANDBUILT_RISK_ORDER[1]  # the undone item comes back, on screen
    _press(at, "unsure")  # judged again: recorded with the queue mode it was claimed in
    assert _events(handbuilt_store_path)[3][:3] + (_events(handbuilt_store_path)[3][6],) == (
        "q2", "n5", "unsure", "risk")


def test_an_action_naming_another_item_or_an_old_screen_does_nothing(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    wl = _wl(at)
    serial = wl.serial
    (q, d) = wl.current_key()
    nxt = wl.items[1]
    assert not wl.is_current(nxt["query_id"], nxt["doc_id"], serial)  # another item than the one on screen
    assert wl.is_current(q, d, serial)
    _press(at, "true_negative")
    assert not wl.is_current(q, d, serial)  # the key of the screen before: stale
    assert not wl.is_current(*wl.current_key(), serial)  # the right item with an old serial: stale too
    assert len(_events(handbuilt_store_path)) == 1


def test_skip_writes_no_verdict_and_survives_a_new_session(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    _press(at, "skip")
    assert _current(at) == HANDBUILT_RISK_ORDER[1]
    assert _events(handbuilt_store_path) == []
    again = _app(monkeypatch, handbuilt_store_path)  # a reload: a new browser session of the same person
    assert _current(again) == HANDBUILT_RISK_ORDER[1]  # the skipped item stays out, the held one is back
    for _ in range(len(HANDBUILT_RISK_ORDER) - 1):
        _press(again, "true_negative")
    assert _current(again) is None
    assert "You skipped 1 item" in again.success[0].value
    again.button(key="bring_back").click().run()
    assert _current(again) == HANDBUILT_RISK_ORDER[0]


def test_two_sessions_of_different_annotators_never_get_the_same_item(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, ada="annotator", bob="annotator")
    ada = _app(monkeypatch, handbuilt_store_path, user="ada", sign_in=True)
    bob = _app(monkeypatch, handbuilt_store_path, user="bob", sign_in=True)
    seen = {"ada": [], "bob": []}
    for _ in range(5):
        for name, at in (("ada", ada), ("bob", bob)):
            if _current(at) is not None:
                seen[name].append(_current(at))
                _press(at, "true_negative")
    assert not set(seen["ada"]) & set(seen["bob"])
    assert len(seen["ada"]) + len(seen["bob"]) == len(HANDBUILT_RISK_ORDER)
    judged = [(e[0], e[1]) for e in _events(handbuilt_store_path)]
    assert len(judged) == len(set(judged)) == len(HANDBUILT_RISK_ORDER)


def test_stratified_mode_stores_sampling_probability(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, mode="stratified")
    first = _wl(at).items[0]
    _press(at, "unsure")
    (event,) = _events(handbuilt_store_path)
    assert event[2] == "unsure" and event[6] == "stratified"
    band_size = {"suspicious": 3, "ambiguous": 4, "too_easy": 3}[first["band"]]
    assert event[7] == pytest.approx(1 / band_size)


def test_filters_by_band_and_query(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    at.multiselect(key="f_bands").set_value(["too_easy"]).run()
    assert _wl(at).items[0]["band"] == "too_easy" and _current(at) == HANDBUILT_RISK_ORDER[7]
    at.text_input(key="f_query").input("q1").run()
    assert _current(at) == ("q1", "n4")
    _press(at, "true_negative")
    assert _current(at) is None and "Nothing left for you" in at.success[0].value


def test_review_never_renders_html_or_markdown_from_the_data(monkeypatch, handbuilt_store_path):
    evil = "<script>alert('x')</script> **bold** <img src=x onerror=alert(1)> [link](http://example.com)"
    con = duckdb.connect(str(handbuilt_store_path))
    con.execute("UPDATE documents SET text = ? WHERE doc_id = 'n1'", [evil])
    con.execute("UPDATE queries SET text = ? WHERE query_id = 'q1'", ["# heading? *emph* <b>q</b>"])
    con.close()
    at = _app(monkeypatch, handbuilt_store_path)
    cand = _box(at, "candidate")
    assert html.escape("<script>alert('x')</script>") in cand and "<script>" not in cand and "<img" not in cand
    assert "**bold**" in cand and "[link](http://example.com)" in cand  # Markdown stays text: st.html, not markdown
    assert "# heading? *emph* &lt;b&gt;q&lt;/b&gt;" in _box(at, "query")
    rendered = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not any("<script>" in v or "**bold**" in v or "*emph*" in v for v in rendered)


def test_long_and_empty_passages_and_several_positives(monkeypatch, handbuilt_store_path):
    con = duckdb.connect(str(handbuilt_store_path))
    con.execute("UPDATE documents SET text = ? WHERE doc_id = 'n8'", ["flow " * 10_000])  # 50,000 characters
    con.execute("UPDATE documents SET text = '   ' WHERE doc_id = 'p3b'")
    con.close()
    at = _app(monkeypatch, handbuilt_store_path)
    at.text_input(key="f_query").input("q3").run()
    assert _current(at) == ("q3", "n8")
    cand = _box(at, "candidate")
    assert "50,000 characters, first 3,000 shown" in cand and len(cand) < 20_000
    assert any(e.label.startswith("The whole candidate (50,000 characters)") for e in at.expander)
    assert "Labeled positive 1 of 2" in _box(at, "positive")
    at.radio(key=f"pos_{_wl(at).serial}").set_value(1).run()
    pos = _box(at, "positive")
    assert "Labeled positive 2 of 2" in pos and "Empty text" in pos


def test_positive_marks_and_shared_words_on_the_mined_sample(monkeypatch, tmp_path, mined_cranfield_path):
    db = copy_store(mined_cranfield_path, tmp_path / "sample.duckdb")
    at = _app(monkeypatch, db, mode=None)  # the default queue: the verdict that would change the export most
    from auditor.review import build_queue

    (q, d) = _current(at)
    con = duckdb.connect(str(db))
    first = build_queue(con, annotator="ada", limit=1, double_annotation=0).iloc[0]  # its own leases count
    con.close()
    assert (q, d) == (first["query_id"], first["doc_id"]) and first["gain"] > 0
    ctx = _wl(at).context(_wl(at).items[0])
    marks = ctx["marks"]
    assert set(marks) == {p["doc_id"] for p in ctx["positives"]} and marks
    pos = _box(at, "positive")
    assert "closest to the query" in pos or "anchor: compared with" in pos or "nearest" in pos
    assert "<mark>" in _box(at, "candidate") + pos  # words shared with the query are marked
    _press(at, "false_negative")
    assert _events(db)[0][:4] == (q, d, "false_negative", "ada") and _events(db)[0][6] == "export"


def test_guidelines_set_by_a_lead_show_to_annotators_without_images(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, lee="lead", ann="annotator")
    lead = _app(monkeypatch, handbuilt_store_path, user="lee", sign_in=True, page="pages/team.py")
    lead.text_area(key="g_text").input("**Relevant** means it answers.\n\n![x](http://tracker.example/p.png)").run()
    lead.button(key="g_save").click().run()
    ann = _app(monkeypatch, handbuilt_store_path, user="ann", sign_in=True)
    ann.session_state["exp_guidelines"] = True  # the annotator opens the Guidelines panel
    ann.run()
    shown = " ".join(m.value for m in ann.markdown)
    assert "**Relevant** means it answers." in shown and "tracker.example" not in shown


def test_last_verdicts_are_listed_and_a_change_is_a_new_event(monkeypatch, handbuilt_store_path):
    from auditor.ui_helpers import apply_history_edits, recent_verdicts

    at = _app(monkeypatch, handbuilt_store_path)
    _press(at, "true_negative")
    _press(at, "unsure")
    at.session_state["exp_history"] = True  # the annotator opens the history panel
    at.run()
    (editor,) = at.data_editor
    assert list(editor.value["doc_id"]) == ["n5", "n1"]
    assert list(editor.value["verdict"]) == ["Unsure", "Not relevant"]
    con = _wl(at)._cursor()  # the app holds the file: use its connection
    rows = recent_verdicts(con, "ada", 20)
    changed = apply_history_edits(con, "ada", rows, {1: {"verdict": "Relevant — a false negative"}})
    assert changed == [("q1", "n1", "false_negative")]
    assert con.execute("SELECT verdict, queue_mode FROM current_verdicts WHERE doc_id = 'n1'").fetchall() == [
        ("false_negative", "risk")]
    rows = recent_verdicts(con, "ada", 20)  # now n1 (changed) first, then n5
    assert apply_history_edits(con, "ada", rows, {1: {"verdict": "Unsure"}}) == []  # unchanged: nothing written
    assert con.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 3  # the old verdict stays in the trail


# ---- histograms --------------------------------------------------------------------------------------------------


def _band_metrics(at: AppTest) -> dict[str, int]:
    bands = ("Suspicious", "Ambiguous", "Too easy")
    return {m.label: int(m.value.replace(",", "")) for m in at.metric if m.label in bands}


def test_histograms_sliders_change_counts_and_saving_over_a_name_asks_first(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, page="pages/histograms.py")
    assert len(at.get("plotly_chart")) == 1  # only the open tab is drawn
    assert {s.key for s in at.slider} >= {"th_rel", "th_abs", "th_cap", "th_dup", "th_a", "th_b", "th_w"}
    assert at.text_input(key="h_save_name").value == ""  # nothing prefilled: no accidental overwrite of "default"
    assert any("Likely a false negative" in m.value for m in at.markdown)  # the bands in plain words
    at.toggle(key="th_top_on").set_value(False).run()  # every hand-built candidate is in the top ranks
    before = _band_metrics(at)
    assert sum(before.values()) == 10 and before["Suspicious"] < 10
    at.slider(key="th_rel").set_value(0.5).run()
    after = _band_metrics(at)
    assert after["Suspicious"] > before["Suspicious"] and sum(after.values()) == 10
    at.switch_page("pages/review.py").run()
    at.switch_page("pages/histograms.py").run()
    assert _band_metrics(at) == after  # back from another page: the thresholds are still the ones set
    at.text_input(key="h_save_name").input("default").run()
    at.button(key="h_save").click().run()
    assert "exists" in at.warning[0].value  # asks before replacing the live configuration
    con = duckdb.connect(str(handbuilt_store_path))
    assert con.execute("SELECT count(*) FROM bands WHERE config = 'default' AND band = 'suspicious'").fetchone()[0] \
        == 3  # unchanged until confirmed
    con.close()
    at.button(key="h_cancel").click().run()
    assert not at.warning
    at.text_input(key="h_save_name").input("strict").run()
    at.button(key="h_save").click().run()  # a new name: saved at once
    assert not at.exception and at.selectbox(key="h_base").value == "strict"
    con = duckdb.connect(str(handbuilt_store_path))
    assert con.execute("SELECT count(*) FROM band_configs WHERE name = 'strict'").fetchone()[0] == 1
    con.close()
    at.button(key="h_save").click().run()
    at.button(key="h_replace").click().run()  # same name again: confirmed
    assert not at.exception and "Saved 'strict'" in at.success[0].value


def test_histogram_axes_are_clipped_and_thresholds_drawn(monkeypatch, handbuilt_store_path):
    con = duckdb.connect(str(handbuilt_store_path))
    con.execute("UPDATE scores SET s_pos_min = 0.0005 WHERE doc_id = 'n9'")  # one ratio near 900
    con.close()
    at = _app(monkeypatch, handbuilt_store_path, page="pages/histograms.py")
    at.session_state["h_tab"] = "Ratio"
    at.run()
    import json

    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    x_range = fig["layout"]["xaxis"]["range"]
    assert x_range[1] < 50  # not stretched to ~900 by one value
    lines = [s for s in fig["layout"]["shapes"] if s.get("type") == "line"]
    assert any(abs(s["x0"] - 0.95) < 1e-9 for s in lines)  # the default relative margin is drawn
    assert x_range[0] <= 0.95 <= x_range[1]


def test_histogram_labels_show_names_as_text(monkeypatch, handbuilt_store_path):
    from pages import _charts

    fig = _charts.band_bars({'<a href="http://x">click</a>': {"suspicious": 1}}, "t", "source")
    assert fig.data[0].x[0] == '&lt;a href="http://x"&gt;click&lt;/a&gt;'


# ---- load --------------------------------------------------------------------------------------------------------


def test_load_ingests_inside_the_data_root_and_refuses_the_rest(monkeypatch, tmp_path):
    from auditor.store import open_store

    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("AUDITOR_DATA_ROOT", str(root))
    at = _app(monkeypatch, db, page="pages/load.py")
    assert {m.label for m in at.metric} >= {"Queries", "Documents", "Candidates"}
    secret = tmp_path / "secret.csv"
    secret.write_text("password,token\nhunter2,abc\n")
    for outside in (str(secret), "../secret.csv", "/dev/zero", "/etc/passwd"):
        at.text_input(key="load_path").input(outside).run()
        at.button(key="load_path_go").click().run()
        assert "inside the data root" in at.error[0].value, outside
    (root / "zero").symlink_to("/dev/zero")
    at.text_input(key="load_path").input("zero").run()
    at.button(key="load_path_go").click().run()
    assert "data root" in at.error[0].value  # a link out of the data root is outside it
    fifo = root / "pipe.jsonl"
    import os

    os.mkfifo(fifo)
    at.text_input(key="load_path").input("pipe.jsonl").run()
    at.button(key="load_path_go").click().run()
    assert "not a regular file" in at.error[0].value
    bad = root / "bad.csv"
    bad.write_text("secret_column,another_secret\nhunter2,abc\n")
    at.text_input(key="load_path").input("bad.csv").run()
    at.button(key="load_path_go").click().run()
    message = at.error[0].value
    assert "Nothing was stored" in message and "hunter2" not in message and "secret_column" not in message
    assert {m.label: m.value for m in at.metric}["Queries"] == "0"
    monkeypatch.setenv("AUDITOR_MAX_INGEST_MB", "0.00001")
    (root / "big.jsonl").write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n' * 10)
    at.text_input(key="load_path").input("big.jsonl").run()
    at.button(key="load_path_go").click().run()
    assert "over the app's limit" in at.error[0].value


def test_load_ingests_a_folder_in_the_data_root(monkeypatch, tmp_path):
    from auditor.store import open_store

    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    monkeypatch.setenv("AUDITOR_DATA_ROOT", str(CRANFIELD.parent))
    at = _app(monkeypatch, db, page="pages/load.py")
    at.text_input(key="load_path").input("cranfield").run()
    at.button(key="load_path_go").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Queries"] == "225" and metrics["Documents"] == "1,400" and metrics["New queries"] == "225"


def test_upload_errors_name_the_uploaded_file_not_a_temp_path(monkeypatch, tmp_path):
    from auditor.store import open_store

    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    at = _app(monkeypatch, db, page="pages/load.py")
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": 3, "pos": "oops"\n')
    at.get("file_uploader")[0].upload(bad.name, bad.read_bytes(), "application/jsonl").run() \
        if hasattr(at.get("file_uploader")[0], "upload") else pytest.skip("this Streamlit's AppTest cannot upload")
    at.button(key="load_upload_go").click().run()
    message = at.error[0].value.replace("\\", "")  # the message is Markdown-escaped
    assert "mine.jsonl:2" in message and "auditor-upload-" not in message and "/tmp" not in message


# ---- export ------------------------------------------------------------------------------------------------------


def test_export_page_previews_offers_download_and_the_html_report(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, page="pages/export.py")
    assert at.radio(key="x_fmt").options == ["triplet", "st-ntuple", "ntuple", "rich"]
    at.radio(key="x_fmt").set_value("ntuple").run()
    at.button(key="x_go").click().run()
    assert not at.exception, at.exception
    preview = at.session_state["x_result"]["preview"]
    assert preview and at.get("download_button")
    assert all("pos_scores" not in row for row in preview)  # no teacher scores in this store: none written
    at.radio(key="x_scores").set_value("model").run()
    assert "--scores model" in at.code[0].value
    at.button(key="x_go").click().run()
    assert all(len(row["pos_scores"]) == len(row["pos"]) for row in at.session_state["x_result"]["preview"])
    at.button(key="x_report_go").click().run()
    assert not at.exception
    report = at.session_state["x_report"]
    assert report.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in report
    assert any(b.proto.label == "Download the HTML report" for b in at.get("download_button"))


# ---- pages without data ------------------------------------------------------------------------------------------


def test_pages_on_a_store_without_bands_point_to_load(monkeypatch, tmp_path, cranfield_store_path):
    db = copy_store(cranfield_store_path, tmp_path / "unmined.duckdb")
    at = _app(monkeypatch, db)
    assert "Nothing to review yet" in at.info[0].value
    for page, words in (("pages/histograms.py", "No scores yet"), ("pages/export.py", "Nothing to export yet")):
        at.switch_page(page).run()
        assert not at.exception and words in at.info[0].value


def test_sample_store_is_complete_and_a_failed_build_leaves_nothing(tmp_path, mined_cranfield_path):
    from auditor.sample import build_sample_store
    from auditor.store import StoreError

    con = duckdb.connect(str(mined_cranfield_path), read_only=True)
    counts = con.execute(
        "SELECT (SELECT count(*) FROM queries), (SELECT count(*) FROM documents), (SELECT count(DISTINCT query_id) "
        "FROM scores), (SELECT count(*) FROM bands WHERE config = 'default')"
    ).fetchone()
    n_scores = con.execute("SELECT count(*) FROM scores").fetchone()[0]
    con.close()
    assert counts[:3] == (225, 1400, 225)
    assert counts[3] == n_scores > 0  # every scored candidate is banded

    with pytest.raises(StoreError, match="already exists"):
        build_sample_store(mined_cranfield_path)
    target = tmp_path / "sample.duckdb"
    with pytest.raises(StoreError):
        build_sample_store(target, source=tmp_path / "no-such-folder")
    assert list(tmp_path.iterdir()) == []  # no half store, no temporary file left behind



def test_skipped_lines_report_is_a_download_not_a_file_in_the_working_folder(monkeypatch, tmp_path):
    from auditor.store import open_store

    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    root = tmp_path / "root"
    root.mkdir()
    lines = ['{"query": "q1", "pos": ["p1"], "neg": ["n1"]}', '{"query": "q2", "pos": "not a list", "neg": ["n2"]}',
             '{"query": "q3", "pos": ["p3"], "neg": ["n3"]}']
    (root / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("AUDITOR_DATA_ROOT", str(root))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    at = _app(monkeypatch, db, page="pages/load.py")
    at.text_input(key="load_path").input("mixed.jsonl").run()
    at.checkbox(key="path_skip").check().run()
    at.button(key="load_path_go").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["New queries"] == "2"
    assert list(work.iterdir()) == [] and list(root.iterdir()) == [root / "mixed.jsonl"]
    downloads = [b for b in at.get("download_button")]
    assert len(downloads) == 1 and "reasons in the report below" in at.code[0].value
    assert not list(Path(tempfile.gettempdir()).glob("auditor-rejects-*"))


def test_before_calibration_the_review_screen_shows_no_chance_and_the_clearest_positive(monkeypatch, tmp_path,
                                                                                         mined_cranfield_path):
    """The sample store's risk is the uncalibrated prior (no verdicts): a ranking, not a probability, so the screen
    says it is not estimated yet; the positive shown first is the one most similar to the query."""
    from conftest import copy_store

    db = copy_store(mined_cranfield_path, tmp_path / "m.duckdb")
    at = _app(monkeypatch, db, user=None)
    why = _html(at)
    assert "not estimated yet" in why and "Estimated chance" not in why
    wl = _wl(at)
    ctx = wl.context(wl.current())
    marks = ctx.get("marks") or {}
    scored = [p for p in ctx["positives"] if p["doc_id"] in marks]
    if len(scored) > 1 and ctx.get("candidate", {}).get("rule") != "near_duplicate":
        best = max(scored, key=lambda p: marks[p["doc_id"]]["s_pos"])
        assert html.escape(best["text"][:60]) in _box(at, "positive")


def _leases(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db))
    try:
        return con.execute("SELECT annotator, expires_at - claimed_at FROM leases ORDER BY 1").fetchall()
    finally:
        con.close()


def test_leaving_the_review_page_gives_its_items_back(monkeypatch, tmp_path, handbuilt_store_path):
    """A lead or admin lands on Review when signing in, then works on other pages: what Review held is given back
    as soon as another page is shown; Review claims again when shown again."""
    db = copy_store(handbuilt_store_path, tmp_path / "s.duckdb")
    _add_users(db, lee="lead")
    at = _app(monkeypatch, db, user="lee", sign_in=True)
    assert _current(at) and _leases(db) and {a for a, _ in _leases(db)} == {"lee"}
    at.switch_page("pages/histograms.py").run()
    assert not at.exception and _leases(db) == []
    at.switch_page("pages/review.py").run()
    assert _current(at) and _leases(db)


def test_a_closed_tab_holds_its_items_briefly_and_an_open_one_keeps_them_by_heartbeat(monkeypatch, tmp_path,
                                                                                    handbuilt_store_path):
    """Leases taken by the app are short and renewed by the open Review page (a fragment that runs every few
    seconds): a closed tab stops renewing, so its items are free for others within a couple of minutes."""
    import time

    from auditor.review import leases
    from pages import _common

    db = copy_store(handbuilt_store_path, tmp_path / "s.duckdb")
    at = _app(monkeypatch, db)
    lengths = {round(t) for _, t in _leases(db)}
    assert lengths and max(lengths) <= _common.APP_LEASE_S <= 180
    assert _common.HEARTBEAT_S * 3 <= _common.APP_LEASE_S
    wl = _wl(at)
    before = wl._renewed
    time.sleep(0.01)
    assert wl.heartbeat() > 0 and wl._renewed > before and wl.lease_live()
    con = duckdb.connect(str(db))
    try:
        (left,) = con.execute("SELECT min(expires_at) FROM leases").fetchone()
    finally:
        con.close()
    assert left > time.time() + _common.APP_LEASE_S - 30
    assert leases.LEASE_SECONDS == 600  # the CLI's claims (scripts, `auditor queue --claim`) keep their lease


@pytest.mark.parametrize("text", [
    "![x](http://tracker.example/p.png)",
    "[![x](http://tracker.example/p.png)](http://example.org)",  # an image inside a link
    "![x][ref]\n\n[ref]: http://tracker.example/p.png",  # reference style
    "![ref][]\n\n[ref]: http://tracker.example/p.png",  # collapsed reference
    "![ref]\n\n[ref]: http://tracker.example/p.png",  # shortcut reference
    "![a [b] c](http://tracker.example/p.png)",  # brackets in the alt text
    "![a\\]b](http://tracker.example/p.png)",  # an escaped bracket in the alt text
    "![x](<http://tracker.example/a b.png>)",
    "\\\\![x](http://tracker.example/p.png)",  # an escaped backslash before the image
    "![![a](http://x.example)](http://tracker.example/p.png)",  # removing the inner image leaves an outer one
    "* ![x](http://tracker.example/p.png 'title (1)')\n> ![y](http://tracker.example/q.png)",
])
def test_guidelines_render_no_image_in_any_markdown_form(text):
    """Rendered as CommonMark (what st.markdown does in the browser): no image element, whatever the syntax."""
    from markdown_it import MarkdownIt

    from auditor.ui_helpers import safe_markdown

    assert "<img" in MarkdownIt("commonmark").render(text)  # each form is an image as written
    rendered = MarkdownIt("commonmark").render(safe_markdown(text))
    assert "<img" not in rendered, rendered


def test_the_mine_form_loads_models_only_from_the_data_root_or_by_known_name(monkeypatch, tmp_path):
    """The model field is a server path too: a folder outside the data root is refused before anything is loaded;
    the shipped model's names and folders inside the data root are accepted."""
    import auditor.mine
    from auditor.store import open_store

    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    root = tmp_path / "root"
    (root / "models" / "mine").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "out").symlink_to(outside)
    monkeypatch.setenv("AUDITOR_DATA_ROOT", str(root))
    calls = []

    def fake_mine(con, model, depth, **kw):
        calls.append(model)
        raise ValueError("stopped here by the test")

    monkeypatch.setattr(auditor.mine, "mine", fake_mine)
    at = _app(monkeypatch, db, page="pages/load.py")
    for value in (str(outside), "../elsewhere", "out", "/etc", "~", "./.venv", str(Path.cwd()), "models/../../elsewhere",
                  "/nonexistent/model", "auditor/commands"):  # the last: a folder beside the app, named like a hub id
        at.text_input(key="mine_model").input(value)  # a form: the value goes with the submit
        next(b for b in at.button if b.label == "Mine").click().run()
        assert not at.exception
        assert calls == [] and at.error and "data root" in at.error[0].value, value
    for value, loaded in (("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
                          ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
                          ("models/mine", str(root / "models" / "mine")),
                          (str(root / "models" / "mine"), str(root / "models" / "mine"))):
        at.text_input(key="mine_model").input(value)
        next(b for b in at.button if b.label == "Mine").click().run()
        assert calls[-1] == loaded and "stopped here by the test" in at.error[0].value, value


def test_the_load_page_states_the_upload_cap_of_the_config(monkeypatch, tmp_path):
    """What the Load page tells the admin about uploads is the cap in .streamlit/config.toml (which bounds what a
    signed-out visitor can send too), and that cap is at most 200 MB."""
    import tomllib

    from auditor.store import open_store

    mb = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert mb <= 200
    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    at = _app(monkeypatch, db, page="pages/load.py")
    (uploader,) = at.get("file_uploader")
    assert f"up to {mb:,} MB" in uploader.proto.help
    assert uploader.proto.max_upload_size_mb == mb


def test_team_page_lists_the_items_held_and_the_latest_verdicts(monkeypatch, handbuilt_store_path):
    """A lead sees which items each annotator holds and what the team judged last, not only counts."""
    _add_users(handbuilt_store_path, lee="lead", ann="annotator")
    ann = _app(monkeypatch, handbuilt_store_path, user="ann", sign_in=True)
    judged = _current(ann)
    _press(ann, "false_negative")
    held = {(it["query_id"], it["doc_id"]) for it in _wl(ann).items}
    assert held
    lead = _app(monkeypatch, handbuilt_store_path, user="lee", sign_in=True, page="pages/team.py")
    assert not lead.exception
    tables = [f.value for f in lead.dataframe]
    held_table = next(t for t in tables if "lease ends in (s)" in t.columns and "doc_id" in t.columns)
    assert {(q, d) for q, d in zip(held_table["query_id"], held_table["doc_id"])} >= held
    assert set(held_table["annotator"]) == {"ann"}
    latest = next(t for t in tables if "verdict" in t.columns and "annotator" in t.columns)
    row = latest.iloc[0]
    assert (row["annotator"], row["query_id"], row["doc_id"]) == ("ann", *judged)


def test_delta_histogram_lays_the_verdicts_over_the_bins(monkeypatch, handbuilt_store_path):
    """A lead tuning margins sees where confirmed false and true negatives fall, updated as verdicts arrive."""
    import json

    from auditor import review

    at = _app(monkeypatch, handbuilt_store_path, page="pages/histograms.py")
    at.session_state["h_tab"] = "Delta"
    at.run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t.get("name") for t in fig["data"]] == ["candidates"]  # no verdicts yet: nothing laid over
    con = ui_store(at)
    review.record_verdict(con, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ada")
    review.record_verdict(con, query_id="q2", doc_id="n5", verdict="true_negative", annotator="ada")
    at.run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {t.get("name"): t for t in fig["data"]}
    assert set(traces) == {"candidates", "confirmed false negatives", "confirmed true negatives"}
    assert sum(traces["confirmed false negatives"]["y"]) == 1 and sum(traces["confirmed true negatives"]["y"]) == 1
    assert fig["layout"]["yaxis2"]["overlaying"] == "y"


def ui_store(at):
    """The app's own connection (the store file is held by the app in this process)."""
    from pages import _common

    return _common.cursor()
