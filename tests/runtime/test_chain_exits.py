"""Exits and gates on the chain: an input that exits on the device sends nothing,
exit heads and gated blocks are charged what they cost, a fallback tries no exit twice."""

from __future__ import annotations

import math

import pytest
import torch

from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.dynamic import ExitRule
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import gate_net, gated_blocks, gates_forced
from collabinfer.model.zoo import create_model
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.profile import Profile, profile_model
from collabinfer.runtime.chain import Chain, ChainResult
from collabinfer.runtime.exit_policy import DeviceExits, ExitingPolicy
from collabinfer.runtime.link import Link, SimulatedLink
from collabinfer.runtime.policy import StaticPolicy
from collabinfer.runtime.state import PathEntry, StepKind
from collabinfer.testing.links import MockLink
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

TIERS = [TierSpec("device", 1.0), TierSpec("edge", 1.0)]
SLOW_DEVICE = [TierSpec("device", 100.0), TierSpec("edge", 1.0)]
LINK = LinkProfile("test", 10.0, 20.0)
NEVER_FIRES = 1.5  # active, but maxprob is at most 1


@pytest.fixture(scope="module")
def net() -> BlockNet:
    torch.manual_seed(0)
    return create_model("tiny-cnn").eval()


@pytest.fixture(scope="module")
def prof(net: BlockNet) -> Profile:
    return profile_model(net, "tiny-cnn", repeats=3, warmup=1)


@pytest.fixture(scope="module")
def exits(net: BlockNet) -> ExitBranches:
    torch.manual_seed(1)
    ex = ExitBranches.for_model(net, (1, 2), width=8).eval()
    ex.set_temperatures([2.5, 0.5])
    return ex


@pytest.fixture(scope="module")
def gnet(net: BlockNet) -> BlockNet:
    return gate_net(net).eval()


@pytest.fixture(scope="module")
def gprof(gnet: BlockNet) -> Profile:
    return profile_model(gnet, "tiny-cnn+gates", repeats=3, warmup=1)


def plan_at(prof: Profile, cut: int) -> Plan:
    """Device runs blocks [0, cut), the edge the rest (cut = num_blocks: all local)."""
    n = prof.num_blocks
    codecs = ("fp32" if cut < n else None, None)
    return Plan(
        (0, cut, n), codecs, "latency", evaluate_plan(prof, TIERS, [LINK], (0, cut, n), codecs)
    )


def run(
    net: BlockNet,
    prof: Profile,
    cut: int,
    device_exits: DeviceExits | None,
    x: torch.Tensor,
    link: Link | None = None,
    tiers: list[TierSpec] = TIERS,
    profile: Profile | None = None,
) -> ChainResult:
    policy = StaticPolicy(plan_at(prof, cut))
    pol = policy if device_exits is None else ExitingPolicy(policy, device_exits)
    links = [link if link is not None else SimulatedLink(LINK)]
    return Chain(net, tiers, links, pol, profile=profile).run(x)


def steps(res: ChainResult, kind: StepKind) -> list:
    return [s for s in res.state.trace.steps if s.kind is kind]


