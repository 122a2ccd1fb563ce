"""Schema versioning, migrations, and clear messages when a store cannot be opened."""

from __future__ import annotations

import duckdb
import pytest

from auditor import store as store_mod
from auditor.store import SCHEMA_VERSION, StoreError, open_store, schema_version, transaction


def test_new_store_is_at_current_version_and_reopens(tmp_path):
    path = tmp_path / "s.duckdb"
    con = open_store(path)
    assert schema_version(con) == SCHEMA_VERSION
    con.close()
    ro = open_store(path, read_only=True)
    assert schema_version(ro) == SCHEMA_VERSION
    ro.close()


def test_migration_runs_each_step_once(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    open_store(path).close()
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, SCHEMA_VERSION + 1, "ALTER TABLE documents ADD COLUMN lang VARCHAR;")
    con = open_store(path)
    assert schema_version(con) == SCHEMA_VERSION + 1
    assert "lang" in [c[0] for c in con.execute("DESCRIBE documents").fetchall()]
    con.close()
    open_store(path).close()  # already migrated: the ALTER must not run twice


def test_store_from_a_newer_auditor_is_refused(tmp_path):
    path = tmp_path / "s.duckdb"
    con = open_store(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this auditor"):
        open_store(path)


def test_read_only_open_of_a_missing_store_explains(tmp_path):
    with pytest.raises(StoreError, match="no store at .*auditor ingest"):
        open_store(tmp_path / "missing.duckdb", read_only=True)


def test_transaction_rolls_back_on_error(store):
    with pytest.raises(duckdb.Error):
        with transaction(store):
            store.execute("INSERT INTO queries VALUES ('q', 't', 'h', 'd', NULL)")
            store.execute("INSERT INTO verdicts (query_id, doc_id, verdict, annotator) VALUES ('q', 'd', 'maybe', 'a')")
    assert store.execute("SELECT count(*) FROM queries").fetchone()[0] == 0


def test_background_work_takes_half_the_threads_until_the_last_block_ends(tmp_path):
    from auditor.store import background_work

    con = open_store(tmp_path / "bg.duckdb")
    con.execute("SET threads = 4")
    threads = lambda: int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])  # noqa: E731
    with background_work(con):
        assert threads() == 2
        with background_work(con.cursor()):  # a second block (another thread's cursor) at the same time
            assert threads() == 2
        assert threads() == 2  # the first block still runs
    assert threads() == 4
    con.execute("SET threads = 1")
    with pytest.raises(RuntimeError):
        with background_work(con):
            assert threads() == 1  # never below one
            raise RuntimeError("a failed refit")
    assert threads() == 1
    con.close()
