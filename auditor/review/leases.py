"""Leases (which annotator holds which items right now) and skips (items an annotator set aside).

Leases: :func:`auditor.review.queue.claim` holds the next items for one annotator for ``LEASE_SECONDS`` (renewed by
each claim, verdict and page view), so two annotators working at once never get the same item unless it is routed to
double annotation. Asking again returns the items already held. The app and ``auditor queue --claim`` use the same
leases, stored in the ``leases`` table; skipped items live in ``skips``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import duckdb

from .state import last_event, settle

LEASE_SECONDS = 600

#: Claims read the leases, pick items and write leases; one process writes a store (DuckDB's rule), so a
#: process-wide lock around the transaction makes a claim atomic against every other claim.
LEASE_LOCK = threading.Lock()


def now_or(now: float | None) -> float:
    return time.time() if now is None else float(now)


def held_items(con: duckdb.DuckDBPyConnection, annotator: str, now: float | None = None) -> list[dict[str, Any]]:
    """The items ``annotator`` holds now (live leases), in the order they were claimed."""
    rows = con.execute(
        "SELECT item FROM leases WHERE annotator = ? AND expires_at > ? ORDER BY seq", [annotator, now_or(now)]
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


def expire(con: duckdb.DuckDBPyConnection, annotator: str, now: float) -> None:
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


def insert_leases(
    con: duckdb.DuckDBPyConnection, annotator: str, items: list[dict[str, Any]], now: float, ttl: float,
    front: bool = False,
) -> None:
    if not items:
        return
    lo, hi = con.execute(
        "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM leases WHERE annotator = ?", [annotator]
    ).fetchall()[0]
    floor = last_event(con)
    start = lo - len(items) if front else hi + 1
    con.executemany(
        "INSERT INTO leases (query_id, doc_id, annotator, claimed_at, expires_at, seq, event_floor, item) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [[it["query_id"], it["doc_id"], annotator, now, now + ttl, start + i, floor, json.dumps(it, default=str)]
         for i, it in enumerate(items)],
    )


def release(
    con: duckdb.DuckDBPyConnection, annotator: str, items: Iterable[tuple[str, str]] | None = None
) -> int:
    """End ``annotator``'s leases on ``items`` (all of them when None); returns how many ended."""
    with LEASE_LOCK:
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
    now = now_or(now)
    with LEASE_LOCK:
        settle(con)
        return len(con.execute("UPDATE leases SET expires_at = ? WHERE annotator = ? AND expires_at > ? RETURNING 1",
                               [now + ttl, annotator, now]).fetchall())


def other_holders(
    con: duckdb.DuckDBPyConnection, annotator: str, query_id: str, doc_id: str, now: float | None = None
) -> list[str]:
    """Annotators other than ``annotator`` who hold the item now."""
    return [r[0] for r in con.execute(
        "SELECT annotator FROM leases WHERE query_id = ? AND doc_id = ? AND expires_at > ? AND annotator <> ? "
        "ORDER BY annotator", [query_id, doc_id, now_or(now), annotator]).fetchall()]


def leases_overview(con: duckdb.DuckDBPyConnection, now: float | None = None) -> list[dict[str, Any]]:
    """Per annotator: items held now and when the first of those leases runs out (for the lead's Team page)."""
    now = now_or(now)
    return [
        {"annotator": a, "held": int(n), "expires_in_s": int(e - now)}
        for a, n, e in con.execute(
            "SELECT annotator, count(*), min(expires_at) FROM leases WHERE expires_at > ? GROUP BY annotator "
            "ORDER BY annotator", [now]).fetchall()
    ]


def leases_now(con: duckdb.DuckDBPyConnection, limit: int = 200, now: float | None = None) -> list[dict[str, Any]]:
    """Every item held now, by whom and until when, soonest end first (the Team page's list of items)."""
    now = now_or(now)
    return [
        {"annotator": a, "query_id": q, "doc_id": d, "expires_in_s": int(e - now)}
        for a, q, d, e in con.execute(
            "SELECT annotator, query_id, doc_id, expires_at FROM leases WHERE expires_at > ? "
            "ORDER BY expires_at, annotator, query_id, doc_id LIMIT ?", [now, int(limit)]).fetchall()
    ]



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