def test_a_confident_exit_on_the_device_sends_nothing(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    dx = DeviceExits(exits, ExitRule((0.0, math.inf)))
    res = run(net, prof, 2, dx, x)
    st = res.state
    assert st.exited_early
    assert st.trace.bytes_sent(0) == 0
    assert not steps(res, StepKind.TRANSFER) and not steps(res, StepKind.REPLY)
    with torch.inference_mode():
        want = exits.calibrated(0, net.blocks[0](x))
    assert torch.equal(res.output, want)
    assert [s.block for s in steps(res, StepKind.EXIT)] == [1]
    assert all(s.tier == 0 for s in steps(res, StepKind.EXIT))
    assert [p.block for p in st.path] == [0]  # nothing after the exit ran
    assert st.exits_tried == [1]
    assert st.tier == 0


def test_a_never_firing_exit_offloads_and_answers_with_the_model(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    dx = DeviceExits(exits, ExitRule((NEVER_FIRES, NEVER_FIRES)))
    res = run(net, prof, 2, dx, x)
    st = res.state
    assert not st.exited_early
    assert torch.equal(res.output, ref)
    assert st.trace.bytes_sent(0) > 0
    # both exits lie on the device (cuts 1 and 2 <= 2): tried, charged, not taken
    assert [s.block for s in steps(res, StepKind.EXIT)] == [1, 2]
    assert st.exits_tried == [1, 2]
    assert [p.tier for p in st.path] == [0, 0, 1, 1]


def test_an_inactive_exit_is_not_even_tried(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    res = run(net, prof, 2, DeviceExits(exits, ExitRule.never(2)), x)
    assert not steps(res, StepKind.EXIT)
    assert res.state.exits_tried == []
    assert torch.equal(res.output, ref)


def test_only_the_device_tries_exits(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    dx = DeviceExits(exits, ExitRule((math.inf, 0.0)))  # exit at cut 2 always fires
    res = run(net, prof, 1, dx, x)  # ... but cut 2 is on the edge
    assert not res.state.exited_early
    assert not steps(res, StepKind.EXIT)
    assert torch.equal(res.output, ref)


def test_the_exit_head_is_charged_its_profiled_time_on_an_emulated_device(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    dx = DeviceExits(exits, ExitRule((NEVER_FIRES, 0.0)), head_ms=(0.123, 0.456))
    res = run(net, prof, 3, dx, x, tiers=SLOW_DEVICE, profile=prof)
    assert res.state.exited_early
    ex = steps(res, StepKind.EXIT)
    assert [s.block for s in ex] == [1, 2]
    assert ex[0].ms == pytest.approx(0.123 * 100)
    assert ex[1].ms == pytest.approx(0.456 * 100)
    assert res.state.trace.compute_ms(0) == pytest.approx(
        100 * (prof.blocks[0].time_ms + prof.blocks[1].time_ms + 0.123 + 0.456)
    )
    # without a profiled head time: the measured time x factor
    dx = DeviceExits(exits, ExitRule((NEVER_FIRES, 0.0)))
    res = run(net, prof, 3, dx, x, tiers=SLOW_DEVICE, profile=prof)
    for s in steps(res, StepKind.EXIT):
        assert s.ms == pytest.approx(s.wall_ms * 100)
        assert s.wall_ms > 0


def test_a_closed_gate_is_recorded_and_charged_its_skip_time(gnet, gprof) -> None:
    ((k, _),) = gated_blocks(gnet)
    assert k == 1
    b = gprof.blocks[k]
    assert b.open_ms is not None and b.skip_ms is not None
    assert b.skip_flops is not None and b.skip_flops < b.flops
    n = gnet.num_blocks
    x = torch.rand(1, 1, 28, 28)
    for mode, ran, ms in (("closed", False, b.skip_ms), ("open", True, b.open_ms)):
        with gates_forced(gnet, mode):
            res = run(gnet, gprof, n, None, x, tiers=SLOW_DEVICE, profile=gprof)
        assert res.state.path[k] == PathEntry(k, 0, ran)
        assert all(p.ran for p in res.state.path if p.block != k)
        step = next(s for s in steps(res, StepKind.COMPUTE) if s.block == k)
        assert step.ms == pytest.approx(ms * 100), mode
        with torch.inference_mode(), gates_forced(gnet, mode):
            assert torch.equal(res.output, gnet(x))


def test_path_conditions_decide_whether_the_device_tries_an_exit(gnet, gprof) -> None:
    torch.manual_seed(2)
    ex = ExitBranches.for_model(gnet, (2,), width=8).eval()
    rule = ExitRule((0.0,), allowed_paths=(frozenset({1}),))  # only if block 1 ran
    dx = DeviceExits(ex, rule, gate_index=[i for i, _ in gated_blocks(gnet)])
    x = torch.rand(1, 1, 28, 28)
    with gates_forced(gnet, "closed"):
        res = run(gnet, gprof, 3, dx, x)
    assert not steps(res, StepKind.EXIT) and not res.state.exited_early
    assert res.state.trace.bytes_sent(0) > 0
    with gates_forced(gnet, "open"):
        res = run(gnet, gprof, 3, dx, x)
    assert res.state.exited_early and res.state.trace.bytes_sent(0) == 0
    assert [s.block for s in steps(res, StepKind.EXIT)] == [2]


def test_a_link_failure_does_not_retry_the_exit_at_the_same_cut(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        ref = net(x)
    link = MockLink(latency_s=0.01, fail_on={0})
    dx = DeviceExits(exits, ExitRule((NEVER_FIRES, NEVER_FIRES)))
    res = run(net, prof, 1, dx, x, link=link)
    st = res.state
    assert st.fell_back and not st.exited_early
    assert len(link.calls) == 1  # the failed offload at cut 1
    assert st.exits_tried == [1, 2]  # cut 1 once, then cut 2 on the way down the device
    assert [s.block for s in steps(res, StepKind.EXIT)] == [1, 2]
    assert all(p.tier == 0 for p in st.path)
    assert torch.equal(res.output, ref)


def test_after_a_fallback_a_later_exit_can_still_fire(net, prof, exits) -> None:
    x = torch.rand(1, 1, 28, 28)
    link = MockLink(latency_s=0.01, fail_on={0})
    dx = DeviceExits(exits, ExitRule((NEVER_FIRES, 0.0)))
    res = run(net, prof, 1, dx, x, link=link)
    assert res.state.fell_back and res.state.exited_early
    assert res.state.exits_tried == [1, 2]
    with torch.inference_mode():
        want = exits.calibrated(1, net.run_until(x, 2))
    assert torch.equal(res.output, want)
    assert [p.block for p in res.state.path] == [0, 1]


def test_device_exits_validation(exits) -> None:
    with pytest.raises(ConfigError):
        DeviceExits(exits, ExitRule((0.5,)))
    with pytest.raises(ConfigError):
        DeviceExits(exits, ExitRule((0.5, 0.5)), head_ms=(0.1,))
