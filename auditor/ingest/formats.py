"""What each training-set format looks like, stated once as data: its fields, and how a file's keys map onto them.

A layout is resolved against the keys of the whole file (every record's, not the first one's), so a key that first
appears on a late line (``negative_3`` on line 5 of an n-tuple file) is read like any other. A key that holds texts
but that the chosen format does not read (``negative_2`` in a triplets file, ``anchor`` beside ``query``) is refused:
reading the file would silently drop those texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from auditor.ingest.diagnose import first_keys
from auditor.ingest.errors import IngestError
from auditor.ingest.rules import ID, NUMBER_LIST, STRING, TEXT, TEXT_LIST, TEXT_LIST_OR_EMPTY, Field

FORMATS = ("beir", "flag", "triplets", "ntuple")

#: n-tuple negatives: negative_1, negative_2, ... (the number is the negative's rank).
_NUMBERED = re.compile(r"negative_([1-9][0-9]{0,5})")
#: Keys that hold training texts in some format; one the chosen format does not read would be lost.
_TEXT_KEYS = {"query", "anchor", "pos", "neg", "positive", "negative"}
_ANY_NUMBERED = re.compile(r"negative_[0-9]+")


@dataclass(frozen=True)
class PairLayout:
    """A pair-based format (one record per query or per tuple) resolved against the keys present in the file."""

    format: str
    query: str  # key holding the query text
    positives: str  # key holding one positive (text) or a list of them
    positives_is_list: bool
    negatives: tuple[str, ...]  # one key holding a list, or several keys each holding one text
    negatives_is_list: bool
    negative_ranks: tuple[int, ...] = ()  # for numbered negatives: the rank each key stands for
    pos_scores: str | None = None
    neg_scores: str | None = None
    prompt: str | None = None

    def fields(self) -> list[Field]:
        out = [Field(self.query, TEXT), Field(self.positives, TEXT_LIST if self.positives_is_list else TEXT)]
        if self.negatives_is_list:
            out.append(Field(self.negatives[0], TEXT_LIST_OR_EMPTY))
        elif self.negative_ranks:  # n-tuples: a record may hold fewer negatives than the file's widest one
            out.extend(Field(k, TEXT, required=False) for k in self.negatives)
        else:
            out.append(Field(self.negatives[0], TEXT))
        for key in (self.pos_scores, self.neg_scores):
            if key:
                out.append(Field(key, NUMBER_LIST, required=False))
        if self.prompt:
            out.append(Field(self.prompt, STRING, required=False))
        return out

    def same_length(self) -> list[tuple[str, str]]:
        """(texts, scores) pairs whose lists must be equally long."""
        pairs = [(self.positives, self.pos_scores), (self.negatives[0], self.neg_scores)]
        return [(t, s) for t, s in pairs if s]

    def keys(self) -> list[str]:
        return [f.name for f in self.fields()]

    def unread_text_keys(self, keys: set[str]) -> list[str]:
        """Keys of the file that hold texts in some format but not in this layout (their texts would be lost)."""
        read = set(self.keys())
        return sorted(k for k in keys if k not in read and (k in _TEXT_KEYS or _ANY_NUMBERED.fullmatch(k)))


# Real BEIR corpora hold a few empty passages (Cranfield has two): a corpus text must be a string, but may be blank.
BEIR_CORPUS_FIELDS = [Field("_id", ID), Field("text", STRING), Field("title", STRING, required=False)]
BEIR_QUERY_FIELDS = [Field("_id", ID), Field("text", TEXT)]


def _query_key(keys: set[str]) -> str | None:
    for k in ("query", "anchor"):
        if k in keys:
            return k
    return None


def _numbered(keys: set[str]) -> list[tuple[int, str]]:
    return sorted((int(m.group(1)), k) for k in keys if (m := _NUMBERED.fullmatch(k)))


def layout_for(fmt: str, keys: set[str], where: str) -> PairLayout:
    """Resolve a pair format against the keys of the file; a required key absent from every record is an error."""
    q = _query_key(keys)
    guess = guess_pair_format(keys)
    hint = f"; it looks like {guess}: try --format {guess}" if guess and guess != fmt else ""
    shown = ", ".join(sorted(keys)[:20]) + (f", ... ({len(keys)} keys)" if len(keys) > 20 else "") if keys else "none"
    if fmt == "flag":
        missing = [k for k in ("query", "pos", "neg") if k not in keys]
        if missing:
            raise IngestError(where, missing[0], f"missing for format flag (keys: {shown}){hint}")
        return PairLayout("flag", "query", "pos", True, ("neg",), True, (), "pos_scores", "neg_scores", "prompt")
    if q is None:
        raise IngestError(where, "query", f"no 'query' or 'anchor' field for format {fmt} (keys: {shown}){hint}")
    if "positive" not in keys:
        raise IngestError(where, "positive", f"missing for format {fmt} (keys: {shown}){hint}")
    if fmt == "triplets":
        if "negative" not in keys:
            raise IngestError(where, "negative", f"missing for format triplets (keys: {shown}){hint}")
        return PairLayout("triplets", q, "positive", False, ("negative",), False)
    if fmt == "ntuple":
        numbered = _numbered(keys)
        if numbered:
            return PairLayout("ntuple", q, "positive", False, tuple(k for _, k in numbered), False,
                              tuple(n for n, _ in numbered))
        if "neg" in keys:
            return PairLayout("ntuple", q, "positive", False, ("neg",), True)
        raise IngestError(where, "negative_1", f"no 'negative_1..n' or 'neg' fields for format ntuple (keys: {shown})")
    raise IngestError(where, None, f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")


#: Roles --columns can map to a file's own column names.
COLUMN_ROLES = ("query", "positive", "negative", "prompt")


def parse_columns(text: str) -> dict[str, str]:
    """``query=question,positive=answer[,negative=COL][,prompt=COL]`` as a dict."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not column or role not in COLUMN_ROLES:
            raise ValueError(f"--columns takes ROLE=COLUMN pairs with ROLE one of {', '.join(COLUMN_ROLES)}; "
                             f"got {part!r}")
        if role in out:
            raise ValueError(f"--columns names {role} twice")
        out[role] = column
    for role in ("query", "positive"):
        if role not in out:
            raise ValueError(f"--columns needs {role}=COLUMN")
    return out


