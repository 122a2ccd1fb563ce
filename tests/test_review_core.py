"""The review core's parts on their own: the page cache (eviction, fingerprints, growth), pages as exact prefixes of
their order, the background owner, and the app's worklist."""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pytest
from conftest import HANDBUILT_RISK_ORDER, copy_store

from auditor import review, select
from auditor.planted import read_answer_key
from auditor.review import QueueChoice, cache, leases, snapshots
from auditor.review import queue as review_queue
from auditor.review.background import BackgroundWork, owner_of
from auditor.review.cache import Built, PageCache, PageSpec
from auditor.review.worklist import Worklist
from auditor.store import SharedStore, open_store

M = "m"


# ---- the page cache ----------------------------------------------------------------------------------------------

def _builder(calls: list, rows: int = 10):
    def build(con, limit):
        calls.append(limit)
        n = rows if limit is None else min(rows, limit)
        return Built(pa.table({"x": list(range(n))}), complete=limit is None or rows <= limit)
    return build


def test_cache_keeps_the_newest_pages_and_drops_the_oldest_one_generation_late():
    con = duckdb.connect()
    pages = PageCache(size=2)
    calls: list = []
    fp = (("hard",), 1)
    got = [pages.get(con, ("items", ("s",), i), PageSpec(_builder(calls), lambda c: fp)) for i in range(4)]
    assert calls == [cache.PAGE_ROWS] * 4
    live = set(pages.tables())
    # pages 0 and 1 were evicted; the older of them is dropped, the newer kept a generation for a slow reader
    assert got[0].table not in live and got[1].table in live and {got[2].table, got[3].table} <= live
    again = pages.get(con, ("items", ("s",), 3), PageSpec(_builder(calls), lambda c: fp))
    assert again is got[3] and len(calls) == 4  # a hit builds nothing
    pages.get(con, ("items", ("s",), 0), PageSpec(_builder(calls), lambda c: fp))  # evicted: built again
    assert len(calls) == 5


def test_cache_rebuilds_on_a_new_fingerprint_and_grows_a_page_on_demand():
    con = duckdb.connect()
    pages = PageCache()
    calls: list = []
    build = _builder(calls, rows=100)
    first = pages.get(con, ("k", ("s",)), PageSpec(build, lambda c: (("a",), 1)))
    assert first.limit == cache.PAGE_ROWS and first.complete == (100 <= cache.PAGE_ROWS)
    second = pages.get(con, ("k", ("s",)), PageSpec(build, lambda c: (("a",), 2)))  # a refit, no owner: now
    assert second is not first and len(calls) == 2
    small = PageCache()
    calls.clear()
    page = small._build(con, ("k",), (("a",), 1), PageSpec(build, lambda c: (("a",), 1)), 4)
    grown = small.grow(con, ("k",), page)
    assert calls == [4, 4 * cache.GROWTH] and grown.limit == 16 and not grown.complete
    whole = small.grow(con, ("k",), grown, whole=True)
    assert calls[-1] is None and whole.complete


def test_with_an_owner_a_refit_serves_the_old_page_and_rebuilds_it_behind(tmp_path):
    store = SharedStore(tmp_path / "s.duckdb")
    con = store.cursor()
    work = BackgroundWork.of(store)
    assert owner_of(con) is work and BackgroundWork.of(store) is work
    pages = PageCache()
    gate, calls = threading.Event(), []

    def build(c, limit):
        if calls:
            gate.wait(10)
        calls.append(limit)
        return Built(pa.table({"x": [len(calls)]}), complete=True)

    old = pages.get(con, ("k", ("s",)), PageSpec(build, lambda c: (("a",), 1)))
    stale = pages.get(con, ("k", ("s",)), PageSpec(build, lambda c: (("a",), 2)))
    assert stale is old  # answered at once from the old fit's page
    gate.set()
    work.wait(10)
    fresh = pages.get(con, ("k", ("s",)), PageSpec(build, lambda c: (("a",), 2)))
    assert fresh is not old and pages.cursor().execute(f"SELECT x FROM {fresh.table}").fetchall() == [(2,)]
    hard = pages.get(con, ("k", ("s",)), PageSpec(build, lambda c: (("b",), 2)))  # re-banding: built now
    assert hard.fingerprint == (("b",), 2) and len(calls) == 3
    store.close()
    assert owner_of(con) is None and work.submit("late", lambda c: None) is None


