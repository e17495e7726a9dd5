"""What every command shares: the console, progress bars, tables and clean errors.

Off a terminal (a log, CI) rich would cut every table to 80 columns
("para…", "accu…"); the console is then wide enough that tables are sized to
their content instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from collabinfer.errors import CollabInferError
from collabinfer.progress import ProgressFn

OFF_TTY_WIDTH = 240
"""Console width when not writing to a terminal: wider than any table we print."""

FLAGS = frozenset({"reused"})
"""Stats that are a yes (1.0) when present: shown as the word alone ("reused")."""

console = Console()
if not console.is_terminal:
    console.width = OFF_TTY_WIDTH

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="zoo model name (see `collabinfer models`)")
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="folder with the Fashion-MNIST IDX files")
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="checkpoint cache (default ~/.cache/collabinfer)")
]


def fail(exc: CollabInferError) -> typer.Exit:
    """Print the error in one line (exit code 2): the user's to fix, never a traceback."""
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


@contextmanager
def progress_bars(min_interval_s: float = 0.1) -> Iterator[ProgressFn]:
    """A :data:`~collabinfer.progress.ProgressFn` drawing one bar per task name.

    ``stats`` appear beside the bar (loss, epoch); a call whose stats hold
    ``val_acc`` also prints a line, so a training log keeps its epochs. Bars
    redraw at most every ``min_interval_s`` (a row of 10,000 inputs would
    otherwise spend its time drawing).
    """
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}
    last: dict[str, float] = {}

    def update(task: str, done: int, total: int, stats: Mapping[str, float]) -> None:
        if task not in tasks:
            tasks[task] = bars.add_task(task, total=total, info="")
            last[task] = 0.0
        if "val_acc" in stats:
            where = f" epoch {stats['epoch']:.0f}" if "epoch" in stats else ""
            bars.console.print(f"  {task}:{where} val acc {stats['val_acc']:.2%}")
        now = time.monotonic()
        if done < total and now - last[task] < min_interval_s:
            return
        last[task] = now
        info = " ".join(
            k if k in FLAGS else f"{k} {v:.3g}" for k, v in stats.items() if k != "val_acc"
        )
        bars.update(tasks[task], completed=done, total=total, info=info)

    with bars:
        yield update


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def wrote(paths: Sequence[Path], t0: float) -> None:
    console.print("wrote " + ", ".join(str(p) for p in paths))
    console.print(f"done in {time.perf_counter() - t0:.0f} s")
