"""The hit rule: ``simulate`` on hand-counted streams and against the real cache, and
``solve_rule`` against its brute-force twin (``simulate`` on every grid point)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from collabinfer.cache.rule import (
    OFF,
    GridPoint,
    HitRule,
    RuleFit,
    Stream,
    simulate,
    solve_rule,
    tau_grid,
)
from collabinfer.cache.semantic import DEDUPE_DIST, Namespace, SemanticCache
from collabinfer.errors import ConfigError

from .helpers import clustered_keys, unit

SMALL: dict[str, Any] = {"ks": (1, 2), "levels": 8, "confidences": (0.0, 0.8)}  # a quick grid
EPS = 0.01  # a step of 0.01 off a unit key: squared distance ~1e-4


def _hand_stream() -> Stream:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    up, right = np.array([0.0, EPS]), np.array([EPS, 0.0])
    keys = unit(np.stack([a, a + up, b, a - up, b + right]))
    return keys, np.array([0, 0, 1, 1, 1])


def test_simulate_k1_by_hand() -> None:
    # t0 miss (empty); t1 hits a (0, right); t2 miss (b is far); t3 hits a (0, wrong: 1);
    # t4 hits b (1, right)
    sim = simulate([_hand_stream()], HitRule(1, 0.01))
    assert (sim.requests, sim.hits, sim.correct) == (5, 3, 2)
    np.testing.assert_array_equal(sim.hit_flags, [False, True, False, True, True])
    np.testing.assert_array_equal(sim.answers, [0, 0, 1, 0, 1])
    assert sim.hit_rate == pytest.approx(3 / 5) and sim.precision == pytest.approx(2 / 3)


def test_simulate_k2_by_hand() -> None:
    # t0, t1 miss (fewer than two held); t2 miss (its two nearest are far); t3 hits
    # a and a+eps (both 0; wrong: 1); t4 misses (its second nearest is far)
    sim = simulate([_hand_stream()], HitRule(2, 0.01))
    assert (sim.hits, sim.correct) == (1, 0)
    np.testing.assert_array_equal(sim.hit_flags, [False, False, False, True, False])
    np.testing.assert_array_equal(sim.answers, [0, 0, 1, 0, 1])
    assert sim.precision == 0.0


def test_simulate_tau_below_every_distance_never_hits() -> None:
    sim = simulate([_hand_stream()], HitRule(1, 1e-6))
    assert sim.hits == 0 and sim.precision == 1.0
    np.testing.assert_array_equal(sim.answers, _hand_stream()[1])  # the model's own answers


def test_simulate_off_never_hits() -> None:
    keys = unit(np.ones((6, 3)))  # six identical keys: any enabled rule would hit
    sim = simulate([(keys, np.zeros(6, dtype=np.int64))], OFF)
    assert sim.hits == 0 and not OFF.enabled
    assert simulate([(keys, np.zeros(6, dtype=np.int64))], HitRule(1, 1e-3)).hits == 5


def test_simulate_replays_each_stream_through_an_empty_cache() -> None:
    s = _hand_stream()
    one, two = simulate([s], HitRule(1, 0.01)), simulate([s, s], HitRule(1, 0.01))
    assert two.requests == 2 * one.requests and two.hits == 2 * one.hits
    np.testing.assert_array_equal(two.hit_flags, np.concatenate([one.hit_flags] * 2))
    assert simulate([], HitRule(1, 0.01)).requests == 0


def _stream(
    seed: int, n: int = 120, dim: int = 8, noise: float = 0.1, spread: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered keys labelled by cluster, a fraction ``noise`` of labels scrambled, and
    a confidence per answer (lower, on the whole, for the scrambled ones)."""
    keys, which = clustered_keys(n, dim, seed, clusters=12, spread=spread)
    rng = np.random.default_rng(seed + 1000)
    labels = which.copy()
    flip = rng.random(n) < noise
    labels[flip] = rng.integers(0, 12, int(flip.sum()))
    confidence = np.where(flip, rng.uniform(0.3, 0.95, n), rng.uniform(0.6, 0.99, n))
    return keys, labels, confidence


def _logits_with_confidence(label: int, confidence: float, classes: int = 12) -> np.ndarray:
    """Logits whose softmax gives ``label`` probability ``confidence``."""
    out = np.zeros(classes, dtype=np.float32)
    out[label] = np.log(confidence * (classes - 1) / (1.0 - confidence))
    return out


