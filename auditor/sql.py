"""Small SQL-text helpers shared by every module that inlines values into DuckDB statements."""

from __future__ import annotations

from collections.abc import Sequence


def lit(value: object) -> str:
    """A SQL string literal of ``value`` (single quotes doubled): for values that must be inlined, such as names
    inside a statement DuckDB plans once, or a filter it should push into each scan."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier (double quotes doubled): for column names that come from the data."""
    return '"' + str(name).replace('"', '""') + '"'


def query_ids_sql(query_ids: Sequence[str]) -> str:
    """A condition on ``query_id`` naming the given queries, with the ids inlined: DuckDB applies it inside each scan
    and skips the row groups whose zone maps exclude them (a semi-join on a table of ids reads every row)."""
    return f"query_id = ANY([{', '.join(lit(q) for q in query_ids)}]::VARCHAR[])"
