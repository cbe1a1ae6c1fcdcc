"""The sweep's progress bar: cells done of all, time so far and an estimate of the time left
(rich's own estimate from the pace of the cells finished so far), on stderr. On a terminal it
redraws in place under the per-cell lines; elsewhere (CI logs, pipes) it stays silent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def sweep_progress(console: Console, total: int) -> Iterator[Callable[[], None]]:
    """A bar over `total` cells on `console`; yields the function to call as each finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("sweep", total=total)
        yield lambda: bar.advance(task)
