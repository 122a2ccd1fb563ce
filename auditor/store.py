"""The DuckDB store: schema, migrations, and opening a database file safely.

One file holds a whole audit. Tables (schema version 1):

``meta``          key/value; ``schema_version`` lives here.
``ingests``       one row per ingest run: path, format, content hash of the input (re-ingest is a no-op), counts.
``documents``     ``doc_id`` (the source's id, or a content hash where the format has none), ``title``, ``text``,
                  ``text_hash`` (md5 of the text that gets embedded), ``dataset``. Text is stored once.
``queries``       ``query_id``, ``text``, ``text_hash``, ``dataset``, ``prompt`` (instruction from the source, if any).
``qrels``         labels: ``relevant`` true = labeled positive, false = judged non-relevant (BEIR score 0; judged is
                  not the same as unjudged). ``grade`` is the source's graded relevance where it has one,
                  ``teacher_score`` a teacher's score for the pair where the source has one.
``candidates``    candidate negatives and their provenance: ``source`` is ``given`` (from the training file) or the
                  name of a mining run; ``source_rank`` / ``source_score`` are the rank and score that source gave.
``embeddings``    vectors keyed by (model, role, text_hash): a text is embedded once per model and role.
``scores``        per (model, query, candidate): s_neg, s_pos min/mean/max over positives, max sim(positive, n),
                  rank in the model's corpus search (positives excluded; NULL beyond the mined depth), optional
                  cross-encoder scores of n and of the best positive.
``band_configs``  named threshold sets (JSON of :class:`auditor.config.BandConfig`).
``bands``         per (config, model, query, candidate): band, the rule that fired, SimANS weight.
``verdicts``      insert-only review events. ``verdict`` is false_negative / true_negative / unsure, or ``undo``
                  with ``undoes`` naming the event it takes back. Nothing is ever updated or deleted.

Added in schema version 2 (the lexical signal and the learned false-negative risk, see :mod:`auditor.lexical` and
:mod:`auditor.risk`):

``scores``        + ``bm25`` (BM25 of n for q over the best BM25 score of q in the corpus), ``bm25_rank`` (rank in
                  BM25 search, positives excluded; NULL beyond its depth), ``lex_to_pos`` (max over positives p of
                  BM25(p -> n) / BM25(p -> p)), ``fused_rank`` (rank among the query's candidates by reciprocal-rank
                  fusion of the independent views; the prior risk is 1 / (1 + fused_rank)).
``risk``          per (model, query, candidate): ``prior``, ``p_model`` (the estimate before verdicts override it),
                  ``p_fn`` = P(false negative) in force, ``origin``
                  (prior | model | propagated) and the ``fit_id`` that wrote it. Replaced whole by each fit.
``risk_fits``     one row per fit: verdicts it saw (``n_labels``, ``n_false_negative``, ``last_event_id``), the
                  blend weight given to the fitted model against the prior, and its parameters (JSON).

Added in schema version 3 (the app for a team, see :mod:`auditor.accounts` and :mod:`auditor.review.leases`):

``users``         accounts: ``name``, ``role`` (annotator | lead | admin), ``password_hash`` (scrypt, salted; NULL for
                  accounts that sign in through OIDC only), ``email`` (what OIDC sign-in maps to the account).
``sessions``      signed-in browsers: SHA-256 of the session token (the token itself lives only in the browser),
                  the account, and start and expiry in Unix seconds.
``leases``        review items held by an annotator until ``expires_at`` (Unix seconds): nobody else is given them,
                  unless the item is routed to double annotation. ``seq`` orders one annotator's held items; ``item``
                  is the queue row (JSON) as it was claimed, with the queue mode, band and sampling probability that
                  the verdict will record; ``event_floor`` is the newest verdict event at the claim (a later verdict of the
                  annotator on the item ends the lease).
``skips``         items an annotator skipped, kept out of that annotator's queue until brought back.
``meta``          + ``guidelines``: the review guidelines (Markdown) the lead sets.

Added in schema version 4 (the review queue, see :mod:`auditor.review.cache`):

``queue_pages``   the first items of each review order in use, as Arrow IPC (``rows``), with the fingerprint of the
                  rows they were built from and the verdict event they reflect: a process that starts (the app after a
                  restart) serves its first item from here instead of ranking every candidate again. A cache: any row
                  may be deleted; at most ``KEPT_PAGES`` are kept.

Views: ``scored`` adds delta and ratio (against ``s_pos_min``) to ``scores``; ``current_verdicts`` is each
(query, candidate, annotator)'s latest verdict that was not undone.

Only one process may open a file read-write (DuckDB's rule); inside it, share one connection and use
``con.cursor()`` per thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from auditor.config import STORE_MEMORY_LIMIT

SCHEMA_VERSION = 4


class StoreError(RuntimeError):
    """A store problem explained in words for the user (no traceback needed)."""


class StoreLockedError(StoreError):
    pass


_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);

CREATE SEQUENCE IF NOT EXISTS ingest_seq START 1;
CREATE TABLE IF NOT EXISTS ingests (
    ingest_id     INTEGER PRIMARY KEY DEFAULT nextval('ingest_seq'),
    dataset       VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    format        VARCHAR NOT NULL,
    split         VARCHAR,
    content_hash  VARCHAR NOT NULL,
    ingested_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    n_queries     BIGINT, n_documents BIGINT, n_positives BIGINT, n_judged_negatives BIGINT,
    n_candidates  BIGINT, n_duplicates BIGINT, n_skipped BIGINT
);

CREATE TABLE IF NOT EXISTS documents (
    doc_id     VARCHAR NOT NULL,
    title      VARCHAR,
    text       VARCHAR NOT NULL,
    text_hash  VARCHAR NOT NULL,
    dataset    VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS queries (
    query_id   VARCHAR NOT NULL,
    text       VARCHAR NOT NULL,
    text_hash  VARCHAR NOT NULL,
    dataset    VARCHAR NOT NULL,
    prompt     VARCHAR
);

CREATE TABLE IF NOT EXISTS qrels (
    query_id       VARCHAR NOT NULL,
    doc_id         VARCHAR NOT NULL,
    relevant       BOOLEAN NOT NULL,
    grade          INTEGER,
    teacher_score  DOUBLE,
    dataset        VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS candidates (
    query_id      VARCHAR NOT NULL,
    doc_id        VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,
    source_rank   INTEGER,
    source_score  DOUBLE,
    model         VARCHAR,
    added_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS embeddings (
    model      VARCHAR NOT NULL,
    role       VARCHAR NOT NULL,   -- 'query' or 'document'
    text_hash  VARCHAR NOT NULL,
    vector     FLOAT[] NOT NULL
);

CREATE TABLE IF NOT EXISTS scores (
    model         VARCHAR NOT NULL,
    query_id      VARCHAR NOT NULL,
    doc_id        VARCHAR NOT NULL,
    s_neg         DOUBLE NOT NULL,
    s_pos_min     DOUBLE NOT NULL,
    s_pos_mean    DOUBLE NOT NULL,
    s_pos_max     DOUBLE NOT NULL,
    sim_to_pos    DOUBLE,          -- max over positives of sim(p, n): near-duplicate check
    rank          INTEGER,         -- rank in this model's corpus search, positives excluded; NULL beyond depth
    ce_neg        DOUBLE,          -- cross-encoder score of (q, n), when a second opinion was run
    ce_pos        DOUBLE           -- cross-encoder score of (q, best positive)
);

CREATE TABLE IF NOT EXISTS band_configs (
    name        VARCHAR PRIMARY KEY,
    params      JSON NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS bands (
    config    VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    query_id  VARCHAR NOT NULL,
    doc_id    VARCHAR NOT NULL,
    band      VARCHAR NOT NULL,   -- 'suspicious' | 'ambiguous' | 'too_easy'
    rule      VARCHAR NOT NULL,   -- which rule put it there, e.g. 'relative_margin', 'inversion', 'simans'
    weight    DOUBLE              -- SimANS weight exp(-a (delta - b)^2)
);

CREATE SEQUENCE IF NOT EXISTS verdict_seq START 1;
CREATE TABLE IF NOT EXISTS verdicts (
    event_id       BIGINT PRIMARY KEY DEFAULT nextval('verdict_seq'),
    query_id       VARCHAR NOT NULL,
    doc_id         VARCHAR NOT NULL,
    verdict        VARCHAR NOT NULL CHECK (verdict IN ('false_negative', 'true_negative', 'unsure', 'undo')),
    annotator      VARCHAR NOT NULL,
    note           VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    origin         VARCHAR NOT NULL DEFAULT 'app',   -- 'app' | 'import' | 'cli'
    band           VARCHAR,        -- band of the item when it was reviewed
    queue_mode     VARCHAR,        -- 'risk' | 'stratified' | NULL (imported)
    sampling_prob  DOUBLE,         -- inclusion probability under a random queue; NULL when not sampled at random
    undoes         BIGINT          -- for verdict = 'undo': the event taken back
);

CREATE OR REPLACE VIEW scored AS
SELECT *, s_neg - s_pos_min AS delta,
       CASE WHEN s_pos_min = 0 THEN NULL ELSE s_neg / s_pos_min END AS ratio
FROM scores;

CREATE OR REPLACE VIEW current_verdicts AS
SELECT query_id, doc_id, annotator, verdict, note, created_at, event_id, band, queue_mode, sampling_prob, origin
FROM (
    SELECT v.*, row_number() OVER (PARTITION BY query_id, doc_id, annotator ORDER BY event_id DESC) AS rn
    FROM verdicts v
    WHERE verdict <> 'undo' AND event_id NOT IN (SELECT undoes FROM verdicts WHERE undoes IS NOT NULL)
)
WHERE rn = 1;
"""

