"""What a verdict is worth to the export: the order of the default review queue.

The export takes, per query, the N candidates with the highest ``key = h - lam * p`` (:mod:`auditor.tradeoff`).
A verdict on a candidate can change that choice in two ways, and its expected gain in the export's own currency
(hardness, less ``lam`` per false negative) is:

exported candidate     with probability p it is a false negative and leaves; the best candidate not exported
                       (key ``k_next``) takes its place: gain ``p * (k_next - (h - lam))``
candidate not exported with probability 1 - p it is a true negative, its risk drops to 0, and it enters where it is
                       harder than the weakest exported one (key ``k_min``): gain ``(1 - p) * max(0, h - k_min)``

So the queue asks first about the risky negatives the export holds and the hard candidates it leaves out for their
risk: a confirmed hard true negative is the best negative a query can have. Strategies other than ``top`` (and an
explicit ``max_risk``) do not rank by key: there the gain of an exported candidate is its risk, as before.

Audit items (:mod:`auditor.audit`) are marked apart: the queue serves them at a fixed share whatever their gain.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.audit import AuditDesign
from auditor.select import Selection
from auditor.tradeoff import Tradeoff

#: Columns of :func:`review_pool_sql` besides those of the keyed candidates.
GAIN_COLUMNS = ("slot", "gain", "audit", "u")


def review_pool_sql(
    selection: Selection, model: str, t: Tradeoff, audit: AuditDesign, *, queries: str | None = None,
    query_ids: Sequence[str] | None = None,
) -> str:
    """The candidates a verdict could matter for: every exported one (``slot`` 1..N) and every other one with a
    positive gain, with ``gain``, ``audit`` (exported, not a confirmed true negative, and ``u < rate``) and ``u``."""
    n = int(selection.negatives)
    by_key = selection.strategy == "top" and selection.max_risk is None
    lam = float(t.lam)
    if by_key:
        gain = f"""CASE WHEN k.slot <= {n} THEN k.p * (coalesce(c.k_next, k.h) - (k.h - {lam!r}))
                        ELSE (1 - k.p) * greatest(0, k.h - c.k_min) END"""
    else:
        gain = f"CASE WHEN k.slot <= {n} THEN k.p ELSE 0 END"
    return f"""
        WITH k AS ({selection.ranked_sql(model, t, queries=queries, query_ids=query_ids)}),
        c AS (SELECT query_id, min(key) FILTER (WHERE slot <= {n}) AS k_min,
                     max(key) FILTER (WHERE slot > {n}) AS k_next
              FROM k GROUP BY query_id)
        SELECT * FROM (
            SELECT k.* EXCLUDE (slot), CASE WHEN k.slot <= {n} THEN k.slot END AS slot, {gain} AS gain,
                   k.slot <= {n} AND NOT k.tn AND u < {float(audit.rate)!r} AS audit
            FROM (SELECT *, {audit.u_sql()} AS u FROM k) k JOIN c USING (query_id)
        ) WHERE slot IS NOT NULL OR gain > 0"""
