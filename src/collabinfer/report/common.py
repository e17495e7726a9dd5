"""What every report shares: matplotlib on demand, saving a figure, readable log
axes, markdown tables and number formatting.

Why one place: three reports each had their own copy of the matplotlib import,
the save call and the ``None``-as-dash formatting, and the copies drifted (one
forgot the install hint, one printed overlapping minor labels on a log axis).

Log axes: matplotlib's default labels a log axis that spans less than about a
decade at its minor ticks too, in scientific notation, and they collide
(``3×10¹`` printed over ``2.8×10¹``). :func:`log_axis` labels major ticks only,
as plain numbers at 1-2-5 steps (sparser over many decades, denser over a
narrow range), and keeps unlabelled minor ticks for the grid.

    >>> one_two_five(14, 760)
    [20.0, 50.0, 100.0, 200.0, 500.0]
    >>> one_two_five(1, 12000)  # 1-2-5 would be 13 labels: decades
    [1.0, 10.0, 100.0, 1000.0, 10000.0]
    >>> [plain_number(v) for v in (0.5, 2.0, 30.0, 12000.0)]
    ['0.5', '2', '30', '12,000']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from collabinfer.errors import ConfigError

__all__ = [
    "DASH",
    "cell",
    "fixed",
    "log_axis",
    "markdown_table",
    "one_two_five",
    "pct",
    "plain_number",
    "pyplot",
    "save_figure",
]

DASH = "—"  # a value the result file does not have (never shown as 0)
DPI = 120


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, imported on first use."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ConfigError(
            "the report's plots need matplotlib: pip install matplotlib "
            "(or pip install collabinfer, which depends on it)"
        ) from exc
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG at :data:`DPI` and close ``fig`` (figures are not reused)."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


# ---------------------------------------------------------------- log axes

# Mantissas per decade, sparsest first; one_two_five picks one per axis.
_MANTISSAS = (
    (1.0,),
    (1.0, 2.0, 5.0),
    (1.0, 2.0, 3.0, 5.0),
    (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
)


def _ticks(lo: float, hi: float, mantissas: Sequence[float], every: int = 1) -> list[float]:
    out = []
    for d in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        if d % every:
            continue
        for m in mantissas:
            v = float(f"{m * 10.0**d:.12g}")  # 3 * 10**-1 is 0.30000000000000004
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
    return out


def _linear(lo: float, hi: float) -> list[float]:
    """2 to 5 ticks at a 1, 2, 2.5 or 5 x 10^k step: for a range too narrow for decades."""
    for k in range(math.floor(math.log10(hi - lo)) + 1, -13, -1):
        for m in (5.0, 2.5, 2.0, 1.0):
            step = m * 10.0**k
            first = math.ceil(lo / step)
            ticks = [float(f"{i * step:.12g}") for i in range(first, math.floor(hi / step) + 1)]
            if len(ticks) >= 2:
                return ticks
    return [lo, hi]


def one_two_five(vmin: float, vmax: float, min_ticks: int = 3, max_ticks: int = 8) -> list[float]:
    """Major ticks of a log axis over ``[vmin, vmax]`` at 1-2-5 steps, between
    ``min_ticks`` and ``max_ticks`` of them where the range allows: decades only
    (or every n-th decade) when 1-2-5 would be too many, 1-2-3-5 or finer when
    too few, and linear steps over a range narrower than those can mark."""
    lo, hi = sorted((float(vmin), float(vmax)))
    if not hi > 0 or not math.isfinite(hi):
        return []
    lo = max(lo, hi * 1e-12)  # a log axis has nothing at or below 0
    if lo == hi:
        return [lo]
    ticks = _ticks(lo, hi, _MANTISSAS[1])
    every = 1
    while len(ticks) > max_ticks:
        ticks = _ticks(lo, hi, _MANTISSAS[0], every)
        every += 1
    for mantissas in _MANTISSAS[2:]:
        if len(ticks) >= min_ticks:
            break
        denser = _ticks(lo, hi, mantissas)
        if len(denser) <= max_ticks:
            ticks = denser
    return ticks if len(ticks) >= 2 else _linear(lo, hi)


@cache
def _locator_type() -> type:
    """A matplotlib Locator calling :func:`one_two_five` (built on first use: lazy import)."""
    from matplotlib.ticker import Locator

    class OneTwoFiveLocator(Locator):
        def __call__(self) -> Any:
            if self.axis is None:  # not attached to an axis yet: nothing to mark
                return np.asarray([])
            lo, hi = self.axis.get_view_interval()
            return self.tick_values(lo, hi)

        def tick_values(self, vmin: float, vmax: float) -> Any:
            return np.asarray(one_two_five(vmin, vmax))

    return OneTwoFiveLocator


def plain_number(value: float, pos: object = None) -> str:
    """A tick label without exponents: ``0.05``, ``2``, ``30``, ``1.5``, ``12,000``."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.6g}"


def log_axis(ax: Any, which: str = "x") -> None:
    """Make ``which`` (``"x"`` or ``"y"``) of ``ax`` a readable log axis (module docstring):
    major ticks from :func:`one_two_five` labelled by :func:`plain_number`, minor ticks
    at 2..9 x 10^k without labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if which not in ("x", "y"):
        raise ValueError(f"which must be 'x' or 'y', not {which!r}")  # a caller's bug
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(_locator_type()())
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    axis.set_minor_formatter(NullFormatter())


# ---------------------------------------------------------------- markdown


def cell(text: object) -> str:
    """``text`` safe inside a markdown table cell (no column breaks, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A GitHub markdown table, one string per line; cells are escaped with :func:`cell`."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage (``0.9331`` -> ``93.31%``); :data:`DASH` for None."""
    return DASH if value is None else f"{value:.{digits}%}"


def fixed(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    """``value`` formatted by ``spec`` with ``unit`` after it; :data:`DASH` for None."""
    return DASH if value is None else f"{value:{spec}}{unit}"
