"""tqdm bars driven by the library's `progress(done, total)` callbacks (the app drives st.progress the same way)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

#: `auditor -q`: no progress bars anywhere (set once by auditor.cli.main)
quiet = False


@contextlib.contextmanager
def progress_bar(desc: str, disable: bool = False, **tqdm_args: Any) -> Iterator[Callable[[int, int], None]]:
    """A callback that moves one tqdm bar to (done, total); closed when the block ends."""
    from tqdm import tqdm

    with tqdm(desc=desc, disable=disable or quiet, **tqdm_args) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        yield update