_SCHEMA_V2 = """
ALTER TABLE scores ADD COLUMN IF NOT EXISTS bm25 DOUBLE;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS bm25_rank INTEGER;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS lex_to_pos DOUBLE;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS fused_rank INTEGER;

CREATE TABLE IF NOT EXISTS risk (
    model     VARCHAR NOT NULL,
    query_id  VARCHAR NOT NULL,
    doc_id    VARCHAR NOT NULL,
    prior     DOUBLE NOT NULL,
    p_model   DOUBLE NOT NULL,    -- the model's estimate (prior blended with the classifier), verdicts aside
    p_fn      DOUBLE NOT NULL,    -- P(false negative) in force: p_model, 1 / 0 for a verdict, lifted by propagation
    origin    VARCHAR NOT NULL,   -- 'prior' | 'model' | 'propagated'
    fit_id    BIGINT              -- risk_fits row that wrote it; NULL for the prior alone
);

CREATE SEQUENCE IF NOT EXISTS risk_fit_seq START 1;
CREATE TABLE IF NOT EXISTS risk_fits (
    fit_id            BIGINT PRIMARY KEY DEFAULT nextval('risk_fit_seq'),
    model             VARCHAR NOT NULL,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    last_event_id     BIGINT NOT NULL,   -- the newest verdict event the fit saw
    n_labels          INTEGER NOT NULL,  -- items with a false_negative / true_negative consensus
    n_false_negative  INTEGER NOT NULL,
    blend             DOUBLE NOT NULL,   -- weight of the fitted classifier against the prior
    params            JSON NOT NULL
);

CREATE OR REPLACE VIEW scored AS
SELECT *, s_neg - s_pos_min AS delta,
       CASE WHEN s_pos_min = 0 THEN NULL ELSE s_neg / s_pos_min END AS ratio
FROM scores;
"""