def test_a_page_kept_in_the_store_serves_a_new_process_without_a_rebuild(tmp_path):
    con = open_store(tmp_path / "kept.duckdb")
    calls: list = []
    spec = PageSpec(_builder(calls, rows=50), lambda c: (("bands-1",), 7), name="items-default")
    built = PageCache().get(con, ("items", ("s",)), spec)
    assert calls == [cache.PAGE_ROWS] and built.complete
    fresh_process = PageCache()  # a new process (the app after a restart): nothing in memory
    loaded = fresh_process.get(con, ("items", ("s",)), spec)
    assert calls == [cache.PAGE_ROWS] and loaded.complete  # read back, not built
    assert fresh_process.cursor().execute(f"SELECT count(*) FROM {loaded.table}").fetchall() == [(50,)]
    refit = PageSpec(_builder(calls, rows=50), lambda c: (("bands-1",), 8), name="items-default")
    PageCache().get(con, ("items", ("s",)), refit)  # a refit since (no owner: rebuilt now), kept again
    assert len(calls) == 2
    rebanded = PageSpec(_builder(calls, rows=50), lambda c: (("bands-2",), 8), name="items-default")
    PageCache().get(con, ("items", ("s",)), rebanded)  # other bands: the kept page is of no use
    assert len(calls) == 3
    assert con.execute("SELECT count(*) FROM queue_pages").fetchall() == [(1,)]


# ---- pages are exact prefixes of their order ------------------------------------------------------------------

def _walk(con, choice: QueueChoice, n: int) -> list[tuple]:
    """n items in a row, each judged (true negative) before the next is asked for."""
    out = []
    for _ in range(n):
        item = review.next_item(con, choice, annotator="ada")
        if item is None:
            break
        out.append((item["query_id"], item["doc_id"], item["sampling_prob"]))
        review.record_verdict(con, query_id=item["query_id"], doc_id=item["doc_id"], verdict="true_negative",
                              annotator="ada", queue_mode=item["mode"], sampling_prob=item["sampling_prob"])
    return out


@pytest.mark.parametrize("mode", ["risk", "stratified"])
def test_a_walk_through_small_growing_pages_equals_the_walk_through_the_whole_order(
        tmp_path, handbuilt_store_path, monkeypatch, mode):
    choice = QueueChoice(mode=mode, model=M, double_annotation=0)
    whole = open_store(copy_store(handbuilt_store_path, tmp_path / "whole.duckdb"))
    expected = _walk(whole, choice, 12)
    monkeypatch.setattr(cache, "PAGE_ROWS", 2)
    paged = open_store(copy_store(handbuilt_store_path, tmp_path / "paged.duckdb"))
    assert _walk(paged, choice, 12) == expected
    if mode == "risk":
        assert [x[:2] for x in expected] == HANDBUILT_RISK_ORDER
    else:  # positions within each band: j / N_b
        assert all(0 < p <= 1 for *_, p in expected) and len(expected) == len(HANDBUILT_RISK_ORDER)


def test_the_export_page_patched_per_verdict_stays_the_prefix_of_the_export_order(tmp_path, planted_cranfield,
                                                                                    monkeypatch):
    key = set(read_answer_key(planted_cranfield["answer_key"]))
    choice = QueueChoice(double_annotation=0)

    def walk(con, n=24):
        out = []
        for _ in range(n):
            item = review.next_item(con, choice, annotator="ada")
            out.append((item["query_id"], item["doc_id"], item["audit"]))
            verdict = "false_negative" if (item["query_id"], item["doc_id"]) in key else "true_negative"
            review.record_verdict(con, query_id=item["query_id"], doc_id=item["doc_id"], verdict=verdict,
                                  annotator="ada", queue_mode=item["mode"], sampling_prob=item["sampling_prob"])
        return out

    monkeypatch.setattr(cache, "PAGE_ROWS", 1_000_000)
    expected = walk(open_store(copy_store(planted_cranfield["path"], tmp_path / "whole.duckdb")))
    monkeypatch.setattr(cache, "PAGE_ROWS", 8)
    monkeypatch.setattr(select, "SLICE_CANDIDATES", 3000)  # built a few hundred queries at a time
    got = walk(open_store(copy_store(planted_cranfield["path"], tmp_path / "paged.duckdb")))
    assert got == expected
    # a restart half-way: the new process reads the page the store kept (built before 20 verdicts) and brings it
    # up to date by selecting again every query judged since
    con = open_store(copy_store(planted_cranfield["path"], tmp_path / "restart.duckdb"))
    first = walk(con, 12)
    restarted = PageCache()
    monkeypatch.setattr(snapshots, "PAGES", restarted)
    monkeypatch.setattr(review_queue, "PAGES", restarted)
    assert first + walk(con, 12) == expected
    assert any(a for *_, a in expected) and any(not a for *_, a in expected)  # both streams were walked


