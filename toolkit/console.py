"""Terminal output for the CLI: progress bars on stderr, tables on stdout (rich)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 160  # columns for tables written to a file or pipe, so that none is cut short
stdout = Console()
stderr = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``412.3 img/s``."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{speed:,.1f} {self.unit}/s")


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A bar with count, rate, elapsed time and ETA on stderr; yields ``update(completed, total)``.

    The bar appears at the first update, so input errors found before the work starts print nothing
    else; on an error the bar is removed, so the error stays the only line the user sees.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    progress = Progress(*columns, console=stderr)
    task = None

    def update(completed: int, total: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(description, total=total)
        progress.update(task, completed=completed, total=total)

    try:
        yield update
    except BaseException:
        progress.live.transient = True
        raise
    finally:
        if task is not None:
            progress.stop()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                console: Console = stdout) -> None:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    if not console.is_terminal:
        console = Console(file=console.file, width=PIPED_WIDTH)
    console.print(table)
