"""Several annotators writing at once through the app's one SharedStore: no verdict is lost or overwritten."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
from streamlit.testing.v1 import AppTest

from auditor import review
from auditor.store import SharedStore
from conftest import HANDBUILT_RISK_ORDER

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_threads_writing_verdicts_through_one_shared_store_lose_nothing(handbuilt_store_path):
    store = SharedStore(handbuilt_store_path)
    n_threads, per_thread = 8, 40
    items = HANDBUILT_RISK_ORDER
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []
    written: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            con = store.cursor()  # one cursor per thread, as the app does per script run
            barrier.wait()
            ids = []
            for i in range(per_thread):
                q, d = items[(t + i) % len(items)]
                ids.append(review.record_verdict(con, query_id=q, doc_id=d, verdict="true_negative",
                                                 annotator=f"a{t}", note=f"{t}-{i}", band=None))
                if i % 10 == 9:  # undo now and then, interleaved with the other threads' writes
                    undone = review.undo_last(con, annotator=f"a{t}")
                    assert undone is not None and undone["event_id"] == ids[-1]
            with lock:
                written.extend(ids)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    con = store.cursor()
    assert len(set(written)) == n_threads * per_thread
    n_verdicts, n_undos, notes = con.execute(
        "SELECT count(*) FILTER (WHERE verdict <> 'undo'), count(*) FILTER (WHERE verdict = 'undo'), "
        "count(DISTINCT note) FROM verdicts"
    ).fetchone()
    assert n_verdicts == n_threads * per_thread and notes == n_threads * per_thread
    assert n_undos == n_threads * (per_thread // 10)
    # every annotator's undos took back exactly that annotator's own events
    assert con.execute(
        "SELECT count(*) FROM verdicts u JOIN verdicts v ON u.undoes = v.event_id WHERE u.annotator <> v.annotator"
    ).fetchone()[0] == 0
    store.close()


def _session(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["queue_mode"] = "risk"  # the hand-built store has no risk rows: band-and-delta order
    return at


def _sign_in(at: AppTest, name: str) -> AppTest:
    at.run()
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_password").input("long-enough-pw")
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def _press(at: AppTest, action: str) -> None:
    at.button(key=f"v_{action}_{at.session_state['_worklist'].serial}").click().run()
    assert not at.exception, at.exception


def _add_users(db, *names: str) -> None:
    from auditor import accounts
    from auditor.store import open_store

    con = open_store(db)
    for name in names:
        accounts.add_user(con, name, "annotator", password="long-enough-pw")
    con.close()


def test_two_app_sessions_get_different_items(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, "ada", "grace")
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    ada, grace = _sign_in(_session("ada"), "ada"), _sign_in(_session("grace"), "grace")
    a, g = ada.session_state["_worklist"].current_key(), grace.session_state["_worklist"].current_key()
    assert a == HANDBUILT_RISK_ORDER[0] and g != a  # ada holds the first item: grace is given another one
    _press(ada, "false_negative")
    _press(grace, "true_negative")
    con = duckdb.connect(str(handbuilt_store_path))
    rows = con.execute("SELECT annotator, query_id, doc_id, verdict FROM current_verdicts ORDER BY event_id").fetchall()
    con.close()
    assert rows == [("ada", *a, "false_negative"), ("grace", *g, "true_negative")]


def test_two_app_sessions_judging_a_routed_item_keep_both_verdicts(monkeypatch, handbuilt_store_path):
    _add_users(handbuilt_store_path, "ada", "grace")
    monkeypatch.setenv("AUDITOR_DB", str(handbuilt_store_path))
    monkeypatch.setenv("AUDITOR_DOUBLE_ANNOTATION", "1")  # every item goes to two annotators
    ada, grace = _sign_in(_session("ada"), "ada"), _sign_in(_session("grace"), "grace")
    for at in (ada, grace):  # both hold the same first item, on purpose
        assert at.session_state["_worklist"].current_key() == HANDBUILT_RISK_ORDER[0]
    # interleaved: both answer the item they were shown, differently, then each goes on
    _press(ada, "false_negative")
    _press(grace, "true_negative")
    _press(grace, "unsure")
    _press(ada, "undo")
    con = duckdb.connect(str(handbuilt_store_path))
    rows = con.execute("SELECT annotator, query_id, doc_id, verdict FROM current_verdicts ORDER BY event_id").fetchall()
    con.close()
    first, second = HANDBUILT_RISK_ORDER[0], HANDBUILT_RISK_ORDER[1]
    # grace's two verdicts stand; ada's verdict was undone by ada, without touching grace's on the same item
    assert rows == [("grace", *first, "true_negative"), ("grace", *second, "unsure")]
    assert ada.session_state["_worklist"].current_key() == first  # ada's undone item is back on her screen


def test_concurrent_undos_of_one_annotator_take_back_distinct_verdicts(handbuilt_store_path):
    store = SharedStore(handbuilt_store_path)
    con = store.cursor()
    for q, d in HANDBUILT_RISK_ORDER[:3]:
        review.record_verdict(con, query_id=q, doc_id=d, verdict="true_negative", annotator="ada")
    n_threads, per_thread = 4, 20  # 80 undo attempts for 3 verdicts
    barrier = threading.Barrier(n_threads)
    results: list = []
    lock = threading.Lock()

    def work() -> None:
        cur = store.cursor()
        barrier.wait()
        for _ in range(per_thread):
            got = review.undo_last(cur, annotator="ada")
            with lock:
                results.append(got)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    taken_back = [r["event_id"] for r in results if r is not None]
    assert len(taken_back) == 3 and len(set(taken_back)) == 3  # each verdict once; the rest said "nothing to undo"
    assert results.count(None) == n_threads * per_thread - 3
    undo_rows = con.execute("SELECT count(*), count(DISTINCT undoes) FROM verdicts WHERE verdict = 'undo'").fetchone()
    assert undo_rows == (3, 3)
    store.close()
