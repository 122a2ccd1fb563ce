"""Every page of the app rendered headless (Streamlit AppTest) against real store files.

Most tests use the hand-built store (fast, known queue order); one runs the Review page on the mined Cranfield sample.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from conftest import CRANFIELD, HANDBUILT_RISK_ORDER, copy_store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 60


def _app(monkeypatch, db: Path, annotator: str | None = "ada", page: str | None = None,
         mode: str | None = None) -> AppTest:
    monkeypatch.setenv("AUDITOR_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if annotator:
        at.session_state["annotator"] = annotator
    if mode:
        at.session_state["queue_mode"] = mode
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
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


def _current_item(at: AppTest) -> tuple[str, str]:
    item = at.session_state["current"]
    return item["query_id"], item["doc_id"]


def _texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


# ---- review ------------------------------------------------------------------------------------------------------


def test_review_asks_who_is_reviewing_first(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, annotator=None)
    assert [t.value for t in at.title] == ["Who is reviewing?"]
    assert not [b for b in at.button if b.label == "False negative"]
    at.button[0].click().run()  # empty name: refused
    assert "Enter a name" in at.error[0].value
    at.text_input(key="annotator_input").input("  grace ")  # in a form: sent with the submit click
    at.button[0].click().run()
    assert at.session_state["annotator"] == "grace"
    assert {"False negative", "True negative", "Unsure", "Skip", "Undo"} <= {b.label for b in at.button}


def test_review_password_from_secrets_guards_the_name_form(monkeypatch, handbuilt_store_path):
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auditor"] = {"password": "s3cret"}
    at.run()
    at.text_input(key="annotator_input").input("ada")
    at.text_input(key="password_input").input("wrong")
    at.button[0].click().run()
    assert "Wrong password" in at.error[0].value
    assert "annotator" not in at.session_state
    at.text_input(key="annotator_input").input("ada")
    at.text_input(key="password_input").input("s3cret")
    at.button[0].click().run()
    assert at.session_state["annotator"] == "ada"
    assert any(b.label == "False negative" for b in at.button)


def test_review_with_an_oidc_provider_asks_to_sign_in(monkeypatch, handbuilt_store_path):
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "auditor", "client_secret": "y",
                          "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
    at.run()
    assert [t.value for t in at.title] == ["Sign in to review"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.text_input  # no name form: the identity comes from the provider


def test_review_shows_item_with_scores_band_and_rule(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, mode="risk")  # the hand-built store has no risk rows
    assert _current_item(at) == HANDBUILT_RISK_ORDER[0]  # ("q1", "n1"): suspicious by inversion
    texts = _texts(at)
    assert "question q1?" in texts  # the query
    assert "text of p1 <b>x</b>" in texts  # its labeled positive, HTML shown as text
    assert "text of n1 <b>x</b>" in texts  # the candidate
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["s_neg"] == "0.850" and metrics["s_pos (min)"] == "0.800"
    assert metrics["delta"] == "+0.050" and metrics["rank"] == "1"
    assert metrics["Reviewed (everyone)"] == "0 / 10"
    assert metrics["Suspicious"] == "0 / 3"
    why = " ".join(m.value for m in at.markdown)
    assert "at or above the labeled positive (0.80): an inversion" in why
    shortcuts = {b.label: b.proto.shortcut.upper() for b in at.button if b.proto.shortcut}
    assert shortcuts == {"False negative": "F", "True negative": "T", "Unsure": "U", "Skip": "S", "Undo": "Z"}
    # the query's other candidates, for context
    others = at.dataframe[0].value
    assert set(others["doc_id"]) == {"n2", "n3", "n4"}


def test_review_verdicts_land_in_store_and_undo_takes_back(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, mode="risk")  # the hand-built store has no risk rows
    at.text_input(key="note").input("same topic as the positive").run()
    at.button(key="v_fn").click().run()
    assert _current_item(at) == HANDBUILT_RISK_ORDER[1]
    at.button(key="v_tn").click().run()
    assert _current_item(at) == HANDBUILT_RISK_ORDER[2]
    assert {m.label: m.value for m in at.metric}["Reviewed (everyone)"] == "2 / 10"
    events = _events(handbuilt_store_path)
    assert events == [
        ("q1", "n1", "false_negative", "ada", "same topic as the positive", "suspicious", "risk", None, None),
        ("q2", "n5", "true_negative", "ada", None, "suspicious", "risk", None, None),
    ]
    at.button(key="v_undo").click().run()
    events = _events(handbuilt_store_path)
    assert len(events) == 3 and events[2][2] == "undo" and events[2][:2] == ("q2", "n5")
    assert _current_item(at) == HANDBUILT_RISK_ORDER[1]  # the undone item comes back
    con = duckdb.connect(str(handbuilt_store_path))
    assert con.execute("SELECT query_id, doc_id, verdict FROM current_verdicts").fetchall() == [
        ("q1", "n1", "false_negative")
    ]
    con.close()


def test_review_skip_writes_nothing(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, mode="risk")  # the hand-built store has no risk rows
    at.button(key="v_skip").click().run()
    assert _current_item(at) == HANDBUILT_RISK_ORDER[1]
    assert _events(handbuilt_store_path) == []


def test_review_stratified_mode_stores_sampling_probability(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path)
    at.radio(key="queue_mode").set_value("stratified").run()
    first = at.session_state["current"]
    at.button(key="v_un").click().run()
    (event,) = _events(handbuilt_store_path)
    assert event[2] == "unsure" and event[6] == "stratified"
    band_size = {"suspicious": 3, "ambiguous": 4, "too_easy": 3}[first["band"]]
    assert event[7] == pytest.approx(1 / band_size)


def test_review_filters_by_band_and_query(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, mode="risk")  # the hand-built store has no risk rows
    at.multiselect(key="f_bands").set_value(["too_easy"]).run()
    assert at.session_state["current"]["band"] == "too_easy"
    assert _current_item(at) == HANDBUILT_RISK_ORDER[7]
    at.text_input(key="f_query").input("q1").run()
    assert _current_item(at) == ("q1", "n4")
    at.button(key="v_tn").click().run()
    assert at.session_state["current"] is None
    assert "Queue empty" in at.success[0].value


def test_review_never_renders_html_or_markdown_from_the_data(monkeypatch, handbuilt_store_path):
    evil = "<script>alert('x')</script> **bold** <img src=x onerror=alert(1)> [link](http://example.com)"
    con = duckdb.connect(str(handbuilt_store_path))
    con.execute("UPDATE documents SET text = ? WHERE doc_id = 'n1'", [evil])
    con.execute("UPDATE queries SET text = ? WHERE query_id = 'q1'", ["# heading? *emph* <b>q</b>"])
    con.close()
    at = _app(monkeypatch, handbuilt_store_path)
    assert evil in _texts(at)  # shown verbatim, as text
    assert "# heading? *emph* <b>q</b>" in _texts(at)
    rendered = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not any("<script>" in v or "**bold**" in v or "*emph*" in v for v in rendered)


def test_review_on_the_mined_sample(monkeypatch, tmp_path, mined_cranfield_path):
    db = copy_store(mined_cranfield_path, tmp_path / "sample.duckdb")
    at = _app(monkeypatch, db)
    q, d = _current_item(at)
    # the default queue starts with the riskiest negative that the export would write
    from auditor.select import select_negatives

    con = duckdb.connect(str(db))  # the app holds the file in this process: same configuration, no read-only
    exported = {(r[0], r[1]): r[2] for r in select_negatives(con, 5).project("query_id, doc_id, p_fn").fetchall()}
    con.close()
    assert exported[(q, d)] == max(exported.values())
    assert any(m.label == "P(false negative)" for m in at.metric) and any(m.label == "s_neg" for m in at.metric)
    at.button(key="v_fn").click().run()
    assert not at.exception
    assert _events(db)[0][:4] == (q, d, "false_negative", "ada") and _events(db)[0][6] == "export"
    assert _current_item(at) != (q, d)


def test_review_on_a_store_without_bands_points_to_load(monkeypatch, tmp_path, cranfield_store_path):
    db = copy_store(cranfield_store_path, tmp_path / "unmined.duckdb")
    at = _app(monkeypatch, db)
    assert "Nothing to review yet" in at.info[0].value
    for page, words in (("pages/histograms.py", "No scores yet"), ("pages/export.py", "Nothing to export yet")):
        at.switch_page(page).run()
        assert not at.exception and words in at.info[0].value


# ---- histograms --------------------------------------------------------------------------------------------------


def _band_metrics(at: AppTest) -> dict[str, int]:
    bands = ("Suspicious", "Ambiguous", "Too easy")
    return {m.label: int(m.value.replace(",", "")) for m in at.metric if m.label in bands}


def test_histograms_sliders_change_counts_and_save_a_config(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, page="pages/histograms.py")
    assert len(at.get("plotly_chart")) >= 3
    assert {s.key for s in at.slider} >= {"th_rel", "th_abs", "th_cap", "th_dup", "th_a", "th_b", "th_w"}
    at.toggle(key="th_top_on").set_value(False).run()  # every hand-built candidate is in the top ranks
    before = _band_metrics(at)
    assert sum(before.values()) == 10 and before["Suspicious"] < 10
    at.slider(key="th_rel").set_value(0.5).run()  # a much wider relative margin: more suspicious
    after = _band_metrics(at)
    assert after["Suspicious"] > before["Suspicious"]
    assert sum(after.values()) == 10
    at.toggle(key="th_cap_on").set_value(True).run()
    at.slider(key="th_cap").set_value(0.0).run()  # every candidate scores >= 0: all suspicious
    assert _band_metrics(at) == {"Suspicious": 10, "Ambiguous": 0, "Too easy": 0}
    assert {m.label: m.value for m in at.metric}["Short (< 5 neg.)"] == "3"
    at.text_input(key="h_save_name").input("strict").run()
    at.button(key="h_save").click().run()
    assert not at.exception
    assert at.selectbox(key="h_base").value == "strict"
    con = duckdb.connect(str(handbuilt_store_path))
    assert con.execute("SELECT count(*) FROM bands WHERE config = 'strict' AND band = 'suspicious'").fetchone()[0] == 10
    assert con.execute("SELECT count(*) FROM band_configs WHERE name = 'strict'").fetchone()[0] == 1
    con.close()


def test_histograms_page_estimates_the_exports_false_negatives(monkeypatch, tmp_path, mined_cranfield_path):
    db = copy_store(mined_cranfield_path, tmp_path / "est.duckdb")
    at = _app(monkeypatch, db, page="pages/histograms.py")
    metrics = {m.label: m for m in at.metric}
    expected = metrics["Expected false negatives"]
    con = duckdb.connect(str(db))
    from auditor.estimate import model_estimate
    from auditor.select import Selection

    truth = model_estimate(con, Selection(), "all-MiniLM-L6-v2")
    con.close()
    assert expected.value == f"{truth['expected_false_negatives']:.1f}"
    assert metrics["From the random review"].value == "no sample"
    at.toggle(key="h_sweep").set_value(True).run()
    assert not at.exception
    assert any("false negatives: " in t.value for t in at.text)


# ---- load --------------------------------------------------------------------------------------------------------


def test_load_ingests_a_server_path_and_reports_errors(monkeypatch, tmp_path):
    from auditor.store import open_store

    db = tmp_path / "empty.duckdb"
    open_store(db).close()
    at = _app(monkeypatch, db, page="pages/load.py")
    assert {m.label for m in at.metric} >= {"Queries", "Documents", "Candidates"}
    assert any(b.label == "Mine" for b in at.button)
    at.text_input(key="load_path").input(str(tmp_path / "nope.jsonl")).run()
    at.button(key="load_path_go").click().run()
    assert "No file or folder" in at.error[0].value

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": 3, "pos": "oops"\n')
    at.text_input(key="load_path").input(str(bad)).run()
    at.button(key="load_path_go").click().run()
    assert at.error and "Nothing was stored" in at.error[0].value
    assert {m.label: m.value for m in at.metric}["Queries"] == "0"

    at.text_input(key="load_path").input(str(CRANFIELD)).run()
    at.button(key="load_path_go").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Queries"] == "225" and metrics["Documents"] == "1,400"
    assert metrics["New queries"] == "225"


# ---- export ------------------------------------------------------------------------------------------------------


def test_export_page_previews_and_offers_download(monkeypatch, handbuilt_store_path):
    at = _app(monkeypatch, handbuilt_store_path, page="pages/export.py")
    assert at.radio(key="x_fmt").options == ["triplet", "st-ntuple", "ntuple", "rich"]
    at.radio(key="x_fmt").set_value("ntuple").run()
    at.button(key="x_go").click().run()
    assert not at.exception, at.exception
    preview = at.session_state["x_result"]["preview"]
    assert preview and {"query", "pos", "neg"} <= set(preview[0])
    assert at.get("download_button")


# ---- the sample store --------------------------------------------------------------------------------------------


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
