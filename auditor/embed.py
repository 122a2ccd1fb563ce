"""Embedding with sentence-transformers, cached in the store so that no text is ever embedded twice.

Vectors live in ``embeddings`` keyed by (model, role, text_hash). `embed_texts` anti-joins the texts it is given
against that table in SQL and encodes only what is missing, so a second run on unchanged data encodes nothing and
does not even load the model (importing sentence-transformers alone costs seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from auditor.config import MineConfig, RayConfig
from auditor.encoder import ROLES, encode, load_model, model_key, split_roles, vectors_to_arrow
from auditor.store import StoreError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: Where texts are encoded: this process, or a Ray Data job (auditor.ray_engine).
ENGINES = ("local", "ray")


@dataclass
class EmbedResult:
    """How many texts were asked for and how many had to be encoded (the rest came from the cache)."""

    requested: int
    encoded: int

    @property
    def cached(self) -> int:
        return self.requested - self.encoded


def embed_texts(
    con: duckdb.DuckDBPyConnection,
    model_name: str,
    role: str,
    rows: Iterable[tuple[str, str]] | str,
    *,
    batch_size: int = MineConfig.batch_size,
    chunk_size: int = MineConfig.embed_chunk,
    progress: Progress | None = None,
    engine: str = MineConfig.engine,
    device: str = MineConfig.device,
    ray_config: RayConfig | None = None,
) -> EmbedResult:
    """Make sure every (text_hash, text) in `rows` has a vector for (model, role); encode only the missing ones.

    `rows` is either an iterable of (text_hash, text) or a SQL SELECT returning columns ``text_hash, text`` (so a
    million documents never pass through Python when they are already cached). See embed_many.
    """
    if isinstance(rows, str):
        src = rows
    else:
        rows = list(rows)
        if not rows:
            return EmbedResult(0, 0)
        tbl = pa.table({"text_hash": pa.array([h for h, _ in rows], pa.string()),
                        "text": pa.array([t for _, t in rows], pa.string())})
        con.register("_embed_rows", tbl)
        src = "SELECT text_hash, text FROM _embed_rows"
    try:
        return embed_many(
            con, model_name, {role: src}, batch_size=batch_size, chunk_size=chunk_size,
            progress=None if progress is None else (lambda _role, done, todo: progress(done, todo)),
            engine=engine, device=device, ray_config=ray_config,
        )[role]
    finally:
        if not isinstance(rows, str):
            con.unregister("_embed_rows")


def embed_many(
    con: duckdb.DuckDBPyConnection,
    model_name: str,
    sources: dict[str, str],
    *,
    batch_size: int = MineConfig.batch_size,
    chunk_size: int = MineConfig.embed_chunk,
    progress: Callable[[str, int, int], None] | None = None,
    engine: str = MineConfig.engine,
    device: str = MineConfig.device,
    ray_config: RayConfig | None = None,
) -> dict[str, EmbedResult]:
    """For each role, a SELECT of ``text_hash, text``: encode the texts that have no vector for (model, role) yet.

    The missing texts are found in SQL (an anti-join on the cache) and encoded longest first in chunks (little
    padding), each chunk written at once, so an interrupted run keeps what it finished. ``progress(role, done,
    todo)`` ticks per role.

    ``engine="ray"`` encodes the same missing texts, of all roles together, as Ray Data jobs (auditor.ray_engine)
    of ``ray_config.window`` texts each — one job where the local engine would load the model once: starting a
    pool of model replicas costs tens of seconds — and writes the vectors under the same keys, so what follows
    (search, scores) cannot tell the engines apart.
    """
    unknown = set(sources) - set(ROLES)
    if unknown:
        raise ValueError(f"role must be one of {ROLES}, got {sorted(unknown)}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    key = model_key(model_name)
    todo_sql = " UNION ALL ".join(
        f"""SELECT '{role}' AS role, text_hash, any_value(text) AS text FROM ({src}) r
            WHERE text_hash NOT IN (SELECT text_hash FROM embeddings WHERE model = $m AND role = '{role}')
            GROUP BY text_hash"""
        for role, src in sources.items()
    )
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _embed_todo AS
            SELECT row_number() OVER (ORDER BY role, length(text) DESC, text_hash) AS rn, role, text_hash, text
            FROM ({todo_sql})""",
            {"m": key},
        )
        counts = dict(con.execute("SELECT role, count(*) FROM _embed_todo GROUP BY role").fetchall())
        results = {}
        for role, src in sources.items():
            requested = con.execute(f"SELECT count(DISTINCT text_hash) FROM ({src})").fetchall()[0][0]
            results[role] = EmbedResult(requested=requested, encoded=int(counts.get(role, 0)))
        total = sum(counts.values())
        if not total:
            return results
        for role, r in results.items():
            if r.encoded:
                log.info("embedding %d %s texts with %s on %s (%d cached)", r.encoded, role, key, engine, r.cached)
            if progress:
                progress(role, 0, r.encoded)
        if engine == "ray":
            from auditor.ray_engine import encode_on_ray

            window = (ray_config or RayConfig()).window
            chunks = encode_on_ray(
                (_todo_part(con, start, start + window) for start in range(1, total + 1, window)),
                model_name, batch_size=batch_size, device=device, config=ray_config or RayConfig(),
            )
        else:
            chunks = _encode_local(con, model_name, total, batch_size, chunk_size, device)
        done = dict.fromkeys(results, 0)
        for role, hashes, vecs in chunks:
            _store_vectors(con, key, role, hashes, vecs)
            done[role] += len(hashes)
            if progress:
                progress(role, done[role], results[role].encoded)
        for role, r in results.items():
            if done[role] != r.encoded:
                raise StoreError(f"the {engine} engine returned {done[role]} {role} vectors for {r.encoded} texts")
        return results
    finally:
        con.execute("DROP TABLE IF EXISTS _embed_todo")


