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

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from .background import owner_of
from .state import store_key

#: Rows a new page holds (per order; each growth multiplies it by ``GROWTH``).
PAGE_ROWS = 4096
GROWTH = 4

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


@dataclass
class Page:
    fingerprint: tuple
    table: str
    limit: int | None  #: rows asked of the builder (None: every row)
    complete: bool
    build: Builder
    fingerprint_of: Fingerprinter
    event_id: int = 0
    state: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)  #: one patcher at a time (export pages)
    used_at: float = 0.0  #: time.monotonic() of the last request served from it (``refresh`` skips idle ones)


class PageCache:
    """Pages derived from stores, newest ``size`` kept."""

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

    def get(self, con: duckdb.DuckDBPyConnection, key: tuple, fingerprint_of: Fingerprinter, build: Builder,
            fingerprint: tuple | None = None) -> Page:
        """The page for ``key`` (``fingerprint`` is (hard, soft), read by the caller if it has it already)."""
        if fingerprint is None:
            fingerprint = fingerprint_of(con)
        with self._lock:
            hit = self._pages.get(key)
            if hit is not None:
                hit.used_at = time.monotonic()
                if hit.fingerprint == fingerprint:
                    return hit
        owner = owner_of(con) if hit is not None and hit.fingerprint[0] == fingerprint[0] else None
        if owner is not None:
            limit = hit.limit
            owner.submit(("page", key), lambda cur: self._build(cur, key, fingerprint_of(cur), build,
                                                                fingerprint_of, limit))
            return hit
        return self._build(con, key, fingerprint, build, fingerprint_of, hit.limit if hit else PAGE_ROWS)

    def grow(self, con: duckdb.DuckDBPyConnection, key: tuple, page: Page, whole: bool = False) -> Page:
        """A longer page of the same order (annotators got past this one; ``whole``: all of it), built now: the
        request needs it."""
        limit = None if whole or page.limit is None else page.limit * GROWTH
        return self._build(con, key, page.fingerprint, page.build, page.fingerprint_of, limit, replacing=page)

    def refresh(self, con: duckdb.DuckDBPyConnection) -> int:
        """Rebuild, on ``con`` and now, this store's pages in use (asked for in the last ``REFRESH_IDLE_S``) whose
        fingerprint changed (after a refit, so that the next request finds them ready); returns how many."""
        store, recent = store_key(con), time.monotonic() - REFRESH_IDLE_S
        with self._lock:
            pages = [(k, p) for k, p in self._pages.items() if k[1] == store and p.used_at >= recent]
        rebuilt = 0
        for key, page in pages:
            fingerprint = page.fingerprint_of(con)
            if fingerprint != page.fingerprint:
                self._build(con, key, fingerprint, page.build, page.fingerprint_of, page.limit)
                rebuilt += 1
        return rebuilt

    def _build(self, con: duckdb.DuckDBPyConnection, key: tuple, fingerprint: tuple, build: Builder,
               fingerprint_of: Fingerprinter, limit: int | None, replacing: Page | None = None) -> Page:
        with self._build_lock:  # one builder at a time; whoever waited finds the fresh page
            with self._lock:
                hit = self._pages.get(key)
            if hit is not None and hit.fingerprint == fingerprint and hit is not replacing and (
                    hit.complete or (limit is not None and hit.limit is not None and hit.limit >= limit)):
                return hit
            built = build(con, limit)
            name = f"page_{next(self._seq)}"
            mem = self.cursor()
            mem.register("_arrow_page", built.rows)
            try:
                mem.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_page")
            finally:
                mem.unregister("_arrow_page")
            page = Page(fingerprint, name, limit, built.complete, build, fingerprint_of, built.event_id, built.state,
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
