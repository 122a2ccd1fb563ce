"""The field specs of `auditor.ingest.formats` as SQL: one boolean "is bad" expression per record.

DuckDB evaluates it over the whole staged file in one pass; only when it counts any bad record does ingest fall back
to `auditor.ingest.diagnose` for line numbers.
"""

from __future__ import annotations

from auditor.ingest.formats import ID, NUMBER_LIST, OPT_TEXT, TEXT, TEXT_LIST, Field

_NUMBER_TYPES = "('DOUBLE', 'BIGINT', 'UBIGINT')"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def field_is_bad(spec: Field) -> str:
    c = _q(spec.name)
    missing = f"{c} IS NULL OR json_type({c}) = 'NULL'"
    if spec.kind in (TEXT, OPT_TEXT):
        bad = f"json_type({c}) <> 'VARCHAR'"
        if spec.kind == TEXT and spec.nonempty:
            bad += f" OR trim(json_extract_string({c}, '$')) = ''"
    elif spec.kind == ID:
        bad = (
            f"json_type({c}) NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') "
            f"OR trim(json_extract_string({c}, '$')) = ''"
        )
    elif spec.kind in (TEXT_LIST, NUMBER_LIST):
        bad = f"json_type({c}) <> 'ARRAY'"
        if spec.nonempty:
            bad += f" OR json_array_length({c}) = 0"
        if spec.kind == TEXT_LIST:
            bad += (
                f" OR len(list_filter(json_type({c}, '$[*]'), lambda t: t <> 'VARCHAR')) > 0"
                f" OR len(list_filter(json_extract_string({c}, '$[*]'), lambda s: trim(s) = '')) > 0"
            )
        else:
            bad += f" OR len(list_filter(json_type({c}, '$[*]'), lambda t: t NOT IN {_NUMBER_TYPES})) > 0"
    else:  # pragma: no cover - specs are fixed in formats.py
        raise ValueError(spec.kind)
    if spec.required:
        return f"({missing} OR {bad})"
    return f"(NOT ({missing}) AND ({bad}))"


def record_is_bad(specs: list[Field], pairs: list[tuple[str, str]] | None = None) -> str:
    """SQL that is true for a record with any bad field or any score list not matching its text list in length."""
    parts = [field_is_bad(s) for s in specs]
    for texts, scores in pairs or []:
        t, s = _q(texts), _q(scores)
        parts.append(
            f"(json_type({s}) = 'ARRAY' AND json_type({t}) = 'ARRAY' "
            f"AND json_array_length({s}) <> json_array_length({t}))"
        )
    return "(" + " OR ".join(parts) + ")"
