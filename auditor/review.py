"""The review queue and verdict events: what an annotator sees next, and what they said about it.

An *item* is one banded candidate: a row of ``bands`` for (config, model) joined to its scores in the view
``scored``. Verdicts are insert-only events in ``verdicts``; an undo is one more event naming the event it takes back,
so the table is an audit trail and two annotators writing at once never overwrite each other (use ``con.cursor()``
per thread).

Queue orders
------------
``risk``
    Highest false-negative risk first: suspicious before ambiguous before too_easy, and within a band the largest
    ``delta = s_neg - s_pos_min`` first (then best rank). ``risk`` is a number that sorts the same way:
    ``band_level + 0.5 + atan(delta) / pi`` with band_level 2 / 1 / 0. This finds the most false negatives per hour but
    is not a random sample: rates measured on it are biased upward.
``stratified``
    Each band's items in a seeded random order (a hash of seed, query id and doc id), interleaved across bands round-
    robin: position 1 of every band, then position 2, and so on. Reviewing the first ``j`` items of a band's order is a
    simple random sample of size ``j`` from the band's ``N_b`` items, so every item in it had inclusion probability
    ``j / N_b``; the item at position ``j`` stores ``sampling_prob = j / N_b``. The per-band false-negative rate of the
    reviewed sample (``sum(y) / n_b``) is then unbiased for the band, and the Horvitz-Thompson total
    ``sum over reviewed items of y_i / pi_i`` with ``pi_i = n_b / N_b`` equals ``sum_b N_b * rate_b``
    (see :mod:`auditor.stats`). Filters (band, source, query) make ``N_b`` the size of the filtered band; a walk
    filtered by source or query is recorded as ``stratified_filtered`` and is not used as a sample of the band.

Exclusion: an item leaves an annotator's queue once that annotator has a current verdict on it, and leaves every queue
once it has enough annotators (in stratified mode, counting only verdicts given in a stratified walk): 1, or 2 for the deterministic share ``ReviewConfig.double_annotation`` of items routed
to double annotation (by an md5 hash of the ids, so every process agrees) for Cohen's kappa.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from auditor.config import DEFAULT_BAND_CONFIG, ReviewConfig
from auditor.store import StoreError, transaction

VERDICTS = ("false_negative", "true_negative", "unsure")
MODES = ("risk", "stratified")
#: What a verdict may record as its queue: a stratified walk narrowed by source or query is not a band sample.
RECORDED_MODES = (*MODES, "stratified_filtered")
BANDS = ("suspicious", "ambiguous", "too_easy")

#: SQL for a band's place in the risk order (0 = reviewed first).
BAND_LEVEL_SQL = "CASE {b} WHEN 'suspicious' THEN 0 WHEN 'ambiguous' THEN 1 ELSE 2 END"

#: Characters of a document kept in the "other candidates" snippets.
SNIPPET_CHARS = ReviewConfig.snippet_chars

_ITEM_COLUMNS = [
    "query_id", "doc_id", "band", "rule", "s_neg", "s_pos_min", "s_pos_max", "delta", "ratio", "rank", "sources",
    "weight", "risk", "sampling_prob",
]


# --------------------------------------------------------------------------------------------------------------
# model / config resolution
# --------------------------------------------------------------------------------------------------------------

def resolve_model(con: duckdb.DuckDBPyConnection, model: str | None, config: str = DEFAULT_BAND_CONFIG) -> str:
    """The scorer whose bands to use: the one given, else the latest one scored, else a clear error."""
    if model:
        return model
    try:
        from auditor.bands import latest_model  # written by the scoring engine
    except ImportError:
        latest_model = None
    if latest_model is not None:
        try:
            found = latest_model(con)
        except StoreError:
            found = None
        if found:
            return found
    row = con.execute(
        "SELECT model FROM bands WHERE config = ? GROUP BY model ORDER BY count(*) DESC, model LIMIT 1", [config]
    ).fetchall()
    if not row:
        row = con.execute("SELECT model FROM scores LIMIT 1").fetchall()
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


def _double_share(double_annotation: float | None) -> float:
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
# the queue query
# --------------------------------------------------------------------------------------------------------------

# Joining bands to scores (string keys, a million rows) costs about 150 ms: too slow to repeat for every item shown.
# The joined items of one (store, config, model, seed) are therefore copied once into a private in-memory DuckDB
# (a top-1 there takes ~15 ms on a million rows), guarded by a fingerprint of the bands they came from (count and xor
# of row hashes, ~60 ms on a million rows; the SimANS weight in the hash changes whenever scores do), so re-banding
# or re-scoring is seen at once. The store only answers the small question "which items are done", per call.
_CACHE: dict[tuple, tuple[tuple, str]] = {}
_CACHE_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()
_RETIRED: list[str] = []
_CACHE_SIZE = 4
_MEM: duckdb.DuckDBPyConnection | None = None
_MEM_LOCAL = threading.local()
_TABLE_SEQ = iter(range(1, 1 << 62))

_ITEMS_SQL = f"""
    SELECT b.query_id, b.doc_id, b.band, b.rule, b.weight, {BAND_LEVEL_SQL.format(b="b.band")} AS band_level,
           s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio, s.rank,
           coalesce(src.sources, []::VARCHAR[]) AS sources,
           hash(b.query_id, b.doc_id, ?::BIGINT) AS rkey
    FROM bands b
    JOIN scored s ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
    LEFT JOIN (SELECT query_id, doc_id, list(DISTINCT source ORDER BY source) AS sources
               FROM candidates GROUP BY query_id, doc_id) src
         ON src.query_id = b.query_id AND src.doc_id = b.doc_id
    WHERE b.config = ? AND b.model = ?
