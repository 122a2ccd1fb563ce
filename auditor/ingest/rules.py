"""What makes a field valid, stated once as a rule table and compiled to one SQL expression per record.

Each field kind has an ordered list of rules; a rule is a condition that is true when the value is wrong, and the
message that says so. `problem_sql` turns the fields of a format into one SQL ``CASE`` that yields, per record, the
first thing wrong with it (``field<US>message``) or NULL. DuckDB evaluates it over the whole file in the same pass
that reads it; the per-line report (`auditor.ingest.locate`) takes its messages from that column and only maps rows
to line numbers, so what is checked and what is reported cannot drift apart.

Every condition is wrapped in ``coalesce(..., true)``: a condition that cannot be decided flags the record instead of
letting it through. Rules run in order and only on values that passed the earlier ones (a ``CASE`` stops at the first
match), so a rule may rely on what earlier rules established (the item rules of a list run only on lists).
"""

from __future__ import annotations

from dataclasses import dataclass

from auditor.ingest.limits import BLANK_CHARS, MAX_ABS_SCORE, MAX_ID_CHARS, MAX_RECORD_BYTES
from auditor.sql import ident, lit

#: Field kinds.
TEXT = "text"  # a string with at least one character that is not blank
STRING = "string"  # any string, blank allowed (BEIR corpus text, titles, prompts)
ID = "id"  # a non-blank string or a 64-bit integer, at most MAX_ID_CHARS long
TEXT_LIST = "text_list"  # a non-empty list of TEXT
TEXT_LIST_OR_EMPTY = "text_list_or_empty"  # a list of TEXT, possibly empty (FlagEmbedding `neg`)
NUMBER_LIST = "number_list"  # a list of finite numbers within MAX_ABS_SCORE (teacher scores)
LABEL = "label"  # a relevance label: 1 (positive) or 0 (negative); true/false, and "1"/"0" as CSV cells hold them
LABEL_LIST = "label_list"  # a non-empty list of LABEL

#: The separator between field name and message in the SQL problem column.
SEP = "\x1f"


@dataclass(frozen=True)
class Field:
    name: str  # key in the record (or column of a table)
    kind: str
    required: bool = True


@dataclass(frozen=True)
class Rule:
    """`when` is SQL over ``{v}`` (the field's JSON value, present and not null), true when the value is wrong;
    `message` is a SQL string expression over ``{v}`` saying what is wrong."""

    when: str
    message: str




#: RE2 class matching a string made only of blank characters (empty included).
BLANK_RE = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in BLANK_CHARS) + "]*"

_TYPE_NAMES = {
    "VARCHAR": "a string", "BIGINT": "a number", "UBIGINT": "a number", "DOUBLE": "a number",
    "BOOLEAN": "true/false", "ARRAY": "a list", "OBJECT": "an object", "NULL": "null",
}


def _type_name(json_type_sql: str) -> str:
    cases = " ".join(f"WHEN {lit(t)} THEN {lit(n)}" for t, n in _TYPE_NAMES.items())
    return f"(CASE {json_type_sql} {cases} ELSE lower({json_type_sql}) END)"


def _first_item(v_items: str, bad: str) -> str:
    """1-based position of the first item of list expression `v_items` for which lambda body `bad` (over x) holds,
    0 if none."""
    return f"coalesce(list_position(list_transform({v_items}, lambda x: coalesce({bad}, true)), true), 0)"


_IS_STRING = Rule("json_type({v}) <> 'VARCHAR'", "'expected a string, got ' || " + _type_name("json_type({v})"))
_NOT_BLANK = Rule(f"regexp_full_match(json_extract_string({{v}}, '$'), {lit(BLANK_RE)})",
                  "'blank: empty or only whitespace, invisible or control characters'")
_IS_LIST = Rule("json_type({v}) <> 'ARRAY'", "'expected a list, got ' || " + _type_name("json_type({v})"))
_NOT_EMPTY = Rule("json_array_length({v}) = 0", "'empty list'")

_ITEM_TYPES = "json_type({v}, '$[*]')"
_NOT_STRING = _first_item(_ITEM_TYPES, "x <> 'VARCHAR'")
_ITEMS_STRINGS = Rule(
    f"{_NOT_STRING} > 0",
    f"'expected a list of strings, but item ' || {_NOT_STRING} || ' is ' || "
    + _type_name(f"({_ITEM_TYPES})[{_NOT_STRING}]"),
)
_BLANK_ITEM = _first_item("json_extract_string({v}, '$[*]')", f"regexp_full_match(x, {lit(BLANK_RE)})")
_ITEMS_NOT_BLANK = Rule(f"{_BLANK_ITEM} > 0", f"'item ' || {_BLANK_ITEM} || ' is blank: empty or only whitespace, invisible or control characters'")
_NOT_NUMBER = _first_item(_ITEM_TYPES, "x NOT IN ('BIGINT', 'UBIGINT', 'DOUBLE')")
_ITEMS_NUMBERS = Rule(
    f"{_NOT_NUMBER} > 0",
    f"'expected a list of numbers, but item ' || {_NOT_NUMBER} || ' is ' || "
    + _type_name(f"({_ITEM_TYPES})[{_NOT_NUMBER}]"),
)
# NaN compares greater than every number in DuckDB, so `NOT (abs(x) <= limit)` catches NaN, infinities and huge values.
_OUT_OF_RANGE = _first_item("TRY_CAST({v} AS DOUBLE[])", f"NOT (abs(x) <= {MAX_ABS_SCORE!r})")
_ITEMS_IN_RANGE = Rule(
    f"{_OUT_OF_RANGE} > 0",
    f"'item ' || {_OUT_OF_RANGE} || {lit(f' is NaN, infinite or beyond ±{MAX_ABS_SCORE:,.0f}')}",
)
#: The values a label may take, as json_extract_string renders them; the first two mean positive.
LABEL_VALUES = ("1", "true", "0", "false")
_LABEL_SET = "(" + ", ".join(map(lit, LABEL_VALUES)) + ")"
_IS_LABEL = Rule(
    f"json_type({{v}}) NOT IN ('BIGINT', 'UBIGINT', 'BOOLEAN', 'VARCHAR') OR json_extract_string({{v}}, '$') "
    f"NOT IN {_LABEL_SET}",
    "'expected a label 0 or 1, got ' || left(json_extract_string({v}, '$'), 50)",
)
_NOT_LABEL = _first_item("json_extract_string({v}, '$[*]')", f"x NOT IN {_LABEL_SET}")
_ITEMS_LABELS = Rule(
    f"{_NOT_LABEL} > 0",
    f"'expected a list of labels 0 or 1, but item ' || {_NOT_LABEL} || ' is ' || "
    f"left(json_extract_string({{v}}, '$[*]')[{_NOT_LABEL}], 50)",
)
_IS_ID = Rule(
    "json_type({v}) NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT')",
    "'expected a string or an integer that fits in 64 bits, got ' || " + _type_name("json_type({v})"),
)
_ID_LENGTH = "length(json_extract_string({v}, '$'))"
_ID_NOT_TOO_LONG = Rule(f"{_ID_LENGTH} > {MAX_ID_CHARS}",
                        f"'longer than {MAX_ID_CHARS:,} characters (' || {_ID_LENGTH} || ')'")

