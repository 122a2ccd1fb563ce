"""What a queue request knows of the store: which model and settings it reads, and the fingerprint of the rows its
order is built from (so a cached page is used only while those rows are unchanged)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import duckdb

from auditor.bands import _LATEST_MODEL_KEY, BANDS_WRITTEN_KEY, resolve_model
from auditor.select import _SETTINGS_KEY, Selection
from auditor.store import StoreError

from .choice import QueueChoice


def settle(con: duckdb.DuckDBPyConnection) -> None:
    """Finish any half-read result on ``con``: DuckDB refuses register() / sql() while one is pending."""
    con.complete()


#: What the fingerprint reads (one spec for ``fingerprint`` and the request's probe in ``prepare``): the band stamp
#: (with any other ``meta`` keys asked for) and the big tables' row counts (DuckDB keeps them: no scan); then, per
#: model, the fit in force.
_STATE_SQL = """
    SELECT (SELECT list((key, value)) FROM meta WHERE key = ANY($keys)) AS meta,
           [(SELECT count(*) FROM bands), (SELECT count(*) FROM candidates), (SELECT count(*) FROM scores)] AS sizes
"""
_FIT_SQL = "(SELECT max(fit_id) FROM risk_fits WHERE model = $m) AS fit_id"


def store_state(con: duckdb.DuckDBPyConnection, *keys: str) -> tuple[dict[str, str], list[int]]:
    """(the ``meta`` values of the band stamp and of ``keys``, the row counts of bands, candidates and scores)."""
    meta, sizes = con.execute(_STATE_SQL, {"keys": [BANDS_WRITTEN_KEY, *keys]}).fetchall()[0]
    return {str(k): v for k, v in meta or []}, list(sizes)


def fingerprint_of(config: str, model: str, stamp: Any, sizes: Any, fit_id: Any) -> tuple[tuple, Any]:
    return (config, model, stamp, tuple(sizes or ())), fit_id


def fingerprint(con: duckdb.DuckDBPyConnection, config: str, model: str) -> tuple[tuple, Any]:
    """(hard, soft): hard changes with the bands, candidates or scores of (config, model); soft with the risk fit.

    Cheap at any size, as it runs on every request: the stamp every band write leaves
    (:func:`auditor.bands.mark_bands_written`) and the tables' row counts stand for the bands — a hash over every
    band row took about half a second per request at 10M candidates (bench/scale.py), counting one configuration's
    bands 6 ms at 1M. Code that rewrites band rows in place outside auditor.bands calls mark_bands_written.
    """
    meta, sizes = store_state(con)
    fit_id = con.execute(f"SELECT {_FIT_SQL}", {"m": model}).fetchall()[0][0]
    return fingerprint_of(config, model, meta.get(BANDS_WRITTEN_KEY), sizes, fit_id)


_STORE_KEYS: "weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, tuple]" = weakref.WeakKeyDictionary()


def store_key(con: duckdb.DuckDBPyConnection) -> tuple:
    """Which store ``con`` reads (its attached databases), remembered per connection: it cannot change."""
    key = _STORE_KEYS.get(con)
    if key is None:
        rows = con.execute("SELECT database_name, path FROM duckdb_databases() WHERE NOT internal").fetchall()
        key = _STORE_KEYS[con] = tuple(sorted((str(a), str(b)) for a, b in rows))
    return key


def last_event(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT coalesce(max(event_id), 0) FROM verdicts").fetchall()[0][0])


@dataclass
class Request:
    """What one queue request learned about the store, in two statements (a statement costs 1-3 ms however small:
    eight of them were a tenth of a request's time at 1M candidates)."""

    choice: QueueChoice
    model: str
    config: str
    selection: Selection | None
    store: tuple
    fingerprint: tuple[tuple, Any]


def prepare(con: duckdb.DuckDBPyConnection, choice: QueueChoice, model: str | None = None) -> Request:
    """Resolve the model and, in export mode, the settings (whose band configuration then rules); check that the
    bands exist; read the store's fingerprint."""
    meta, sizes = store_state(con, _SETTINGS_KEY, _LATEST_MODEL_KEY)
    settings, latest, stamp = meta.get(_SETTINGS_KEY), meta.get(_LATEST_MODEL_KEY), meta.get(BANDS_WRITTEN_KEY)
    selection, config = choice.selection, choice.config
    if choice.mode == "export":
        selection = selection or (Selection.from_json(settings) if settings else Selection())
        config = selection.config
    given = model or choice.model
    chosen = given or latest
    has_scores, has_bands, fit_id = (False, False, None) if chosen is None else con.execute(
        f"SELECT EXISTS (SELECT 1 FROM scores WHERE model = $m), "
        f"EXISTS (SELECT 1 FROM bands WHERE config = $c AND model = $m), {_FIT_SQL}",
        {"m": chosen, "c": config},
    ).fetchall()[0]
    if not has_scores and given is None:  # no record of the latest model: the slow way (and its clear errors)
        return prepare(con, choice, resolve_model(con, None))
    if not has_bands:
        raise StoreError(
            f"no bands for band configuration {config!r} and model {chosen!r}: run `auditor mine` (or `auditor band "
            f"--config {config}`) first"
        )
    return Request(choice, chosen, config, selection, store_key(con),
                   fingerprint_of(config, chosen, stamp, sizes, fit_id))


def chosen_model(con: duckdb.DuckDBPyConnection, model: str | None) -> str:
    """``model``, or the latest one scored (:func:`auditor.bands.resolve_model`'s clear error when there is none)."""
    return model or resolve_model(con, None)