"""


def _mem_cursor() -> duckdb.DuckDBPyConnection:
    global _MEM
    cur = getattr(_MEM_LOCAL, "cursor", None)
    if cur is None:
        with _CACHE_LOCK:
            if _MEM is None:
                _MEM = duckdb.connect(":memory:")
            cur = _MEM.cursor()
        _MEM_LOCAL.cursor = cur
    return cur


def _fingerprint(con: duckdb.DuckDBPyConnection, config: str, model: str) -> tuple:
    return con.execute(
        """
        SELECT count(*), bit_xor(hash(query_id, doc_id, band, rule, weight)),
               (SELECT estimated_size FROM duckdb_tables() WHERE table_name = 'candidates' AND schema_name = 'main'),
               (SELECT estimated_size FROM duckdb_tables() WHERE table_name = 'scores' AND schema_name = 'main')
        FROM bands WHERE config = ? AND model = ?
        """,
        [config, model],
    ).fetchall()[0]


def _store_key(con: duckdb.DuckDBPyConnection) -> tuple:
    rows = con.execute("SELECT database_name, path FROM duckdb_databases() WHERE NOT internal").fetchall()
    return tuple(sorted((str(a), str(b)) for a, b in rows))


def _items_table(con: duckdb.DuckDBPyConnection, config: str, model: str, seed: int) -> str:
    """Name of the in-memory table holding the joined items of (config, model), with per-band random positions."""
    key = (_store_key(con), config, model, int(seed))
    fp = _fingerprint(con, config, model)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0] == fp:
        return hit[1]
    with _BUILD_LOCK:  # one builder at a time; whoever waited finds the fresh table
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None and hit[0] == fp:
            return hit[1]
        settle(con)
        arrow = con.sql(
            f"""
            SELECT *, row_number() OVER (PARTITION BY band ORDER BY rkey, query_id, doc_id) AS band_pos,
                   count(*) OVER (PARTITION BY band) AS band_size
            FROM ({_ITEMS_SQL})
            """,
            params=[int(seed), config, model],
        ).to_arrow_table()
        name = f"items_{next(_TABLE_SEQ)}"
        mem = _mem_cursor()
        mem.register("_arrow_items", arrow)
        try:
            mem.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_items")
        finally:
            mem.unregister("_arrow_items")
        with _CACHE_LOCK:
            old = _CACHE.pop(key, None)
            _CACHE[key] = (fp, name)
            if old is not None:
                _RETIRED.append(old[1])
            while len(_CACHE) > _CACHE_SIZE:
                _RETIRED.append(_CACHE.pop(next(iter(_CACHE)))[1])
            # Tables are dropped one generation late, so a reader that just looked up the old name still finds
            # it; a reader slower than that gets a CatalogException and retries (see _run_queue).
            doomed = _RETIRED[:-1]
            del _RETIRED[: len(doomed)]
        for table in doomed:
            mem.execute(f"DROP TABLE IF EXISTS {table}")
        return name


def _done_items(
    con: duckdb.DuckDBPyConnection, annotator: str | None, double_annotation: float, skip: Iterable[tuple[str, str]],
    mode: str = "risk",
) -> pd.DataFrame:
    """(query_id, doc_id) of items that leave this queue: judged by this annotator, or by enough annotators.

    In stratified mode only verdicts given in a stratified queue count: an item judged earlier in risk order stays in
    the random walk (and is shown again), or the random sample would silently lack the riskiest items and every
    band's false-negative rate would come out too low.
    """
    params: list[Any] = []
    scope = "WHERE v.queue_mode LIKE 'stratified%'" if mode == "stratified" else ""
    mine = "false"
    if annotator is not None:
        mine = "bool_or(v.annotator = ?)"
        params.append(annotator)
    need = "1"
    if double_annotation > 0:
        need = f"CASE WHEN {DOUBLE_HASH_SQL} < ? THEN 2 ELSE 1 END"
        params.append(double_annotation)
    done = con.execute(
        f"""
        SELECT v.query_id, v.doc_id FROM current_verdicts v {scope} GROUP BY v.query_id, v.doc_id
        HAVING {mine} OR count(DISTINCT v.annotator) >= {need}
        """,
        params,
    ).df()
    skip = [(str(q), str(d)) for q, d in skip]
    if skip:
        done = pd.concat([done, pd.DataFrame(skip, columns=["query_id", "doc_id"])], ignore_index=True)
    return done.astype({"query_id": "object", "doc_id": "object"})


_OUT = (
    "query_id, doc_id, band, rule, s_neg, s_pos_min, s_pos_max, delta, ratio, rank, sources, weight, "
    "(2 - band_level) + 0.5 + atan(delta) / pi() AS risk, {sampling} AS sampling_prob"
)


def _queue_sql(
    *,
    mode: str,
    bands: Sequence[str] | None,
    source: str | None,
    query_id: str | None,
    limit: int | None,
    n_done: int,
    items: str,
) -> tuple[str, list[Any]]:
    """SQL over the in-memory item table and the registered ``_done`` frame: filters, exclusions, order, limit."""
    if mode not in MODES:
        raise ValueError(f"unknown queue mode {mode!r}: use one of {', '.join(MODES)}")
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
    sampling = "band_pos::DOUBLE / band_size" if mode == "stratified" else "NULL::DOUBLE"
    if mode == "risk":
        order = "band_level, delta DESC, rank NULLS LAST, query_id, doc_id"
    else:
        order = "band_pos, band_level, query_id, doc_id"
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
            SELECT {_OUT.format(sampling=sampling)} FROM picked ORDER BY {order} LIMIT 1
        """
        return sql, params
    if mode == "stratified" and filtered:
        pool = (
            f"SELECT * EXCLUDE (band_pos, band_size), row_number() OVER (PARTITION BY band ORDER BY rkey, query_id, "
            f"doc_id) AS band_pos, count(*) OVER (PARTITION BY band) AS band_size FROM ({pool})"
        )
    if limit is None:
        sql = f"WITH pool AS ({pool}) SELECT {_OUT.format(sampling=sampling)} FROM ({avail}) ORDER BY {order}"
    else:
        # The done set is small: the first limit + n_done items of the pool always hold the first `limit` available
        # ones, so the anti-join runs on a handful of rows and the pool needs only a top-N, not a full sort.
        sql = f"""
            WITH pool AS ({pool}),
            head AS (SELECT * FROM pool ORDER BY {order} LIMIT ?)
            SELECT {_OUT.format(sampling=sampling)} FROM head ANTI JOIN _done USING (query_id, doc_id)
            ORDER BY {order} LIMIT ?
        """
        params += [int(limit) + int(n_done), int(limit)]
    return sql, params


