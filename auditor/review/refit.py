"""Risk refits while people review: started by verdicts, run by the store's background owner.

The app calls :meth:`BackgroundRefit.notify` after each verdict; the annotator never waits for a fit. One fit runs at
a time and, in the same job, rebuilds the review queue's pages it made stale (:func:`auditor.review.cache.refresh`),
so the next item is drawn from the new fit without a rebuild on the annotator's request. Fits are spaced so that
this work takes at most ``refit_max_share`` of the time (a due fit that must wait starts by itself when it may).
"""

from __future__ import annotations

import logging
import math
import threading
import time

import duckdb

from auditor.config import RiskConfig
from auditor.risk import current_fit, fit
from auditor.store import SharedStore

from .background import BackgroundWork
from .cache import refresh

log = logging.getLogger(__name__)


class BackgroundRefit:
    """Refits a store's risk in the background once ``refit_every`` verdicts arrived since the fit in force."""

    def __init__(self, store: SharedStore, cfg: RiskConfig = RiskConfig()) -> None:
        if not 0 < cfg.refit_max_share <= 1:
            raise ValueError(f"refit_max_share must be in (0, 1], got {cfg.refit_max_share}")
        self.work, self.cfg = BackgroundWork.of(store), cfg
        self._state = threading.Lock()
        self._not_before = 0.0  #: time.monotonic() before which no fit starts (the share rule)
        self._deferred = False
        self.fits = 0  #: fits finished by this object (for tests and the app's status line)
        self.last_seconds = 0.0  #: how long the last fit and its queue rebuild took
        self.last_error: str | None = None

    def due(self, con: duckdb.DuckDBPyConnection, model: str) -> bool:
        """Enough new verdicts since the fit in force: ``refit_every``, or ``refit_growth`` of the labels it saw."""
        fit_row = current_fit(con, model)
        seen = fit_row["last_event_id"] if fit_row else 0
        labels = fit_row["n_labels"] if fit_row else 0
        new = con.execute(
            "SELECT count(*) FROM verdicts WHERE event_id > ? AND verdict <> 'undo'", [seen]
        ).fetchall()[0][0]
        return new >= max(self.cfg.refit_every, math.ceil(self.cfg.refit_growth * labels))

    def notify(self, model: str, wait: bool = False) -> bool:
        """Start a refit of ``model`` if one is due, none is running and the share rule allows it; True when one was
        started. A due refit the share rule holds back is started later by itself."""
        if not self.due(self.work.store.cursor(), model):
            return False
        with self._state:
            delay = self._not_before - time.monotonic()
            if delay > 0:
                if not self._deferred:
                    self._deferred = True
                    self.work.later(delay, ("refit", model), lambda cur: self._fit(cur, model, deferred=True))
                return False
        running = self.work.running(("refit", model))
        if running:
            return False
        future = self.work.submit(("refit", model), lambda cur: self._fit(cur, model))
        if future is None:
            return False
        if wait:
            future.exception()
        return True

    def wait(self) -> None:
        """Wait for the refits submitted so far (a deferred one is dropped only when the owner closes)."""
        self.work.wait()

    def _fit(self, cur: duckdb.DuckDBPyConnection, model: str, deferred: bool = False) -> None:
        if deferred:
            with self._state:
                self._deferred = False
            if not self.due(cur, model):
                return
        started = time.monotonic()
        try:
            fit(cur, model, self.cfg)
            refresh(cur)
            self.fits += 1
            self.last_error = None
        except Exception as exc:  # noqa: BLE001 - a failed background fit leaves the old risk in force
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("background risk refit failed: %s", self.last_error)
        finally:
            ended = time.monotonic()
            self.last_seconds = ended - started
            with self._state:
                self._not_before = ended + self.last_seconds * (1 / self.cfg.refit_max_share - 1)