def _todo_part(con: duckdb.DuckDBPyConnection, lo: int, hi: int) -> pa.Table:
    """Rows ``lo <= rn < hi`` of ``_embed_todo`` (by role, longest texts first): columns role, text_hash, text."""
    return con.sql(
        "SELECT role, text_hash, text FROM _embed_todo WHERE rn >= $lo AND rn < $hi ORDER BY rn",
        params={"lo": lo, "hi": hi},
    ).to_arrow_table()


def _encode_local(con: duckdb.DuckDBPyConnection, model_name: str, total: int, batch_size: int,
                  chunk_size: int, device: str) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """The local engine: ``_embed_todo`` in chunks through one model in this process; yields (role, hashes,
    vectors), one role per chunk."""
    model = load_model(model_name, device)
    for start in range(1, total + 1, chunk_size):
        part = _todo_part(con, start, start + chunk_size)
        for role, hashes, texts in split_roles(part):
            yield role, hashes, encode(model, texts, role, batch_size=batch_size)


def _store_vectors(con: duckdb.DuckDBPyConnection, key: str, role: str, hashes: list[str], vecs: np.ndarray) -> None:
    """Append one chunk of vectors to the cache (``embeddings``), whichever engine encoded it."""
    out = pa.table({
        "model": pa.array([key] * len(hashes)),
        "role": pa.array([role] * len(hashes)),
        "text_hash": pa.array(hashes, pa.string()),
        "vector": vectors_to_arrow(vecs),
    })
    con.register("_embed_out", out)
    try:
        con.execute("INSERT INTO embeddings SELECT model, role, text_hash, vector FROM _embed_out")
    finally:
        con.unregister("_embed_out")


def fetch_matrix(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> tuple[list[Any], np.ndarray]:
    """Run a SELECT of (id, vector) and return the ids and an (n, dim) float32 matrix in row order."""
    tbl = con.sql(sql, params=params or {}).to_arrow_table()
    ids = tbl.column(0).to_pylist()
    if tbl.num_rows == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    vec = tbl.column(1).combine_chunks()
    flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, flat.reshape(tbl.num_rows, -1)
