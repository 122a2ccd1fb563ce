"""What an annotator chose to review: the queue's order and filters as one frozen value, and the routing rule.

A :class:`QueueChoice` travels unchanged from the page or the command line through the queue's entry points to the
SQL (as Label Studio's ``PrepareParams`` does through its data manager), so the order, the filters and the export
settings are named once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from auditor.bands import BANDS
from auditor.config import DEFAULT_BAND_CONFIG, ReviewConfig
from auditor.select import Selection

MODES = ("export", "risk", "stratified")
#: What a verdict may record as its queue: a stratified walk narrowed by source or query is not a band sample.
RECORDED_MODES = (*MODES, "stratified_filtered")

#: SQL for a band's place in the legacy risk order (0 = reviewed first).
BAND_LEVEL_SQL = "CASE {b} WHEN 'suspicious' THEN 0 WHEN 'ambiguous' THEN 1 ELSE 2 END"

#: The columns of a queue item (build_queue's frame, next_item's dict).
ITEM_COLUMNS = [
    "query_id", "doc_id", "band", "rule", "s_neg", "s_pos_min", "s_pos_max", "delta", "ratio", "rank", "sources",
    "weight", "p_fn", "risk", "sampling_prob", "gain", "audit",
]


def double_share(double_annotation: float | None) -> float:
    share = ReviewConfig().double_annotation if double_annotation is None else float(double_annotation)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"double_annotation must be between 0 and 1, got {share}")
    return share


#: An item is routed to two annotators when this md5-derived number in [0, 1) is below the double-annotation share.
DOUBLE_HASH_SQL = "(md5_number_upper(v.query_id || chr(31) || v.doc_id) / 18446744073709551616.0)"


def needs_two_annotators(query_id: str, doc_id: str, share: float) -> bool:
    """Python twin of the SQL routing rule (for tests and the app)."""
    digest = hashlib.md5(f"{query_id}\x1f{doc_id}".encode()).digest()
    upper = int.from_bytes(digest[:8], "little")
    return upper / 2**64 < share


@dataclass(frozen=True)
class QueueChoice:
    """One review queue: its order (``mode``), the scorer and band configuration, the filters, the seed of the
    stratified order, the double-annotation share, and (export order) the export settings it follows.

    ``model=None`` means the latest model scored; ``selection=None`` in export mode means the latest export's
    settings (whose band configuration then replaces ``config``).
    """

    mode: str = ReviewConfig.mode
    model: str | None = None
    config: str = DEFAULT_BAND_CONFIG
    bands: tuple[str, ...] | None = None
    source: str | None = None
    query_id: str | None = None
    seed: int = 42
    double_annotation: float | None = None
    selection: Selection | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown queue mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.bands is not None:
            bands = (self.bands,) if isinstance(self.bands, str) else tuple(self.bands)
            unknown = set(bands) - set(BANDS)
            if unknown:
                raise ValueError(f"unknown band(s) {sorted(unknown)}: use {', '.join(BANDS)}")
            # every band is no filter (the page's default): the same queue, the same page
            object.__setattr__(self, "bands", None if not bands or set(bands) == set(BANDS) else bands)
        double_share(self.double_annotation)

    @classmethod
    def of(cls, choice: QueueChoice | None = None, **kw: Any) -> QueueChoice:
        """``choice`` with the keyword fields given replaced, or a new choice from them (entry points take both)."""
        if choice is None:
            return cls(**kw)
        return replace(choice, **kw) if kw else choice

    @property
    def filtered(self) -> bool:
        """Narrowed by source or query: a stratified walk of it is not a sample of the band."""
        return bool(self.source or self.query_id)

    @property
    def share(self) -> float:
        return double_share(self.double_annotation)

    @property
    def recorded_mode(self) -> str:
        """The queue mode a verdict on one of its items records."""
        return "stratified_filtered" if self.mode == "stratified" and self.filtered else self.mode
