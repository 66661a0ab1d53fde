"""Terminal output for the CLI: progress bars on stderr, tables on stdout (rich)."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 160  # columns for tables written to a file or pipe, at least
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


PLAIN_EVERY_S = 30.0  # without a terminal: a progress line at least this often while work advances
PLAIN_EVERY_SHARE = 0.1  # ... and at every tenth of the work


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A bar with count, rate, elapsed time and ETA on stderr; yields ``update(completed, total)``.

    The bar appears at the first update, so input errors found before the work starts print nothing
    else; on an error the bar is removed, so the error stays the only line the user sees. When stderr is
    not a terminal (a log file, a pipe) plain lines are printed instead: at every tenth of the work, at
    least every 30 s while it advances, and at the end.
    """
    if not stderr.is_terminal:
        yield _plain_progress(description, unit)
        return
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


def _plain_progress(description: str, unit: str) -> Callable[[int, int], None]:
    """``update(completed, total)`` that prints ``rank x: 128/256 img (50%), 12.3 img/s, 10 s, eta 10 s`` lines."""
    started = time.monotonic()
    last = {"time": started, "share": 0.0}

    def update(completed: int, total: int) -> None:
        now = time.monotonic()
        share = completed / total if total else 1.0
        due = (completed >= total or share - last["share"] >= PLAIN_EVERY_SHARE - 1e-9
               or now - last["time"] >= PLAIN_EVERY_S)
        if completed <= 0 or not due:
            return
        last.update(time=now, share=share)
        elapsed = now - started
        rate = completed / elapsed if elapsed > 0 else 0.0
        eta = f", eta {(total - completed) / rate:.0f} s" if rate > 0 and completed < total else ""
        stderr.print(f"{description}: {completed}/{total} {unit} ({100 * share:.0f}%), {rate:,.1f} {unit}/s, "
                     f"{elapsed:.0f} s{eta}", markup=False, highlight=False, soft_wrap=True)

    return update


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                console: Console = stdout) -> None:
    table = Table(title=title)
    names = max((len(str(row[0])) for row in rows), default=0)
    for index, column in enumerate(columns):  # the first column (names) is kept whole, up to 60 characters a line
        table.add_column(column, justify="left" if index == 0 else "right",
                         **({"min_width": min(names, 60), "overflow": "fold"} if index == 0 else {}))
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    if not console.is_terminal:  # a file or pipe: as wide as the table needs, so that nothing is cut short
        needed = Console(file=console.file, width=10_000).measure(table).maximum
        console = Console(file=console.file, width=max(PIPED_WIDTH, needed))
    console.print(table)


NOISE_MARGIN = 1.1  # a speedup above its cost-model bound x this is machine noise, not pruning


def beyond_bound(ratio: float | None, bound: float | None) -> bool:
    """A measured speedup more than 10% above its cost-model bound: noise, not pruning (False without either)."""
    return ratio is not None and bound is not None and ratio > bound * NOISE_MARGIN


def speedup_text(ratio: float | None, bound: float | None) -> str:
    """``1.23x``; ``2.62x (noise)`` when it is ``beyond_bound`` (what was measured is shown, and said to be
    noise); ``-`` without a ratio."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" + (" (noise)" if beyond_bound(ratio, bound) else "")
