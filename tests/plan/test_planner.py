"""The planner is checked against exhaustive enumeration of the same cost model."""

from __future__ import annotations

import random

import pytest

from collabinfer.errors import ConfigError, PlanError
from collabinfer.plan.cost import PowerModel, evaluate_plan, transfers
from collabinfer.plan.planner import Planner, exhaustive_plan
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

from .helpers import random_profile


def _tiers(m: int, rng: random.Random) -> list[TierSpec]:
    return [TierSpec(f"t{i}", rng.choice([0.3, 1.0, 2.0, 40.0, 80.0])) for i in range(m)]


def _links(m: int, rng: random.Random) -> list[LinkProfile]:
    return [
        LinkProfile(f"l{i}", rng.choice([0.5, 1.1, 5.85, 18.88, 100.0]), rng.uniform(0, 150))
        for i in range(m - 1)
    ]


@pytest.mark.parametrize("objective", ["latency", "energy"])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(12))
def test_planner_matches_brute_force(seed: int, m: int, objective: str) -> None:
    rng = random.Random(seed * 31 + m)
    n = rng.randint(1, 7 if m < 4 else 5)
    profile = random_profile(n, seed)
    tiers, links = _tiers(m, rng), _links(m, rng)
    min_dev = rng.choice([0, 0, 1])
    power = PowerModel(rng.uniform(0.5, 2), rng.uniform(0.5, 3), rng.uniform(0.05, 0.5))
    dp = Planner(profile, tiers, objective=objective, power=power, min_device_blocks=min_dev).plan(
        links
    )
    bf = exhaustive_plan(
        profile, tiers, links, objective=objective, power=power, min_device_blocks=min_dev
    )
    assert dp.cost.objective(objective) == pytest.approx(bf.cost.objective(objective), rel=1e-9)
    # the plan the DP reports is consistent with the reference cost function
    again = evaluate_plan(profile, tiers, links, dp.boundaries, dp.codecs, power)
    assert again.objective(objective) == pytest.approx(dp.cost.objective(objective), rel=1e-9)
    assert dp.boundaries[1] >= min_dev


def test_slow_link_keeps_everything_on_device() -> None:
    profile = random_profile(5, 0)
    tiers = [TierSpec("device", 1.0), TierSpec("edge", 0.5)]
    plan = Planner(profile, tiers).plan([LinkProfile("slow", 1e-6, 1000.0)])
    assert plan.boundaries == (0, 5, 5)
    assert transfers(plan.boundaries) == []


def test_fast_link_and_slow_device_offloads_at_input_when_input_is_small() -> None:
    profile = random_profile(5, 1)
    cut0 = {name: cost for name, cost in profile.cuts[0].codecs.items()}
    for name in cut0:  # make the input tiny and cheap to send
        object.__setattr__(profile.cuts[0].codecs[name], "payload_bytes", 10)
    tiers = [TierSpec("device", 100.0), TierSpec("edge", 1.0)]
    plan = Planner(profile, tiers).plan([LinkProfile("fast", 1000.0, 1.0)])
    assert plan.boundaries == (0, 0, 5)
    assert plan.raw_input_leaves_device


def test_privacy_constraint_keeps_input_on_device() -> None:
    profile = random_profile(5, 1)
    tiers = [TierSpec("device", 100.0), TierSpec("edge", 1.0)]
    plan = Planner(profile, tiers, min_device_blocks=1).plan([LinkProfile("fast", 1000.0, 1.0)])
    assert plan.boundaries[1] >= 1
    assert not plan.raw_input_leaves_device


def test_relay_forwards_without_codec() -> None:
    """Cloud much faster, edge as slow as the device: the edge only relays."""
    profile = random_profile(4, 3)
    tiers = [TierSpec("device", 1000.0), TierSpec("edge", 1000.0), TierSpec("cloud", 0.01)]
    links = [LinkProfile("a", 1e4, 1.0), LinkProfile("b", 1e4, 1.0)]
    plan = Planner(profile, tiers).plan(links)
    assert plan.boundaries[1] == plan.boundaries[2] == 0
    assert plan.codecs[1] is None and plan.codecs[0] is not None


def test_errors_are_clear() -> None:
    profile = random_profile(3, 0)
    with pytest.raises(ConfigError, match="links"):
        Planner(profile, [TierSpec("a"), TierSpec("b")]).plan([])
    with pytest.raises(ConfigError, match="objective"):
        Planner(profile, [TierSpec("a")], objective="speed")
    with pytest.raises(ConfigError, match="not in the profile"):
        Planner(profile, [TierSpec("a")], codecs=["zstd"])
    with pytest.raises(PlanError):
        evaluate_plan(
            profile,
            [TierSpec("a"), TierSpec("b")],
            [LinkProfile("l", 1.0, 1.0)],
            (0, 2, 1),
            (None, None),
        )
