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
from auditor.ingest.rules import (
    ID, LABEL, LABEL_LIST, NUMBER_LIST, STRING, TEXT, TEXT_LIST, TEXT_LIST_OR_EMPTY, Field,
)

FORMATS = ("beir", "flag", "triplets", "ntuple", "labeled-pair", "labeled-list")
#: sentence-transformers' mine_hard_negatives(output_scores=True) column: the positive's score, then each negative's.
SCORES_KEY = "scores"
#: Its labeled outputs: `label` (labeled-pair: one document per row) or `labels` (labeled-list: a list per row).
LABEL_KEYS = {"labeled-pair": "label", "labeled-list": "labels"}
#: mine_hard_negatives names its query column after its input; for labeled outputs these are recognised unmapped.
_LABELED_QUERY_KEYS = ("query", "anchor", "question")

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
    scores: str | None = None  # one list: the positive's score, then each negative's (mine_hard_negatives)
    labels: str | None = None  # labeled formats: `positives` holds every document, this key their 0/1 labels

    def fields(self) -> list[Field]:
        if self.labels:  # labeled-pair: (query, document, label); labeled-list: (query, [documents], [labels])
            listed = self.format == "labeled-list"
            out = [Field(self.query, TEXT), Field(self.positives, TEXT_LIST if listed else TEXT),
                   Field(self.labels, LABEL_LIST if listed else LABEL)]
            return out + ([Field(self.prompt, STRING, required=False)] if self.prompt else [])
        out = [Field(self.query, TEXT), Field(self.positives, TEXT_LIST if self.positives_is_list else TEXT)]
        if self.negatives_is_list:
            out.append(Field(self.negatives[0], TEXT_LIST_OR_EMPTY))
        elif self.negative_ranks:  # n-tuples: a record may hold fewer negatives than the file's widest one
            out.extend(Field(k, TEXT, required=False) for k in self.negatives)
        else:
            out.append(Field(self.negatives[0], TEXT))
        for key in (self.pos_scores, self.neg_scores, self.scores):
            if key:
                out.append(Field(key, NUMBER_LIST, required=False))
        if self.prompt:
            out.append(Field(self.prompt, STRING, required=False))
        return out

    def same_length(self) -> list[tuple[str | tuple[str, ...], str]]:
        """(texts, scores) pairs whose lists must be equally long; texts may be several keys (each a text or a list),
        counted together in order (the one `scores` list of mine_hard_negatives)."""
        if self.labels:
            return [(self.positives, self.labels)] if self.format == "labeled-list" else []
        pairs = [(self.positives, self.pos_scores), (self.negatives[0], self.neg_scores)]
        out: list[tuple[str | tuple[str, ...], str]] = [(t, s) for t, s in pairs if s]
        if self.scores:
            out.append(((self.positives, *self.negatives), self.scores))
        return out

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
    if fmt in LABEL_KEYS:
        return _labeled_layout(fmt, keys, where, shown, None, None)
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
        return PairLayout("triplets", q, "positive", False, ("negative",), False, scores=_scores_key(keys))
    if fmt == "ntuple":
        numbered = _numbered(keys)
        if numbered:
            return PairLayout("ntuple", q, "positive", False, tuple(k for _, k in numbered), False,
                              tuple(n for n, _ in numbered), scores=_scores_key(keys))
        if "neg" in keys:
            return PairLayout("ntuple", q, "positive", False, ("neg",), True, scores=_scores_key(keys))
        raise IngestError(where, "negative_1", f"no 'negative_1..n' or 'neg' fields for format ntuple (keys: {shown})")
    raise IngestError(where, None, f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")


def _scores_key(keys: set[str]) -> str | None:
    return SCORES_KEY if SCORES_KEY in keys else None


def _labeled_layout(fmt: str | None, keys: set[str], where: str, shown: str, query: str | None,
                    document: str | None, label: str | None = None, prompt: str | None = None) -> PairLayout:
    """mine_hard_negatives' labeled-pair (query, document, label 0/1) or labeled-list (query, [documents], [labels])
    output: the query and document columns are named after its input, so without --columns they are the one query
    key (query, anchor or question) and the one other key."""
    label = label or next((k for f, k in LABEL_KEYS.items() if k in keys and fmt in (None, "columns", f)), None)
    if label is None:
        raise IngestError(where, LABEL_KEYS.get(fmt or "", "label"), f"missing for format {fmt} (keys: {shown})")
    fmt = "labeled-list" if label == LABEL_KEYS["labeled-list"] else fmt if fmt in LABEL_KEYS else "labeled-pair"
    query = query or next((k for k in _LABELED_QUERY_KEYS if k in keys), None)
    others = sorted(keys - {query, label, prompt})
    if query is None or (document is None and len(others) != 1):
        raise IngestError(where, None, f"format {fmt}: expected a query column ({', '.join(_LABELED_QUERY_KEYS)}), "
                                       f"one document column and {label!r} (keys: {shown}); name them with "
                                       "--columns query=COL,positive=COL")
    return PairLayout(fmt, query, document or others[0], fmt == "labeled-list", (), False, prompt=prompt,
                      labels=label)


def scores_without_labels(keys: set[str]) -> str | None:
    """A labeled output written with output_scores=True has scores where its labels were: which documents are
    positives cannot be told. The reason, when `keys` look like one."""
    if "label" in keys or "labels" in keys or not ({"score", SCORES_KEY} & keys):
        return None
    if "score" in keys or (not any(k in keys for k in ("positive", "negative", "neg", "pos"))
                           and not _numbered(keys)):
        return ("looks like sentence-transformers' mine_hard_negatives labeled output written with output_scores=True:"
                " its scores replace the 0/1 labels, so which documents are positives cannot be told; write it with "
                "output_scores=False (label / labels), or as triplet / n-tuple (with scores)")
    return None


#: Roles --columns can map to a file's own column names.
COLUMN_ROLES = ("query", "positive", "negative", "prompt", "scores", "label")


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
    if "label" in columns or (fmt in ("columns", *LABEL_KEYS) and "negative" not in columns
                              and any(k in keys for k in LABEL_KEYS.values())):
        return _labeled_layout(fmt, keys, where, shown, q, p, columns.get("label"), prompt)
    scores = columns.get("scores") or _scores_key(keys)
    positives_is_list = isinstance(first.get(p), list)
    neg = columns.get("negative", "negative")
    numbered = _numbered_with(keys, neg)
    if neg in keys:
        negatives, negatives_is_list, ranks = (neg,), isinstance(first.get(neg), list) or positives_is_list, ()
    elif numbered:
        negatives, negatives_is_list, ranks = tuple(k for _, k in numbered), False, tuple(n for n, _ in numbered)
    elif scores_without_labels(keys):
        raise IngestError(where, None, scores_without_labels(keys))
    else:
        raise IngestError(where, neg, f"no negative column: name it with --columns ...,negative=COL (columns: "
                                      f"{shown})")
    shape = "flag" if positives_is_list else "ntuple" if (negatives_is_list or ranks) else "triplets"
    if fmt not in ("columns", shape):
        raise IngestError(where, None, f"--format {fmt} does not match the columns named: the file looks like "
                                       f"{shape} (a positive {'list' if positives_is_list else 'text'}, negatives "
                                       f"{'numbered' if ranks else 'in a list' if negatives_is_list else 'one text'})")
    if positives_is_list and scores:
        raise IngestError(where, scores, "one scores list for a list of positives cannot be split between them: give "
                                         "pos_scores and neg_scores (FlagEmbedding layout)")
    return PairLayout(shape, q, p, positives_is_list, negatives, negatives_is_list, ranks, None, None, prompt, scores)


def _numbered_with(keys: set[str], prefix: str) -> list[tuple[int, str]]:
    pattern = re.compile(re.escape(prefix) + r"_([1-9][0-9]{0,5})")
    return sorted((int(m.group(1)), k) for k in keys if (m := pattern.fullmatch(k)))


def guess_pair_format(keys: set[str]) -> str | None:
    if "pos" in keys and "query" in keys:
        return "flag"
    for fmt, label in LABEL_KEYS.items():
        if label in keys and any(k in keys for k in _LABELED_QUERY_KEYS) and len(keys) == 3:
            return fmt
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


def _columns_hint(keys: set[str]) -> str:
    """A --columns suggestion for a file named after mine_hard_negatives' input (question / answer, ...)."""
    query = next((k for k in _LABELED_QUERY_KEYS if k in keys), None)
    others = sorted(k for k in keys - {query, "negative", SCORES_KEY, "prompt"} if not _ANY_NUMBERED.fullmatch(k))
    if query is None or len(others) != 1:
        return ""
    return (f" (it looks like sentence-transformers' mine_hard_negatives output: --columns query={query},"
            f"positive={others[0]})")


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
    if fmt is None and scores_without_labels(keys):
        raise IngestError(where, None, scores_without_labels(keys))
    if fmt is None:
        raise IngestError(
            where,
            None,
            "cannot tell the format from the keys " + (", ".join(sorted(keys)) or "(none)") + ": expected "
            "FlagEmbedding {query,pos,neg}, triplets {anchor|query,positive,negative}, n-tuples {anchor|query,"
            "positive,negative_1..n} or labeled pairs / lists {query,COL,label|labels}; pass --format or --columns"
            + _columns_hint(keys),
        )
    return fmt
