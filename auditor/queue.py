"""The review queue: which candidate an annotator sees next.

An *item* is one banded candidate: a row of ``bands`` for (config, model) joined to its scores (view ``scored``) and
its P(false negative) (table ``risk``, see :mod:`auditor.risk`).

Queue orders
------------
``export`` (the default)
    What matters is what will be written to the training file: the candidates that the current export settings
    (:class:`auditor.select.Selection`: N, strategy, band configuration, risk threshold — those of the latest export
    unless given) would select, highest P(false negative) first. A confirmed false negative leaves the export at once,
    and the candidate that replaces it in the export enters the queue. When every exported item is reviewed, the
    queue is empty: the export holds nothing unreviewed.
``risk``
    Every banded candidate, highest P(false negative) first (stores without risk rows: suspicious before ambiguous
    before too_easy, then the largest ``delta``). Finds the most false negatives per hour, whether or not the export
    would take them; rates measured on it are biased upward.
``stratified``
    Each band's items in a seeded random order (a hash of seed, query id and doc id), interleaved across bands round-
    robin: position 1 of every band, then position 2, and so on. Reviewing the first ``j`` items of a band's order is a
    simple random sample of size ``j`` from the band's ``N_b`` items, so every item in it had inclusion probability
    ``j / N_b``; the item at position ``j`` stores ``sampling_prob = j / N_b``. The per-band false-negative rate of the
    reviewed sample (``sum(y) / n_b``) is then unbiased for the band, and the Horvitz-Thompson total
    ``sum over reviewed items of y_i / pi_i`` with ``pi_i = n_b / N_b`` equals ``sum_b N_b * rate_b``
    (see :mod:`auditor.stats`). Filters (band, source, query) make ``N_b`` the size of the filtered band; a walk
    filtered by source or query is recorded as ``stratified_filtered`` and is not used as a sample of the band.

Exclusion: an item leaves an annotator's queue once that annotator has a current verdict on it (or skipped it), and
leaves every other queue once enough annotators judged or hold it (in stratified mode, counting only verdicts given
in a stratified walk; leases in every mode): 1, or 2 for the deterministic share ``ReviewConfig.double_annotation`` of
items routed to double annotation (by an md5 hash of the ids, so every process agrees) for Cohen's kappa.

Leases: :func:`claim` holds the next items for one annotator for ``LEASE_SECONDS`` (renewed by each claim, verdict
and page view), so two annotators working at once never get the same item unless it is routed to double annotation.
Asking again returns the items already held. The app and ``auditor queue --claim`` use the same leases, stored in
the ``leases`` table; skipped items live in ``skips``.

Speed: joining bands, scores and risk over a million rows costs about a second, too slow to repeat per item. The
joined items of one (store, config, model, seed) — and for ``export`` the selected items of one set of settings — are
copied into a private in-memory DuckDB, keyed by a fingerprint of the bands and the risk fit they came from, so
re-banding, re-scoring or a refit is seen at once. The export snapshot is then patched per verdict: only the queries
with verdict events newer than the snapshot are selected again, from the store.
"""

from __future__ import annotations

import atexit
import json
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from auditor.audit import AuditDesign
from auditor.audit import design as audit_design
from auditor.config import DEFAULT_BAND_CONFIG, ReviewConfig
from auditor.gain import review_pool_sql
from auditor.select import Selection, current_selection, query_ids_sql, verdict_flags_sql
from auditor.tradeoff import Tradeoff
from auditor.store import StoreError, background_work, in_transaction, transaction

MODES = ("export", "risk", "stratified")
#: What a verdict may record as its queue: a stratified walk narrowed by source or query is not a band sample.
RECORDED_MODES = (*MODES, "stratified_filtered")
BANDS = ("suspicious", "ambiguous", "too_easy")

#: SQL for a band's place in the legacy risk order (0 = reviewed first).
BAND_LEVEL_SQL = "CASE {b} WHEN 'suspicious' THEN 0 WHEN 'ambiguous' THEN 1 ELSE 2 END"

ITEM_COLUMNS = [
    "query_id", "doc_id", "band", "rule", "s_neg", "s_pos_min", "s_pos_max", "delta", "ratio", "rank", "sources",
    "weight", "p_fn", "risk", "sampling_prob", "gain", "audit",
]


# --------------------------------------------------------------------------------------------------------------
# model / config resolution
# --------------------------------------------------------------------------------------------------------------

def resolve_model(con: duckdb.DuckDBPyConnection, model: str | None, config: str = DEFAULT_BAND_CONFIG) -> str:
    """The scorer whose bands to use: the one given, else the latest one scored, else a clear error."""
    if model:
        return model
    from auditor.bands import latest_model

    found = latest_model(con)
    if found:
        return found
    row = con.execute(
        "SELECT model FROM bands WHERE config = ? GROUP BY model ORDER BY count(*) DESC, model LIMIT 1", [config]
    ).fetchall()
    if not row:
        raise StoreError("this store has no scored candidates yet: run `auditor mine --db FILE` first")
    return row[0][0]


def _check_bands_exist(con: duckdb.DuckDBPyConnection, config: str, model: str) -> None:
    if con.execute("SELECT 1 FROM bands WHERE config = ? AND model = ? LIMIT 1", [config, model]).fetchall() == []:
        raise StoreError(
            f"no bands for band configuration {config!r} and model {model!r}: run `auditor mine` (or `auditor band "
            f"--config {config}`) first"
        )


def settle(con: duckdb.DuckDBPyConnection) -> None:
    """Finish any half-read result on ``con``: DuckDB refuses register() / sql() while one is pending."""
    con.complete()


def double_share(double_annotation: float | None) -> float:
    share = ReviewConfig().double_annotation if double_annotation is None else float(double_annotation)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"double_annotation must be between 0 and 1, got {share}")
    return share


#: An item is routed to two annotators when this md5-derived number in [0, 1) is below the double-annotation share.
DOUBLE_HASH_SQL = "(md5_number_upper(v.query_id || chr(31) || v.doc_id) / 18446744073709551616.0)"


def needs_two_annotators(query_id: str, doc_id: str, share: float) -> bool:
    """Python twin of the SQL routing rule (for tests and the app)."""
    import hashlib

    digest = hashlib.md5(f"{query_id}\x1f{doc_id}".encode()).digest()
    upper = int.from_bytes(digest[:8], "little")
    return upper / 2**64 < share


# --------------------------------------------------------------------------------------------------------------
# derived tables in a private in-memory DuckDB
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    fingerprint: tuple
    table: str
    event_id: int = 0  #: export snapshots: verdict events up to this one are reflected
    lock: threading.Lock | None = None
    state: Any = None  #: what the builder keeps beside the rows (export snapshots: the verdict flags they reflect)
    build: Callable | None = None  #: how to build it again (``refresh``)
    fingerprint_of: Callable | None = None  #: how to read its current fingerprint from a connection
    used_at: float = 0.0  #: time.monotonic() of the last request served from it (``refresh`` skips idle ones)


