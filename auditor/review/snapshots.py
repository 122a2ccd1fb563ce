"""Pages of each order, built from the store: the item page (risk and stratified orders) and the export page
(the export-aware order), with the export page's per-verdict patch.

An item page holds the first ``limit`` items of the risk order and the first ``limit`` of each band's seeded random
order, with both positions, so a request sorts one integer over a few thousand rows. Filters (bands, source, query)
are written into the page's own SQL, so positions and band sizes are those of the filtered items.

An export page holds the first ``limit`` items of each stream of the review pool (:mod:`auditor.gain`): audit items
by their random number, the others by expected gain. A verdict changes the pool only within its query (a query's
choice depends on verdicts only through which of its candidates are confirmed false or true negatives,
:mod:`auditor.tradeoff`), so the page is patched by selecting that query again (a filter inside each scan: few row
groups read) and keeping its rows that fall inside the page's bounds: the page stays an exact prefix of the pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from auditor.audit import AuditDesign
from auditor.audit import design as audit_design
from auditor.gain import review_pool_sql
from auditor.select import Selection, query_slices
from auditor.sql import lit, query_ids_sql
from auditor.store import in_transaction
from auditor.tradeoff import Tradeoff, verdict_flags_sql

from .cache import PAGES, Built, Page, PageSpec
from .choice import BAND_LEVEL_SQL, QueueChoice
from .state import Request, fingerprint, last_event, settle


def _filters(choice: QueueChoice, alias: str = "") -> tuple[str, str]:
    """(a filter for every scan of a query's rows, a filter for the bands scan): the page's own filters."""
    a = f"{alias}." if alias else ""
    only = f" AND {a}{query_ids_sql([choice.query_id])}" if choice.query_id is not None else ""
    bands = ""
    if choice.bands:
        bands += f" AND {a}band IN ({', '.join(lit(b) for b in choice.bands)})"
    if choice.source is not None:
        bands += (f" AND ({a}query_id, {a}doc_id) IN (SELECT query_id, doc_id FROM candidates "
                  f"WHERE source = {lit(choice.source)}{only})")
    return only, bands


def _page_ids(con: duckdb.DuckDBPyConnection, choice: QueueChoice, config: str, model: str,
              limit: int | None, floor: bool = True) -> pa.Table:
    """(query_id, doc_id, risk_pos, band_pos, band_size) of the first ``limit`` items of the risk order and of each
    band's random order (every item when ``limit`` is None), of the items ``choice``'s filters leave.

    Each step is its own statement over a small relation, so DuckDB never builds a hash table of every candidate
    (at 10M candidates one statement joining bands, scores and risk took 8.5 s and all of the store's memory)."""
    only, band_filter = _filters(choice)
    key, cfg = f"model = {lit(model)}{only}", f"config = {lit(config)} AND model = {lit(model)}{only}{band_filter}"
    rkey = f"hash(query_id, doc_id, {int(choice.seed)}::BIGINT)"
    if limit is None:
        strat = con.sql(f"""SELECT query_id, doc_id, row_number() OVER (PARTITION BY band ORDER BY {rkey}, query_id,
                                   doc_id) AS band_pos, count(*) OVER (PARTITION BY band) AS band_size
                            FROM bands WHERE {cfg}""").to_arrow_table()
    else:  # one pass: each band's size and its first `limit` keys (no sort of the band)
        strat = con.sql(f"""
            SELECT k[2] AS query_id, k[3] AS doc_id, band_pos, band_size FROM (
                SELECT unnest(firsts) AS k, unnest(range(1, len(firsts) + 1)) AS band_pos, band_size
                FROM (SELECT band, count(*) AS band_size, min_by(k, k, {int(limit)}) AS firsts
                      FROM (SELECT band, ({rkey}, query_id, doc_id) AS k FROM bands WHERE {cfg}) GROUP BY band))
        """).to_arrow_table()
    # The risk order's first `limit` items are among the risk rows at or above the limit-th highest P(false
    # negative) (every band and source: a filter could need lower ones); only those are joined.
    within, risk = "", f"LEFT JOIN (SELECT query_id, doc_id, p_fn FROM risk WHERE {key}) r USING (query_id, doc_id)"
    riskiest = None
    if floor and limit is not None and not choice.bands and choice.source is None:
        riskiest = con.sql(f"""SELECT query_id, doc_id, p_fn FROM risk WHERE {key} AND p_fn >= (
                                   SELECT min(p_fn) FROM (SELECT p_fn FROM risk WHERE {key} AND p_fn IS NOT NULL
                                                          ORDER BY p_fn DESC LIMIT {int(limit)}))""").to_arrow_table()
        if riskiest.num_rows >= limit:
            within = " AND (query_id, doc_id) IN (SELECT query_id, doc_id FROM _riskiest)"
            risk = "JOIN _riskiest r USING (query_id, doc_id)"
    rtop_sql = f"""
        SELECT query_id, doc_id, row_number() OVER () AS risk_pos FROM (
            SELECT b.query_id, b.doc_id
            FROM (SELECT query_id, doc_id, {BAND_LEVEL_SQL.format(b="band")} AS band_level FROM bands
                  WHERE {cfg}{within}) b
            JOIN (SELECT query_id, doc_id, delta, rank FROM scored WHERE {key}{within}) s USING (query_id, doc_id)
            {risk}
            ORDER BY r.p_fn DESC NULLS LAST, b.band_level, s.delta DESC, s.rank NULLS LAST, b.query_id, b.doc_id
            {"" if limit is None else f"LIMIT {int(limit)}"})"""
    if within:
        con.register("_riskiest", riskiest)
    try:
        rtop = con.sql(rtop_sql).to_arrow_table()
    finally:
        if within:
            con.unregister("_riskiest")
    if within and rtop.num_rows < limit:  # risk rows without bands (another configuration's): the long way
        return _page_ids(con, choice, config, model, limit, floor=False)
    con.register("_rtop", rtop)
    con.register("_strat", strat)
    try:
        return con.sql("SELECT * FROM _rtop FULL JOIN _strat USING (query_id, doc_id)").to_arrow_table()
    finally:
        con.unregister("_rtop")
        con.unregister("_strat")


def _details_sql(page_ids: str, config: str, model: str, only: str) -> str:
    """Band, scores, risk and sources of the items named by relation ``page_ids`` (each scan keeps only them)."""
    mine = f"{only} AND (query_id, doc_id) IN (SELECT query_id, doc_id FROM {page_ids})"
    return f"""
        SELECT b.query_id, b.doc_id, b.band, b.rule, b.weight, {BAND_LEVEL_SQL.format(b="b.band")} AS band_level,
               s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio, s.rank, r.p_fn,
               coalesce(src.sources, []::VARCHAR[]) AS sources,
               p.risk_pos, p.band_pos, p.band_size, p.band_pos * 3 + band_level AS strat_pos
        FROM {page_ids} p
        JOIN (SELECT query_id, doc_id, band, rule, weight FROM bands
              WHERE config = {lit(config)} AND model = {lit(model)}{mine}) b USING (query_id, doc_id)
        JOIN (SELECT * FROM scored WHERE model = {lit(model)}{mine}) s USING (query_id, doc_id)
        LEFT JOIN (SELECT query_id, doc_id, p_fn FROM risk WHERE model = {lit(model)}{mine}) r USING (query_id, doc_id)
        LEFT JOIN (SELECT query_id, doc_id, list(DISTINCT source ORDER BY source) AS sources
                   FROM candidates WHERE true{mine} GROUP BY query_id, doc_id) src USING (query_id, doc_id)
        ORDER BY p.risk_pos NULLS LAST, strat_pos
    """


def _kept_name(key: tuple) -> str:
    """A page's key in the store: its key in memory without the store's own path."""
    return json.dumps([key[0], *key[2:]], default=str)


def item_page(con: duckdb.DuckDBPyConnection, req: Request) -> tuple[tuple, Page]:
    """(key, page) of the risk and stratified orders of ``req``'s choice."""
    choice = req.choice
    config, model = req.config, req.model
    only, _ = _filters(choice)

    def build(con: duckdb.DuckDBPyConnection, limit: int | None) -> Built:
        settle(con)
        ids = _page_ids(con, choice, config, model, limit)
        con.register("_page_ids", ids)
        try:
            rows = con.sql(_details_sql("_page_ids", config, model, only)).to_arrow_table()
        finally:
            con.unregister("_page_ids")
        # every band with items has its first ones in the page: the page is whole when the bands fit in it
        sizes = pa.TableGroupBy(rows.filter(pa.compute.is_valid(rows["band_size"])), "band").aggregate(
            [("band_size", "max")]) if rows.num_rows else None
        total = 0 if sizes is None else pa.compute.sum(sizes["band_size_max"]).as_py() or 0
        return Built(rows, limit is None or total <= limit)

    key = ("items", req.store, config, model, int(choice.seed), choice.bands, choice.source, choice.query_id)
    spec = PageSpec(build, lambda c: fingerprint(c, config, model), name=_kept_name(key))
    page = PAGES.get(con, key, spec, fingerprint=req.fingerprint)
    return key, page


# --------------------------------------------------------------------------------------------------------------
# export pages
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ExportPlan:
    """What one export page was built with: the solved trade-off and the audit design (patches reuse them; a refit,
    which changes the trade-off, rebuilds the page)."""

    tradeoff: Tradeoff
    audit: AuditDesign


@dataclass
class ExportState:
    flags: dict  #: (query_id, doc_id) -> (false negative, true negative): the verdicts the page reflects
    plan: ExportPlan
    sizes: dict  #: per stream ('audit', 'other'): its rows in the whole pool (None: not counted, page complete)
    bounds: dict | None = None  #: per stream: the last order key in the page, None when the stream is whole
    counts: dict | None = None  #: per stream: rows in the page now
    #: read back from the store: the flags are today's, so every query judged since the page was built is selected
    #: again at the next patch, changed flags or not
    reselect_touched: bool = False


def verdict_flags(con: duckdb.DuckDBPyConnection, queries: list[str] | None) -> dict[tuple[str, str], tuple]:
    """(query_id, doc_id) -> (false negative, true negative) for the candidates some current verdict confirms as
    either (of every query, or of ``queries``): all the verdicts an export selection depends on."""
    only = "" if queries is None else "WHERE query_id = ANY($q)"
    rows = con.execute(f"SELECT * FROM ({verdict_flags_sql(only)}) WHERE fn OR tn",
                       {"q": queries} if queries is not None else {}).fetchall()
    return {(q, d): (bool(fn), bool(tn)) for q, d, fn, tn in rows}


class read_snapshot:
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


#: Each stream's order key in the export page, as a row value compared with the page's bound.
_STREAM_KEY = {"audit": "(u, query_id, doc_id)", "other": "(-gain, query_id, doc_id)"}
_STREAM_WHERE = {"audit": "audit", "other": "NOT audit"}


def _pool_sql(selection: Selection, model: str, plan: ExportPlan, query_ids: list[str] | None,
              queries: str | None = None) -> str:
    """The review pool (:mod:`auditor.gain`) with its scores: of every query, of ``query_ids`` only, or of the
    queries in relation ``queries``."""
    only = "" if query_ids is None else f" AND {query_ids_sql(query_ids)}"
    if queries is not None:
        only += f" AND query_id IN (SELECT query_id FROM {queries})"
    pool = review_pool_sql(selection, model, plan.tradeoff, plan.audit, query_ids=query_ids, queries=queries)
    # The pool carries band, rule, weight, rank, sources and risk already: only the scores are joined.
    return f"""
        SELECT e.query_id, e.doc_id, e.band, e.rule, e.weight, {BAND_LEVEL_SQL.format(b="e.band")} AS band_level,
               s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio, e.rank, e.p_fn,
               string_split(e.source, ',') AS sources, e.slot, e.gain, e.audit, e.u
        FROM ({pool}) e
        JOIN (SELECT * FROM scored WHERE model = {lit(model)}{only}) s
             ON s.query_id = e.query_id AND s.doc_id = e.doc_id
    """


def _heads(con: duckdb.DuckDBPyConnection, selection: Selection, model: str, plan: ExportPlan,
           query_ids: list[str] | None, limit: int) -> tuple[pa.Table, dict]:
    """(query_id, doc_id) of the first ``limit`` items of each stream of the pool, and each stream's size, keeping
    only ids and order keys, a slice of queries at a time (DuckDB's memory holds one slice's selection, not the
    store's); the slices' heads are merged here."""
    key = "CASE WHEN audit THEN u ELSE -gain END"
    sizes = {"audit": 0, "other": 0}
    firsts: dict[str, list] = {"audit": [], "other": []}
    for part in ([None] if query_ids is not None else query_slices(con) or [None]):
        if part is not None:
            con.register("_slice", part)
        try:
            pool = review_pool_sql(selection, model, plan.tradeoff, plan.audit, query_ids=query_ids,
                                   queries=None if part is None else "_slice")
            heads = con.sql(f"""
                SELECT audit, count(*) AS n, min_by(k, k, {int(limit)}) AS firsts
                FROM (SELECT audit, ({key}, query_id, doc_id) AS k FROM ({pool})) GROUP BY audit""").fetchall()
        finally:
            if part is not None:
                con.unregister("_slice")
        for audit, n, got in heads:
            stream = "audit" if audit else "other"
            sizes[stream] += int(n)
            firsts[stream] = sorted(firsts[stream] + list(got))[:limit]
    ids = [(q, d) for stream in firsts.values() for _, q, d in stream]
    return pa.table({"query_id": pa.array([q for q, _ in ids], pa.string()),
                     "doc_id": pa.array([d for _, d in ids], pa.string())}), sizes


def _bounds(mem: duckdb.DuckDBPyConnection, table: str, limit: int | None, sizes: dict) -> dict:
    """Per stream, the last key in the page when the stream was cut, else None (the whole stream is in)."""
    out = {}
    for stream, key in _STREAM_KEY.items():
        if limit is None or sizes[stream] <= limit:
            out[stream] = None
        else:
            out[stream] = mem.execute(f"SELECT max({key}) FROM {table} WHERE {_STREAM_WHERE[stream]}").fetchall()[0][0]
    return out


def export_page(con: duckdb.DuckDBPyConnection, req: Request) -> tuple[tuple, Page]:
    """(key, page) of the export-aware order of ``req``'s settings, patched for newer verdicts."""
    selection, model = req.selection, req.model
    only_query = [req.choice.query_id] if req.choice.query_id is not None else None

    def build(con: duckdb.DuckDBPyConnection, limit: int | None) -> Built:
        # solved (and cached in the store) before the snapshot, whose transaction is read-only and rolled back
        plan = ExportPlan(selection.tradeoff(con, model),
                          audit_design(con, selection.config, model, selection.negatives))
        with read_snapshot(con):  # the event id, the flags and the rows of one moment
            settle(con)
            event_id = last_event(con)
            sizes = {"audit": None, "other": None}
            if limit is None:
                rows = con.sql(_pool_sql(selection, model, plan, only_query)).to_arrow_table()
            else:  # the heads' ids in one narrow pass, then their rows: the pool of their queries only
                heads, sizes = _heads(con, selection, model, plan, only_query, limit)
                con.register("_heads", heads)
                con.register("_head_queries", pa.table({"query_id": pa.compute.unique(heads["query_id"])}))
                try:
                    rows = con.sql(f"""SELECT * FROM ({_pool_sql(selection, model, plan, only_query, "_head_queries")})
                                       SEMI JOIN _heads USING (query_id, doc_id)""").to_arrow_table()
                finally:
                    con.unregister("_heads")
                    con.unregister("_head_queries")
            flags = verdict_flags(con, only_query)
        complete = limit is None or max(sizes.values()) <= limit
        return Built(rows, complete, event_id, ExportState(flags, plan, sizes))

    key = ("export", req.store, selection.to_json(), model, req.choice.query_id)
    fp = ((*req.fingerprint[0], selection.to_json()), req.fingerprint[1])

    def fingerprint_of(c: duckdb.DuckDBPyConnection) -> tuple:
        hard, soft = fingerprint(c, selection.config, model)
        return (*hard, selection.to_json()), soft

    def dump_state(state: ExportState) -> str:
        return json.dumps({"sizes": state.sizes})

    def load_state(c: duckdb.DuckDBPyConnection, text: str | None) -> ExportState:
        plan = ExportPlan(selection.tradeoff(c, model), audit_design(c, selection.config, model, selection.negatives))
        sizes = json.loads(text)["sizes"] if text else {"audit": None, "other": None}
        return ExportState(verdict_flags(c, only_query), plan, sizes, reselect_touched=True)

    spec = PageSpec(build, fingerprint_of, _kept_name(key), dump_state, load_state)
    page = PAGES.get(con, key, spec, fingerprint=fp)
    with page.lock:  # one patcher per page; the others wait and find it patched
        _settle_bounds(page)
        _patch(con, page, selection, model)
    return key, page


def _settle_bounds(page: Page) -> None:
    """Turn a freshly built page's stream sizes into its bounds and counts (once, in the in-memory database)."""
    state: ExportState = page.state
    if state.bounds is not None:
        return
    mem = PAGES.cursor()
    state.bounds = _bounds(mem, page.table, page.limit, state.sizes)
    _count(mem, page)


def _count(mem: duckdb.DuckDBPyConnection, page: Page) -> None:
    a, o = mem.execute(f"SELECT count(*) FILTER (WHERE audit), count(*) FILTER (WHERE NOT audit) FROM {page.table}"
                       ).fetchall()[0]
    page.state.counts = {"audit": int(a), "other": int(o)}


def export_covers(page: Page, k: int | None) -> bool:
    """Whether the page holds the first ``k`` items of each stream (or the whole stream)."""
    if page.complete:
        return True
    state: ExportState = page.state
    if k is None:
        return all(b is None for b in state.bounds.values())
    return all(state.bounds[s] is None or state.counts[s] >= k for s in _STREAM_KEY)


@dataclass
class _PatchPlan:
    newest: int  #: verdict events up to this one are read
    touched: set[str]  #: queries with events since the page
    flags: dict  #: their judged candidates' (false negative, true negative) flags now
    dirty: list[str]  #: the queries to select again


def _patch_plan(con: duckdb.DuckDBPyConnection, page: Page) -> _PatchPlan | None:
    """What bringing ``page`` up to date takes, or None when it is current: two small statements, the verdict log
    since the page, then the flags of the queries it touched."""
    newest, touched = con.execute(
        "SELECT coalesce(max(event_id), 0), list(DISTINCT query_id) FILTER (WHERE event_id > $e) FROM verdicts",
        {"e": page.event_id},
    ).fetchall()[0]
    if newest <= page.event_id:
        return None
    touched = {str(q) for q in touched or []}
    before: dict = page.state.flags
    now = verdict_flags(con, sorted(touched))
    if page.state.reselect_touched:
        return _PatchPlan(newest, touched, now, sorted(touched))
    none = (False, False)
    changed = {k for k in set(now) | {k for k in before if k[0] in touched} if before.get(k, none) != now.get(k, none)}
    return _PatchPlan(newest, touched, now, sorted({q for q, _ in changed}))


#: Queries re-selected per statement (each named in the SQL, a filter inside every scan).
_PATCH_BATCH = 64


def _patch(con: duckdb.DuckDBPyConnection, page: Page, selection: Selection, model: str) -> None:
    """Bring an export page up to the newest verdict: re-select the queries whose candidates' verdict flags changed
    since it was built, keeping their rows inside the page's bounds. An unsure verdict changes no flag and costs no
    statement beyond reading the flags."""
    plan = _patch_plan(con, page)
    if plan is not None and plan.dirty:  # rows to select: the flags and the rows must come from one moment
        with read_snapshot(con):
            plan = _patch_plan(con, page)
            fresh = []
            if plan is not None:
                settle(con)
                for i in range(0, len(plan.dirty), _PATCH_BATCH):
                    batch = plan.dirty[i:i + _PATCH_BATCH]
                    fresh.append(con.sql(_pool_sql(selection, model, page.state.plan, batch)).to_arrow_table())
        if plan is not None and plan.dirty:
            _replace_queries(page, plan.dirty, pa.concat_tables(fresh) if fresh else None)
    if plan is None:
        return
    flags: dict = page.state.flags
    for key in [k for k in flags if k[0] in plan.touched]:  # the flags now reflected, for the next patch
        del flags[key]
    flags.update(plan.flags)
    page.event_id = plan.newest
    page.state.reselect_touched = False


def _bound_sql(bound: tuple) -> str:
    """A page bound (order value, query id, doc id) as a row literal (the float written to round-trip exactly)."""
    value, query_id, doc_id = bound
    return f"({float(value)!r}::DOUBLE, {lit(query_id)}, {lit(doc_id)})"


def _replace_queries(page: Page, queries: list[str], fresh: pa.Table | None) -> None:
    """Swap the page's rows of ``queries`` for ``fresh``, keeping the fresh rows inside each stream's bound."""
    mem = PAGES.cursor()
    state: ExportState = page.state
    mem.execute("BEGIN TRANSACTION")
    try:
        mem.execute(f"DELETE FROM {page.table} WHERE query_id = ANY(?)", [queries])
        if fresh is not None and fresh.num_rows:
            mem.register("_fresh_rows", fresh)
            try:
                keep = " OR ".join(
                    f"({_STREAM_WHERE[s]}" + ("" if state.bounds[s] is None else
                                              f" AND {key} <= {_bound_sql(state.bounds[s])}") + ")"
                    for s, key in _STREAM_KEY.items())
                mem.execute(f"INSERT INTO {page.table} SELECT * FROM _fresh_rows WHERE {keep}")
            finally:
                mem.unregister("_fresh_rows")
        mem.execute("COMMIT")
    except BaseException:
        mem.execute("ROLLBACK")
        raise
    _count(mem, page)
