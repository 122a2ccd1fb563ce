"""Leases (auditor.review.queue.claim): two annotators never hold the same item unless it is routed to double annotation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from conftest import HANDBUILT_CANDIDATES, HANDBUILT_RISK_ORDER, copy_store

from auditor import review
from auditor.review import leases, queue
from auditor.store import SharedStore

ALL = {(q, d) for q, d, *_ in HANDBUILT_CANDIDATES}


def _ids(items):
    return [(i["query_id"], i["doc_id"]) for i in items]


@pytest.mark.parametrize("mode", ["risk", "stratified"])
def test_concurrent_claims_never_share_an_item(handbuilt_store_path, mode):
    store = SharedStore(handbuilt_store_path)
    names = [f"a{i}" for i in range(5)]
    barrier = threading.Barrier(len(names))
    got: dict[str, list] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            con = store.cursor()
            barrier.wait()
            got[name] = _ids(queue.claim(con, annotator=name, limit=3, mode=mode, model="m"))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    held = [i for items in got.values() for i in items]
    assert len(held) == len(set(held)) == len(ALL)  # 10 items over 5 people asking for 3: all held, none twice
    rows = store.cursor().execute("SELECT query_id, doc_id, count(*) FROM leases GROUP BY ALL HAVING count(*) > 1")
    assert rows.fetchall() == []
    store.close()


def test_asking_again_returns_the_held_items_and_tops_up(handbuilt_store):
    first = queue.claim(handbuilt_store, annotator="ada", limit=3, mode="risk", model="m", now=100.0)
    assert _ids(first) == HANDBUILT_RISK_ORDER[:3]
    assert _ids(queue.claim(handbuilt_store, annotator="ada", limit=3, mode="risk", model="m", now=200.0)) \
        == HANDBUILT_RISK_ORDER[:3]
    # a verdict on one of them: the next claim keeps the other two and adds the next item of the queue
    review.record_verdict(handbuilt_store, query_id="q1", doc_id="n1", verdict="true_negative", annotator="ada")
    again = queue.claim(handbuilt_store, annotator="ada", limit=3, mode="risk", model="m", now=300.0)
    assert _ids(again) == HANDBUILT_RISK_ORDER[1:4]
    assert _ids(leases.held_items(handbuilt_store, "ada", now=301.0)) == HANDBUILT_RISK_ORDER[1:4]
    # every claim renewed the leases: they run LEASE_SECONDS from the last one
    exp = handbuilt_store.execute("SELECT min(expires_at), max(expires_at) FROM leases").fetchone()
    assert exp == (300.0 + leases.LEASE_SECONDS, 300.0 + leases.LEASE_SECONDS)


def test_items_held_by_another_leave_every_queue_until_the_lease_ends(handbuilt_store):
    start = time.time()
    held = _ids(queue.claim(handbuilt_store, annotator="ada", limit=4, mode="risk", model="m", now=start))
    for mode in ("risk", "stratified"):
        df = review.build_queue(handbuilt_store, mode=mode, model="m", annotator="bob")
        assert not set(zip(df["query_id"], df["doc_id"])) & set(held)
    nxt = review.next_item(handbuilt_store, annotator="bob", mode="risk", model="m")
    assert (nxt["query_id"], nxt["doc_id"]) == HANDBUILT_RISK_ORDER[4]
    # ada's own queue still has them (she holds them), and so does a queue for nobody in particular after expiry
    mine = review.build_queue(handbuilt_store, mode="risk", model="m", annotator="ada")
    assert set(held) <= set(zip(mine["query_id"], mine["doc_id"]))
    late = start + leases.LEASE_SECONDS + 1
    bob = queue.claim(handbuilt_store, annotator="bob", limit=2, mode="risk", model="m", now=late)
    assert _ids(bob) == HANDBUILT_RISK_ORDER[:2]  # ada's leases ran out: the items came back
    assert leases.held_items(handbuilt_store, "ada", now=late) == []


def test_items_routed_to_double_annotation_may_be_held_by_two(handbuilt_store):
    share = 0.5
    routed = {k for k in ALL if review.needs_two_annotators(*k, share)}
    single = ALL - routed
    assert routed and single  # the hash routes some items, not all (else the test proves nothing)
    kw = dict(mode="risk", model="m", double_annotation=share, now=10.0)
    a = set(_ids(queue.claim(handbuilt_store, annotator="ada", limit=10, **kw)))
    b = set(_ids(queue.claim(handbuilt_store, annotator="bob", limit=10, **kw)))
    c = set(_ids(queue.claim(handbuilt_store, annotator="cy", limit=10, **kw)))
    assert a == ALL  # ada asked first for everything
    assert b == routed  # bob gets only the items that need a second annotator
    assert c == set()  # two people hold every routed item: a third gets nothing


def test_judged_and_skipped_items_end_their_lease_at_the_next_claim(handbuilt_store):
    kw = dict(mode="risk", model="m")
    queue.claim(handbuilt_store, annotator="ada", limit=3, now=10.0, **kw)
    review.record_verdict(handbuilt_store, query_id="q1", doc_id="n1", verdict="false_negative", annotator="ada")
    leases.add_skip(handbuilt_store, "ada", "q2", "n5")
    assert len(leases.held_items(handbuilt_store, "ada", now=11.0)) == 3  # nothing ended on the key press itself
    held = _ids(queue.claim(handbuilt_store, annotator="ada", limit=3, now=12.0, **kw))
    assert ("q1", "n1") not in held and ("q2", "n5") not in held
    assert leases.skipped(handbuilt_store, "ada") == [("q2", "n5")]
    bob = _ids(queue.claim(handbuilt_store, annotator="bob", limit=10, now=13.0, **kw))
    assert ("q2", "n5") in bob and ("q1", "n1") not in bob  # ada's skip frees it; her verdict finished the other
    assert leases.clear_skips(handbuilt_store, "ada") == 1 and leases.skipped(handbuilt_store, "ada") == []


def test_hold_puts_an_item_in_front_unless_another_holds_it(handbuilt_store):
    kw = dict(mode="risk", model="m", now=5.0)
    queue.claim(handbuilt_store, annotator="ada", limit=2, **kw)
    queue.claim(handbuilt_store, annotator="bob", limit=1, **kw)
    item = {"query_id": "q3", "doc_id": "n9", "band": "ambiguous", "mode": "risk"}
    assert queue.hold(handbuilt_store, "ada", item, now=6.0)
    assert _ids(leases.held_items(handbuilt_store, "ada", now=6.0))[0] == ("q3", "n9")
    bobs = leases.held_items(handbuilt_store, "bob", now=6.0)[0]
    assert not queue.hold(handbuilt_store, "ada", bobs, now=6.0)
    assert leases.other_holders(handbuilt_store, "ada", bobs["query_id"], bobs["doc_id"], now=6.0) == ["bob"]
    assert leases.release(handbuilt_store, "ada") == 3 and leases.held_items(handbuilt_store, "ada", now=7.0) == []


def test_export_mode_claims_what_the_export_writes(tmp_path, mined_cranfield_path):
    db = copy_store(mined_cranfield_path, tmp_path / "lease.duckdb")
    store = SharedStore(db)
    con = store.cursor()
    a = queue.claim(con, annotator="ada", limit=5)
    b = queue.claim(con, annotator="bob", limit=5)
    head = review.build_queue(con, limit=10)  # nobody in particular: both claims are out of it
    assert not set(_ids(a)) & set(_ids(b))
    assert not set(zip(head["query_id"], head["doc_id"])) & (set(_ids(a)) | set(_ids(b)))
    assert all(i["mode"] == "export" for i in a + b)
    store.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True)


def test_queue_command_claims_leases(handbuilt_store_path):
    db = str(handbuilt_store_path)
    base = ["queue", "--db", db, "--mode", "risk", "--json", "--limit", "3"]
    first = _cli(*base, "--annotator", "ada", "--claim")
    assert first.returncode == 0, first.stderr
    ada = [(i["query_id"], i["doc_id"]) for i in json.loads(first.stdout)]
    assert ada == HANDBUILT_RISK_ORDER[:3]
    again = _cli(*base, "--annotator", "ada", "--claim")
    assert [(i["query_id"], i["doc_id"]) for i in json.loads(again.stdout)] == ada  # the same items, still held
    bob = json.loads(_cli(*base, "--annotator", "bob", "--claim").stdout)
    assert [(i["query_id"], i["doc_id"]) for i in bob] == HANDBUILT_RISK_ORDER[3:6]
    plain = json.loads(_cli(*base).stdout)  # the plain queue leaves held items out too
    assert [(i["query_id"], i["doc_id"]) for i in plain] == HANDBUILT_RISK_ORDER[6:9]
    assert "released 3" in _cli("queue", "--db", db, "--annotator", "ada", "--release").stdout
    refused = _cli("queue", "--db", db, "--claim")
    assert refused.returncode == 2 and "--annotator" in refused.stderr