#: A table not asked for in this long is not rebuilt by ``refresh`` (it is rebuilt if it is asked for again).
REFRESH_IDLE_S = 60.0


class _MemTables:
    """Tables derived from a store, rebuilt when their fingerprint changes; the newest few are kept.

    Tables are dropped one generation late, so a reader that just looked up an old name still finds it; a reader
    slower than that gets a CatalogException and retries (see ``_run``).
    """

    size = 6

    def __init__(self) -> None:
        self._mem: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._entries: dict[tuple, _Entry] = {}
        self._retired: list[str] = []
        self._rebuilding: set[tuple] = set()
        self._threads: list[threading.Thread] = []
        self._seq = iter(range(1, 1 << 62))

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                if self._mem is None:
                    self._mem = duckdb.connect(":memory:")
                cur = self._mem.cursor()
            self._local.cursor = cur
        return cur

    def get(
        self, con: duckdb.DuckDBPyConnection, key: tuple, fingerprint_of: Callable[[duckdb.DuckDBPyConnection], tuple],
        build: Callable[[duckdb.DuckDBPyConnection], tuple[pa.Table, int, Any]], stale_ok: bool = False,
        fingerprint: tuple | None = None,
    ) -> _Entry:
        """The entry for ``key``; ``build(con)`` returns (rows, verdict event id they reflect, state to keep).

        ``fingerprint`` is (hard, soft). A changed hard part (re-banding, re-scoring: a user's deliberate act) is
        built before answering. A changed soft part only (the risk model refitted after a few verdicts, every few
        seconds while people review) serves the old entry at once and builds the new one on a cursor of its own in a
        background thread (stale while revalidating): an annotator never waits for a million-row rebuild, and the
        next request finds it ready. Only where ``stale_ok``: the rebuild runs on a cursor of ``con``, so ``con`` must
        outlive it (the app's shared store does; a command that closes its connection when done must not ask).
        """
        if fingerprint is None:  # the caller may have read it already, with the rest of its request
            fingerprint = fingerprint_of(con)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                hit.used_at = time.monotonic()
            if hit is not None and hit.fingerprint == fingerprint:
                return hit
            if stale_ok and hit is not None and hit.fingerprint[0] == fingerprint[0]:
                if key not in self._rebuilding:
                    self._rebuilding.add(key)
                    thread = threading.Thread(target=self._rebuild,
                                              args=(con.cursor(), key, fingerprint, build, fingerprint_of),
                                              daemon=True, name="auditor-queue-rebuild")
                    self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                    thread.start()
                return hit
        return self._build(con, key, fingerprint, build, fingerprint_of)

    def refresh(self, con: duckdb.DuckDBPyConnection) -> int:
        """Rebuild, on ``con`` and now, this store's tables in use (asked for in the last ``REFRESH_IDLE_S``) whose
        fingerprint changed (after a refit, so that the next request finds them ready); returns how many."""
        store, recent = _store_key(con), time.monotonic() - REFRESH_IDLE_S
        with self._lock:
            entries = [(k, e) for k, e in self._entries.items()
                       if k[1] == store and e.build is not None and e.used_at >= recent]
        rebuilt = 0
        for key, entry in entries:
            fingerprint = entry.fingerprint_of(con)
            if fingerprint != entry.fingerprint:
                self._build(con, key, fingerprint, entry.build, entry.fingerprint_of)
                rebuilt += 1
        return rebuilt

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background rebuilds started so far (their cursors belong to the caller's connection)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def _rebuild(self, cur: duckdb.DuckDBPyConnection, key: tuple, fingerprint: tuple, build: Callable,
                 fingerprint_of: Callable) -> None:
        try:
            with background_work(cur):
                self._build(cur, key, fingerprint, build, fingerprint_of)
        except Exception:  # noqa: BLE001 - the old table stays in service; the next request tries again
            pass
        finally:
            with self._lock:
                self._rebuilding.discard(key)
            cur.close()

    def _build(self, con: duckdb.DuckDBPyConnection, key: tuple, fingerprint: tuple, build: Callable,
               fingerprint_of: Callable) -> _Entry:
        with self._build_lock:  # one builder at a time; whoever waited finds the fresh table
            with self._lock:
                hit = self._entries.get(key)
            if hit is not None and hit.fingerprint == fingerprint:
                return hit
            rows, event_id, state = build(con)
            name = f"items_{next(self._seq)}"
            mem = self.cursor()
            mem.register("_arrow_items", rows)
            try:
                mem.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_items")
            finally:
                mem.unregister("_arrow_items")
            entry = _Entry(fingerprint, name, event_id, threading.Lock(), state, build, fingerprint_of,
                           time.monotonic())
            with self._lock:
                old = self._entries.pop(key, None)
                self._entries[key] = entry
                if old is not None:
                    self._retired.append(old.table)
                while len(self._entries) > self.size:
                    self._retired.append(self._entries.pop(next(iter(self._entries))).table)
                doomed = self._retired[:-1]
                del self._retired[: len(doomed)]
            for table in doomed:
                mem.execute(f"DROP TABLE IF EXISTS {table}")
            return entry


_TABLES = _MemTables()
atexit.register(_TABLES.wait, 60)  # a rebuild stopped inside DuckDB at exit would abort the process


def refresh(con: duckdb.DuckDBPyConnection) -> int:
    """Rebuild now, on ``con``, the queue tables of this store that a refit or re-banding made stale (the app's
    background refit calls it, so the rebuild runs in its thread and counts towards its share of the machine)."""
    return _TABLES.refresh(con)


def wait_for_rebuilds(timeout: float | None = None) -> None:
    """Wait for the queue's background rebuilds (``stale_ok``) to end: call it before closing the connection that
    asked for them, or DuckDB refuses to close a connection one of whose cursors is busy."""
    _TABLES.wait(timeout)


#: What the fingerprint reads (one spec for ``_fingerprint`` and the request's probe in ``_prepare``): the band
#: stamp (with any other ``meta`` keys asked for) and the big tables' row counts (DuckDB keeps them: no scan); then,
#: per model, the fit in force.
_STATE_SQL = """
    SELECT (SELECT list((key, value)) FROM meta WHERE key = ANY($keys)) AS meta,
           [(SELECT count(*) FROM bands), (SELECT count(*) FROM candidates), (SELECT count(*) FROM scores)] AS sizes
"""
_FIT_SQL = "(SELECT max(fit_id) FROM risk_fits WHERE model = $m) AS fit_id"


