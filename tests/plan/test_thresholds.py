"""The threshold solver is checked against brute force over the same grid."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from collabinfer.errors import ConfigError
from collabinfer.plan.thresholds import (
    ExitOutcome,
    ExitProblem,
    evaluate_thresholds,
    pareto_frontier,
    solve_thresholds,
    threshold_grid,
)


def _problem(
    num_exits: int, n: int, seed: int, nan_rate: float = 0.15, flat_cost: bool = False
) -> ExitProblem:
    """Exits that are more often right when confident, cost growing with depth.

    Scores are rounded to 2 decimals so ties (``>=`` on equal scores) occur;
    ``flat_cost`` makes cost depend on the exit only, so many outcomes tie on cost.
    """
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((num_exits, n)), 2)
    correct = np.empty((num_exits + 1, n), dtype=bool)
    correct[:num_exits] = rng.random((num_exits, n)) < 0.3 + 0.6 * scores
    correct[num_exits] = rng.random(n) < 0.85
    scores[rng.random((num_exits, n)) < nan_rate] = np.nan
    cost = np.cumsum(rng.uniform(0.5, 1.5, size=(num_exits + 1, n)), axis=0)
    if flat_cost:
        cost = np.repeat(np.arange(1.0, num_exits + 2)[:, None], n, axis=1)
    return ExitProblem(scores, correct, cost)


def _all_outcomes(problem: ExitProblem, levels: int) -> list[ExitOutcome]:
    grid = threshold_grid(problem, levels)
    return [evaluate_thresholds(problem, t) for t in itertools.product(*grid)]


def _cases() -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(123)
    return [
        (int(rng.integers(1, 4)), int(rng.integers(50, 201)), int(rng.integers(2, 7)), seed)
        for seed in range(15)
    ]


@pytest.mark.parametrize(("num_exits", "n", "levels", "seed"), _cases())
def test_budget_matches_brute_force(num_exits: int, n: int, levels: int, seed: int) -> None:
    problem = _problem(num_exits, n, seed)
    outcomes = _all_outcomes(problem, levels)
    costs = [o.mean_cost for o in outcomes]
    rng = np.random.default_rng(seed)
    for budget in rng.uniform(min(costs), max(costs), size=4):
        feasible = [o for o in outcomes if o.mean_cost <= budget]
        best_acc = max(o.accuracy for o in feasible)
        best_cost = min(o.mean_cost for o in feasible if o.accuracy == best_acc)
        got = solve_thresholds(problem, budget=float(budget), levels=levels)
        assert got.accuracy == best_acc
        assert got.mean_cost == pytest.approx(best_cost, rel=1e-12)
        assert got.mean_cost <= budget
        assert got == evaluate_thresholds(problem, got.thresholds)


@pytest.mark.parametrize(("num_exits", "n", "levels", "seed"), _cases())
def test_max_drop_matches_brute_force(num_exits: int, n: int, levels: int, seed: int) -> None:
    problem = _problem(num_exits, n, seed)
    outcomes = _all_outcomes(problem, levels)
    reference = float(problem.correct[-1].mean())
    for max_drop in (0.0, 0.01, 0.05, 0.2):
        # brute force in sample counts, so the float rounding of `reference - max_drop`
        # cannot decide feasibility differently from the solver's documented slack
        need = reference * n - max_drop * n - 1e-6
        feasible = [o for o in outcomes if o.accuracy * n >= need]
        best_cost = min(o.mean_cost for o in feasible)
        best_acc = max(o.accuracy for o in feasible if o.mean_cost == best_cost)
        got = solve_thresholds(problem, max_drop=max_drop, levels=levels)
        assert got.mean_cost == pytest.approx(best_cost, rel=1e-12)
        assert got.accuracy == pytest.approx(best_acc, abs=1e-12)
        assert got.accuracy >= reference - max_drop - 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_ties_are_broken_as_documented(seed: int) -> None:
    # costs depend on the exit only: many grid points share a cost or an accuracy
    problem = _problem(2, 60, seed, flat_cost=True)
    outcomes = _all_outcomes(problem, 4)
    reference = float(problem.correct[-1].mean())
    feasible = [o for o in outcomes if o.accuracy >= reference - 0.05 - 1e-12]
    cost = min(o.mean_cost for o in feasible)
    got = solve_thresholds(problem, max_drop=0.05, levels=4)
    assert got.mean_cost == cost
    assert got.accuracy == max(o.accuracy for o in feasible if o.mean_cost == cost)
    budget = float(np.median([o.mean_cost for o in outcomes]))
    feasible = [o for o in outcomes if o.mean_cost <= budget]
    acc = max(o.accuracy for o in feasible)
    got = solve_thresholds(problem, budget=budget, levels=4)
    assert got.accuracy == acc
    assert got.mean_cost == min(o.mean_cost for o in feasible if o.accuracy == acc)


def test_max_drop_prefers_higher_accuracy_at_equal_cost() -> None:
    # both exits cost 1 and see every sample; exit 0 is always wrong, exit 1 always right.
    # "all leave at exit 0" comes first in grid order and costs the same as "all at exit 1".
    n = 4
    problem = ExitProblem(
        scores=np.full((2, n), 0.5),
        correct=np.stack([np.zeros(n, bool), np.ones(n, bool), np.ones(n, bool)]),
        cost=np.stack([np.ones(n), np.ones(n), 2 * np.ones(n)]),
    )
    got = solve_thresholds(problem, max_drop=1.0, levels=2)
    assert (got.mean_cost, got.accuracy) == (1.0, 1.0)
    assert got.thresholds == (math.inf, 0.5)


def test_max_drop_zero_keeps_reference_accuracy_and_can_save_cost() -> None:
    problem = _problem(3, 2_000, seed=7, nan_rate=0.0)
    reference = float(problem.correct[-1].mean())
    got = solve_thresholds(problem, max_drop=0.0, levels=16)
    off = evaluate_thresholds(problem, [math.inf] * 3)
    assert off.accuracy == reference
    assert got.accuracy >= reference
    assert got.mean_cost <= off.mean_cost


def test_larger_budget_never_lowers_accuracy() -> None:
    problem = _problem(2, 400, seed=11)
    cheapest = min(o.mean_cost for o in _all_outcomes(problem, 8))
    accuracies = [
        solve_thresholds(problem, budget=b, levels=8).accuracy
        for b in np.linspace(cheapest, problem.cost[-1].mean() + 0.1, 25)
    ]
    assert accuracies == sorted(accuracies)
    assert accuracies[-1] > accuracies[0]


def test_infeasible_budget_names_the_cheapest_cost() -> None:
    problem = _problem(2, 100, seed=5)
    cheapest = min(o.mean_cost for o in _all_outcomes(problem, 4))
    with pytest.raises(ConfigError, match="cheapest mean cost") as info:
        solve_thresholds(problem, budget=cheapest * 0.99, levels=4)
    assert info.value.context["min_mean_cost"] == pytest.approx(cheapest)
    # the cheapest point itself is feasible
    assert solve_thresholds(problem, budget=cheapest, levels=4).mean_cost == pytest.approx(cheapest)


def test_nan_scores_never_exit() -> None:
    problem = _problem(2, 300, seed=3, nan_rate=0.4)
    got = evaluate_thresholds(problem, [-math.inf, -math.inf])
    evaluated = ~np.isnan(problem.scores)
    assert got.exit_fractions[0] == pytest.approx(evaluated[0].mean())
    # exit 1 takes exactly those it evaluates among the ones exit 0 skipped
    assert got.exit_fractions[1] == pytest.approx((~evaluated[0] & evaluated[1]).mean())


def test_solver_cannot_use_an_exit_where_it_is_not_evaluated() -> None:
    # exit 0 is free and always right, but only evaluated on the first half
    n = 100
    scores = np.where(np.arange(n) < n // 2, 0.9, np.nan)[None, :]
    correct = np.stack([np.ones(n, bool), np.arange(n) % 10 != 0])
    cost = np.stack([np.zeros(n), np.ones(n)])
    got = solve_thresholds(ExitProblem(scores, correct, cost), max_drop=0.0, levels=4)
    assert got.exit_fractions == (0.5, 0.5)
    assert got.mean_cost == 0.5
    assert threshold_grid(ExitProblem(np.full((1, n), np.nan), correct, cost)) == ((math.inf,),)


def test_evaluate_thresholds_hand_example() -> None:
    problem = ExitProblem(
        scores=np.array([[0.9, 0.2, np.nan, 0.5], [0.1, 0.8, 0.7, 0.3]]),
        correct=np.array(
            [[True, True, True, False], [True, False, True, True], [False, True, True, True]]
        ),
        cost=np.array([[1.0] * 4, [2.0] * 4, [4.0] * 4]),
    )
    got = evaluate_thresholds(problem, [0.5, 0.75])
    # sample 0 and 3 leave at exit 0 (0.5 >= 0.5), sample 1 at exit 1, sample 2 runs to the end
    assert got.exit_fractions == (0.5, 0.25, 0.25)
    assert got.exit_accuracy == (0.5, 0.0, 1.0)
    assert got.accuracy == 0.5
    assert got.mean_cost == (1 + 1 + 2 + 4) / 4
    off = evaluate_thresholds(problem, [math.inf, math.inf])
    assert math.isnan(off.exit_accuracy[0]) and off.exit_fractions == (0.0, 0.0, 1.0)


def test_pareto_frontier_is_non_dominated_and_contains_the_solutions() -> None:
    problem = _problem(3, 150, seed=9)
    levels = 5
    frontier = pareto_frontier(problem, levels)
    points = [(o.mean_cost, o.accuracy) for o in frontier]
    assert points == sorted(points)
    for (c0, a0), (c1, a1) in itertools.pairwise(points):
        assert c1 > c0 and a1 > a0
    # no grid point dominates a frontier point
    for o in _all_outcomes(problem, levels):
        for c, a in points:
            assert not (o.mean_cost < c - 1e-12 and o.accuracy >= a)
            assert not (o.mean_cost <= c + 1e-12 and o.accuracy > a)

    def on_frontier(o: ExitOutcome) -> bool:
        return any(abs(o.mean_cost - c) < 1e-9 and o.accuracy == a for c, a in points)

    for budget in np.linspace(points[0][0], points[-1][0], 7):
        assert on_frontier(solve_thresholds(problem, budget=float(budget), levels=levels))
    for max_drop in (0.0, 0.02, 0.1):
        assert on_frontier(solve_thresholds(problem, max_drop=max_drop, levels=levels))


def test_threshold_grid_is_sorted_unique_quantiles_then_inf() -> None:
    problem = _problem(2, 500, seed=2)
    for row, cand in zip(problem.scores, threshold_grid(problem, 10), strict=True):
        finite = cand[:-1]
        assert cand[-1] == math.inf
        assert list(finite) == sorted(set(finite))
        assert 1 <= len(finite) <= 10
        assert set(finite) <= set(row[~np.isnan(row)].tolist())
        assert finite[0] == np.nanmin(row)  # the lowest candidate lets every evaluated one exit


def test_deterministic() -> None:
    problem = _problem(3, 300, seed=4)
    a = solve_thresholds(problem, max_drop=0.02, levels=6)
    b = solve_thresholds(problem, max_drop=0.02, levels=6)
    assert a == b
    assert pareto_frontier(problem, 6) == pareto_frontier(problem, 6)


def test_realistic_size_runs() -> None:
    # E=3, N=5000, levels=24: ~16k grid points, well under a second on one core
    problem = _problem(3, 5_000, seed=0)
    got = solve_thresholds(problem, max_drop=0.01)
    assert got.mean_cost <= evaluate_thresholds(problem, [math.inf] * 3).mean_cost
    assert len(pareto_frontier(problem)) >= 2


def _arrays(e: int = 2, n: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((e, n)), np.zeros((e + 1, n), dtype=bool), np.zeros((e + 1, n))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("scores", np.zeros(5), "scores must have shape"),
        ("scores", np.zeros((0, 5)), "scores must have shape"),
        ("scores", np.zeros((2, 5), dtype=int), "floating"),
        ("scores", np.full((2, 5), np.inf), "finite"),
        ("correct", np.zeros((2, 5), dtype=bool), r"correct must have shape \(3, 5\)"),
        ("correct", np.zeros((3, 5)), "bool"),
        ("cost", np.zeros((3, 4)), r"cost must have shape \(3, 5\)"),
        ("cost", np.full((3, 5), np.nan), "finite"),
        ("cost", -np.ones((3, 5)), ">= 0"),
        ("cost", np.zeros((3, 5), dtype=bool), "numeric"),
    ],
)
def test_problem_validation(field: str, value: np.ndarray, match: str) -> None:
    arrays = dict(zip(("scores", "correct", "cost"), _arrays(), strict=True))
    arrays[field] = value
    with pytest.raises(ConfigError, match=match):
        ExitProblem(**arrays)


def test_problem_stores_read_only_copies() -> None:
    scores, correct, cost = _arrays()
    problem = ExitProblem(scores, correct, cost)
    scores[0, 0] = 1.0
    assert problem.scores[0, 0] == 0.0
    with pytest.raises(ValueError):
        problem.scores[0, 0] = 1.0


def test_argument_validation() -> None:
    problem = ExitProblem(*_arrays())
    with pytest.raises(ConfigError, match="exactly one"):
        solve_thresholds(problem)
    with pytest.raises(ConfigError, match="exactly one"):
        solve_thresholds(problem, budget=1.0, max_drop=0.0)
    with pytest.raises(ConfigError, match="max_drop"):
        solve_thresholds(problem, max_drop=-0.1)
    with pytest.raises(ConfigError, match="budget"):
        solve_thresholds(problem, budget=math.nan)
    with pytest.raises(ConfigError, match="levels"):
        solve_thresholds(problem, budget=1.0, levels=0)
    with pytest.raises(ConfigError, match="2 thresholds"):
        evaluate_thresholds(problem, [0.5])
    with pytest.raises(ConfigError, match="NaN"):
        evaluate_thresholds(problem, [0.5, math.nan])
