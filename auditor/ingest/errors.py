"""The one error type of ingest: where (file and line), which field, what is wrong."""

from __future__ import annotations

from auditor.store import StoreError


class IngestError(StoreError):
    """Bad input. `where` is "file" or "file:line"; `field` the offending key, when there is one."""

    def __init__(self, where: str, field: str | None, message: str, more: int = 0):
        self.where, self.field, self.reason, self.more = where, field, message, more
        text = f"{where}: "
        if field:
            text += f"field '{field}': "
        text += message
        if more:
            text += f" (and {more} more bad line{'s' if more > 1 else ''}; --skip-bad stores the valid ones)"
        super().__init__(text)
