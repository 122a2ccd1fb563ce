"""The orders' SQL: which items leave a queue (done), and the next items of each order over one page.

Orders
------
``export`` (the default)
    What matters is what will be written to the training file: the candidates that the current export settings
    (:class:`auditor.select.Selection`) would select, with the audit stream (:mod:`auditor.audit`) interleaved at a
    fixed share and the others by expected gain (:mod:`auditor.gain`). A confirmed false negative leaves the export
    at once, and the candidate that replaces it enters the queue. When every exported item is reviewed, the queue is
    empty: the export holds nothing unreviewed.
``risk``
    Every banded candidate, highest P(false negative) first (stores without risk rows: suspicious before ambiguous
    before too_easy, then the largest ``delta``). Finds the most false negatives per hour, whether or not the export
    would take them; rates measured on it are biased upward.
``stratified``
    Each band's items in a seeded random order (a hash of seed, query id and doc id), interleaved across bands round-
    robin: position 1 of every band, then position 2, and so on. Reviewing the first ``j`` items of a band's order is a
    simple random sample of size ``j`` from the band's ``N_b`` items, so the item at position ``j`` stores
    ``sampling_prob = j / N_b`` and the per-band rate of the reviewed sample is unbiased (see :mod:`auditor.stats`).
    Filters (band, source, query) make ``N_b`` the size of the filtered band; a walk filtered by source or query is
    recorded as ``stratified_filtered`` and is not used as a sample of the band.

Exclusion: an item leaves an annotator's queue once that annotator has a current verdict on it (or skipped it), and
leaves every other queue once enough annotators judged or hold it (in stratified mode, counting only verdicts given
in a stratified walk; leases in every mode): 1, or 2 for the deterministic share ``ReviewConfig.double_annotation`` of
items routed to double annotation (by an md5 hash of the ids, so every process agrees) for Cohen's kappa.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from auditor.audit import AuditDesign
from auditor.config import ReviewConfig

from .choice import DOUBLE_HASH_SQL


def done_items(
    con: duckdb.DuckDBPyConnection, annotator: str | None, double_annotation: float, skip: Iterable[tuple[str, str]],
    mode: str = "risk", now: float | None = None,
) -> pd.DataFrame:
    """(query_id, doc_id) of items that leave this queue: judged or skipped by this annotator, or taken by enough
    others — other annotators' current verdicts and live leases together reach the number of annotators the item
    needs (1, or 2 when routed to double annotation).

    In stratified mode only verdicts given in a stratified queue count: an item judged earlier in risk order stays in
    the random walk (and is shown again), or the random sample would silently lack the riskiest items and every
    band's false-negative rate would come out too low. Leases count in every mode. The verdicts, leases and skips are
    small tables next to the candidates (what people did), so this is one cheap query per request whatever the store.
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

#: Each order's position column in an item page, and the column bounding its first k items (see snapshots).
_POSITION = {"risk": ("risk_pos", "risk_pos"), "stratified": ("strat_pos", "band_pos")}


def items_queue_sql(mode: str, page: str, limit: int | None, n_done: int) -> tuple[str, list[Any]]:
    """The next ``limit`` available items of the risk or stratified order over an item page (filters are the
    page's own) and the registered ``_done`` frame."""
    sampling = "band_pos::DOUBLE / band_size" if mode == "stratified" else "NULL::DOUBLE"
    position, bound = _POSITION[mode]
    out = _OUT.format(sampling=sampling, **_NO_GAIN)
    if limit is None:
        return (f"SELECT {out} FROM {page} ANTI JOIN _done USING (query_id, doc_id) WHERE {bound} IS NOT NULL "
                f"ORDER BY {position}"), []
    # The done set is small: the first limit + n_done items of the order always hold the first `limit` available
    # ones, so the anti-join runs on a handful of rows (risk positions are 1..N; the first k of the stratified
    # order have band_pos <= k).
    k = int(limit) + int(n_done)
    sql = f"""
        WITH head AS (SELECT * FROM {page} WHERE {bound} <= {k})
        SELECT {out} FROM head ANTI JOIN _done USING (query_id, doc_id) ORDER BY {position} LIMIT {int(limit)}
    """
    return sql, []


@dataclass(frozen=True)
class Interleave:
    """Where the audit stream stands: its rate, how often it is served, and the items of each stream reviewed."""

    rate: float
    every: int
    audits_done: int
    others_done: int


def audit_progress(con: duckdb.DuckDBPyConnection, audit: AuditDesign,
                   cfg: ReviewConfig = ReviewConfig()) -> Interleave:
    """How many reviewed items are audit items (``u < rate``, whatever queue served them) and how many are not: the
    queue keeps one audit item in every ``audit_every`` reviews while audit items are left."""
    a, o = con.execute(
        f"""SELECT count(*) FILTER (WHERE u < $r), count(*) FILTER (WHERE u >= $r)
            FROM (SELECT {audit.u_sql()} AS u FROM (SELECT DISTINCT query_id, doc_id FROM current_verdicts))""",
        {"r": float(audit.rate)},
    ).fetchall()[0]
    return Interleave(float(audit.rate), max(int(cfg.audit_every), 2), int(a), int(o))


def export_queue_sql(page: str, limit: int | None, n_done: int, il: Interleave, where: str = "true"
                     ) -> tuple[str, list[Any]]:
    """The default queue: two streams, interleaved. Audit items (:mod:`auditor.audit`) in the order of their random
    number, and the others by expected gain (:mod:`auditor.gain`); the audit stream fills one position in every
    ``il.every``, counted from the reviews so far, so the share holds across requests of one item. ``where`` filters
    the page (band, source, query)."""
    e = il.every
    head = ""
    if limit is not None:
        head = f"LIMIT {int(limit) + int(n_done)}"
    sql = f"""
        WITH pool AS (SELECT * FROM {page} WHERE {where}),
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
        {f"LIMIT {int(limit)}" if limit is not None else ""}
    """
    return sql, []
