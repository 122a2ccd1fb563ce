"""One annotator's review session in the app: the items it holds (leases), the one on screen, and prefetching.

The Review page keeps one :class:`Worklist` per browser session and queue choice. It holds a few items under lease
(:func:`auditor.review.queue.claim`), shows the first, and after each verdict shows the next one at once: its context
was computed in the background while the annotator read the previous item, and the lease that reserves it was taken
then too. ``serial`` changes whenever the item on screen changes, so an action that names an older serial (a key
pressed before the new item was drawn) is recognised as stale and ignored. Serials are unique in the process, not
per worklist: a page keys its widgets by serial, and a new worklist (another queue choice) must not inherit the
widget state of an old one's item with the same number.

Prefetching is a light job of the store's background owner (:mod:`auditor.review.background`); without an owner (a
test on a plain connection) it runs inline. No Streamlit here (pages/_common.py holds the worklist in the session);
everything is thread-safe.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import duckdb

from auditor.ui_helpers import positive_marks

from .background import owner_of
from .choice import QueueChoice
from .context import item_context
from .leases import LEASE_SECONDS, add_skip, release, renew
from .queue import build_queue, claim, hold
from .verdicts import record_verdict, undo_last

Cursor = Callable[[], duckdb.DuckDBPyConnection]

#: Serials of items on screen, unique across every worklist in the process (see the module docstring).
_SERIALS = itertools.count(1)

#: Prefetching starts this long after a page run, once the browser has drawn the item (on a small machine the two
#: compete for the CPU); an annotator reads an item for longer than this.
PREFETCH_DELAY_S = 0.3

#: The count of what is left in the queue stops here ("over N"): counting is a queue query, bounded on big stores.
LEFT_CAP = 10_000

#: Leases are renewed at most this often by page views (each claim and verdict renews them as well).
RENEW_EVERY_S = 60.0


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return item["query_id"], item["doc_id"]


def load_context(con: duckdb.DuckDBPyConnection, item: dict[str, Any]) -> dict[str, Any]:
    """What the Review page shows for ``item``: review.item_context plus, per positive, its similarity to the query
    and to the candidate (which positive is the anchor, which is nearest to the candidate)."""
    ctx = item_context(con, item["query_id"], item["doc_id"], model=item.get("model"),
                              config=item.get("config") or "default")
    ctx["marks"] = positive_marks(con, ctx["model"], item["query_id"], item["doc_id"],
                                  [p["doc_id"] for p in ctx["positives"]])
    return ctx


class Worklist:
    """Items held for one annotator under one queue choice."""

    def __init__(self, cursor: Cursor, annotator: str, choice: QueueChoice, *, batch: int = 5, low: int = 3,
                 ttl: float = LEASE_SECONDS, key: Any = None,
                 after_verdicts: Callable[[duckdb.DuckDBPyConnection, str], None] | None = None,
                 progress: Callable[[duckdb.DuckDBPyConnection, str, str], Any] | None = None) -> None:
        self._cursor, self.annotator, self.choice = cursor, annotator, choice
        #: run in the background after new verdicts, with the model (the app's risk refit)
        self._after_verdicts = after_verdicts
        #: computed in the background: what the page shows as progress (with model and config)
        self._progress_fn, self.progress = progress, None
        self._new_verdicts = 0
        self.judged_here = 0  #: verdicts given through this worklist (this browser session)
        self.left: int | None = None  #: items left in this queue for this annotator (LEFT_CAP + 1: more than the cap)
        self.batch, self.low, self.ttl, self.key = batch, low, ttl, key
        self._lock = threading.RLock()
        self.items: list[dict[str, Any]] = []  #: held, in order; items[0] is on screen
        self._finished: OrderedDict[tuple[str, str], None] = OrderedDict()  #: judged or skipped here
        self._contexts: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._prefetching = False
        self._claiming = threading.Lock()  #: held while claiming; release() waits for it, then no claim follows
        self._closed = False
        self._renewed = time.time()
        #: model and band configuration the queue resolved to (from the claimed items)
        self._resolved: tuple[str | None, str | None] = (choice.model, choice.config)
        self.serial = next(_SERIALS)  #: changes whenever the item on screen changes
        self.empty = False  #: the last claim found nothing to review
        self.error: str | None = None  #: the last background failure, for the page to show

    # ---- the item on screen --------------------------------------------------------------------------------
    def current(self) -> dict[str, Any] | None:
        """The item on screen, claiming more items when none is held."""
        with self._lock:
            if self.items:
                return self.items[0]
        self._refill(self._cursor())  # not under self._lock: release() takes the two locks in the other order
        with self._lock:
            return self.items[0] if self.items else None

    def current_key(self) -> tuple[str, str] | None:
        with self._lock:
            return _key(self.items[0]) if self.items else None

    def is_current(self, query_id: str, doc_id: str, serial: int) -> bool:
        """Whether an action naming these ids and this serial is about the item on screen now."""
        with self._lock:
            return serial == self.serial and self.current_key() == (query_id, doc_id)

    def lease_live(self) -> bool:
        """Whether this worklist's leases are surely still in force (claimed or renewed within their lifetime)."""
        return time.time() - self._renewed < self.ttl - 5

    def _refill(self, con: duckdb.DuckDBPyConnection) -> None:
        with self._claiming:
            if self._closed:  # given back (another queue choice, sign-out): a late prefetch must not claim again
                return
            got = claim(con, self.choice, annotator=self.annotator, limit=self.batch, ttl=self.ttl)
        with self._lock:
            before = self.current_key()
            self.items = [it for it in got if _key(it) not in self._finished]
            self.empty = not self.items
            if got:
                self._resolved = (got[0].get("model"), got[0].get("config"))
            if self.current_key() != before:
                self.serial = next(_SERIALS)
        self._renewed = time.time()

    def count_left(self, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Items left in this queue for this annotator (those held here included), up to LEFT_CAP + 1."""
        n = len(build_queue(con or self._cursor(), self.choice, annotator=self.annotator, limit=LEFT_CAP + 1,
                            skip=list(self._finished)))
        self.left = n
        return n

    # ---- context -----------------------------------------------------------------------------------------------
    def context(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item's context: prefetched when possible, else computed now (and kept for the next page runs)."""
        k = _key(item)
        with self._lock:
            ctx = self._contexts.get(k)
        if ctx is None:
            ctx = load_context(self._cursor(), item)
            self._keep(k, ctx)
        return ctx

    def _keep(self, k: tuple[str, str], ctx: dict[str, Any]) -> None:
        with self._lock:
            self._contexts[k] = ctx
            while len(self._contexts) > 2 * self.batch + 2:
                self._contexts.popitem(last=False)

    def forget_context(self, query_id: str, doc_id: str) -> None:
        with self._lock:
            self._contexts.pop((query_id, doc_id), None)

    # ---- actions -------------------------------------------------------------------------------------------------
    def judge(self, item: dict[str, Any], verdict: str, note: str | None = None) -> int:
        """Record ``verdict`` by this annotator on ``item`` (with the queue mode, band and sampling probability it
        was claimed with), end its lease and move on. Returns the verdict's event id."""
        con = self._cursor()
        mode = item.get("mode")
        event_id = record_verdict(
            con, query_id=item["query_id"], doc_id=item["doc_id"], verdict=verdict, annotator=self.annotator,
            note=note, band=item.get("band"), queue_mode=mode,
            sampling_prob=item.get("sampling_prob") if (mode or "").startswith("stratified") else None,
        )
        self.finish(*_key(item))  # its lease ends at the next claim (leases.expire): no lock on a key press
        with self._lock:
            self._new_verdicts += 1
            self.judged_here += 1
            if self.left is not None and self.left <= LEFT_CAP:  # shown at once; recounted in the background
                self.left = max(0, self.left - 1)
            if isinstance(self.progress, dict):  # shown at once; recounted in the background
                self.progress = {**self.progress, "done": self.progress["done"] + 1,
                                 "mine": self.progress["mine"] + 1}
        return event_id

    def skip(self, item: dict[str, Any]) -> None:
        """Set ``item`` aside for this annotator (kept across reloads) and let someone else take it."""
        add_skip(self._cursor(), self.annotator, *_key(item))
        self.finish(*_key(item))

    def undo(self) -> dict[str, Any] | None:
        """Take back this annotator's latest verdict and show its item again (held again unless someone else holds
        it now). Returns what review.undo_last returns, plus ``held`` (whether the item is back on screen)."""
        con = self._cursor()
        undone = undo_last(con, annotator=self.annotator)
        if undone is None:
            return None
        row = con.execute("SELECT band, queue_mode, sampling_prob FROM verdicts WHERE event_id = ?",
                          [undone["event_id"]]).fetchall()
        band, mode, prob = row[0] if row else (None, None, None)
        model, config = self._resolved
        item = {"query_id": undone["query_id"], "doc_id": undone["doc_id"], "band": band, "mode": mode,
                "sampling_prob": prob, "model": model, "config": config}
        undone["held"] = hold(con, self.annotator, item, ttl=self.ttl,
                              double_annotation=self.choice.double_annotation)
        if undone["held"]:
            self.push_front(item)
        return undone

    # ---- moving on ----------------------------------------------------------------------------------------------
    def finish(self, query_id: str, doc_id: str) -> None:
        """The item was judged or skipped here: drop it and show the next one."""
        with self._lock:
            self._finished[(query_id, doc_id)] = None
            while len(self._finished) > 500:
                self._finished.popitem(last=False)
            self.items = [it for it in self.items if _key(it) != (query_id, doc_id)]
            self._contexts.pop((query_id, doc_id), None)
            self.serial = next(_SERIALS)

    def push_front(self, item: dict[str, Any]) -> None:
        """Show ``item`` now (an undone verdict comes back); the caller holds its lease."""
        with self._lock:
            self._finished.pop(_key(item), None)
            self.items = [item] + [it for it in self.items if _key(it) != _key(item)]
            self.empty = False
            self.serial = next(_SERIALS)

    def reset(self) -> None:
        """Forget what was finished here (skipped items brought back) and claim afresh on the next page run."""
        with self._lock:
            self._finished.clear()
            self.items = []
            self.serial = next(_SERIALS)

    # ---- background ---------------------------------------------------------------------------------------------
    def prefetch(self) -> None:
        """In the background: top the held items up to ``batch`` once fewer than ``low`` are left (a claim costs a
        queue query, so not after every verdict), renew the leases now and then, and compute the items' contexts."""
        with self._lock:
            if self._prefetching:
                return
            self._prefetching = True
        owner = owner_of(self._cursor())
        if owner is None or owner.submit(("prefetch", id(self)), lambda _cur: self._prefetch(PREFETCH_DELAY_S),
                                         heavy=False) is None:
            self._prefetch(0.0)

    def _prefetch(self, delay: float) -> None:
        try:
            time.sleep(delay)
            con = self._cursor()
            with self._lock:
                short = len(self.items) < self.low and not self.empty
            if short:
                self._refill(con)
            elif time.time() - self._renewed > RENEW_EVERY_S:
                renew(con, self.annotator, ttl=self.ttl)
                self._renewed = time.time()
            with self._lock:
                todo = [it for it in self.items if _key(it) not in self._contexts]
                new, self._new_verdicts = self._new_verdicts, 0
            for it in todo:
                self._keep(_key(it), load_context(con, it))
            model, config = self._resolved
            if self._progress_fn is not None and model and (new or self.progress is None):
                self.progress = self._progress_fn(con, model, config)
                self.count_left(con)
            if new and self._after_verdicts is not None and model:
                self._after_verdicts(con, model)
            self.error = None
        except Exception as exc:  # noqa: BLE001 - the page computes what is missing itself and shows the error
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._prefetching = False

    def heartbeat(self) -> int:
        """The open Review page says it is still there: extend what this worklist holds by ``ttl`` from now. A
        closed tab stops calling this, so its items are free for others within ``ttl``. Returns how many leases."""
        with self._lock:
            if self._closed or not self.items:
                return 0
        n = renew(self._cursor(), self.annotator, ttl=self.ttl)
        self._renewed = time.time()
        return n

    def release(self) -> None:
        """Give every held item back (signing out, or another queue choice); this worklist claims nothing after."""
        with self._claiming:
            self._closed = True
            with self._lock:
                self.items = []
                self._contexts.clear()
            release(self._cursor(), self.annotator)
