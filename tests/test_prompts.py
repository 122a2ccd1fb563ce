"""The prompt rule: a training file's per-query prompts go in front of their queries only for a model that expects
instructions (it declares a query prompt), where they take the place of the model's own; never for other models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

INSTRUCTION = "Represent this sentence for searching relevant passages: "
ROWS = [
    {"query": "what causes wing flutter", "pos": ["flutter is an aeroelastic vibration of a wing in the airflow"],
     "neg": ["laminar boundary layers on flat plates"], "prompt": INSTRUCTION},
    {"query": "heat transfer to a cone in hypersonic flow", "pos": ["hypersonic heating measured on sharp cones"],
     "neg": ["panel flutter at supersonic speeds"]},
    {"query": "buckling of thin cylindrical shells", "pos": ["axial compression buckling of thin shells"],
     "neg": ["shock waves in nozzles"], "prompt": INSTRUCTION},
]


@pytest.fixture
def prompted_file(tmp_path) -> Path:
    path = tmp_path / "prompted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _query_vectors(con, model: str) -> dict[str, np.ndarray]:
    from auditor.texts import query_hash_sql, query_instruction

    rows = con.execute(
        f"""SELECT q.text, e.vector FROM queries q JOIN embeddings e ON e.model = ? AND e.role = 'query'
            AND e.text_hash = {query_hash_sql('q', query_instruction(con, model))}""", [model]).fetchall()
    return {text: np.asarray(v, dtype=np.float32) for text, v in rows}


def _instructed_model(tmp_path: Path) -> Path:
    """The shipped MiniLM, declaring a query prompt (as e5 or BGE models do): weights linked, config rewritten."""
    from auditor.encoder import resolve_model_path

    src = Path(resolve_model_path("all-MiniLM-L6-v2"))
    dst = tmp_path / "minilm-instructed"
    shutil.copytree(src, dst, copy_function=lambda s, d: Path(d).symlink_to(Path(s).resolve()))
    config = dst / "config_sentence_transformers.json"
    settings = json.loads(config.read_text()) if config.exists() else {}
    config.unlink(missing_ok=True)
    settings["prompts"] = {"query": "query: ", "document": ""}
    config.write_text(json.dumps(settings))
    return dst


def test_a_model_without_instructions_embeds_queries_as_they_are(store, prompted_file):
    from auditor.encoder import encode, load_model
    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.texts import query_instruction

    ingest_path(store, prompted_file)
    summary = mine(store, depth=2)
    assert query_instruction(store, summary.model) is None
    model = load_model()
    vectors = _query_vectors(store, summary.model)
    assert set(vectors) == {r["query"] for r in ROWS}
    for row in ROWS:  # the stored vector is the plain query's, not instruction + query
        plain = encode(model, [row["query"]], "query")[0]
        assert float(plain @ vectors[row["query"]]) == pytest.approx(1.0, abs=1e-5)
    # and the model's query-positive cosine is the plain one (the prompt used to pull it down)
    s_pos = dict(store.execute("SELECT q.text, any_value(s.s_pos_max) FROM scores s JOIN queries q USING (query_id) "
                               "GROUP BY q.text").fetchall())
    first = ROWS[0]
    expected = float(encode(model, [first["query"]], "query")[0] @ encode(model, first["pos"], "document")[0])
    assert s_pos[first["query"]] == pytest.approx(expected, abs=1e-4)


def test_a_model_with_instructions_takes_the_files_prompt_in_place_of_its_own(store, prompted_file, tmp_path):
    from auditor.encoder import load_model, model_query_prompt
    from auditor.ingest import ingest_path
    from auditor.mine import mine
    from auditor.texts import query_instruction

    folder = _instructed_model(tmp_path)
    assert model_query_prompt(str(folder)) == "query: "
    ingest_path(store, prompted_file)
    summary = mine(store, model_name=str(folder), depth=2)
    assert query_instruction(store, summary.model) == "query: "
    model = load_model(str(folder))
    vectors = _query_vectors(store, summary.model)
    for row in ROWS:
        expected_text = (row.get("prompt") or "query: ") + row["query"]  # the file's prompt replaces the model's
        expected = model.encode([expected_text], prompt="", normalize_embeddings=True)[0]
        assert float(expected @ vectors[row["query"]]) == pytest.approx(1.0, abs=1e-5), expected_text
    # the stored choice is what later steps use to find the vectors: the ntuple export's positive cosines
    from auditor.export import export

    out = tmp_path / "flag.jsonl"
    s = export(store, out, fmt="ntuple", negatives=1, scores="model", model=summary.model)
    assert s.queries_written == 3
    doc = model.encode([ROWS[1]["pos"][0]], normalize_embeddings=True, prompt="")[0]
    line = next(json.loads(x) for x in out.read_text().splitlines() if json.loads(x)["query"] == ROWS[1]["query"])
    assert line["pos_scores"][0] == pytest.approx(float(doc @ vectors[ROWS[1]["query"]]), abs=1e-4)
