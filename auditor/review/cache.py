"""Pages of the queue's orders, kept in a private in-memory DuckDB and keyed by the fingerprint of the rows they
were built from.

A *page* is a prefix of one order: its first ``limit`` items (``complete`` when it holds them all). It is built by
a function of the store (``build(con, limit)``), grown when annotators get past it (:meth:`PageCache.grow`), and
rebuilt when its fingerprint changes: a changed hard part (re-banding, re-scoring, a user's deliberate act) before
answering; a changed soft part only (a risk refit) by the store's background owner while the old page keeps
serving (stale while revalidating), or inline where the process has no owner (a command).

Eviction: the ``size`` most recently built pages are kept; an older one is dropped one generation late, so a reader
that just looked up its name still finds it (a reader slower than that gets a CatalogException and retries).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.ipc  # noqa: F401 - pa.ipc

from auditor.store import keep_page, kept_page, writable

from .background import owner_of
from .state import store_key

log = logging.getLogger(__name__)

#: Rows a new page holds (per order; each growth multiplies it by ``GROWTH``).
PAGE_ROWS = 4096
GROWTH = 4

#: Past this many rows a page is the whole order (DuckDB's top-n aggregates stop below a million).
MAX_PAGE_ROWS = 500_000

#: A page not asked for in this long is not rebuilt by ``refresh`` (it is rebuilt if it is asked for again).
REFRESH_IDLE_S = 60.0


@dataclass
class Built:
    """What a page builder returns."""

    rows: pa.Table
    complete: bool  #: the rows are the whole order (no growth needed)
    event_id: int = 0  #: verdict events up to this one are reflected (export pages)
    state: Any = None  #: what the builder keeps beside the rows (export pages: the verdict flags they reflect)


Builder = Callable[[duckdb.DuckDBPyConnection, int | None], Built]
Fingerprinter = Callable[[duckdb.DuckDBPyConnection], tuple]


def _no_state(state: Any) -> str | None:
    return None


def _load_none(con: duckdb.DuckDBPyConnection, text: str | None) -> Any:
    return None


@dataclass(frozen=True)
class PageSpec:
    """How to build one order's page, read its fingerprint, and keep it in the store (``name``: its key there;
    None: not kept), with its state written and read as JSON."""

    build: Builder
    fingerprint_of: Fingerprinter
    name: str | None = None
    dump_state: Callable[[Any], str | None] = _no_state
    load_state: Callable[[duckdb.DuckDBPyConnection, str | None], Any] = _load_none


@dataclass
class Page:
    fingerprint: tuple
    table: str
    limit: int | None  #: rows asked of the builder (None: every row)
    complete: bool
    spec: PageSpec
    event_id: int = 0
    state: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)  #: one patcher at a time (export pages)
    used_at: float = 0.0  #: time.monotonic() of the last request served from it (``refresh`` skips idle ones)


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


class PageCache:
    """Pages derived from stores, newest ``size`` kept in memory (and each in its store, see ``queue_pages``)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._mem: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._pages: dict[tuple, Page] = {}
        self._retired: list[str] = []
        self._seq = iter(range(1, 1 << 62))

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the in-memory database for this thread."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                if self._mem is None:
                    self._mem = duckdb.connect(":memory:")
                cur = self._mem.cursor()
            self._local.cursor = cur
        return cur

    def tables(self) -> list[str]:
        """Tables alive in the in-memory database (tests of eviction)."""
        return [r[0] for r in self.cursor().execute("SELECT table_name FROM duckdb_tables()").fetchall()]

    def get(self, con: duckdb.DuckDBPyConnection, key: tuple, spec: PageSpec,
            fingerprint: tuple | None = None) -> Page:
        """The page for ``key`` (``fingerprint`` is (hard, soft), read by the caller if it has it already): from
        memory, else as the store kept it, else built now."""
        if fingerprint is None:
            fingerprint = spec.fingerprint_of(con)
        with self._lock:
            hit = self._pages.get(key)
        if hit is None and spec.name is not None:
            hit = self._load(con, key, spec, fingerprint)
        if hit is not None:
            hit.used_at = time.monotonic()
            if hit.fingerprint == fingerprint:
                return hit
        owner = owner_of(con) if hit is not None and hit.fingerprint[0] == fingerprint[0] else None
        if owner is not None:
            limit = hit.limit
            owner.submit(("page", key), lambda cur: self._build(cur, key, spec.fingerprint_of(cur), spec, limit))
            return hit
        return self._build(con, key, fingerprint, spec, hit.limit if hit else PAGE_ROWS)

    def grow(self, con: duckdb.DuckDBPyConnection, key: tuple, page: Page, whole: bool = False) -> Page:
        """A longer page of the same order (annotators got past this one; ``whole``: all of it), built now: the
        request needs it."""
        limit = None if whole or page.limit is None else page.limit * GROWTH
        return self._build(con, key, page.fingerprint, page.spec, limit, replacing=page)

    def refresh(self, con: duckdb.DuckDBPyConnection) -> int:
        """Rebuild, on ``con`` and now, this store's pages in use (asked for in the last ``REFRESH_IDLE_S``) whose
        fingerprint changed (after a refit, so that the next request finds them ready); returns how many."""
        store, recent = store_key(con), time.monotonic() - REFRESH_IDLE_S
        with self._lock:
            pages = [(k, p) for k, p in self._pages.items() if k[1] == store and p.used_at >= recent]
        rebuilt = 0
        for key, page in pages:
            fingerprint = page.spec.fingerprint_of(con)
            if fingerprint != page.fingerprint:
                self._build(con, key, fingerprint, page.spec, page.limit)
                rebuilt += 1
        return rebuilt

    def _load(self, con: duckdb.DuckDBPyConnection, key: tuple, spec: PageSpec, fingerprint: tuple) -> Page | None:
        """The page the store kept under ``spec.name`` if it was built from the same bands and scores (a refit
        since makes it stale, not useless: it serves while the new one is built)."""
        try:
            kept = kept_page(con, spec.name)
        except duckdb.Error:  # an older store without the table, or a closed one: build instead
            return None
        if kept is None:
            return None
        fp_text, limit, complete, event_id, state, blob = kept
        hard, soft = json.loads(fp_text)
        if hard != json.loads(_json(fingerprint[0])):
            return None
        rows = pa.ipc.open_stream(blob).read_all()
        keep_fp = fingerprint if soft == json.loads(_json(fingerprint[1])) else (fingerprint[0], ("kept", soft))
        return self._install(key, keep_fp, limit, Built(rows, complete, event_id, spec.load_state(con, state)), spec)

    def _keep(self, con: duckdb.DuckDBPyConnection, page: Page, built: Built) -> None:
        """Write the page into its store: by the background owner where there is one, else now where ``con`` may
        write (a command outside a transaction); a read-only or busy connection keeps nothing."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, built.rows.schema) as writer:
            writer.write_table(built.rows)
        args = (page.spec.name, _json([page.fingerprint[0], page.fingerprint[1]]), page.limit, page.complete,
                built.event_id, page.spec.dump_state(built.state), sink.getvalue().to_pybytes())

        def job(cur: duckdb.DuckDBPyConnection) -> None:
            keep_page(cur, *args)

        owner = owner_of(con)
        if owner is not None:
            owner.submit(("keep", page.spec.name), job, heavy=False)
        else:
            try:
                if writable(con):
                    job(con)
            except duckdb.Error as exc:  # a cache: failing to keep it costs a rebuild later, nothing else
                log.debug("queue page not kept: %s", exc)

    def _build(self, con: duckdb.DuckDBPyConnection, key: tuple, fingerprint: tuple, spec: PageSpec,
               limit: int | None, replacing: Page | None = None) -> Page:
        with self._build_lock:  # one builder at a time; whoever waited finds the fresh page
            with self._lock:
                hit = self._pages.get(key)
            if hit is not None and hit.fingerprint == fingerprint and hit is not replacing and (
                    hit.complete or (limit is not None and hit.limit is not None and hit.limit >= limit)):
                return hit
            if limit is not None and limit >= MAX_PAGE_ROWS:
                limit = None
            built = spec.build(con, limit)
            page = self._install(key, fingerprint, limit, built, spec)
        if spec.name is not None and limit is not None:  # a prefix; a whole order (a filter's) can be millions of rows
            self._keep(con, page, built)
        return page

    def _install(self, key: tuple, fingerprint: tuple, limit: int | None, built: Built, spec: PageSpec) -> Page:
        name = f"page_{next(self._seq)}"
        mem = self.cursor()
        mem.register("_arrow_page", built.rows)
        try:
            mem.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_page")
        finally:
            mem.unregister("_arrow_page")
        page = Page(fingerprint, name, limit, built.complete, spec, built.event_id, built.state,
                    used_at=time.monotonic())
        with self._lock:
            old = self._pages.pop(key, None)
            self._pages[key] = page
            if old is not None:
                self._retired.append(old.table)
            while len(self._pages) > self.size:
                self._retired.append(self._pages.pop(next(iter(self._pages))).table)
            doomed = self._retired[:-1]
            del self._retired[: len(doomed)]
        for table in doomed:
            mem.execute(f"DROP TABLE IF EXISTS {table}")
        return page


PAGES = PageCache()


def refresh(con: duckdb.DuckDBPyConnection) -> int:
    """Rebuild now, on ``con``, the queue pages of this store that a refit or re-banding made stale (the background
    refit calls it, so the rebuild runs in its job and counts towards its share of the machine)."""
    return PAGES.refresh(con)
