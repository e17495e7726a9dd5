"""Exit thresholds: which confidence each early exit needs before an input leaves.

With thresholds ``t`` (one per exit), sample ``n`` leaves at the first exit
``e`` whose score passes, ``scores[e, n] >= t[e]``, and otherwise runs to the
final classifier. A NaN score (the exit is not evaluated on that sample's
path) never passes; a threshold of ``+inf`` turns the exit off.

Why exhaustive over a quantile grid: a network has few exits (up to ~4), so
every combination of ``levels`` per-exit quantile thresholds (plus "off") can
be scored exactly, vectorised over samples, in about a second. The answer is
then the true optimum over that grid for the data given, with no step size,
relaxation or starting point to tune; ``levels`` is the only knob.
:func:`solve_thresholds` and :func:`pareto_frontier` read the same
enumeration, and the tests check it against :func:`evaluate_thresholds` on
every grid point.

Give it **validation data only**: thresholds fitted on the test split make the
reported accuracy/cost trade-off optimistic. The caller decides which split
this is; nothing here can tell.

Example::

    >>> import numpy as np
    >>> problem = ExitProblem(
    ...     scores=np.array([[0.9, 0.2, 0.8, 0.1]]),
    ...     correct=np.array([[True, False, True, False], [True, True, True, False]]),
    ...     cost=np.array([[1.0] * 4, [3.0] * 4]),
    ... )
    >>> out = solve_thresholds(problem, max_drop=0.0)
    >>> out.thresholds, out.accuracy, out.mean_cost
    ((0.8,), 0.75, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from collabinfer.errors import ConfigError

MAX_COMBINATIONS = 5_000_000  # grid points scored at most; beyond, lower ``levels``
_TOL = 1e-9  # slack on constraints, so float summation order cannot flip feasibility


@dataclass(frozen=True, eq=False)
class ExitProblem:
    """Validation data for choosing thresholds, for ``E`` exits and ``N`` samples.

    ``scores`` ``(E, N)`` float: confidence of exit ``e`` on sample ``n``
    (higher = more confident); NaN = not evaluated there, so it cannot exit
    there. ``correct`` ``(E + 1, N)`` bool: whether the prediction of exit
    ``e`` is right; row ``E`` is the final classifier. ``cost`` ``(E + 1, N)``
    float: compute sample ``n`` spends if it leaves at exit ``e`` (row ``E``:
    runs to the end), heads tried before included. The arrays are stored as
    read-only copies.
    """

    scores: np.ndarray
    correct: np.ndarray
    cost: np.ndarray

    def __post_init__(self) -> None:
        scores, correct, cost = (np.asarray(a) for a in (self.scores, self.correct, self.cost))
        if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
            raise ConfigError(f"scores must have shape (E, N) with E, N >= 1, got {scores.shape}")
        if not np.issubdtype(scores.dtype, np.floating):
            raise ConfigError(
                f"scores must be floating point (NaN = not evaluated), got {scores.dtype}"
            )
        if np.isinf(scores).any():
            raise ConfigError("scores must be finite, or NaN where the exit is not evaluated")
        num_exits, n = scores.shape
        want = (num_exits + 1, n)
        if correct.shape != want:
            raise ConfigError(
                f"correct must have shape {want} (exits + final, N), got {correct.shape}"
            )
        if correct.dtype != np.bool_:
            raise ConfigError(f"correct must be a bool array, got {correct.dtype}")
        if cost.shape != want:
            raise ConfigError(f"cost must have shape {want} (exits + final, N), got {cost.shape}")
        if not (np.issubdtype(cost.dtype, np.floating) or np.issubdtype(cost.dtype, np.integer)):
            raise ConfigError(f"cost must be numeric, got {cost.dtype}")
        if not np.isfinite(cost).all() or (cost < 0).any():
            raise ConfigError("cost must be finite and >= 0")
        for name, arr, dtype in (
            ("scores", scores, np.float64),
            ("correct", correct, np.bool_),
            ("cost", cost, np.float64),
        ):
            stored = np.array(arr, dtype=dtype)
            stored.flags.writeable = False
            object.__setattr__(self, name, stored)

    @property
    def num_exits(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.scores.shape[1])


@dataclass(frozen=True)
class ExitOutcome:
    """What a set of thresholds does on an :class:`ExitProblem`.

    ``exit_fractions`` and ``exit_accuracy`` have ``E + 1`` entries, the last
    for the final classifier; ``exit_accuracy`` is NaN where nobody leaves.
    """

    thresholds: tuple[float, ...]
    accuracy: float
    mean_cost: float
    exit_fractions: tuple[float, ...]
    exit_accuracy: tuple[float, ...]


def evaluate_thresholds(problem: ExitProblem, thresholds: Sequence[float]) -> ExitOutcome:
    """Accuracy, mean cost and where samples leave under ``thresholds``."""
    t = tuple(float(x) for x in thresholds)
    if len(t) != problem.num_exits:
        raise ConfigError(f"need {problem.num_exits} thresholds (one per exit), got {len(t)}")
    if any(math.isnan(x) for x in t):
        raise ConfigError("thresholds must not be NaN; use +inf to turn an exit off")
    n = problem.num_samples
    running = np.ones(n, dtype=bool)
    fractions, accuracies = [], []
    total_correct, total_cost = 0, 0.0
    for e in range(problem.num_exits + 1):
        if e < problem.num_exits:
            # scores are finite, so +inf never passes; NaN >= t is False
            leave = running & (problem.scores[e] >= t[e])
            running &= ~leave
        else:
            leave = running
        k = int(leave.sum())
        hits = int(problem.correct[e][leave].sum())
        total_correct += hits
        total_cost += float(problem.cost[e][leave].sum())
        fractions.append(k / n)
        accuracies.append(hits / k if k else math.nan)
    return ExitOutcome(
        thresholds=t,
        accuracy=total_correct / n,
        mean_cost=total_cost / n,
        exit_fractions=tuple(fractions),
        exit_accuracy=tuple(accuracies),
    )


def threshold_grid(problem: ExitProblem, levels: int = 24) -> tuple[tuple[float, ...], ...]:
    """Candidate thresholds per exit: ascending quantiles of its non-NaN scores, then ``+inf``.

    The quantiles are ``i / levels`` for ``i = 0 .. levels - 1`` taken as
    actual score values (no interpolation), duplicates removed: the lowest lets
    every evaluated sample leave, ``+inf`` none. An exit never evaluated gets
    ``+inf`` only.
    """
    _check_levels(levels)
    grid = []
    for row in problem.scores:
        s = np.sort(row[~np.isnan(row)])
        picks = s[(np.arange(levels) * len(s)) // levels] if len(s) else s
        grid.append((*(float(x) for x in np.unique(picks)), math.inf))
    return tuple(grid)


def solve_thresholds(
    problem: ExitProblem,
    *,
    budget: float | None = None,
    max_drop: float | None = None,
    levels: int = 24,
) -> ExitOutcome:
    """The best thresholds on :func:`threshold_grid` under exactly one constraint.

    ``budget``: highest accuracy with ``mean_cost <= budget`` (ties: lower
    cost); ConfigError naming the cheapest achievable mean cost if none fits.
    ``max_drop``: lowest mean cost with ``accuracy >= reference - max_drop``,
    ``reference`` being the final classifier alone (every exit off), so it is
    always feasible (ties: higher accuracy). Remaining ties go to the first
    combination in grid order, so the result is deterministic. Constraints
    allow a relative slack of 1e-9 for float summation order.
    """
    n = problem.num_samples
    if budget is not None and max_drop is None:
        if not math.isfinite(budget):
            raise ConfigError(f"budget must be a finite number, got {budget!r}")
        grid = _enumerate(problem, levels)
        feasible = grid.total_cost <= budget * n + _TOL * max(1.0, abs(budget) * n)
        if not feasible.any():
            cheapest = float(grid.total_cost.min()) / n
            raise ConfigError(
                f"budget {budget:g} is below the cheapest mean cost on the threshold grid, "
                f"{cheapest:.6g}",
                budget=budget,
                min_mean_cost=cheapest,
            )
        # lexsort sorts by its last key first; stable, so grid order breaks what ties remain
        order = np.lexsort((grid.total_cost, -grid.correct))
    elif max_drop is not None and budget is None:
        if not (math.isfinite(max_drop) and 0.0 <= max_drop <= 1.0):
            raise ConfigError(f"max_drop must be in [0, 1], got {max_drop!r}")
        grid = _enumerate(problem, levels)
        reference = int(problem.correct[-1].sum())
        feasible = grid.correct + _TOL * n >= reference - max_drop * n
        order = np.lexsort((-grid.correct, grid.total_cost))
    else:
        raise ConfigError("give exactly one of budget= or max_drop=")
    best = order[feasible[order]][0]
    return evaluate_thresholds(problem, grid.thresholds(int(best)))


def pareto_frontier(problem: ExitProblem, levels: int = 24) -> list[ExitOutcome]:
    """Every non-dominated (mean cost, accuracy) point on the grid, cheapest first.

    Along the list both cost and accuracy strictly increase; of several
    combinations with the same point, the first in grid order stands for it.
    """
    grid = _enumerate(problem, levels)
    order = np.lexsort((-grid.correct, grid.total_cost))
    frontier, best_correct = [], -1
    for i in order:
        if grid.correct[i] > best_correct:
            best_correct = int(grid.correct[i])
            frontier.append(evaluate_thresholds(problem, grid.thresholds(int(i))))
    return frontier


@dataclass(frozen=True, eq=False)
class _Grid:
    """Correct count and total cost of every grid combination, in grid order."""

    candidates: tuple[tuple[float, ...], ...]
    correct: np.ndarray  # (M,) int64
    total_cost: np.ndarray  # (M,) float64

    def thresholds(self, index: int) -> tuple[float, ...]:
        picks = np.unravel_index(index, [len(c) for c in self.candidates])
        return tuple(c[int(j)] for c, j in zip(self.candidates, picks, strict=True))


def _enumerate(problem: ExitProblem, levels: int) -> _Grid:
    """Score every combination of :func:`threshold_grid`, depth-first over exits.

    Each node carries the indices of samples still running and the correct
    count and cost of those already gone. A sample's *rank* at exit ``e`` is
    how many candidates its score passes, so it leaves at candidate ``j`` iff
    ``j < rank``. That turns the last exit into one ``bincount`` over ranks,
    covering all its candidates at once; the tree above it has at most
    ``(levels + 1) ** (E - 1)`` nodes.
    """
    candidates = threshold_grid(problem, levels)
    sizes = [len(c) for c in candidates]
    total = math.prod(sizes)
    if total > MAX_COMBINATIONS:
        raise ConfigError(
            f"{total} threshold combinations exceed {MAX_COMBINATIONS}; lower levels",
            levels=levels,
            exits=problem.num_exits,
        )
    ranks = []
    for row, cand in zip(problem.scores, candidates, strict=True):
        r = np.searchsorted(np.asarray(cand[:-1]), row, side="right")
        r[np.isnan(row)] = 0  # searchsorted puts NaN past every candidate
        ranks.append(r)
    last = problem.num_exits - 1
    final_correct, final_cost = problem.correct[-1], problem.cost[-1]
    # gain from leaving at the last exit instead of running to the end
    gain_correct = problem.correct[last].astype(np.int64) - final_correct.astype(np.int64)
    gain_cost = problem.cost[last] - final_cost
    strides = [math.prod(sizes[e + 1 :]) for e in range(len(sizes))]
    out_correct = np.empty(total, dtype=np.int64)
    out_cost = np.empty(total, dtype=np.float64)

    def visit(e: int, running: np.ndarray, done_correct: int, done_cost: float, at: int) -> None:
        if e == last:
            k = sizes[e]
            r = ranks[e][running]
            # leaves at candidate j iff j < rank: sum the gains of ranks > j
            by_rank_c = np.bincount(r, weights=gain_correct[running], minlength=k)
            by_rank_t = np.bincount(r, weights=gain_cost[running], minlength=k)
            left_c = np.append(np.cumsum(by_rank_c[::-1])[::-1][1:], 0.0)
            left_t = np.append(np.cumsum(by_rank_t[::-1])[::-1][1:], 0.0)
            base_c = done_correct + int(final_correct[running].sum())
            base_t = done_cost + float(final_cost[running].sum())
            out_correct[at : at + k] = base_c + np.rint(left_c).astype(np.int64)
            out_cost[at : at + k] = base_t + left_t
            return
        r = ranks[e][running]
        for j in range(sizes[e]):
            leave = r > j
            gone = running[leave]
            visit(
                e + 1,
                running[~leave],
                done_correct + int(problem.correct[e][gone].sum()),
                done_cost + float(problem.cost[e][gone].sum()),
                at + j * strides[e],
            )

    visit(0, np.arange(problem.num_samples), 0, 0.0, 0)
    return _Grid(candidates, out_correct, out_cost)


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"levels must be an int >= 1, got {levels!r}")
