"""The one progress callback: ``progress(task, done, total, stats)``.

Long work (training, measuring thousands of inputs, a Table 1 row) reports
through it; the CLI turns the calls into progress bars, tests into lists.
``task`` names the bar ("train fmnist-resnet", "EC"), ``done`` of ``total``
units are finished, and ``stats`` carries numbers worth showing beside it
(``{"loss": 0.31, "epoch": 2}``; empty when there are none). Why one
signature: a recipe, an experiment and a front end then need no adapters
between them.

    >>> seen = []
    >>> report(lambda *a: seen.append(a), "EC", 3, 10)
    >>> seen
    [('EC', 3, 10, mappingproxy({}))]
    >>> report(None, "EC", 4, 10)  # nobody listens: nothing happens
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

__all__ = ["NO_STATS", "ProgressFn", "report"]

ProgressFn = Callable[[str, int, int, Mapping[str, float]], None]

NO_STATS: Mapping[str, float] = MappingProxyType({})


def report(
    progress: ProgressFn | None,
    task: str,
    done: int,
    total: int,
    stats: Mapping[str, float] = NO_STATS,
) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(task, done, total, stats)