#: The rule table: kind -> rules, checked in order; the first that holds is the record's problem.
RULES: dict[str, list[Rule]] = {
    TEXT: [_IS_STRING, _NOT_BLANK],
    STRING: [_IS_STRING],
    ID: [_IS_ID, _NOT_BLANK, _ID_NOT_TOO_LONG],
    TEXT_LIST: [_IS_LIST, _NOT_EMPTY, _ITEMS_STRINGS, _ITEMS_NOT_BLANK],
    TEXT_LIST_OR_EMPTY: [_IS_LIST, _ITEMS_STRINGS, _ITEMS_NOT_BLANK],
    NUMBER_LIST: [_IS_LIST, _ITEMS_NUMBERS, _ITEMS_IN_RANGE],
    LABEL: [_IS_LABEL],
    LABEL_LIST: [_IS_LIST, _NOT_EMPTY, _ITEMS_LABELS],
}


def _missing(col: str) -> str:
    return f"({col} IS NULL OR json_type({col}) = 'NULL')"


def _problem(field: str, message_sql: str) -> str:
    return f"{lit(field + SEP)} || coalesce({message_sql}, 'invalid value')"


def _count(key: str) -> str:
    """How many texts field `key` holds: 0 when missing, its length when a list, else 1."""
    col = ident(key)
    return (f"(CASE WHEN {_missing(col)} THEN 0 WHEN json_type({col}) = 'ARRAY' THEN json_array_length({col}) "
            "ELSE 1 END)")


def problem_sql(fields: list[Field], same_length: list[tuple[str | tuple[str, ...], str]] | None = None) -> str:
    """One SQL expression per record: NULL when every field is valid, else ``field<SEP>message`` of the first problem.

    `same_length` lists (texts, scores) pairs of list fields that must be equally long when both are present; texts
    may be a tuple of keys whose texts are counted together (mine_hard_negatives' one `scores` list: the positive's
    score, then each negative's).
    """
    whens = []
    size = " + ".join(f"coalesce(strlen({ident(f.name)}::VARCHAR), 0)" for f in fields)
    whens.append((f"({size}) > {MAX_RECORD_BYTES}", _problem(
        "", f"'record is ' || ({size}) || ' bytes, more than the limit of {MAX_RECORD_BYTES:,}'")))
    for f in fields:
        col = ident(f.name)
        if f.required:
            whens.append((_missing(col), _problem(f.name, "'missing or null'")))
            guard = ""
        else:
            guard = f"NOT {_missing(col)} AND "
        for rule in RULES[f.kind]:
            when, message = (sql.replace("{v}", col) for sql in (rule.when, rule.message))
            whens.append((f"{guard}coalesce({when}, true)", _problem(f.name, message)))
    for texts, scores in same_length or []:
        if isinstance(texts, tuple):
            s, n_t = ident(scores), " + ".join(_count(k) for k in texts)
            n_s = f"json_array_length({s})"
            named = ", ".join(map(repr, texts[:4])) + (", ..." if len(texts) > 4 else "")
            whens.append((
                f"NOT {_missing(s)} AND coalesce({n_s} <> ({n_t}), true)",
                _problem(scores, f"'has ' || {n_s} || ' values for ' || ({n_t}) || "
                                 f"{lit(f' texts of {named}: one score per text, in that order')}"),
            ))
            continue
        t, s = ident(texts), ident(scores)
        n_t, n_s = f"json_array_length({t})", f"json_array_length({s})"
        whens.append((
            f"NOT {_missing(t)} AND NOT {_missing(s)} AND coalesce({n_t} <> {n_s}, true)",
            _problem(scores, f"'has ' || {n_s} || ' values for ' || {n_t} || {lit(f' entries of {texts!r}')}"),
        ))
    return "(CASE " + " ".join(f"WHEN {w} THEN {m}" for w, m in whens) + " END)"


def split_problem(value: str) -> tuple[str | None, str]:
    """(field or None for the whole record, message) from a value of the problem column."""
    field, _, message = value.partition(SEP)
    return field or None, message