def _run_queue(
    con: duckdb.DuckDBPyConnection,
    *,
    config: str,
    model: str,
    seed: int,
    annotator: str | None,
    double_annotation: float,
    skip: Iterable[tuple[str, str]],
    **kw: Any,
) -> pd.DataFrame:
    done = _done_items(con, annotator, double_annotation, skip, kw.get("mode", "risk"))
    mem = _mem_cursor()
    for attempt in (1, 2):
        items = _items_table(con, config, model, seed)
        sql, params = _queue_sql(items=items, n_done=len(done), **kw)
        mem.register("_done", done)
        try:
            return mem.execute(sql, params).df()
        except duckdb.CatalogException:
            if attempt == 2:
                raise
        finally:
            mem.unregister("_done")
    raise AssertionError("unreachable")


def build_queue(
    con: duckdb.DuckDBPyConnection,
    *,
    mode: str = "risk",
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
) -> pd.DataFrame:
    """The review queue in order (see the module docstring for the two orders and the exclusion rules).

    Columns: query_id, doc_id, band, rule, s_neg, s_pos_min, s_pos_max, delta, ratio, rank, sources (list), weight,
    risk, sampling_prob (NULL in risk mode).
    """
    model = resolve_model(con, model, config)
    _check_bands_exist(con, config, model)
    df = _run_queue(
        con, config=config, model=model, seed=seed, mode=mode, bands=bands, source=source, query_id=query_id,
        annotator=annotator, skip=skip, double_annotation=_double_share(double_annotation), limit=limit,
    )
    if len(df):
        df["sources"] = df["sources"].map(lambda s: [str(x) for x in s] if s is not None else [])
    return df[_ITEM_COLUMNS] if len(df) else pd.DataFrame(columns=_ITEM_COLUMNS)


