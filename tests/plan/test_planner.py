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


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_privacy_bound_matches_brute_force_and_is_kept(seed: int, m: int) -> None:
    rng = random.Random(seed + 100 * m)
    n = rng.randint(2, 6)
    profile = random_profile(n, seed)
    tiers = [TierSpec("device", 100.0)] + [TierSpec(f"t{i}", 1.0) for i in range(1, m)]
    links = _links(m, rng)
    # a made-up assessment: SSIM falls with depth, some pairs left unassessed
    privacy = {
        (k, c): 1.0 - k / n + rng.uniform(-0.1, 0.1)
        for k, cut in enumerate(profile.cuts)
        for c in cut.codecs
        if rng.random() < 0.8
    }
    bound = 0.6
    dp = Planner(profile, tiers, privacy=privacy, max_ssim=bound).plan(links)
    bf = exhaustive_plan(profile, tiers, links, privacy=privacy, max_ssim=bound)
    assert dp.cost.latency_ms == pytest.approx(bf.cost.latency_ms, rel=1e-9)
    for sender, _, cut in transfers(dp.boundaries):
        if sender == 0:  # what leaves the device is assessed and within the bound
            assert privacy[(cut, dp.codecs[0])] <= bound


def test_privacy_bound_forbids_the_raw_input_and_unassessed_sends() -> None:
    profile = random_profile(5, 1)
    for codec in profile.cuts[0].codecs.values():  # the input is cheap: offloading tempts
        object.__setattr__(codec, "payload_bytes", 10)
    tiers = [TierSpec("device", 100.0), TierSpec("edge", 1.0)]
    fast = [LinkProfile("fast", 1000.0, 1.0)]
    assert Planner(profile, tiers).plan(fast).raw_input_leaves_device
    codec = next(iter(profile.cuts[3].codecs))
    privacy = {(0, c): 1.0 for c in profile.cuts[0].codecs} | {(3, codec): 0.2}
    plan = Planner(profile, tiers, privacy=privacy, max_ssim=0.3).plan(fast)
    assert plan.boundaries[1] in (3, 5) and not plan.raw_input_leaves_device
    if plan.boundaries[1] == 3:
        assert plan.codecs[0] == codec
    with pytest.raises(ConfigError, match="needs the assessment"):
        Planner(profile, tiers, max_ssim=0.3)