def layout_for_columns(fmt: str, keys: set[str], where: str, columns: dict[str, str], first: dict) -> PairLayout:
    """The layout of a file whose columns the user named (sentence-transformers' mine_hard_negatives names them after
    its input: query/answer, question/answer, anchor/positive, ...).

    negative=COL is one column holding a text (triplets) or a list (n-tuple), or the prefix of numbered columns
    COL_1..COL_N (``negative`` by default, as mine_hard_negatives writes them). A positive column holding a list makes
    the FlagEmbedding shape.
    """
    shown = ", ".join(sorted(keys)[:20]) + (f", ... ({len(keys)} keys)" if len(keys) > 20 else "") if keys else "none"
    for role, column in columns.items():
        if column not in keys and not (role == "negative" and _numbered_with(keys, column)):
            raise IngestError(where, column, f"--columns {role}={column}: the file has no such column (columns: "
                                             f"{shown})")
    q, p = columns["query"], columns["positive"]
    prompt = columns.get("prompt")
    positives_is_list = isinstance(first.get(p), list)
    neg = columns.get("negative", "negative")
    numbered = _numbered_with(keys, neg)
    if neg in keys:
        negatives, negatives_is_list, ranks = (neg,), isinstance(first.get(neg), list) or positives_is_list, ()
    elif numbered:
        negatives, negatives_is_list, ranks = tuple(k for _, k in numbered), False, tuple(n for n, _ in numbered)
    else:
        raise IngestError(where, neg, f"no negative column: name it with --columns ...,negative=COL (columns: "
                                      f"{shown})")
    shape = "flag" if positives_is_list else "ntuple" if (negatives_is_list or ranks) else "triplets"
    if fmt not in ("columns", shape):
        raise IngestError(where, None, f"--format {fmt} does not match the columns named: the file looks like "
                                       f"{shape} (a positive {'list' if positives_is_list else 'text'}, negatives "
                                       f"{'numbered' if ranks else 'in a list' if negatives_is_list else 'one text'})")
    return PairLayout(shape, q, p, positives_is_list, negatives, negatives_is_list, ranks, None, None, prompt)


def _numbered_with(keys: set[str], prefix: str) -> list[tuple[int, str]]:
    pattern = re.compile(re.escape(prefix) + r"_([1-9][0-9]{0,5})")
    return sorted((int(m.group(1)), k) for k in keys if (m := pattern.fullmatch(k)))


def guess_pair_format(keys: set[str]) -> str | None:
    if "pos" in keys and "query" in keys:
        return "flag"
    if _query_key(keys) and "positive" in keys:
        if any(_ANY_NUMBERED.fullmatch(k) for k in keys) or "neg" in keys:
            return "ntuple"
        if "negative" in keys:
            return "triplets"
    return None


def first_record_keys(path: Path) -> tuple[set[str], int]:
    """Keys of the first record (and its line number), for format detection."""
    keys, lineno, problem = first_keys(path)
    if lineno == 0:
        raise IngestError(str(path), None, "file is empty: no records")
    if problem:
        raise IngestError(f"{path}:{lineno}", None, problem)
    return set(keys or []), lineno


def is_tabular(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".csv")


def tabular_columns(path: Path) -> list[str]:
    """The column names of a Parquet or CSV file, in order; a name given twice is refused (a column would be lost)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise IngestError(str(path), None, f"cannot read as parquet: {str(exc).splitlines()[0][:200]}") from None
        where = str(path)
    else:
        from auditor.ingest.tabular import csv_header

        names, where = csv_header(path)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise IngestError(where, name, "column appears twice in the header: one of them would be lost")
        seen.add(name)
    return names


def detect_format(path: Path) -> str:
    """beir for a folder with corpus/queries/qrels; otherwise from the keys of the first record."""
    if path.is_dir():
        if (path / "corpus.jsonl").exists() and (path / "queries.jsonl").exists():
            return "beir"
        raise IngestError(str(path), None, "folder is not a BEIR dataset: expected corpus.jsonl, queries.jsonl, qrels/")
    if is_tabular(path):
        keys = set(tabular_columns(path))
        where = f"{path}:line 1" if path.suffix.lower() == ".csv" else str(path)
    else:
        keys, lineno = first_record_keys(path)
        where = f"{path}:{lineno}"
    fmt = guess_pair_format(keys)
    if fmt is None:
        raise IngestError(
            where,
            None,
            "cannot tell the format from the keys " + (", ".join(sorted(keys)) or "(none)") + ": expected "
            "FlagEmbedding {query,pos,neg}, triplets {anchor|query,positive,negative} or n-tuples {anchor|query,"
            "positive,negative_1..n}; pass --format",
        )
    return fmt