def next_item(
    con: duckdb.DuckDBPyConnection,
    *,
    annotator: str,
    mode: str = "risk",
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    bands: Sequence[str] | None = None,
    source: str | None = None,
    query_id: str | None = None,
    skip: Iterable[tuple[str, str]] = (),
    seed: int = 42,
    double_annotation: float | None = None,
) -> dict[str, Any] | None:
    """The next item for ``annotator`` (one SQL query with LIMIT 1), or None when the queue is empty.

    ``skip`` holds (query_id, doc_id) pairs the annotator skipped in this session; they are left out without any
    event being written. The dict has the columns of :func:`build_queue` plus ``mode``.
    """
    model = resolve_model(con, model, config)
    _check_bands_exist(con, config, model)
    df = _run_queue(
        con, config=config, model=model, seed=seed, mode=mode, bands=bands, source=source, query_id=query_id,
        annotator=annotator, skip=skip, double_annotation=_double_share(double_annotation), limit=1,
    )
    if df.empty:
        return None
    item = {k: _py(v) for k, v in df.iloc[0].items()}
    if item["rank"] is not None:
        item["rank"] = int(item["rank"])
    item["sources"] = list(item.get("sources") or [])
    # A stratified walk narrowed to one source or query samples that subset, not the band: its verdicts must not be
    # extrapolated to the whole band (auditor.stats counts only queue_mode 'stratified' as a band sample).
    item["mode"] = "stratified_filtered" if mode == "stratified" and (source or query_id) else mode
    item["model"] = model
    item["config"] = config
    return item


# --------------------------------------------------------------------------------------------------------------
# verdict events
# --------------------------------------------------------------------------------------------------------------

