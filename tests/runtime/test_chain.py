"""The chain: split execution equals the monolithic forward; traces add up; faults fall back."""

from __future__ import annotations

import pytest
import torch

from collabinfer.errors import ConfigError
from collabinfer.model.zoo import create_model
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import profile_model
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.link import SimulatedLink
from collabinfer.runtime.policy import AdaptivePolicy, StaticPolicy
from collabinfer.runtime.state import StepKind
from collabinfer.testing.links import MockLink
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

TIERS3 = [TierSpec("device", 10.0), TierSpec("edge", 1.0), TierSpec("cloud", 0.5)]
LINK = LinkProfile("test", 10.0, 20.0)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))
    return model.eval()


@pytest.fixture(scope="module")
def prof(net):
    return profile_model(net, "tiny-cnn", repeats=3, warmup=1)


def _plan(prof, tiers, b, codecs) -> Plan:
    links = [LINK] * (len(tiers) - 1)
    return Plan(b, codecs, "latency", evaluate_plan(prof, tiers, links, b, codecs))


def test_every_two_tier_split_is_bit_exact_in_fp32(net, prof) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    n = net.num_blocks
    tiers = TIERS3[:2]
    for k in range(n + 1):
        plan = _plan(prof, tiers, (0, k, n), ("fp32" if k < n else None, None))
        chain = Chain(net, tiers, [MockLink(latency_s=0.01)], StaticPolicy(plan), profile=prof)
        res = chain.run(x)
        assert torch.equal(res.output, ref), f"cut {k}"
        assert [p.block for p in res.state.path] == list(range(n))
        assert all(p.tier == (0 if p.block < k else 1) for p in res.state.path)


def test_three_tiers_with_relay_and_lossy_codec(net, prof) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    n = net.num_blocks
    links = [MockLink(latency_s=0.01), MockLink(latency_s=0.02)]
    plan = _plan(prof, TIERS3, (0, 1, 1, n), ("int8", None, None))
    res = Chain(net, TIERS3, links, StaticPolicy(plan), profile=prof).run(x)
    # the edge only relayed: it never decoded nor computed
    assert res.state.trace.compute_ms(1) == 0.0
    assert all(p.tier == 2 for p in res.state.path[1:])
    assert len(links[0].calls) == 2 and len(links[1].calls) == 2  # request + reply on each
    assert links[0].calls[0][0] == links[1].calls[0][0]  # the same bytes crossed both links
    assert torch.allclose(res.output, ref, atol=0.05)
    assert not res.state.raw_input_left_device


def test_trace_adds_up(net, prof) -> None:
    x = torch.rand(1, 1, 28, 28)
    n = net.num_blocks
    link = MockLink(seconds_per_byte=1e-6, latency_s=0.005)
    plan = _plan(prof, TIERS3[:2], (0, 0, n), ("u8", None))
    res = Chain(net, TIERS3[:2], [link], StaticPolicy(plan), profile=prof).run(x)
    st = res.state
    assert st.raw_input_left_device
    sent = st.trace.bytes_sent(0)
    assert sent == link.calls[0][0]
    assert sent > 784  # payload plus header
    transfer = next(s for s in st.trace.steps if s.kind is StepKind.TRANSFER)
    assert transfer.ms == pytest.approx((0.005 + 1e-6 * sent) * 1e3)
    assert res.latency_ms == pytest.approx(sum(s.ms for s in st.trace.steps))
    # the edge (factor 1) is charged what it measured
    for s in st.trace.steps:
        if s.kind is StepKind.COMPUTE:
            assert s.ms == pytest.approx(s.wall_ms)


def test_link_failure_makes_the_device_finish(net, prof) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    n = net.num_blocks
    plan = _plan(prof, TIERS3[:2], (0, 2, n), ("int8", None))
    link = MockLink(latency_s=0.01, fail_on={0})
    res = Chain(net, TIERS3[:2], [link], StaticPolicy(plan), profile=prof).run(x)
    assert res.state.fell_back
    assert all(p.tier == 0 for p in res.state.path)
    assert torch.equal(res.output, ref)  # the exact tensor was kept, not the int8 copy
    assert res.state.trace.bytes_sent(0) == 0


def test_virtual_clock_follows_the_trace_start_time(net, prof) -> None:
    n = net.num_blocks
    plan = _plan(prof, TIERS3[:2], (0, 1, n), ("fp32", None))
    link = MockLink(latency_s=0.01)
    Chain(net, TIERS3[:2], [link], StaticPolicy(plan), profile=prof).run(
        torch.rand(1, 1, 28, 28), start_s=100.0
    )
    assert link.calls[0][1] > 100.0


def test_adaptive_policy_moves_the_cut_when_the_link_collapses(net, prof) -> None:
    tiers = [TierSpec("device", 1000.0), TierSpec("edge", 1.0)]
    planner = Planner(prof, tiers, min_device_blocks=1)
    fast = LinkProfile("fast", 100.0, 1.0)
    est = LinkEstimator(fast, alpha=0.9)
    policy = AdaptivePolicy(planner, [est])
    chain = Chain(net, tiers, [SimulatedLink(fast)], policy, profile=prof)
    first = chain.run(torch.rand(1, 1, 28, 28)).state.plan
    assert first is not None and first.boundaries[1] < net.num_blocks
    # the link becomes nearly unusable: estimates follow, the plan keeps work local
    chain.links = (SimulatedLink(LinkProfile("dead", 0.001, 10.0)),)
    for _ in range(6):  # EWMA (alpha 0.9) needs a few transfers to fall from 100 Mbit/s
        last = chain.run(torch.rand(1, 1, 28, 28)).state.plan
    assert last is not None and last.boundaries[1] == net.num_blocks
    assert policy.plans_made == 7


def test_emulated_tiers_are_charged_the_profile_not_one_cold_run(net, prof) -> None:
    n = net.num_blocks
    plan = _plan(prof, TIERS3[:2], (0, 2, n), ("fp32", None))
    chain = Chain(net, TIERS3[:2], [MockLink(latency_s=0.01)], StaticPolicy(plan), profile=prof)
    st = chain.run(torch.rand(1, 1, 28, 28)).state
    for s in st.trace.steps:
        if s.kind is StepKind.COMPUTE and s.tier == 0:  # device: factor 10, emulated
            assert s.ms == pytest.approx(prof.blocks[s.block].time_ms * 10.0)
        if s.kind is StepKind.COMPUTE and s.tier == 1:  # edge: factor 1, measured
            assert s.ms == pytest.approx(s.wall_ms)
    enc = next(s for s in st.trace.steps if s.kind is StepKind.ENCODE)
    assert enc.ms == pytest.approx(prof.cuts[2].codecs["fp32"].encode_ms * 10.0)


def test_an_emulated_tier_without_a_profile_is_a_config_error(net, prof) -> None:
    plan = _plan(prof, TIERS3[:2], (0, 2, net.num_blocks), ("fp32", None))
    with pytest.raises(ConfigError, match="profile"):
        Chain(net, TIERS3[:2], [MockLink()], StaticPolicy(plan))
    same_speed = [TierSpec("device"), TierSpec("edge")]  # nothing emulated: nothing to profile
    Chain(net, same_speed, [MockLink()], StaticPolicy(plan)).run(torch.rand(1, 1, 28, 28))
