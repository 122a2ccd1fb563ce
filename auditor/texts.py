"""What text each query and document is embedded as, and under which cache key: stated once, for mining, scoring,
export and risk alike (a lower layer than all of them, so none imports another for it)."""

from __future__ import annotations

import json

import duckdb

from auditor.config import MineConfig
from auditor.sql import lit


def doc_text_sql(t: str = "documents") -> str:
    """The text a document is embedded as ("title text", the BEIR convention); documents.text_hash is its md5."""
    return f"CASE WHEN {t}.title IS NULL THEN {t}.text ELSE {t}.title || ' ' || {t}.text END"


def query_text_sql(t: str = "queries", instruction: str | None = None) -> str:
    """The text a query is embedded as. ``instruction`` None: the query alone (a model that expects no instructions
    gets none, whatever the training file's prompt); a string: the query's own prompt, else ``instruction`` (the
    model's query prompt), in front of it."""
    if instruction is None:
        return f"{t}.text"
    return f"coalesce(nullif({t}.prompt, ''), {lit(instruction)}) || {t}.text"


def query_hash_sql(t: str = "queries", instruction: str | None = None) -> str:
    """Cache key of a query's embedded text (:func:`query_text_sql`): its text_hash when nothing is prepended."""
    if instruction is None:
        return f"{t}.text_hash"
    prefix = f"coalesce(nullif({t}.prompt, ''), {lit(instruction)})"
    return f"CASE WHEN {prefix} = '' THEN {t}.text_hash ELSE md5({prefix} || {t}.text) END"


def _instruction_key(model: str) -> str:
    return f"query_instruction:{model}"


def record_instruction(con: duckdb.DuckDBPyConnection, model: str, instruction: str | None) -> None:
    """Keep how ``model``'s query vectors are made (mine calls this in the transaction that writes its scores)."""
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [_instruction_key(model), json.dumps({"instruction": instruction})])


def query_instruction(con: duckdb.DuckDBPyConnection, model: str) -> str | None:
    """How ``model``'s query vectors were made (the ``instruction`` of :func:`query_text_sql`), as `mine` recorded it.

    Stores mined before the rule existed put every prompt of the training file in front of its query: "".
    """
    row = con.execute("SELECT value FROM meta WHERE key = ?", [_instruction_key(model)]).fetchall()
    if not row:
        return ""
    value = json.loads(row[0][0])
    return value.get("instruction") if isinstance(value, dict) else ""


def instruction_for(model_name: str, query_prompts: str = MineConfig.query_prompts) -> str | None:
    """The rule for prompts: a model that declares a query prompt expects instructions, and a query's own prompt
    from the training file takes the place of the model's; a model that declares none gets queries as they are
    (a prompt written for another model only moves its vectors: MiniLM's mean query-positive cosine on the shipped MS
    MARCO sample falls from .655 to .446 with the sample's instruction). ``query_prompts`` "always" / "never" override the rule."""
    from auditor.encoder import model_query_prompt

    if query_prompts == "never":
        return None
    declared = model_query_prompt(model_name)
    if query_prompts == "always" or declared:
        return declared
    return None