# ---- the app's worklist --------------------------------------------------------------------------------------------

def test_worklist_holds_a_batch_moves_on_after_a_verdict_and_gives_everything_back(handbuilt_store):
    con = handbuilt_store
    wl = Worklist(lambda: con, "ada", QueueChoice(mode="risk", model=M, double_annotation=0), batch=3, low=2)
    first = wl.current()
    assert (first["query_id"], first["doc_id"]) == HANDBUILT_RISK_ORDER[0]
    assert [(i["query_id"], i["doc_id"]) for i in leases.held_items(con, "ada")] == HANDBUILT_RISK_ORDER[:3]
    serial = wl.serial
    assert wl.is_current(*HANDBUILT_RISK_ORDER[0], serial)
    wl.judge(first, "true_negative")
    assert not wl.is_current(*HANDBUILT_RISK_ORDER[0], serial)  # a key press for the old item is stale now
    assert wl.current_key() == HANDBUILT_RISK_ORDER[1]
    wl.skip(wl.current())
    assert leases.skipped(con, "ada") == [HANDBUILT_RISK_ORDER[1]]
    assert wl.current_key() == HANDBUILT_RISK_ORDER[2]
    wl.prefetch()  # no background owner: inline; one item left (< low): tops up to the batch, computes contexts
    assert len(wl.items) == 3 and all((i["query_id"], i["doc_id"]) in wl._contexts for i in wl.items)
    assert wl.count_left() == len(HANDBUILT_RISK_ORDER) - 2
    undone = wl.undo()
    assert undone["held"] and wl.current_key() == HANDBUILT_RISK_ORDER[0]  # the undone item is back in front
    wl.release()
    assert leases.held_items(con, "ada") == [] and wl.current() is None  # released: claims nothing more


def test_worklist_prefetches_through_the_stores_background_owner(handbuilt_store_path):
    store = SharedStore(handbuilt_store_path)
    work = BackgroundWork.of(store)
    wl = Worklist(store.cursor, "bob", QueueChoice(mode="risk", model=M, double_annotation=0), batch=2, low=2)
    wl.current()
    wl.prefetch()
    work.wait(30)
    assert len(wl.items) == 2 and len(wl._contexts) == 2 and wl.error is None
    store.close()  # closes the owner first: no job runs on a closed connection


def test_band_and_mine_end_with_the_queue_pages_a_new_process_reads(handbuilt_store_path, tmp_path, monkeypatch):
    from auditor.cli import main

    db = copy_store(handbuilt_store_path, tmp_path / "warm.duckdb")
    assert main(["-q", "band", "--db", str(db), "--model", M]) == 0
    con = open_store(db)
    kept = {k for (k,) in con.execute("SELECT page_key FROM queue_pages").fetchall()}
    assert {json_key.split('"')[1] for json_key in kept} == {"export", "items"}
    built: list = []
    monkeypatch.setattr(snapshots, "_page_ids", lambda *a, **k: built.append(a))  # would build the item page
    monkeypatch.setattr(snapshots, "_heads", lambda *a, **k: built.append(a))  # would build the export page
    fresh = PageCache()  # a new process
    monkeypatch.setattr(snapshots, "PAGES", fresh)
    monkeypatch.setattr(review_queue, "PAGES", fresh)
    for mode in ("export", "risk", "stratified"):
        assert review.next_item(con, QueueChoice(mode=mode, model=M), annotator="ada") is not None
    assert built == []  # every first item came from the kept pages