def _replay_through_cache(stream: Stream, rule: HitRule) -> tuple[list[bool], list[int]]:
    keys, labels, confidence = stream  # type: ignore[misc]
    cache = SemanticCache(max_bytes=64 << 20)
    ns = Namespace("m", "w", 1, "key")
    flags, answers = [], []
    for key, label, conf in zip(keys, labels, confidence, strict=True):
        hit = cache.lookup(ns, key, rule)
        flags.append(hit is not None)
        answers.append(int(label) if hit is None else hit.label)
        if hit is None:
            cache.insert(ns, key, _logits_with_confidence(int(label), float(conf)), cost_ms=1.0)
    return flags, answers


@pytest.mark.parametrize("floor", [0.0, 0.8])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.02, 0.05, 0.1])
def test_simulate_is_what_the_real_cache_does(k: int, tau: float, floor: float) -> None:
    stream = _stream(seed=k, n=200, spread=0.05)
    rule = HitRule(k, tau, floor)
    flags, answers = _replay_through_cache(stream, rule)
    sim = simulate([stream], rule)
    assert sim.hits > 0  # the relation is not vacuous
    np.testing.assert_array_equal(sim.hit_flags, flags)
    np.testing.assert_array_equal(sim.answers, answers)


def test_simulate_is_what_the_real_cache_does_on_repeated_inputs() -> None:
    keys, labels, confidence = _stream(seed=4, n=60, spread=0.05)
    repeat = np.repeat(np.arange(60), 3)  # every input seen three times in a row
    stream = (keys[repeat], labels[repeat], confidence[repeat])
    assert float(((keys[repeat][1] - keys[repeat][0]) ** 2).sum()) <= DEDUPE_DIST
    rule = HitRule(2, 0.05)
    flags, _ = _replay_through_cache(stream, rule)
    assert simulate([stream], rule).hit_flags.tolist() == flags


def test_the_confidence_floor_by_hand() -> None:
    # the same stream as the k=1 case; the entries that answer are t0 (0.95) and t2 (0.90)
    keys, labels = _hand_stream()
    stream = (keys, labels, np.array([0.95, 0.5, 0.90, 0.9, 0.9]))
    expect = {
        0.0: [False, True, False, True, True],
        0.9: [False, True, False, True, True],  # a floor equal to the confidence passes
        0.92: [False, True, False, True, False],  # t2 is too unsure to answer t4
        0.96: [False, False, False, False, False],  # so is t0; the nearest decides, not any
    }
    for floor, flags in expect.items():
        sim = simulate([stream], HitRule(1, 0.01, floor))
        np.testing.assert_array_equal(sim.hit_flags, flags, err_msg=f"floor {floor}")


# --- tau_grid and solve_rule -------------------------------------------------------------------


def _brute_tau_grid(streams: list[Stream], levels: int) -> np.ndarray:
    nearest = []
    for stream in streams:
        k = stream[0].astype(np.float64)
        for t in range(1, len(k)):
            nearest.append(((k[:t] - k[t]) ** 2).sum(1).min())
    qs = np.quantile(np.maximum(nearest, 0.0), np.linspace(0, 1, levels + 1)[1:])
    return np.unique(qs[qs > 0])


def test_tau_grid_is_the_quantiles_of_nearest_predecessor_distances() -> None:
    streams = [_stream(0), _stream(1, n=60)]
    np.testing.assert_allclose(tau_grid(streams, 10), _brute_tau_grid(streams, 10), atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_solve_rule_matches_brute_force(seed: int) -> None:
    streams = [_stream(10 * seed), _stream(10 * seed + 1, n=80)]
    ks, floors, levels, targets = (1, 2, 3), (0.0, 0.8), 8, (0.8, 0.95)
    fits = {t: solve_rule(streams, t, ks, levels, floors) for t in targets}
    grid = fits[targets[0]].grid
    assert all(fit.grid == grid for fit in fits.values())  # the target only picks
    # the grid is every k and floor against the quantiles of nearest-predecessor distances
    taus = _brute_tau_grid(streams, levels)
    assert [(g.k, g.min_confidence) for g in grid] == [
        (k, f) for k in ks for f in floors for _ in taus
    ]
    want_taus = np.tile(taus, len(ks) * len(floors))
    np.testing.assert_allclose([g.tau for g in grid], want_taus, atol=1e-5)
    # every grid point is what simulate says it is
    sims = {}
    for g in grid:
        assert isinstance(g, GridPoint)
        sim = sims[g] = simulate(streams, HitRule(g.k, g.tau, g.min_confidence))
        assert (sim.hit_rate, sim.precision) == (g.hit_rate, g.precision)
    # each stream on its own (the rule must be precise on every stream that hits)
    worst = {}
    for g in grid:
        alone = [simulate([st], HitRule(g.k, g.tau, g.min_confidence)) for st in streams]
        worst[g] = min((a.precision for a in alone if a.hits), default=1.0)
        assert sims[g].worst_precision == pytest.approx(worst[g])
    # and the twin picks from those simulations: most hits, then smaller tau, k, floor
    for target, fit in fits.items():
        feasible = [
            (sim.hits, -g.tau, -g.k, -g.min_confidence)
            for g, sim in sims.items()
            if sim.hits and worst[g] >= target
        ]
        assert feasible, "the scenario should have a feasible rule"
        hits, neg_tau, neg_k, neg_floor = max(feasible)
        assert fit.rule == HitRule(-neg_k, -neg_tau, -neg_floor)
        sim = simulate(streams, fit.rule)
        assert sim.hits == hits and sim.worst_precision >= target
        assert (fit.hit_rate, fit.precision, fit.target) == (sim.hit_rate, sim.precision, target)
    assert fits[0.8].hit_rate >= fits[0.95].hit_rate


def test_a_stricter_target_never_buys_more_hits() -> None:
    streams = [_stream(5), _stream(6)]
    fits = [solve_rule(streams, t, **SMALL) for t in (0.6, 0.8, 0.9, 0.99)]
    rates = [f.hit_rate for f in fits]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] > 0