def _store_state(con: duckdb.DuckDBPyConnection, *keys: str) -> tuple[dict[str, str], list[int]]:
    """(the ``meta`` values of the band stamp and of ``keys``, the row counts of bands, candidates and scores)."""
    from auditor.bands import BANDS_WRITTEN_KEY

    meta, sizes = con.execute(_STATE_SQL, {"keys": [BANDS_WRITTEN_KEY, *keys]}).fetchall()[0]
    return {str(k): v for k, v in meta or []}, list(sizes)


def _fingerprint_of(config: str, model: str, stamp: Any, sizes: Any, fit_id: Any) -> tuple[tuple, Any]:
    return (config, model, stamp, tuple(sizes or ())), fit_id


def _fingerprint(con: duckdb.DuckDBPyConnection, config: str, model: str) -> tuple[tuple, Any]:
    """(hard, soft): hard changes with the bands, candidates or scores of (config, model); soft with the risk fit.

    Cheap at any size, as it runs on every request: the stamp every band write leaves
    (:func:`auditor.bands.mark_bands_written`) and the tables' row counts stand for the bands — a hash over every
    band row took about half a second per request at 10M candidates (bench/scale.py), counting one configuration's
    bands 6 ms at 1M. Code that rewrites band rows in place outside auditor.bands calls mark_bands_written.
    """
    from auditor.bands import BANDS_WRITTEN_KEY

    meta, sizes = _store_state(con)
    fit_id = con.execute(f"SELECT {_FIT_SQL}", {"m": model}).fetchall()[0][0]
    return _fingerprint_of(config, model, meta.get(BANDS_WRITTEN_KEY), sizes, fit_id)


_STORE_KEYS: "weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, tuple]" = weakref.WeakKeyDictionary()


def _store_key(con: duckdb.DuckDBPyConnection) -> tuple:
    """Which store ``con`` reads (its attached databases), remembered per connection: it cannot change."""
    key = _STORE_KEYS.get(con)
    if key is None:
        rows = con.execute("SELECT database_name, path FROM duckdb_databases() WHERE NOT internal").fetchall()
        key = _STORE_KEYS[con] = tuple(sorted((str(a), str(b)) for a, b in rows))
    return key


