"""The one owner of a store's background work in a long-lived process (the app): queue page rebuilds, risk refits,
prefetches of the next item. Argilla-style: work is submitted to the owner, never started by whoever needs it.

Each job runs on a cursor of the owner's own (``SharedStore.cursor`` in the worker thread), so no caller lends a
connection that must outlive its request; :meth:`BackgroundWork.close` (called by ``SharedStore.close`` and once
at interpreter exit) cancels what has not started and waits for what has. A process without an owner (a command,
a test on a plain connection) does the same work inline, in the caller's thread.

Two lanes: ``heavy`` (rebuilds and refits, one at a time, on half of DuckDB's threads: :func:`background_work`)
and ``light`` (prefetches of what the annotator sees next, which must not queue behind a rebuild).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import duckdb

from auditor.store import SharedStore, background_work

from .state import store_key

log = logging.getLogger(__name__)

Job = Callable[[duckdb.DuckDBPyConnection], Any]


def _lower_priority() -> None:
    """Background threads yield the CPU to the threads serving requests (Linux: nice applies to the thread)."""
    try:
        os.nice(5)
    except OSError:  # not permitted here: same priority, still off the request's thread
        pass


class BackgroundWork:
    """Background jobs of one store, deduplicated by key; ``close()`` ends them all."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self._heavy = ThreadPoolExecutor(1, thread_name_prefix="auditor-heavy", initializer=_lower_priority)
        self._light = ThreadPoolExecutor(2, thread_name_prefix="auditor-light", initializer=_lower_priority)
        self._lock = threading.Lock()
        self._pending: dict[Hashable, Future] = {}
        self._timers: set[threading.Timer] = set()
        self._closed = False
        self.errors: list[str] = []  #: the last failures, for the app's status line and tests
        self.key = store_key(store.cursor())
        store.on_close(self.close)

    @classmethod
    def of(cls, store: SharedStore) -> BackgroundWork:
        """The owner of ``store``'s background work, made on first use (one per shared store, also when several
        threads ask at once)."""
        with _OWNERS_LOCK:
            owner = getattr(store, "_background", None)
            if owner is None or owner._closed:
                owner = cls(store)
                store._background = owner  # type: ignore[attr-defined]
                _OWNERS[owner.key] = owner
            return owner

    def running(self, key: Hashable) -> bool:
        """A job with ``key`` is waiting or running."""
        with self._lock:
            f = self._pending.get(key)
            return f is not None and not f.done()

    def submit(self, key: Hashable, job: Job, *, heavy: bool = True) -> Future | None:
        """Run ``job(cursor)`` in the background unless a job with ``key`` is already waiting or running (then its
        future is returned); None once the owner is closed."""
        with self._lock:
            if self._closed:
                return None
            running = self._pending.get(key)
            if running is not None and not running.done():
                return running
            future = (self._heavy if heavy else self._light).submit(self._run, key, job, heavy)
            self._pending[key] = future
        future.add_done_callback(lambda f, k=key: self._forget(k, f))
        return future

    def _forget(self, key: Hashable, future: Future) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def later(self, delay: float, key: Hashable, job: Job) -> None:
        """Submit ``job`` (heavy) after ``delay`` seconds, unless the owner closes first."""
        def fire() -> None:
            with self._lock:
                self._timers.discard(timer)
            self.submit(key, job)

        timer = threading.Timer(max(0.0, delay), fire)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    def _run(self, key: Hashable, job: Job, heavy: bool) -> Any:
        cur = self.store.cursor()
        try:
            if heavy:
                with background_work(cur):
                    return job(cur)
            return job(cur)
        except Exception as exc:  # noqa: BLE001 - a failed job leaves the old state in force; the next request retries
            self.errors = [*self.errors[-9:], f"{key}: {type(exc).__name__}: {exc}"]
            log.warning("background job %s failed: %s: %s", key, type(exc).__name__, exc)
            raise

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the jobs submitted so far (tests, and benchmarks that measure a settled state)."""
        with self._lock:
            futures = list(self._pending.values())
        for f in futures:
            try:
                f.result(timeout)
            except Exception:  # noqa: BLE001 - logged by _run
                pass

    def close(self) -> None:
        """Stop taking work, drop what has not started, wait for what runs (a query stopped inside DuckDB at exit
        would abort the process; a store closed under a running job would fail it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timers, self._timers = list(self._timers), set()
        for t in timers:
            t.cancel()
        self._heavy.shutdown(wait=True, cancel_futures=True)
        self._light.shutdown(wait=True, cancel_futures=True)
        with _OWNERS_LOCK:
            if _OWNERS.get(self.key) is self:
                del _OWNERS[self.key]


_OWNERS_LOCK = threading.Lock()
_OWNERS: "weakref.WeakValueDictionary[tuple, BackgroundWork]" = weakref.WeakValueDictionary()


def owner_of(con: duckdb.DuckDBPyConnection) -> BackgroundWork | None:
    """The background owner of the store ``con`` reads, if this process has one (the app does; commands do not)."""
    with _OWNERS_LOCK:
        return _OWNERS.get(store_key(con)) if _OWNERS else None


@atexit.register
def _close_all() -> None:
    with _OWNERS_LOCK:
        owners = list(_OWNERS.values())
    for owner in owners:
        owner.close()
