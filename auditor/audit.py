"""The audit sample: a random share of the export, reviewed so that its false-negative rate can be estimated.

Every candidate carries a permanent uniform number ``u`` (a seeded hash of its ids, the same in every process). An
exported, unreviewed candidate with ``u < rate`` is an *audit item*: the default review queue serves them among its
other items (every ``ReviewConfig.audit_every``-th), in the order of ``u``. Whether a candidate is audited therefore
depends on nothing but its ids, whatever the risk model, the verdicts or the queue did: the reviewed candidates with
``u < rate`` are a random sample of whatever population they belong to, which is what lets
:mod:`auditor.estimate` state an interval for the false negatives left in the export.

The rate is fixed once per store (``meta``), so that the sample stays one design while the export changes: about
``ReviewConfig.audit_sample`` items of the export as it was first reviewed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import duckdb

from auditor.config import ReviewConfig
from auditor.select import uniform_sql
from auditor.store import remember

_DESIGN_KEY = "audit_design"


@dataclass(frozen=True)
class AuditDesign:
    rate: float  #: the probability with which any exported candidate is an audit item
    seed: int
    planned: int  #: audit items the rate was set for (ReviewConfig.audit_sample)
    export_size: int  #: exported negatives when the rate was set

    def u_sql(self) -> str:
        """SQL of each candidate's permanent uniform number (columns query_id, doc_id in scope)."""
        return uniform_sql(self.seed, "\x1faudit")


def design(con: duckdb.DuckDBPyConnection, config: str, model: str, negatives: int,
           cfg: ReviewConfig = ReviewConfig()) -> AuditDesign:
    """The store's audit design, set (and saved, where the store is writable) at its first use: the rate that
    makes about ``cfg.audit_sample`` audit items of an export of ``negatives`` per banded query."""
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [_DESIGN_KEY]).fetchall()
    if rows:
        return AuditDesign(**json.loads(rows[0][0]))
    return new_design(con, config, model, negatives, cfg)


def new_design(con: duckdb.DuckDBPyConnection, config: str, model: str, negatives: int,
               cfg: ReviewConfig = ReviewConfig()) -> AuditDesign:
    """Start a new audit sample (``cfg.seed`` draws it): the earlier audits stop counting as the sample only where
    their random numbers under the new seed are above the rate, so use it on a store without verdicts (the
    coverage benchmark draws one design per seed)."""
    queries = con.execute("SELECT count(DISTINCT query_id) FROM bands WHERE config = ? AND model = ?",
                          [config, model]).fetchall()[0][0]
    size = int(queries) * int(negatives)
    made = AuditDesign(rate=min(1.0, cfg.audit_sample / size) if size else 1.0, seed=int(cfg.seed),
                       planned=int(cfg.audit_sample), export_size=size)
    remember(con, _DESIGN_KEY, json.dumps(asdict(made)))  # read-only: the same numbers are made again next time
    return made