_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS users (
    name           VARCHAR PRIMARY KEY,
    role           VARCHAR NOT NULL CHECK (role IN ('annotator', 'lead', 'admin')),
    password_hash  VARCHAR,
    email          VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS sessions (
    token_hash    VARCHAR PRIMARY KEY,
    name          VARCHAR NOT NULL,
    created_at_s  DOUBLE NOT NULL,
    expires_at    DOUBLE NOT NULL
);

CREATE TABLE IF NOT EXISTS leases (
    query_id    VARCHAR NOT NULL,
    doc_id      VARCHAR NOT NULL,
    annotator   VARCHAR NOT NULL,
    claimed_at  DOUBLE NOT NULL,
    expires_at  DOUBLE NOT NULL,
    seq         BIGINT NOT NULL,
    event_floor BIGINT NOT NULL,
    item        JSON NOT NULL
);

CREATE TABLE IF NOT EXISTS skips (
    annotator   VARCHAR NOT NULL,
    query_id    VARCHAR NOT NULL,
    doc_id      VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS queue_pages (
    page_key    VARCHAR PRIMARY KEY,
    fingerprint VARCHAR NOT NULL,
    page_limit  BIGINT,
    complete    BOOLEAN NOT NULL,
    event_id    BIGINT NOT NULL,
    state       JSON,
    rows        BLOB NOT NULL,
    kept_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

#: Migrations: MIGRATIONS[v] upgrades a store at version v-1 to version v. Version 1 is the initial schema.
MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4}

_LOCK_HINT = (
    "The store {path} is open in another process (the app or another auditor command). DuckDB lets one process "
    "write a file at a time: stop that process, or work on a copy of the file."
)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta' AND table_schema = 'main'"
    ).fetchall()[0][0]
    if not exists:
        return 0
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the store to SCHEMA_VERSION, one migration per transaction. Returns the final version."""
    version = schema_version(con)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"this store has schema version {version}, newer than this auditor ({SCHEMA_VERSION}); upgrade auditor"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(MIGRATIONS[target])
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(target)]
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


#: Bytes 8..12 of every DuckDB database file.
_DUCKDB_MAGIC = b"DUCK"


def _refuse_foreign_file(path: Path) -> None:
    """A file that exists but is not a DuckDB database is refused: DuckDB would open a JSON or CSV file as an empty
    in-memory database, and an ingest into it would report success and store nothing."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head[8:12] != _DUCKDB_MAGIC:
        raise StoreError(
            f"{path} is not an auditor store (not a DuckDB database file); pass the store with --db and the input "
            "as the PATH argument, e.g. `auditor ingest data.jsonl --db audit.duckdb`"
        )


def open_store(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating if needed) a store file, with a clear message when another process holds it."""
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"no store at {path}: create it with `auditor ingest PATH --db {path}`")
    _refuse_foreign_file(path)
    if path.parent and not path.parent.exists():
        raise StoreError(f"cannot create store {path}: folder {path.parent} does not exist")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreLockedError(_LOCK_HINT.format(path=path)) from None
        raise StoreError(f"cannot open store {path}: {exc}") from None
    con.execute(f"SET memory_limit = '{STORE_MEMORY_LIMIT}'")
    if read_only:
        version = schema_version(con)
        if version != SCHEMA_VERSION:
            con.close()
            raise StoreError(
                f"store {path} has schema version {version}; open it once read-write to migrate it to "
                f"{SCHEMA_VERSION}"
            )
    else:
        migrate(con)
    return con


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing block: commit on success, roll back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")


_BACKGROUND = threading.Lock()
_BACKGROUND_RUNS: dict[str, list] = {}  #: database path -> [running background blocks, threads setting to restore]


@contextlib.contextmanager
def background_work(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run a block of background work (a risk refit, a rebuild of the review queue's tables) on at most half the
    CPUs, so that the requests of the people reviewing keep the others.

    DuckDB's thread count belongs to the database, not to a query: while any background block runs, the store's
    DuckDB uses ``max(1, threads // 2)`` threads, and its own setting comes back when the last block ends. Measured
    with a refit running all the time at 1M candidates on 2 CPUs, an annotator's next item went from median 179 /
    p95 309 ms to 115 / 188 ms; the refit itself takes longer (it is spaced by ``RiskConfig.refit_max_share``).
    """
    path = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    key = str(path[0][0]) if path else ""
    with _BACKGROUND:
        run = _BACKGROUND_RUNS.get(key)
        if run is None:
            threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
            run = _BACKGROUND_RUNS[key] = [0, threads]
            con.execute(f"SET threads = {max(1, threads // 2)}")
        run[0] += 1
    try:
        yield
    finally:
        with _BACKGROUND:
            run[0] -= 1
            if run[0] == 0:
                del _BACKGROUND_RUNS[key]
                try:
                    con.execute(f"SET threads = {run[1]}")
                except duckdb.Error:  # the store closed meanwhile: nothing to restore
                    pass


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` is inside an explicit transaction (a BEGIN there would fail and abort it): outside one, every
    statement gets a transaction id of its own."""
    con.complete()
    first = con.execute("SELECT txid_current()").fetchall()[0][0]
    return con.execute("SELECT txid_current()").fetchall()[0][0] == first


def remember(con: duckdb.DuckDBPyConnection, key: str, value: str) -> bool:
    """Cache ``value`` under ``key`` in ``meta`` where that is safe: the store is writable and the caller holds no
    transaction (a failed write would abort it; a rolled-back one would be lost). False when nothing was written:
    the value is then simply computed again next time."""
    if not writable(con):
        return False
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
    return True


class SharedStore:
    """One read-write connection for a whole process, a cursor per thread (DuckDB's concurrency model).

    The Streamlit app keeps one of these in ``st.cache_resource``; each script run asks for ``cursor()``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._con = open_store(self.path)
        self._local = threading.local()
        self._on_close: list = []

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` before the connection closes (the background owner stops its jobs there)."""
        self._on_close.append(fn)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    def close(self) -> None:
        for fn in reversed(self._on_close):
            fn()
        self._on_close.clear()
        self._con.close()


#: Queue pages kept in a store (the newest; each order in use has one).
KEPT_PAGES = 24


def keep_page(con: duckdb.DuckDBPyConnection, key: str, fingerprint: str, limit: int | None, complete: bool,
              event_id: int, state: str | None, rows: bytes) -> None:
    """Keep one queue page (see ``queue_pages``), replacing the one under ``key``; only the newest KEPT_PAGES stay."""
    with transaction(con):
        con.execute("INSERT OR REPLACE INTO queue_pages (page_key, fingerprint, page_limit, complete, event_id, "
                    "state, rows) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [key, fingerprint, limit, complete, event_id, state, rows])
        con.execute("DELETE FROM queue_pages WHERE page_key NOT IN (SELECT page_key FROM queue_pages "
                    f"ORDER BY kept_at DESC LIMIT {KEPT_PAGES})")


def kept_page(con: duckdb.DuckDBPyConnection, key: str) -> tuple | None:
    """(fingerprint, limit, complete, event_id, state, rows) of the page kept under ``key``, or None."""
    rows = con.execute("SELECT fingerprint, page_limit, complete, event_id, state, rows FROM queue_pages "
                       "WHERE page_key = ?", [key]).fetchall()
    return rows[0] if rows else None


def writable(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` may write now: the store is not read-only and no transaction of the caller is open."""
    readonly = con.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return not (readonly and readonly[0][0]) and not in_transaction(con)


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row counts of the main tables, for `auditor info` and tests."""
    tables = ["queries", "documents", "qrels", "candidates", "embeddings", "scores", "bands", "verdicts"]
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