def test_no_rule_reaching_the_target_is_off() -> None:
    keys, _ = clustered_keys(80, 8, seed=3, clusters=4, spread=0.1)
    streams = [(keys, np.arange(80))]  # every label differs: every hit is wrong
    fit = solve_rule(streams, target=0.5, **SMALL)
    assert fit.rule == OFF and (fit.hit_rate, fit.precision) == (0.0, 1.0)
    assert any(g.hit_rate > 0 for g in fit.grid)
    assert all(g.hit_rate == 0 or g.precision == 0.0 for g in fit.grid)
    assert simulate(streams, fit.rule).hits == 0


def test_a_stream_with_no_predecessors_gives_no_grid_and_off() -> None:
    keys = unit(np.ones((1, 4)))
    fit = solve_rule([(keys, np.zeros(1, dtype=np.int64))])
    assert fit.rule == OFF and fit.grid == ()


def test_an_empty_stream_changes_no_fit() -> None:
    streams = [_stream(0)]
    empty = (np.zeros((0, 8), dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert solve_rule([*streams, empty], **SMALL) == solve_rule(streams, **SMALL)


def _same_fit(a: RuleFit, b: RuleFit) -> bool:
    return (
        a.rule == b.rule
        and a.grid == b.grid
        and (a.hit_rate, a.precision)
        == (
            b.hit_rate,
            b.precision,
        )
    )


def test_scrambling_the_test_stream_changes_no_fitted_rule() -> None:
    val = [_stream(20), _stream(21)]
    test_keys, test_labels, test_conf = _stream(22)
    kept = [tuple(a.copy() for a in s) for s in val]
    fit = solve_rule(val, 0.9, **SMALL)
    before = simulate([(test_keys, test_labels, test_conf)], fit.rule)
    rng = np.random.default_rng(0)
    scrambled = (
        test_keys[rng.permutation(len(test_keys))],
        rng.permutation(test_labels),
        rng.permutation(test_conf),
    )
    after_fit = solve_rule(val, 0.9, **SMALL)
    assert _same_fit(fit, after_fit)
    assert simulate([scrambled], after_fit.rule).requests == before.requests
    for stream, copy in zip(val, kept, strict=True):  # nothing mutated its input
        for a, a0 in zip(stream, copy, strict=True):
            np.testing.assert_array_equal(a, a0)
    # the guard can fail: data it does see does change the fit
    assert not _same_fit(fit, solve_rule([*val, scrambled], 0.9, **SMALL))


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "tau", "floor"),
    [
        (0, 0.1, 0.0),
        (-1, 0.1, 0.0),
        (1, -0.01, 0.0),
        (1, float("nan"), 0.0),
        (1, 0.1, -0.1),
        (1, 0.1, 1.01),
        (1, 0.1, float("nan")),
    ],
)
def test_bad_hit_rules_are_config_errors(k: int, tau: float, floor: float) -> None:
    with pytest.raises(ConfigError):
        HitRule(k, tau, floor)


@pytest.mark.parametrize("target", [0.0, -0.1, 1.01])
def test_bad_targets_are_config_errors(target: float) -> None:
    with pytest.raises(ConfigError):
        solve_rule([_stream(0, n=10)], target)


def test_hit_rule_round_trips_to_json() -> None:
    rule = HitRule(2, 0.125, 0.9)
    assert HitRule(**rule.to_json()) == rule  # type: ignore[arg-type]
    assert rule.enabled and not HitRule(3, 0.0).enabled
