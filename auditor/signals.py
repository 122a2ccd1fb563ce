"""Ctrl-C and SIGTERM stop long store work cleanly: the transaction rolls back, temporary files go, nothing stays
half-written.

DuckDB turns an exception raised by a signal handler during a query into RuntimeError("Query interrupted"), and its
own Ctrl-C check missed about half the signals in our trials (DuckDB 2.0), so the handler also calls
``con.interrupt()`` and, once a signal arrived, whatever the block raises leaves it as KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import duckdb


class SignalGuard:
    """Until :meth:`hold`, SIGINT and SIGTERM raise KeyboardInterrupt; after it they wait until the block has ended."""

    def __init__(self, con: duckdb.DuckDBPyConnection | None) -> None:
        self.con = con
        self.fired: list[int] = []
        self.holding = False

    def hold(self) -> None:
        """The work is committed: from now on a signal is delivered only once cleanup is done."""
        self.holding = True

    def handle(self, signum: int, frame: Any) -> None:
        self.fired.append(signum)
        if self.holding:
            return
        if self.con is not None:
            self.con.interrupt()
        raise KeyboardInterrupt(f"stopped by signal {signum}")


@contextlib.contextmanager
def interrupt_on_signals(con: duckdb.DuckDBPyConnection | None = None) -> Iterator[SignalGuard]:
    """While the block runs, SIGTERM (``kill``, a scheduler's timeout) behaves like Ctrl-C and both stop ``con``'s
    running query at once, so the block unwinds (rollback, cleanup) as on Ctrl-C. A signal that arrives after
    ``hold()`` is re-delivered to the previous handler when the block ends; a signal the process ignores stays
    ignored. Handlers can only be set on the main thread; elsewhere (the app's script threads) nothing changes.
    """
    guard = SignalGuard(con)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if handler is not signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, guard.handle)
    try:
        yield guard
    except BaseException as exc:
        if guard.fired and not guard.holding and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(f"stopped by signal {guard.fired[0]}") from exc
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if guard.fired and guard.holding:
            signal.raise_signal(guard.fired[0])
