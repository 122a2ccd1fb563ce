"""The review queue's entry points: the queue in order, the next item, and claims of items under lease.

Each request reads the store's state in two statements (:func:`auditor.review.state.prepare`), takes the page of
its order (:mod:`auditor.review.snapshots`: a prefix of the order, grown when annotators get past it), and picks the
next available items from it (:mod:`auditor.review.orders`). Work per request is bounded by the page, not the store;
a verdict costs the re-selection of its own query (export order) or nothing (the other orders).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from auditor.sql import lit
from auditor.store import transaction

from .cache import PAGES
from .choice import ITEM_COLUMNS, QueueChoice
from .leases import LEASE_LOCK, LEASE_SECONDS, expire, held_items, insert_leases, now_or
from .orders import audit_progress, done_items, export_queue_sql, items_queue_sql
from .snapshots import export_covers, export_page, item_page
from .state import Request, prepare, settle

#: Growths one request may ask for before it answers from the whole order.
_MAX_GROWTHS = 12


def _export_where(choice: QueueChoice) -> str:
    """The band and source filters of an export-aware queue, applied over its page (the query filter is the
    page's own)."""
    where = ["true"]
    if choice.bands:
        where.append(f"band IN ({', '.join(lit(b) for b in choice.bands)})")
    if choice.source is not None:
        where.append(f"list_contains(sources, {lit(choice.source)})")
    return " AND ".join(where)


def _run(con: duckdb.DuckDBPyConnection, req: Request, *, annotator: str | None, skip: Iterable[tuple[str, str]],
         limit: int | None, now: float | None = None) -> pd.DataFrame:
    choice = req.choice
    done = done_items(con, annotator, choice.share, skip, choice.mode, now)
    k = None if limit is None else int(limit) + len(done)
    mem = PAGES.cursor()
    for _ in range(_MAX_GROWTHS):
        if choice.mode == "export":
            key, page = export_page(con, req)
            where = _export_where(choice)
            whole = where != "true" or k is None  # a filtered stream's prefix is not known from the page's bounds
            if not (page.complete or (not whole and export_covers(page, k))):
                PAGES.grow(con, key, page, whole=whole)
                continue
            sql, params = export_queue_sql(page.table, limit, len(done), audit_progress(con, page.state.plan.audit),
                                           where)
        else:
            key, page = item_page(con, req)
            if not (page.complete or (k is not None and page.limit is not None and k <= page.limit)):
                PAGES.grow(con, key, page, whole=k is None)
                continue
            sql, params = items_queue_sql(choice.mode, page.table, limit, len(done))
        mem.register("_done", done)
        try:
            return mem.execute(sql, params).df()
        except duckdb.CatalogException:  # the page was replaced and dropped meanwhile: take the new one
            continue
        finally:
            mem.unregister("_done")
    raise RuntimeError("the review queue's page kept changing under this request; try again")


def build_queue(con: duckdb.DuckDBPyConnection, choice: QueueChoice | None = None, *, annotator: str | None = None,
                limit: int | None = None, skip: Iterable[tuple[str, str]] = (), **choice_kw: Any) -> pd.DataFrame:
    """The review queue in order (see :mod:`auditor.review.orders` for the orders and the exclusion rules).

    ``choice`` (or its fields as keywords: mode, model, config, bands, source, query_id, seed, double_annotation,
    selection) names the queue. Columns: query_id, doc_id, band, rule, s_neg, s_pos_min, s_pos_max, delta, ratio,
    rank, sources (list), weight, p_fn (P(false negative), NULL where no risk was computed), risk (p_fn, or a
    band-and-delta score without it), sampling_prob (stratified and audit items), gain, audit (export order).
    """
    choice = QueueChoice.of(choice, **choice_kw)
    req = prepare(con, choice)
    df = _run(con, req, annotator=annotator, skip=skip, limit=limit)
    if len(df):
        df["sources"] = df["sources"].map(lambda s: [str(x) for x in s] if s is not None else [])
    return df[ITEM_COLUMNS] if len(df) else pd.DataFrame(columns=ITEM_COLUMNS)


def next_item(con: duckdb.DuckDBPyConnection, choice: QueueChoice | None = None, *, annotator: str,
              skip: Iterable[tuple[str, str]] = (), **choice_kw: Any) -> dict[str, Any] | None:
    """The next item for ``annotator``, or None when the queue is empty.

    ``skip`` holds (query_id, doc_id) pairs the annotator skipped in this session; they are left out without any
    event being written. The dict has the columns of :func:`build_queue` plus ``mode`` (the queue its verdict
    records), ``model`` and ``config``.
    """
    choice = QueueChoice.of(choice, **choice_kw)
    req = prepare(con, choice)
    df = _run(con, req, annotator=annotator, skip=skip, limit=1)
    if df.empty:
        return None
    return _item_dict(df.iloc[0], req)


def claim(con: duckdb.DuckDBPyConnection, choice: QueueChoice | None = None, *, annotator: str, limit: int,
          ttl: float = LEASE_SECONDS, now: float | None = None, skip: Iterable[tuple[str, str]] = (),
          **choice_kw: Any) -> list[dict[str, Any]]:
    """Hold up to ``limit`` review items for ``annotator`` for ``ttl`` seconds, and return them in order.

    Items the annotator already holds come first (asking again returns them, and renews their leases); the rest are
    new leases on the next items of the queue, which by then leaves out every item held by another annotator —
    unless the item is routed to double annotation and only one other holds or judged it. Atomic: two claims at once
    never hold the same item. Each item is a dict like :func:`next_item`'s.
    """
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError("a claim needs the annotator's name")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    choice = QueueChoice.of(choice, **choice_kw)
    now = now_or(now)
    with LEASE_LOCK:
        settle(con)
        with transaction(con):
            expire(con, annotator, now)
            con.execute("UPDATE leases SET expires_at = ? WHERE annotator = ?", [now + ttl, annotator])
            held = held_items(con, annotator, now)
            new: list[dict[str, Any]] = []
            if len(held) < limit:
                req = prepare(con, choice)
                held_ids = [(h["query_id"], h["doc_id"]) for h in held]
                df = _run(con, req, annotator=annotator, skip=[*skip, *held_ids], now=now, limit=limit - len(held))
                new = [_item_dict(row, req) for _, row in df.iterrows()]
                insert_leases(con, annotator, new, now, ttl)
    return (held + new)[:limit]


def hold(con: duckdb.DuckDBPyConnection, annotator: str, item: dict[str, Any], *, ttl: float = LEASE_SECONDS,
         now: float | None = None, double_annotation: float | None = None) -> bool:
    """Put one given item at the front of ``annotator``'s held items (an undone verdict comes back to its author).

    False, and nothing held, when the item is not the annotator's to take: others judged or hold it as many times
    as it needs annotators (the queue's own exclusion rule).
    """
    now = now_or(now)
    key = (item["query_id"], item["doc_id"])
    share = QueueChoice(double_annotation=double_annotation).share
    with LEASE_LOCK:
        settle(con)
        with transaction(con):
            done = done_items(con, annotator, share, (), "risk", now)
            if key in set(zip(done["query_id"], done["doc_id"])):
                return False
            con.execute("DELETE FROM leases WHERE annotator = ? AND query_id = ? AND doc_id = ?", [annotator, *key])
            insert_leases(con, annotator, [item], now, ttl, front=True)
    return True


def _item_dict(row: pd.Series, req: Request) -> dict[str, Any]:
    """A queue row as plain Python values, with the queue mode its verdict records, the model and the config."""
    item = {k: _py(v) for k, v in row.items()}
    if item["rank"] is not None:
        item["rank"] = int(item["rank"])
    item["sources"] = list(item.get("sources") or [])
    # A stratified walk narrowed to one source or query samples that subset, not the band: its verdicts must not be
    # extrapolated to the whole band (auditor.stats counts only queue_mode 'stratified' as a band sample).
    item["mode"] = req.choice.recorded_mode
    item["model"] = req.model
    item["config"] = req.config
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


def warm(con: duckdb.DuckDBPyConnection, choice: QueueChoice | None = None) -> float:
    """Build the pages of the default queue (export-aware, with the latest export's settings) and of the risk and
    stratified orders of ``choice``'s model and band configuration, and keep them in the store; returns seconds.

    `auditor mine` and `auditor band` end with this (the app runs it in the background), so an annotator's first
    item is read from a kept page rather than ranked from every candidate (at 10M candidates 11.5 s and 2.4 s)."""
    import time

    started = time.perf_counter()
    choice = choice or QueueChoice()
    for mode in ("export", "risk"):  # the risk order's page holds the stratified order too
        req = prepare(con, QueueChoice.of(choice, mode=mode))
        (export_page if mode == "export" else item_page)(con, req)
    return time.perf_counter() - started