def _last_event(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT coalesce(max(event_id), 0) FROM verdicts").fetchall()[0][0])


def _items_sql(only: str = "") -> str:
    """Banded items with scores, sources and P(false negative); ``only`` restricts every scan to some queries."""
    return f"""
        SELECT b.query_id, b.doc_id, b.band, b.rule, b.weight, {BAND_LEVEL_SQL.format(b="b.band")} AS band_level,
               s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio, s.rank, r.p_fn,
               coalesce(src.sources, []::VARCHAR[]) AS sources
        FROM (SELECT * FROM bands WHERE config = $c AND model = $m {only}) b
        JOIN (SELECT * FROM scored WHERE model = $m {only}) s ON s.query_id = b.query_id AND s.doc_id = b.doc_id
        LEFT JOIN (SELECT * FROM risk WHERE model = $m {only}) r ON r.query_id = b.query_id AND r.doc_id = b.doc_id
        LEFT JOIN (SELECT query_id, doc_id, list(DISTINCT source ORDER BY source) AS sources
                   FROM candidates WHERE true {only} GROUP BY query_id, doc_id) src
             ON src.query_id = b.query_id AND src.doc_id = b.doc_id
    """


def _items_table(
    con: duckdb.DuckDBPyConnection, config: str, model: str, seed: int, stale_ok: bool = False,
    req: _Request | None = None,
) -> str:
    """Name of the in-memory table holding every banded item of (config, model), with per-band random positions."""

    def build(con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, int, None]:
        settle(con)
        # Each order's position is kept as one integer, so a request sorts one column (a top-N over a million rows
        # of every order key took about 25 ms): the rows come in risk order, and their row number is risk_pos;
        # in a band, band_pos is unique, so band_pos * 3 + band_level sorts as (band_pos, band_level).
        rows = con.sql(
            f"""
            SELECT *, band_pos * 3 + band_level AS strat_pos
            FROM (
                SELECT *, row_number() OVER (PARTITION BY band ORDER BY rkey, query_id, doc_id) AS band_pos,
                       count(*) OVER (PARTITION BY band) AS band_size, NULL::BIGINT AS slot
                FROM (SELECT *, hash(query_id, doc_id, $seed::BIGINT) AS rkey FROM ({_items_sql()}))
            )
            ORDER BY {_ORDERS["risk"]}
            """,
            params={"c": config, "m": model, "seed": int(seed)},
        ).to_arrow_table()
        return rows.append_column("risk_pos", pa.array(np.arange(1, rows.num_rows + 1, dtype=np.int64))), 0, None

    key = ("items", req.store if req else _store_key(con), config, model, int(seed))
    return _TABLES.get(con, key, lambda c: _fingerprint(c, config, model), build, stale_ok,
                       fingerprint=req.fingerprint if req else None).table


def _verdict_flags(con: duckdb.DuckDBPyConnection, queries: list[str] | None) -> dict[tuple[str, str], tuple]:
    """(query_id, doc_id) -> (false negative, true negative) for the candidates some current verdict confirms as
    either (of every query, or of ``queries``): all the verdicts an export selection depends on."""
    only = "" if queries is None else "WHERE query_id = ANY($q)"
    rows = con.execute(f"SELECT * FROM ({verdict_flags_sql(only)}) WHERE fn OR tn",
                       {"q": queries} if queries is not None else {}).fetchall()
    return {(q, d): (bool(fn), bool(tn)) for q, d, fn, tn in rows}


class _read_snapshot:
    """A read-only transaction on ``con`` (when it is not in one already): every statement sees the same moment."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con, self.began = con, False

    def __enter__(self) -> None:
        if not in_transaction(self.con):  # a caller's transaction (claim's) already gives one moment
            self.con.execute("BEGIN TRANSACTION")
            self.began = True

    def __exit__(self, *exc: Any) -> None:
        if self.began:  # nothing was written: ending it either way is the same, and ROLLBACK works after an error
            settle(self.con)
            self.con.execute("ROLLBACK")


@dataclass
class _ExportPlan:
    """What one export snapshot was built with: the solved trade-off and the audit design (patches reuse them; a
    refit, which changes the trade-off, rebuilds the snapshot)."""

    tradeoff: Tradeoff
    audit: AuditDesign


@dataclass
class _ExportState:
    flags: dict  #: (query_id, doc_id) -> (false negative, true negative): the verdicts the snapshot reflects
    plan: _ExportPlan


def _patch_export(con: duckdb.DuckDBPyConnection, entry: _Entry, select: Callable) -> None:
    """Bring an export snapshot up to the newest verdict: re-select the queries whose candidates' verdict flags
    changed since it was taken.

    A query's choice and the gains of its candidates depend on verdicts only through which of them are confirmed
    false or true negatives (:mod:`auditor.tradeoff`), and only within the query: an unsure verdict changes no flag
    and costs no statement beyond reading the flags.
    """
    plan = _patch_plan(con, entry)
    if plan is not None and plan.dirty:  # rows to select: the flags and the rows must come from one moment
        with _read_snapshot(con):
            plan = _patch_plan(con, entry)
            fresh = select(con, plan.dirty) if plan is not None and plan.dirty else None
        if fresh is not None:
            mem = _TABLES.cursor()
            mem.register("_fresh_rows", fresh)
            try:
                mem.execute("BEGIN TRANSACTION")
                mem.execute(f"DELETE FROM {entry.table} WHERE query_id = ANY(?)", [plan.dirty])
                mem.execute(f"INSERT INTO {entry.table} SELECT * FROM _fresh_rows")
                mem.execute("COMMIT")
            finally:
                mem.unregister("_fresh_rows")
    if plan is None:
        return
    flags: dict = entry.state.flags
    for key in [k for k in flags if k[0] in plan.touched]:  # the flags now reflected, for the next patch
        del flags[key]
    flags.update(plan.flags)
    entry.event_id = plan.newest


@dataclass
class _PatchPlan:
    newest: int  #: verdict events up to this one are read
    touched: set[str]  #: queries with events since the snapshot
    flags: dict  #: their judged candidates' (false negative, true negative) flags now
    dirty: list[str]  #: the queries to select again


def _patch_plan(con: duckdb.DuckDBPyConnection, entry: _Entry) -> _PatchPlan | None:
    """What bringing ``entry`` up to date takes, or None when it is current: two small statements, the verdict log
    since the snapshot, then the flags of the queries it touched."""
    newest, touched = con.execute(
        "SELECT coalesce(max(event_id), 0), list(DISTINCT query_id) FILTER (WHERE event_id > $e) FROM verdicts",
        {"e": entry.event_id},
    ).fetchall()[0]
    if newest <= entry.event_id:
        return None
    touched = {str(q) for q in touched or []}
    before: dict = entry.state.flags
    now = _verdict_flags(con, sorted(touched))
    none = (False, False)
    changed = {k for k in set(now) | {k for k in before if k[0] in touched} if before.get(k, none) != now.get(k, none)}
    return _PatchPlan(newest, touched, now, sorted({q for q, _ in changed}))


#: Up to this many queries touched since a snapshot, its patch names them in the SQL (a filter inside each scan,
#: which skips the row groups that cannot hold them); past it, a semi-join on their list (one scan of each table).
_PATCH_BY_ID = 64


def _export_table(
    con: duckdb.DuckDBPyConnection, selection: Selection, model: str, stale_ok: bool = False,
    req: _Request | None = None,
) -> _Entry:
    """The in-memory snapshot of what ``selection`` would review (:mod:`auditor.gain`), patched for newer verdicts:
    its table name and its plan (trade-off, audit design) in ``state``."""

    def select(con: duckdb.DuckDBPyConnection, queries: list[str] | None, plan: _ExportPlan) -> pa.Table:
        """The review pool (:mod:`auditor.gain`) with its scores: of every query, or of ``queries`` only (the ones
        verdicts touched).

        A query's rows lie together in scores, bands and risk (written in query-id order), so a filter on a few
        named ids reads few row groups of each (DuckDB's zone maps) where a semi-join on a table of ids scans every
        row.
        """
        settle(con)
        kw: dict[str, Any] = {}
        only = ""
        if queries is not None and len(queries) <= _PATCH_BY_ID:
            kw["query_ids"] = queries
            only = f"AND {query_ids_sql(queries)}"
        elif queries is not None:
            con.register("_dirty_queries", pa.table({"query_id": pa.array(queries, pa.string())}))
            kw["queries"] = "_dirty_queries"
            only = "AND query_id IN (SELECT query_id FROM _dirty_queries)"
        pool = review_pool_sql(selection, model, plan.tradeoff, plan.audit, **kw)
        # The pool carries band, rule, weight, rank, sources and risk already: only the scores are joined.
        sql = f"""
            SELECT e.query_id, e.doc_id, e.band, e.rule, e.weight, {BAND_LEVEL_SQL.format(b="e.band")} AS band_level,
                   s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio, e.rank, e.p_fn,
                   string_split(e.source, ',') AS sources, e.slot, e.gain, e.audit, e.u,
                   NULL::UBIGINT AS rkey, NULL::BIGINT AS band_pos, NULL::BIGINT AS band_size
            FROM ({pool}) e
            JOIN (SELECT * FROM scored WHERE model = $m {only}) s ON s.query_id = e.query_id AND s.doc_id = e.doc_id
        """
        try:
            return con.sql(sql, params={"m": model}).to_arrow_table()
        finally:
            if "queries" in kw:
                con.unregister("_dirty_queries")

    def build(con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, int, _ExportState]:
        # solved (and cached in the store) before the snapshot, whose transaction is read-only and rolled back
        plan = _ExportPlan(selection.tradeoff(con, model),
                           audit_design(con, selection.config, model, selection.negatives))
        with _read_snapshot(con):  # the event id, the flags and the rows of one moment
            event_id = _last_event(con)
            return select(con, None, plan), event_id, _ExportState(_verdict_flags(con, None), plan)

    def fingerprint_of(con: duckdb.DuckDBPyConnection) -> tuple:
        hard, soft = _fingerprint(con, selection.config, model)
        return (*hard, selection.to_json()), soft

    key = ("export", req.store if req else _store_key(con), selection.to_json(), model)
    known = None
    if req is not None and req.config == selection.config and req.model == model:
        known = ((*req.fingerprint[0], selection.to_json()), req.fingerprint[1])
    entry = _TABLES.get(con, key, fingerprint_of, build, stale_ok, fingerprint=known)
    with entry.lock:  # one patcher per snapshot; the others wait and find it patched
        _patch_export(con, entry, lambda c, queries: select(c, queries, entry.state.plan))
    return entry



# --------------------------------------------------------------------------------------------------------------
# the queue query
# --------------------------------------------------------------------------------------------------------------

def _done_items(
    con: duckdb.DuckDBPyConnection, annotator: str | None, double_annotation: float, skip: Iterable[tuple[str, str]],
    mode: str = "risk", now: float | None = None,
) -> pd.DataFrame:
    """(query_id, doc_id) of items that leave this queue: judged or skipped by this annotator, or taken by enough
    others — other annotators' current verdicts and live leases together reach the number of annotators the item
    needs (1, or 2 when routed to double annotation).

    In stratified mode only verdicts given in a stratified queue count: an item judged earlier in risk order stays in
    the random walk (and is shown again), or the random sample would silently lack the riskiest items and every
    band's false-negative rate would come out too low. Leases count in every mode. The leases and skips tables are
    small (items held right now, items set aside), so this stays one cheap query per call.
    """
    params: dict[str, Any] = {"now": time.time() if now is None else float(now)}
    scope = "WHERE v.queue_mode LIKE 'stratified%'" if mode == "stratified" else ""
    mine, others, skipped = "false", "true", ""
    if annotator is not None:
        params["me"] = annotator
        mine, others = "bool_or(v.judged AND v.annotator = $me)", "v.annotator <> $me"
        skipped = "UNION ALL SELECT query_id, doc_id, annotator, true FROM skips WHERE annotator = $me"
    need = "1"
    if double_annotation > 0:
        need = f"CASE WHEN {DOUBLE_HASH_SQL} < $share THEN 2 ELSE 1 END"
        params["share"] = double_annotation
    done = con.execute(
        f"""
        WITH involved AS (
            SELECT v.query_id, v.doc_id, v.annotator, true AS judged FROM current_verdicts v {scope}
            UNION ALL
            SELECT query_id, doc_id, annotator, false FROM leases WHERE expires_at > $now
            {skipped}
        )
        SELECT v.query_id, v.doc_id FROM involved v GROUP BY v.query_id, v.doc_id
        HAVING {mine} OR count(DISTINCT v.annotator) FILTER (WHERE {others}) >= {need}
        """,
        params,
    ).df()
    skip = [(str(q), str(d)) for q, d in skip]
    if skip:
        done = pd.concat([done, pd.DataFrame(skip, columns=["query_id", "doc_id"])], ignore_index=True)
    return done.astype({"query_id": "object", "doc_id": "object"})


_OUT = (
    "query_id, doc_id, band, rule, s_neg, s_pos_min, s_pos_max, delta, ratio, rank, sources, weight, p_fn, "
    "coalesce(p_fn, (2 - band_level) / 3.0 + (0.5 + atan(delta) / pi()) / 3.0) AS risk, {sampling} AS sampling_prob, "
    "{gain} AS gain, {audit} AS audit"
)
#: ``_OUT``'s gain and audit columns outside the default queue (only it has them).
_NO_GAIN = {"gain": "NULL::DOUBLE", "audit": "FALSE"}

_ORDERS = {
    "risk": "p_fn DESC NULLS LAST, band_level, delta DESC, rank NULLS LAST, query_id, doc_id",
    "stratified": "band_pos, band_level, query_id, doc_id",
}


#: Columns of the item table holding each order's position (see ``_items_table``).
_POSITIONS = {"risk": "risk_pos", "stratified": "strat_pos"}


def _queue_sql(
    *,
    mode: str,
    bands: Sequence[str] | None,
    source: str | None,
    query_id: str | None,
    limit: int | None,
    n_done: int,
    items: str,
    interleave: _Interleave | None = None,
) -> tuple[str, list[Any]]:
    """SQL over an in-memory item table and the registered ``_done`` frame: filters, exclusions, order, limit."""
    params: list[Any] = []
    where = ["true"]
    if bands:
        unknown = set(bands) - set(BANDS)
        if unknown:
            raise ValueError(f"unknown band(s) {sorted(unknown)}: use {', '.join(BANDS)}")
        where.append(f"band IN ({', '.join('?' for _ in bands)})")
        params.extend(bands)
    if query_id is not None:
        where.append("query_id = ?")
        params.append(query_id)
    if source is not None:
        where.append("list_contains(sources, ?)")
        params.append(source)
    filtered = len(where) > 1
    pool = f"SELECT * FROM {items} WHERE {' AND '.join(where)}"
    avail = "SELECT * FROM pool ANTI JOIN _done USING (query_id, doc_id)"
    if mode == "export":
        return _export_queue_sql(pool, limit, n_done, interleave, params)  # _run passes the audit progress
    sampling = "band_pos::DOUBLE / band_size" if mode == "stratified" else "NULL::DOUBLE"
    order = _ORDERS[mode]
    if mode == "risk" or (mode == "stratified" and not filtered):
        order = _POSITIONS[mode]  # the same order, precomputed in the item table (a filter keeps its sequence)
    if mode == "stratified" and filtered and limit == 1:
        # With a filter the sample is drawn from the filtered items, so positions are counted inside it (a band's
        # random order restricted to a subset is a random order of that subset). For one item, two aggregates
        # replace a window over the whole pool: each band's first available item, then its position.
        sql = f"""
            WITH pool AS ({pool}),
            firsts AS (SELECT band, min((rkey, query_id, doc_id)) AS k FROM ({avail}) GROUP BY band),
            pos AS (
                SELECT f.band, f.k, count(*) FILTER (WHERE (p.rkey, p.query_id, p.doc_id) <= f.k) AS band_pos,
                       count(*) AS band_size
                FROM pool p JOIN firsts f USING (band) GROUP BY f.band, f.k
            ),
            picked AS (
                SELECT p.* EXCLUDE (band_pos, band_size), pos.band_pos, pos.band_size
                FROM pool p JOIN pos ON p.band = pos.band AND p.query_id = pos.k[2] AND p.doc_id = pos.k[3]
            )
            SELECT {_OUT.format(sampling=sampling, **_NO_GAIN)} FROM picked ORDER BY {order} LIMIT 1
        """
        return sql, params
    if mode == "stratified" and filtered:
        pool = (
            f"SELECT * EXCLUDE (band_pos, band_size), row_number() OVER (PARTITION BY band ORDER BY rkey, query_id, "
            f"doc_id) AS band_pos, count(*) OVER (PARTITION BY band) AS band_size FROM ({pool})"
        )
    if limit is None:
        sql = f"WITH pool AS ({pool}) SELECT {_OUT.format(sampling=sampling, **_NO_GAIN)} FROM ({avail}) ORDER BY {order}"
    else:
        # The done set is small: the first limit + n_done items of the pool always hold the first `limit` available
        # ones, so the anti-join runs on a handful of rows and the pool needs only a top-N, not a full sort.
        # Unfiltered, the first k items are known without a sort: risk positions are 1..N (stored in that order,
        # so DuckDB reads one row group), and the first k of the stratified order have band_pos <= k.
        k = int(limit) + int(n_done)
        bound = {"risk": f"WHERE risk_pos <= {k}", "stratified": f"WHERE band_pos <= {k}"}.get(mode, "")
        sql = f"""
            WITH pool AS ({pool}),
            head AS (SELECT * FROM pool {"" if filtered else bound} ORDER BY {order} LIMIT ?)
            SELECT {_OUT.format(sampling=sampling, **_NO_GAIN)} FROM head ANTI JOIN _done USING (query_id, doc_id)
            ORDER BY {order} LIMIT ?
        """
        params += [k, int(limit)]
    return sql, params


@dataclass(frozen=True)
class _Interleave:
    """Where the audit stream stands: its rate, how often it is served, and the items of each stream reviewed."""

    rate: float
    every: int
    audits_done: int
    others_done: int


def _audit_progress(con: duckdb.DuckDBPyConnection, audit: AuditDesign,
                    cfg: ReviewConfig = ReviewConfig()) -> _Interleave:
    """How many reviewed items are audit items (``u < rate``, whatever queue served them) and how many are not: the
    queue keeps one audit item in every ``audit_every`` reviews while audit items are left."""
    a, o = con.execute(
        f"""SELECT count(*) FILTER (WHERE u < $r), count(*) FILTER (WHERE u >= $r)
            FROM (SELECT {audit.u_sql()} AS u FROM (SELECT DISTINCT query_id, doc_id FROM current_verdicts))""",
        {"r": float(audit.rate)},
    ).fetchall()[0]
    return _Interleave(float(audit.rate), max(int(cfg.audit_every), 2), int(a), int(o))


def _export_queue_sql(
    pool: str, limit: int | None, n_done: int, il: _Interleave, params: list[Any]
) -> tuple[str, list[Any]]:
    """The default queue: two streams, interleaved. Audit items (:mod:`auditor.audit`) in the order of their random
    number, and the others by expected gain (:mod:`auditor.gain`); the audit stream fills one position in every
    ``il.every``, counted from the reviews so far, so the share holds across requests of one item."""
    e = il.every
    head = ""
    args: list[Any] = []
    if limit is not None:
        k = int(limit) + int(n_done)
        head = "LIMIT ?"
        args = [k, k]
    sql = f"""
        WITH pool AS ({pool}),
        head AS (SELECT * FROM (SELECT * FROM pool WHERE audit ORDER BY u, query_id, doc_id {head})
                 UNION ALL
                 SELECT * FROM (SELECT * FROM pool WHERE NOT audit ORDER BY gain DESC, query_id, doc_id {head})),
        avail AS (SELECT *, row_number() OVER (PARTITION BY audit ORDER BY CASE WHEN audit THEN u ELSE -gain END,
                                                                            query_id, doc_id) AS rn
                  FROM head ANTI JOIN _done USING (query_id, doc_id))
        SELECT {_OUT.format(sampling=f"CASE WHEN audit THEN {il.rate!r} END", gain="gain", audit="audit")}
        FROM avail
        ORDER BY CASE WHEN audit THEN ({il.audits_done} + rn) * {e}
                      ELSE ({il.others_done} + rn) + floor(({il.others_done} + rn - 1) / {e - 1}) END,
                 query_id, doc_id
        {"LIMIT ?" if limit is not None else ""}
    """
    return sql, params + args + ([int(limit)] if limit is not None else [])


def _run(
    con: duckdb.DuckDBPyConnection,
    req: _Request,
    *,
    mode: str,
    seed: int,
    annotator: str | None,
    double_annotation: float,
    skip: Iterable[tuple[str, str]],
    now: float | None = None,
    stale_ok: bool = False,
    **kw: Any,
) -> pd.DataFrame:
    if mode not in MODES:
        raise ValueError(f"unknown queue mode {mode!r}: use one of {', '.join(MODES)}")
    done = _done_items(con, annotator, double_annotation, skip, mode, now)
    mem = _TABLES.cursor()
    for attempt in (1, 2):
        interleave = None
        if mode == "export":
            entry = _export_table(con, req.selection or current_selection(con), req.model, stale_ok, req)
            items = entry.table
            interleave = _audit_progress(con, entry.state.plan.audit)
        else:
            items = _items_table(con, req.config, req.model, seed, stale_ok, req)
        sql, params = _queue_sql(mode=mode, items=items, n_done=len(done), interleave=interleave, **kw)
        mem.register("_done", done)
        try:
            return mem.execute(sql, params).df()
        except duckdb.CatalogException:
            if attempt == 2:
                raise
        finally:
            mem.unregister("_done")
    raise AssertionError("unreachable")


@dataclass
class _Request:
    """What one queue request learned about the store, in two statements (a statement costs 1-3 ms however small:
    eight of them were a tenth of a request's time at 1M candidates)."""

    model: str
    config: str
    selection: Selection | None
    store: tuple
    fingerprint: tuple[tuple, Any]


def _prepare(
    con: duckdb.DuckDBPyConnection, mode: str, model: str | None, config: str, selection: Selection | None
) -> _Request:
    """Resolve the model and, in export mode, the settings (whose band configuration then rules); check that the
    bands exist; read the store's fingerprint."""
    from auditor.bands import _LATEST_MODEL_KEY, BANDS_WRITTEN_KEY
    from auditor.select import _SETTINGS_KEY

    meta, sizes = _store_state(con, _SETTINGS_KEY, _LATEST_MODEL_KEY)
    settings, latest, stamp = meta.get(_SETTINGS_KEY), meta.get(_LATEST_MODEL_KEY), meta.get(BANDS_WRITTEN_KEY)
    if mode == "export":
        selection = selection or (Selection.from_json(settings) if settings else Selection())
        config = selection.config
    chosen = model or latest
    has_scores, has_bands, fit_id = (False, False, None) if chosen is None else con.execute(
        f"SELECT EXISTS (SELECT 1 FROM scores WHERE model = $m), "
        f"EXISTS (SELECT 1 FROM bands WHERE config = $c AND model = $m), {_FIT_SQL}",
        {"m": chosen, "c": config},
    ).fetchall()[0]
    if not has_scores and model is None:  # no record of the latest model: the slow way (and its clear errors)
        chosen = resolve_model(con, None, config)
        return _prepare(con, mode, chosen, config, selection)
    if not has_bands:
        _check_bands_exist(con, config, chosen)  # raises the error that names the fix
    return _Request(chosen, config, selection, _store_key(con),
                    _fingerprint_of(config, chosen, stamp, sizes, fit_id))


def build_queue(
    con: duckdb.DuckDBPyConnection,
    *,
    mode: str = ReviewConfig.mode,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    bands: Sequence[str] | None = None,
    source: str | None = None,
    query_id: str | None = None,
    annotator: str | None = None,
    limit: int | None = None,
    seed: int = 42,
    double_annotation: float | None = None,
    skip: Iterable[tuple[str, str]] = (),
    selection: Selection | None = None,
    stale_ok: bool = False,
) -> pd.DataFrame:
    """The review queue in order (see the module docstring for the orders and the exclusion rules).

    Columns: query_id, doc_id, band, rule, s_neg, s_pos_min, s_pos_max, delta, ratio, rank, sources (list), weight,
    p_fn (P(false negative), NULL where no risk was computed), risk (p_fn, or a band-and-delta score without it),
    sampling_prob (stratified mode only). ``selection`` gives the export settings of export mode (default: those of
    the latest export); its band configuration then replaces ``config``.
    """
    req = _prepare(con, mode, model, config, selection)
    df = _run(
        con, req, mode=mode, seed=seed, bands=bands, source=source, query_id=query_id, annotator=annotator, skip=skip,
        double_annotation=double_share(double_annotation), limit=limit, stale_ok=stale_ok,
    )
    if len(df):
        df["sources"] = df["sources"].map(lambda s: [str(x) for x in s] if s is not None else [])
    return df[ITEM_COLUMNS] if len(df) else pd.DataFrame(columns=ITEM_COLUMNS)


def next_item(
    con: duckdb.DuckDBPyConnection,
    *,
    annotator: str,
    mode: str = ReviewConfig.mode,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    bands: Sequence[str] | None = None,
    source: str | None = None,
    query_id: str | None = None,
    skip: Iterable[tuple[str, str]] = (),
    seed: int = 42,
    double_annotation: float | None = None,
    selection: Selection | None = None,
    stale_ok: bool = False,
) -> dict[str, Any] | None:
    """The next item for ``annotator`` (one query with LIMIT 1), or None when the queue is empty.

    ``skip`` holds (query_id, doc_id) pairs the annotator skipped in this session; they are left out without any
    event being written. The dict has the columns of :func:`build_queue` plus ``mode``, ``model`` and ``config``.
    """
    req = _prepare(con, mode, model, config, selection)
    df = _run(
        con, req, mode=mode, seed=seed, bands=bands, source=source, query_id=query_id, annotator=annotator, skip=skip,
        double_annotation=double_share(double_annotation), limit=1, stale_ok=stale_ok,
    )
    if df.empty:
        return None
    return _item_dict(df.iloc[0], mode, req.model, req.config, filtered=bool(source or query_id))


def _item_dict(row: pd.Series, mode: str, model: str, config: str, filtered: bool) -> dict[str, Any]:
    """A queue row as plain Python values, with the queue mode its verdict records, the model and the config."""
    item = {k: _py(v) for k, v in row.items()}
    if item["rank"] is not None:
        item["rank"] = int(item["rank"])
    item["sources"] = list(item.get("sources") or [])
    # A stratified walk narrowed to one source or query samples that subset, not the band: its verdicts must not be
    # extrapolated to the whole band (auditor.stats counts only queue_mode 'stratified' as a band sample).
    item["mode"] = "stratified_filtered" if mode == "stratified" and filtered else mode
    item["model"] = model
    item["config"] = config
    return item


def _py(value: Any) -> Any:
    """A pandas / numpy cell as a plain Python value (None for missing), so items serialise to JSON."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(x) for x in value]
    if hasattr(value, "item"):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:  # nullable columns (a given negative has no rank)
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def risk_of(band: str, delta: float) -> float:
    """Python twin of the SQL ``risk`` column where no P(false negative) exists (for display and tests)."""
    level = {"suspicious": 0, "ambiguous": 1}.get(band, 2)
    return (2 - level) / 3.0 + (0.5 + math.atan(delta) / math.pi) / 3.0


# --------------------------------------------------------------------------------------------------------------
# leases: which annotator holds which items right now
# --------------------------------------------------------------------------------------------------------------

#: How long claimed items stay held; every claim or verdict of the annotator renews all of its leases.
LEASE_SECONDS = 600

#: Claims read the leases, pick items and write leases; one process writes a store (DuckDB's rule), so a
#: process-wide lock around the transaction makes a claim atomic against every other claim.
_LEASE_LOCK = threading.Lock()


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


def held_items(con: duckdb.DuckDBPyConnection, annotator: str, now: float | None = None) -> list[dict[str, Any]]:
    """The items ``annotator`` holds now (live leases), in the order they were claimed."""
    rows = con.execute(
        "SELECT item FROM leases WHERE annotator = ? AND expires_at > ? ORDER BY seq", [annotator, _now(now)]
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


def _expire(con: duckdb.DuckDBPyConnection, annotator: str, now: float) -> None:
    """Drop expired leases, and ``annotator``'s leases on items it judged since claiming them or skipped.

    Judging or skipping does not end a lease at once (no lock on the annotator's key press): a judged item leaves
    every queue that its verdicts fill anyway, and the lease goes at the annotator's next claim.
    """
    con.execute("DELETE FROM leases WHERE expires_at <= ?", [now])
    con.execute(
        """
        DELETE FROM leases WHERE annotator = $a AND (EXISTS (
            SELECT 1 FROM verdicts v WHERE v.annotator = $a AND v.query_id = leases.query_id
              AND v.doc_id = leases.doc_id AND v.verdict <> 'undo' AND v.event_id > leases.event_floor)
          OR EXISTS (SELECT 1 FROM skips k WHERE k.annotator = $a AND k.query_id = leases.query_id
                     AND k.doc_id = leases.doc_id))
        """,
        {"a": annotator},
    )


def _insert_leases(
    con: duckdb.DuckDBPyConnection, annotator: str, items: list[dict[str, Any]], now: float, ttl: float,
    front: bool = False,
) -> None:
    if not items:
        return
    lo, hi = con.execute(
        "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM leases WHERE annotator = ?", [annotator]
    ).fetchall()[0]
    floor = _last_event(con)
    start = lo - len(items) if front else hi + 1
    con.executemany(
        "INSERT INTO leases (query_id, doc_id, annotator, claimed_at, expires_at, seq, event_floor, item) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [[it["query_id"], it["doc_id"], annotator, now, now + ttl, start + i, floor, json.dumps(it, default=str)]
         for i, it in enumerate(items)],
    )


def claim(
    con: duckdb.DuckDBPyConnection,
    *,
    annotator: str,
    limit: int,
    ttl: float = LEASE_SECONDS,
    now: float | None = None,
    mode: str = ReviewConfig.mode,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    bands: Sequence[str] | None = None,
    source: str | None = None,
    query_id: str | None = None,
    skip: Iterable[tuple[str, str]] = (),
    seed: int = 42,
    double_annotation: float | None = None,
    selection: Selection | None = None,
    stale_ok: bool = False,
) -> list[dict[str, Any]]:
    """Hold up to ``limit`` review items for ``annotator`` for ``ttl`` seconds, and return them in order.

    Items the annotator already holds come first (asking again returns them, and renews their leases); the rest are
    new leases on the next items of the queue (``build_queue`` with the same arguments), which by then leaves out
    every item held by another annotator — unless the item is routed to double annotation and only one other holds
    or judged it. Atomic: two claims at once never hold the same item. Each item is a dict like
    :func:`next_item`'s. ``stale_ok``: right after a refit of the risk model, order by the previous fit while the
    new order is built in the background (for a long-lived connection such as the app's; see ``_MemTables.get``).
    """
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError("a claim needs the annotator's name")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    now = _now(now)
    with _LEASE_LOCK:
        settle(con)
        with transaction(con):
            _expire(con, annotator, now)
            con.execute("UPDATE leases SET expires_at = ? WHERE annotator = ?", [now + ttl, annotator])
            held = held_items(con, annotator, now)
            new: list[dict[str, Any]] = []
            if len(held) < limit:
                req = _prepare(con, mode, model, config, selection)
                held_ids = [(h["query_id"], h["doc_id"]) for h in held]
                df = _run(
                    con, req, mode=mode, seed=seed, bands=bands, source=source, query_id=query_id,
                    annotator=annotator, skip=[*skip, *held_ids], now=now,
                    double_annotation=double_share(double_annotation), limit=limit - len(held), stale_ok=stale_ok,
                )
                new = [_item_dict(row, mode, req.model, req.config, filtered=bool(source or query_id))
                       for _, row in df.iterrows()]
                _insert_leases(con, annotator, new, now, ttl)
    return (held + new)[:limit]


def hold(
    con: duckdb.DuckDBPyConnection, annotator: str, item: dict[str, Any], *, ttl: float = LEASE_SECONDS,
    now: float | None = None, double_annotation: float | None = None,
) -> bool:
    """Put one given item at the front of ``annotator``'s held items (an undone verdict comes back to its author).

    False, and nothing held, when the item is not the annotator's to take: others judged or hold it as many times
    as it needs annotators (the queue's own exclusion rule).
    """
    now = _now(now)
    key = (item["query_id"], item["doc_id"])
    with _LEASE_LOCK:
        settle(con)
        with transaction(con):
            done = _done_items(con, annotator, double_share(double_annotation), (), "risk", now)
            if key in set(zip(done["query_id"], done["doc_id"])):
                return False
            con.execute("DELETE FROM leases WHERE annotator = ? AND query_id = ? AND doc_id = ?", [annotator, *key])
            _insert_leases(con, annotator, [item], now, ttl, front=True)
    return True


def release(
    con: duckdb.DuckDBPyConnection, annotator: str, items: Iterable[tuple[str, str]] | None = None
) -> int:
    """End ``annotator``'s leases on ``items`` (all of them when None); returns how many ended."""
    with _LEASE_LOCK:
        settle(con)
        if items is None:
            return int(con.execute("DELETE FROM leases WHERE annotator = ? RETURNING 1", [annotator]).df().shape[0])
        n = 0
        for q, d in items:
            n += len(con.execute("DELETE FROM leases WHERE annotator = ? AND query_id = ? AND doc_id = ? RETURNING 1",
                                 [annotator, q, d]).fetchall())
        return n


def renew(
    con: duckdb.DuckDBPyConnection, annotator: str, *, ttl: float = LEASE_SECONDS, now: float | None = None
) -> int:
    """Extend ``annotator``'s live leases by ``ttl`` from now (the annotator is still working); returns how many."""
    now = _now(now)
    with _LEASE_LOCK:
        settle(con)
        return len(con.execute("UPDATE leases SET expires_at = ? WHERE annotator = ? AND expires_at > ? RETURNING 1",
                               [now + ttl, annotator, now]).fetchall())


def other_holders(
    con: duckdb.DuckDBPyConnection, annotator: str, query_id: str, doc_id: str, now: float | None = None
) -> list[str]:
    """Annotators other than ``annotator`` who hold the item now."""
    return [r[0] for r in con.execute(
        "SELECT annotator FROM leases WHERE query_id = ? AND doc_id = ? AND expires_at > ? AND annotator <> ? "
        "ORDER BY annotator", [query_id, doc_id, _now(now), annotator]).fetchall()]


def leases_overview(con: duckdb.DuckDBPyConnection, now: float | None = None) -> list[dict[str, Any]]:
    """Per annotator: items held now and when the first of those leases runs out (for the lead's Team page)."""
    now = _now(now)
    return [
        {"annotator": a, "held": int(n), "expires_in_s": int(e - now)}
        for a, n, e in con.execute(
            "SELECT annotator, count(*), min(expires_at) FROM leases WHERE expires_at > ? GROUP BY annotator "
            "ORDER BY annotator", [now]).fetchall()
    ]


def leases_now(con: duckdb.DuckDBPyConnection, limit: int = 200, now: float | None = None) -> list[dict[str, Any]]:
    """Every item held now, by whom and until when, soonest end first (the Team page's list of items)."""
    now = _now(now)
    return [
        {"annotator": a, "query_id": q, "doc_id": d, "expires_in_s": int(e - now)}
        for a, q, d, e in con.execute(
            "SELECT annotator, query_id, doc_id, expires_at FROM leases WHERE expires_at > ? "
            "ORDER BY expires_at, annotator, query_id, doc_id LIMIT ?", [now, int(limit)]).fetchall()
    ]


# --------------------------------------------------------------------------------------------------------------
# skips: items an annotator set aside (kept out of that annotator's queue until brought back)
# --------------------------------------------------------------------------------------------------------------

def add_skip(con: duckdb.DuckDBPyConnection, annotator: str, query_id: str, doc_id: str) -> None:
    """Set an item aside for ``annotator``; its lease ends at the annotator's next claim (then others may take it)."""
    if not con.execute("SELECT 1 FROM skips WHERE annotator = ? AND query_id = ? AND doc_id = ?",
                       [annotator, query_id, doc_id]).fetchall():
        con.execute("INSERT INTO skips (annotator, query_id, doc_id) VALUES (?, ?, ?)", [annotator, query_id, doc_id])


def skipped(con: duckdb.DuckDBPyConnection, annotator: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in con.execute(
        "SELECT query_id, doc_id FROM skips WHERE annotator = ? ORDER BY created_at", [annotator]).fetchall()]


def clear_skips(con: duckdb.DuckDBPyConnection, annotator: str, items: Iterable[tuple[str, str]] | None = None) -> int:
    """Bring skipped items back into ``annotator``'s queue (all of them when ``items`` is None)."""
    if items is None:
        return len(con.execute("DELETE FROM skips WHERE annotator = ? RETURNING 1", [annotator]).fetchall())
    return sum(len(con.execute("DELETE FROM skips WHERE annotator = ? AND query_id = ? AND doc_id = ? RETURNING 1",
                               [annotator, q, d]).fetchall()) for q, d in items)
