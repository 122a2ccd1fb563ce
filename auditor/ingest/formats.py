"""What each training-set format looks like, stated once as data.

Both the SQL fast path (`auditor.ingest.pairs`) and the line-by-line diagnosis (`auditor.ingest.diagnose`) read these
specs, so a rule checked in one place is checked the same way in the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from auditor.ingest.errors import IngestError

FORMATS = ("beir", "flag", "triplets", "ntuple")

# Field kinds: "text" (non-empty string), "id" (non-empty string or integer), "text_list" (list of non-empty strings),
# "number_list" (list of numbers), "opt_text" (string, may be absent or null).
TEXT, ID, TEXT_LIST, NUMBER_LIST, OPT_TEXT = "text", "id", "text_list", "number_list", "opt_text"


@dataclass(frozen=True)
class Field:
    name: str  # key in the record
    kind: str
    required: bool = True
    nonempty: bool = True  # lists: at least one element; text: not blank


@dataclass(frozen=True)
class PairLayout:
    """A pair-based format (one record per query or per tuple) resolved against the keys actually present."""

    format: str
    query: str  # key holding the query text
    positives: str  # key holding one positive (text) or a list of them
    positives_is_list: bool
    negatives: tuple[str, ...]  # one key holding a list, or several keys each holding one text
    negatives_is_list: bool
    pos_scores: str | None = None
    neg_scores: str | None = None
    prompt: str | None = None

    def fields(self, present: set[str] | None = None) -> list[Field]:
        out = [Field(self.query, TEXT)]
        out.append(Field(self.positives, TEXT_LIST) if self.positives_is_list else Field(self.positives, TEXT))
        if self.negatives_is_list:
            out.append(Field(self.negatives[0], TEXT_LIST, nonempty=False))
        else:
            out.extend(Field(k, TEXT) for k in self.negatives)
        if self.pos_scores:
            out.append(Field(self.pos_scores, NUMBER_LIST, required=False, nonempty=False))
        if self.neg_scores:
            out.append(Field(self.neg_scores, NUMBER_LIST, required=False, nonempty=False))
        if self.prompt:
            out.append(Field(self.prompt, OPT_TEXT, required=False))
        return out


# Real BEIR corpora hold a few empty passages (Cranfield has two): a corpus text must be a string, but may be empty.
BEIR_CORPUS_FIELDS = [Field("_id", ID), Field("text", TEXT, nonempty=False), Field("title", OPT_TEXT, required=False)]
BEIR_QUERY_FIELDS = [Field("_id", ID), Field("text", TEXT)]


def _query_key(keys: set[str]) -> str | None:
    for k in ("query", "anchor"):
        if k in keys:
            return k
    return None


def layout_for(fmt: str, keys: set[str], where: str) -> PairLayout:
    """Resolve a pair format against the keys of the first record; a mismatch is a wrong-format error."""
    q = _query_key(keys)
    guess = guess_pair_format(keys)
    hint = f"; it looks like {guess}: try --format {guess}" if guess and guess != fmt else ""
    shown = ", ".join(sorted(keys)) or "none"
    if fmt == "flag":
        missing = [k for k in ("query", "pos") if k not in keys]
        if missing:
            raise IngestError(where, missing[0], f"missing for format flag (keys: {shown}){hint}")
        return PairLayout("flag", "query", "pos", True, ("neg",), True, "pos_scores", "neg_scores", "prompt")
    if q is None:
        raise IngestError(where, "query", f"no 'query' or 'anchor' field for format {fmt} (keys: {shown}){hint}")
    if "positive" not in keys:
        raise IngestError(where, "positive", f"missing for format {fmt} (keys: {shown}){hint}")
    if fmt == "triplets":
        if "negative" not in keys:
            raise IngestError(where, "negative", f"missing for format triplets (keys: {shown}){hint}")
        return PairLayout("triplets", q, "positive", False, ("negative",), False)
    if fmt == "ntuple":
        numbered = sorted((k for k in keys if k.startswith("negative_") and k[9:].isdigit()), key=lambda k: int(k[9:]))
        if numbered:
            return PairLayout("ntuple", q, "positive", False, tuple(numbered), False)
        if "neg" in keys:
            return PairLayout("ntuple", q, "positive", False, ("neg",), True, prompt=None)
        raise IngestError(where, "negative_1", f"no 'negative_1..n' or 'neg' fields for format ntuple (keys: {shown})")
    raise IngestError(where, None, f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")


def guess_pair_format(keys: set[str]) -> str | None:
    if "pos" in keys and "query" in keys:
        return "flag"
    if _query_key(keys) and "positive" in keys:
        if any(k.startswith("negative_") for k in keys) or "neg" in keys:
            return "ntuple"
        if "negative" in keys:
            return "triplets"
    return None


def first_record_keys(path: Path) -> tuple[set[str], int]:
    """Keys of the first non-blank JSON line (and its line number), for detection and layout resolution."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise IngestError(f"{path}:{lineno}", None, f"malformed JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise IngestError(f"{path}:{lineno}", None, f"expected a JSON object, got {type(obj).__name__}")
                return set(obj), lineno
    raise IngestError(str(path), None, "file is empty: no records")


def tabular_source(path: Path) -> str:
    """The DuckDB table function that reads a Parquet or CSV file (CSV cells as text: types are checked, not guessed)."""
    lit = str(path).replace("'", "''")
    if path.suffix == ".parquet":
        return f"read_parquet('{lit}')"
    return f"read_csv('{lit}', all_varchar = true, header = true)"


def tabular_columns(path: Path) -> set[str]:
    import duckdb

    try:
        rel = duckdb.sql(f"SELECT * FROM {tabular_source(path)} LIMIT 0")
    except duckdb.Error as exc:
        raise IngestError(str(path), None, f"cannot read as {path.suffix[1:]}: {exc}") from None
    return set(rel.columns)


def detect_format(path: Path) -> str:
    """beir for a folder with corpus/queries/qrels; otherwise from the keys of the first record."""
    if path.is_dir():
        if (path / "corpus.jsonl").exists() and (path / "queries.jsonl").exists():
            return "beir"
        raise IngestError(str(path), None, "folder is not a BEIR dataset: expected corpus.jsonl, queries.jsonl, qrels/")
    if path.suffix in (".parquet", ".csv"):
        keys = tabular_columns(path)
        where = str(path)
    else:
        keys, lineno = first_record_keys(path)
        where = f"{path}:{lineno}"
    fmt = guess_pair_format(keys)
    if fmt is None:
        raise IngestError(
            where,
            None,
            "cannot tell the format from the keys " + ", ".join(sorted(keys)) + ": expected FlagEmbedding "
            "{query,pos,neg}, triplets {anchor|query,positive,negative} or n-tuples {anchor|query,positive,"
            "negative_1..n}; pass --format",
        )
    return fmt
