"""Line-by-line checking of JSON-lines input, for precise messages and for --skip-bad.

The fast path reads files with DuckDB and only counts problems; when it finds any (or DuckDB cannot parse the file),
this module re-reads the file in Python to say exactly which line and field is wrong. It applies the same `Field`
specs as the SQL checks in `auditor.ingest.checks`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from auditor.ingest.formats import ID, NUMBER_LIST, OPT_TEXT, TEXT, TEXT_LIST, Field


@dataclass(frozen=True)
class Problem:
    line: int
    field: str | None
    message: str


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def field_problem(spec: Field, record: dict) -> str | None:
    """The first thing wrong with one field of one record, in the same words as the SQL checks."""
    value = record.get(spec.name)
    if value is None:
        return "missing or null" if spec.required else None
    kind = spec.kind
    if kind in (TEXT, OPT_TEXT):
        if not isinstance(value, str):
            return f"expected a string, got {_json_type(value)}"
        if kind == TEXT and spec.nonempty and not value.strip():
            return "empty string"
    elif kind == ID:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return f"expected a string or integer id, got {_json_type(value)}"
        if isinstance(value, str) and not value.strip():
            return "empty string"
    elif kind in (TEXT_LIST, NUMBER_LIST):
        if not isinstance(value, list):
            return f"expected a list, got {_json_type(value)}"
        if spec.nonempty and not value:
            return "empty list"
        if kind == TEXT_LIST:
            if not all(isinstance(v, str) for v in value):
                return "expected a list of strings"
            if any(not v.strip() for v in value):
                return "empty string in list"
        elif not all(_is_number(v) for v in value):
            return "expected a list of numbers"
    return None


def record_problems(specs: list[Field], record: dict, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(field, message) for every bad field, plus list-length mismatches between score lists and their texts."""
    out = []
    for spec in specs:
        msg = field_problem(spec, record)
        if msg:
            out.append((spec.name, msg))
    bad = {f for f, _ in out}
    for texts, scores in pairs:
        if scores in bad or texts in bad or record.get(scores) is None or record.get(texts) is None:
            continue
        if len(record[scores]) != len(record[texts]):
            out.append((scores, f"has {len(record[scores])} values for {len(record[texts])} entries of '{texts}'"))
    return out


def _json_type(v: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def scan_jsonl(
    path: Path, specs: list[Field], pairs: list[tuple[str, str]] | None = None
) -> Iterator[tuple[int, bytes, list[Problem]]]:
    """Yield (line number, raw bytes, problems) for every non-blank line."""
    pairs = pairs or []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, raw, [Problem(lineno, None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})")]
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                yield lineno, raw, [Problem(lineno, None, f"malformed JSON: {exc}")]
                continue
            if not isinstance(record, dict):
                yield lineno, raw, [Problem(lineno, None, f"expected a JSON object, got {_json_type(record)}")]
                continue
            problems = [Problem(lineno, f, m) for f, m in record_problems(specs, record, pairs)]
            yield lineno, raw, problems


def find_id_lines(path: Path, key: str, wanted: set[str], limit: int = 2) -> dict[str, list[int]]:
    """Lines where records with the given ids occur (to explain duplicate-id conflicts)."""
    found: dict[str, list[int]] = {}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and str(rec.get(key)) in wanted:
                lines = found.setdefault(str(rec.get(key)), [])
                if len(lines) < limit:
                    lines.append(lineno)
    return found