def _validate_verdict(verdict: str, annotator: str, where: str = "") -> None:
    if verdict not in VERDICTS:
        raise ValueError(f"{where}verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError(f"{where}annotator must be a non-empty name")


def record_verdict(
    con: duckdb.DuckDBPyConnection,
    *,
    query_id: str,
    doc_id: str,
    verdict: str,
    annotator: str,
    note: str | None = None,
    origin: str = "app",
    band: str | None = None,
    queue_mode: str | None = None,
    sampling_prob: float | None = None,
) -> int:
    """Append one verdict event and return its event_id. Nothing is ever updated: a changed mind is a new event."""
    _validate_verdict(verdict, annotator)
    if queue_mode is not None and queue_mode not in RECORDED_MODES:
        raise ValueError(f"queue_mode must be one of {', '.join(RECORDED_MODES)} or None, got {queue_mode!r}")
    if sampling_prob is not None and not 0.0 < float(sampling_prob) <= 1.0:
        raise ValueError(f"sampling_prob must be in (0, 1], got {sampling_prob}")
    row = con.execute(
        """
        INSERT INTO verdicts (query_id, doc_id, verdict, annotator, note, origin, band, queue_mode, sampling_prob)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING event_id
        """,
        [query_id, doc_id, verdict, annotator.strip(), note or None, origin, band, queue_mode, sampling_prob],
    ).fetchall()
    return int(row[0][0])


def record_verdicts(
    con: duckdb.DuckDBPyConnection, rows: Iterable[dict[str, Any]], origin: str = "import",
    *, config: str = DEFAULT_BAND_CONFIG, model: str | None = None,
) -> int:
    """Append many verdict events in one transaction (all or nothing); returns how many were written.

    Each row needs query_id, doc_id, verdict, annotator (note, band, queue_mode, sampling_prob optional). Unknown
    query or document ids are rejected. A missing band is filled from the current bands of (config, model).
    """
    records = []
    for i, r in enumerate(rows):
        where = f"row {i + 1}: "
        for key in ("query_id", "doc_id", "verdict", "annotator"):
            if not isinstance(r.get(key), str) or not r.get(key):
                raise ValueError(f"{where}field {key!r} must be a non-empty string")
        _validate_verdict(r["verdict"], r["annotator"], where)
        note = r.get("note")
        if note is not None and not isinstance(note, str):
            raise ValueError(f"{where}field 'note' must be a string")
        records.append(
            (r["query_id"], r["doc_id"], r["verdict"], r["annotator"].strip(), note or None, origin,
             r.get("band"), r.get("queue_mode"), r.get("sampling_prob"))
        )
    if not records:
        return 0
    df = pd.DataFrame(
        records,
        columns=["query_id", "doc_id", "verdict", "annotator", "note", "origin", "band", "queue_mode",
                 "sampling_prob"],
    ).astype({"band": "object", "queue_mode": "object", "note": "object", "sampling_prob": "float64"})
    try:
        banded_model = resolve_model(con, model, config)
    except StoreError:
        banded_model = None
    settle(con)
    with transaction(con):
        con.register("_incoming_verdicts", df)
        try:
            bad = con.execute(
                """
                SELECT i.query_id, i.doc_id,
                       NOT EXISTS (SELECT 1 FROM queries q WHERE q.query_id = i.query_id) AS bad_q
                FROM _incoming_verdicts i
                WHERE NOT EXISTS (SELECT 1 FROM queries q WHERE q.query_id = i.query_id)
                   OR NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = i.doc_id)
                LIMIT 1
                """
            ).fetchall()
            if bad:
                bad = bad[0]
                what = f"query id {bad[0]!r}" if bad[2] else f"document id {bad[1]!r}"
                raise StoreError(f"unknown {what}: verdicts must name ids that exist in the store")
            con.execute(
                """
                INSERT INTO verdicts (query_id, doc_id, verdict, annotator, note, origin, band, queue_mode,
                                      sampling_prob)
                SELECT i.query_id, i.doc_id, i.verdict, i.annotator, i.note, i.origin,
                       coalesce(i.band, b.band), i.queue_mode, i.sampling_prob
                FROM _incoming_verdicts i
                LEFT JOIN bands b ON b.config = ? AND b.model = ? AND b.query_id = i.query_id AND b.doc_id = i.doc_id
                """,
                [config, banded_model],
            )
        finally:
            con.unregister("_incoming_verdicts")
    return len(records)


#: Undo reads "the latest verdict not yet undone" and then appends; two undos interleaved between those steps would
#: both take back the same verdict. One process writes a store (DuckDB's rule), so a process-wide lock serialises them.
_UNDO_LOCK = threading.Lock()


def undo_last(con: duckdb.DuckDBPyConnection, *, annotator: str) -> dict[str, Any] | None:
    """Take back ``annotator``'s latest verdict that is not already undone, by appending an 'undo' event.

    Returns {query_id, doc_id, verdict, event_id} of the verdict taken back (event_id is that verdict's id), or None
    when there is nothing to undo. Repeated calls walk back through the annotator's history; concurrent calls take
    back distinct verdicts.
    """
    with _UNDO_LOCK:
        row = con.execute(
            """
            SELECT event_id, query_id, doc_id, verdict, band FROM verdicts
            WHERE annotator = ? AND verdict <> 'undo'
              AND event_id NOT IN (SELECT undoes FROM verdicts WHERE undoes IS NOT NULL)
            ORDER BY event_id DESC LIMIT 1
            """,
            [annotator],
        ).fetchall()
        if not row:
            return None
        event_id, query_id, doc_id, verdict, band = row[0]
        con.execute(
            "INSERT INTO verdicts (query_id, doc_id, verdict, annotator, origin, band, undoes) "
            "VALUES (?, ?, 'undo', ?, 'app', ?, ?)",
            [query_id, doc_id, annotator, band, event_id],
        )
    return {"query_id": query_id, "doc_id": doc_id, "verdict": verdict, "event_id": int(event_id)}


# --------------------------------------------------------------------------------------------------------------
# progress and context
# --------------------------------------------------------------------------------------------------------------

def review_progress(
    con: duckdb.DuckDBPyConnection,
    *,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
    annotator: str | None = None,
) -> pd.DataFrame:
    """Per band: total items, reviewed items (by anyone, or by ``annotator``), remaining, and verdict counts.

    Rows come in risk order (suspicious, ambiguous, too_easy); bands with no items show total 0.
    """
    model = resolve_model(con, model, config)
    params: list[Any] = []
    who = ""
    if annotator is not None:
        who = "WHERE annotator = ?"
        params.append(annotator)
    df = con.execute(
        f"""
        WITH item_verdicts AS (
            SELECT query_id, doc_id,
                   bool_or(verdict = 'false_negative') AS fn,
                   bool_or(verdict = 'true_negative') AS tn,
                   bool_and(verdict = 'unsure') AS un
            FROM current_verdicts {who} GROUP BY query_id, doc_id
        ),
        all_bands AS (SELECT unnest(['suspicious', 'ambiguous', 'too_easy']) AS band)
        SELECT a.band,
               count(b.doc_id) AS total,
               count(v.doc_id) AS reviewed,
               count(b.doc_id) - count(v.doc_id) AS remaining,
               count(*) FILTER (WHERE v.fn) AS false_negative,
               count(*) FILTER (WHERE v.tn AND NOT v.fn) AS true_negative,
               count(*) FILTER (WHERE v.un) AS unsure
        FROM all_bands a
        LEFT JOIN bands b ON b.band = a.band AND b.config = ? AND b.model = ?
        LEFT JOIN item_verdicts v ON v.query_id = b.query_id AND v.doc_id = b.doc_id
        GROUP BY a.band ORDER BY {BAND_LEVEL_SQL.format(b='a.band')}
        """,
        params + [config, model],
    ).df()
    return df


def item_context(
    con: duckdb.DuckDBPyConnection,
    query_id: str,
    doc_id: str,
    *,
    model: str | None = None,
    config: str = DEFAULT_BAND_CONFIG,
) -> dict[str, Any]:
    """Everything a reviewer needs to judge one item: the query, its positives, the candidate, its siblings."""
    model = resolve_model(con, model, config)
    q = con.execute("SELECT text, prompt FROM queries WHERE query_id = ? LIMIT 1", [query_id]).fetchall()
    if not q:
        raise StoreError(f"unknown query id {query_id!r}")
    positives = [
        {"doc_id": r[0], "title": r[1], "text": r[2], "grade": r[3], "teacher_score": r[4]}
        for r in con.execute(
            """
            SELECT r.doc_id, d.title, d.text, r.grade, r.teacher_score
            FROM qrels r JOIN documents d USING (doc_id)
            WHERE r.query_id = ? AND r.relevant
              AND d.doc_id IN (SELECT doc_id FROM qrels WHERE query_id = ? AND relevant)
            ORDER BY r.grade DESC NULLS LAST, r.doc_id
            """,
            [query_id, query_id],
        ).fetchall()
    ]
    cand = con.execute(
        """
        SELECT d.doc_id, d.title, d.text, b.band, b.rule, s.s_neg, s.s_pos_min, s.s_pos_max, s.delta, s.ratio,
               s.rank, b.weight, s.sim_to_pos, s.ce_neg, s.ce_pos,
               (SELECT list(DISTINCT c.source ORDER BY c.source) FROM candidates c
                WHERE c.query_id = ? AND c.doc_id = ?) AS sources
        FROM (SELECT doc_id, title, text FROM documents WHERE doc_id = ? LIMIT 1) d
        LEFT JOIN scored s ON s.model = ? AND s.query_id = ? AND s.doc_id = d.doc_id
        LEFT JOIN bands b ON b.config = ? AND b.model = ? AND b.query_id = ? AND b.doc_id = d.doc_id
        """,
        [query_id, doc_id, doc_id, model, query_id, config, model, query_id],
    )
    rows = cand.fetchall()
    row = rows[0] if rows else None
    if row is None:
        raise StoreError(f"unknown document id {doc_id!r}")
    candidate = dict(zip([d[0] for d in cand.description], row))
    candidate["sources"] = list(candidate["sources"] or [])
    others_cur = con.execute(
        f"""
        SELECT b.doc_id, b.band, b.rule, s.s_neg, s.delta, s.rank, d.title,
               left(d.text, {SNIPPET_CHARS}) AS snippet
        FROM bands b JOIN scored s ON s.model = b.model AND s.query_id = b.query_id AND s.doc_id = b.doc_id
        JOIN documents d ON d.doc_id = b.doc_id
        WHERE b.config = ? AND b.model = ? AND b.query_id = ? AND b.doc_id <> ?
          -- only this query's documents: keeps the join from scanning the whole corpus
          AND d.doc_id IN (SELECT doc_id FROM candidates WHERE query_id = ?)
        ORDER BY s.rank NULLS LAST, s.s_neg DESC
        """,
        [config, model, query_id, doc_id, query_id],
    )
    names = [d[0] for d in others_cur.description]
    others = [dict(zip(names, r)) for r in others_cur.fetchall()]
    verdicts_cur = con.execute(
        "SELECT annotator, verdict, note, created_at FROM current_verdicts WHERE query_id = ? AND doc_id = ? "
        "ORDER BY event_id",
        [query_id, doc_id],
    )
    vnames = [d[0] for d in verdicts_cur.description]
    return {
        "query_id": query_id,
        "query": q[0][0],
        "prompt": q[0][1],
        "positives": positives,
        "candidate": candidate,
        "others": others,
        "verdicts": [dict(zip(vnames, r)) for r in verdicts_cur.fetchall()],
        "model": model,
        "config": config,
    }


def _py(value: Any) -> Any:
    """A pandas / numpy cell as a plain Python value (None for missing), so items serialise to JSON."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(x) for x in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def risk_of(band: str, delta: float) -> float:
    """Python twin of the SQL ``risk`` column (for display and tests)."""
    level = {"suspicious": 0, "ambiguous": 1}.get(band, 2)
    return (2 - level) + 0.5 + math.atan(delta) / math.pi
