"""`auditor mine --engine ray`: the same candidates and scores as the local engine, through a local Ray instance.

A slice of the shipped Cranfield sample (its first 25 judged queries, their positives and 120 other documents) is
mined twice from an empty embedding cache: once encoded in this process, once by a Ray Data job on a local Ray
instance with 2 CPUs (two model replicas).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from auditor.config import DEFAULT_MODEL, MineConfig, RayConfig
from auditor.store import StoreError, open_store

from conftest import copy_store

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None
DEPTH = 20


def _slice(con) -> None:
    """Keep 25 judged queries, their positives and 120 other documents (deterministic: by id)."""
    con.execute("""
        CREATE TEMP TABLE keep_q AS SELECT DISTINCT query_id FROM qrels WHERE relevant ORDER BY query_id LIMIT 25;
        CREATE TEMP TABLE keep_d AS
            SELECT doc_id FROM qrels WHERE query_id IN (SELECT query_id FROM keep_q)
            UNION
            (SELECT doc_id FROM documents ORDER BY doc_id LIMIT 120);
        DELETE FROM qrels WHERE query_id NOT IN (SELECT query_id FROM keep_q)
                             OR doc_id NOT IN (SELECT doc_id FROM keep_d);
        DELETE FROM queries WHERE query_id NOT IN (SELECT query_id FROM keep_q);
        DELETE FROM documents WHERE doc_id NOT IN (SELECT doc_id FROM keep_d);
        DELETE FROM embeddings;
    """)


def _rows(con, sql):
    return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def ray_local():
    if not HAVE_RAY:
        pytest.skip("ray[data] is not installed (pip install 'auditor[ray]'): the Ray engine cannot be tested")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_local_candidates_and_scores(tmp_path, cranfield_store_path, ray_local):
    from auditor.mine import mine

    stores = {}
    for engine in ("local", "ray"):
        con = open_store(copy_store(cranfield_store_path, tmp_path / f"{engine}.duckdb"))
        _slice(con)
        cfg = MineConfig(engine=engine, index="flat")
        # the defaults: one window (a pool of replicas starts in tens of seconds), two blocks per replica
        s = mine(con, depth=DEPTH, config=cfg, ray_config=RayConfig())
        n_docs = _rows(con, "SELECT count(*) FROM documents")[0][0]
        assert s.embedded_documents == n_docs > 120 and s.embedded_queries == 25
        stores[engine] = con
    local, on_ray = stores["local"], stores["ray"]

    # the cache holds the same keys: the texts' hashes under the same model and roles
    keys = "SELECT model, role, text_hash FROM embeddings ORDER BY ALL"
    assert _rows(on_ray, keys) == _rows(local, keys)
    assert _rows(on_ray, "SELECT DISTINCT model FROM embeddings") == [(DEFAULT_MODEL,)]

    # the same candidates at the same ranks, and near-identical scores
    cand = "SELECT query_id, doc_id, source, source_rank FROM candidates ORDER BY ALL"
    got, want = _rows(on_ray, cand), _rows(local, cand)
    assert len(want) == 25 * DEPTH and got == want
    sql = "SELECT query_id, doc_id, s_neg, s_pos_min, sim_to_pos FROM scores ORDER BY query_id, doc_id"
    a, b = np.array([r[2:] for r in _rows(on_ray, sql)]), np.array([r[2:] for r in _rows(local, sql)])
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-4
    band = "SELECT query_id, doc_id, band FROM bands ORDER BY ALL"
    assert _rows(on_ray, band) == _rows(local, band)

    # a second run on Ray finds everything cached and does not encode again
    s = mine(on_ray, depth=DEPTH, config=MineConfig(engine="ray", index="flat"))
    assert (s.embedded_documents, s.embedded_queries) == (0, 0)
    for con in stores.values():
        con.close()


def test_missing_ray_gets_a_clear_error(monkeypatch):
    from auditor.ray_engine import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(StoreError, match=r"pip install 'auditor\[ray\]'"):
        require_ray()
