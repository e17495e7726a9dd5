"""Dynamic networks over real sockets: device-side exits and gated blocks on a tier.

Untrained tiny models only. An exit rule with threshold 0 always fires
(confidence >= 0), one above 1 is tried but never fires (maxprob <= 1), and
``math.inf`` switches the exit off; gate decisions are steered through the
gate's output bias, so each test knows whether the residual branch runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import httpx
import pytest
import torch

from collabinfer.errors import ModelError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.model.dynamic import ExitRule
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import gated_blocks, is_gated
from collabinfer.plan.planner import Planner
from collabinfer.runtime.exit_policy import DeviceExits
from collabinfer.runtime.state import StepKind
from collabinfer.serve import ServerConfig
from collabinfer.serve.client import ClientResult, DeviceClient
from collabinfer.serve.server import load_served_model
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

from .conftest import device_client, estimators, grid_images, synthetic_profile
from .tier_helpers import metric

FACTOR = 10.0  # the device's speed factor
HEAD_MS = 0.5  # the exit head's profiled time
GATED = "tiny-cnn+gates"


SLOW = LinkProfile("slow", 1.0, 1.0)  # the uplink the planner believes in (1 Mbit/s)
GATE_MS = (2.0, 0.25)  # profiled time of the residual block with its branch run / skipped


def planner_for(net: BlockNet, times_ms: list[float], cut: int) -> Planner:
    """A two-tier plan offloading at ``cut``; block 1 is profiled as a gated block."""
    tiers = [TierSpec("device", FACTOR), TierSpec("edge", 1.0)]
    prof = synthetic_profile(net, "tiny-cnn", times_ms)
    res = dataclasses.replace(prof.blocks[1], open_ms=GATE_MS[0], skip_ms=GATE_MS[1])
    prof = dataclasses.replace(prof, blocks=(prof.blocks[0], res, *prof.blocks[2:]))
    planner = Planner(prof, tiers, codecs=["fp32"], min_device_blocks=1)
    assert planner.plan([SLOW]).boundaries == (0, cut, 4)
    return planner


def offload_at_1(net: BlockNet) -> Planner:
    """The device runs the stem (block 0), the edge the rest."""
    return planner_for(net, [0.01, 5.0, 5.0, 5.0], 1)


def offload_at_3(net: BlockNet) -> Planner:
    """The device runs stem, residual block and pooling; the edge the expensive fc."""
    return planner_for(net, [0.01, 0.01, 0.01, 50.0], 3)


def run_one(client: DeviceClient, x: torch.Tensor) -> ClientResult:
    async def main() -> ClientResult:
        async with client:
            return await client.infer(x)

    return asyncio.run(main())


def server_bytes_in(url: str) -> float:
    text = httpx.get(f"{url}/metrics", trust_env=False).text
    return metric(text, "collabinfer_server_bytes_in_total")


def exits_at_1(net: BlockNet, threshold: float) -> tuple[ExitBranches, DeviceExits]:
    torch.manual_seed(1)
    heads = ExitBranches.for_model(net, cuts=(1,))
    heads.set_temperatures([2.0])  # so "calibrated" differs from the raw head
    return heads, DeviceExits(heads, ExitRule((threshold,)), head_ms=(HEAD_MS,))


def test_a_firing_exit_answers_on_the_device_and_sends_nothing(
    tiny_net: BlockNet, start_server
) -> None:
    edge = start_server(ServerConfig("edge", tier_index=1), tiny_net)
    heads, exits = exits_at_1(tiny_net, 0.0)
    client = device_client(
        tiny_net,
        "tiny-cnn",
        edge.url,
        offload_at_1(tiny_net),
        estimators(SLOW),
        rtt_probe_s=None,
        exits=exits,
    )
    x = grid_images(1)
    r = run_one(client, x)
    with torch.inference_mode():
        want = heads.calibrated(0, tiny_net.run_range(x, 0, 1))
    assert r.exited_early and not r.fell_back
    assert r.bytes_sent == 0 and r.attempts == 0 and not r.raw_input_left_device
    assert server_bytes_in(edge.url) == 0
    assert r.answered_by == 0 and r.server_ms is None
    torch.testing.assert_close(r.output, want, rtol=0, atol=0)
    assert r.prediction == (int(want.argmax()),)
    assert [(p.block, p.tier) for p in r.path] == [(0, 0)]
    (exit_step,) = [s for s in r.steps if s.kind == StepKind.EXIT]
    assert (exit_step.tier, exit_step.block) == (0, 1)
    assert exit_step.ms == pytest.approx(HEAD_MS * FACTOR)  # profile emulation: head's time
    assert not any(s.kind in (StepKind.ENCODE, StepKind.TRANSFER) for s in r.steps)


@pytest.mark.parametrize("threshold", [math.inf, 1.5], ids=["off", "never-confident"])
def test_an_exit_that_does_not_fire_offloads_as_before(
    tiny_net: BlockNet, start_server, threshold: float
) -> None:
    edge = start_server(ServerConfig("edge", tier_index=1), tiny_net)
    _, exits = exits_at_1(tiny_net, threshold)
    client = device_client(
        tiny_net,
        "tiny-cnn",
        edge.url,
        offload_at_1(tiny_net),
        estimators(SLOW),
        rtt_probe_s=None,
        exits=exits,
    )
    x = grid_images(1, seed=2)
    r = run_one(client, x)
    with torch.inference_mode():
        want = tiny_net(x)
    assert not r.exited_early and not r.fell_back
    assert r.answered_by == 1 and r.attempts == 1 and r.bytes_sent > 0
    assert server_bytes_in(edge.url) == r.bytes_sent
    torch.testing.assert_close(r.output, want)
    tried = [s.block for s in r.steps if s.kind == StepKind.EXIT]
    assert tried == ([] if threshold == math.inf else [1])  # an exit switched off costs nothing


def load_gated(skip: bool) -> BlockNet:
    """``tiny-cnn+gates`` as every tier loads it, its gate biased to run or skip the branch."""
    net = load_served_model(GATED, untrained=True)
    ((_, gate),) = gated_blocks(net)
    with torch.no_grad():
        gate.gate.fc2.bias.copy_(torch.tensor([10.0, 0.0] if skip else [0.0, 10.0]))
    return net


@pytest.mark.parametrize("skip", [False, True], ids=["branch-runs", "branch-skipped"])
@pytest.mark.parametrize("where", ["edge", "device"])
def test_a_gated_model_over_the_wire_equals_local_and_records_its_path(
    start_server, skip: bool, where: str
) -> None:
    device_net, server_net = load_gated(skip), load_gated(skip)
    assert weights_hash(device_net) == weights_hash(server_net)
    edge = start_server(ServerConfig("edge", tier_index=1), server_net, name=GATED)
    planner = (offload_at_1 if where == "edge" else offload_at_3)(device_net)
    client = device_client(device_net, GATED, edge.url, planner, estimators(SLOW), rtt_probe_s=None)
    x = grid_images(1, seed=3)
    r = run_one(client, x)
    local = load_gated(skip)
    with torch.inference_mode():
        want = local(x)
    ((block, gate),) = gated_blocks(local)
    assert gate.last_ran is not None
    decided = bool(gate.last_ran[0])
    assert decided is not skip  # the bias steers the gate
    assert r.answered_by == 1 and not r.fell_back
    assert torch.equal(r.output, want), "fp32 at the cut: the same answer as locally"
    tier = 1 if where == "edge" else 0
    assert [(p.block, p.tier, p.ran) for p in r.path] == [
        (k, 0 if k < r.plan.boundaries[1] else 1, decided if k == block else True) for k in range(4)
    ]
    assert r.path[block].tier == tier
    if where == "device":  # the device is charged the profiled time of what it ran
        (step,) = [s for s in r.steps if s.kind == StepKind.COMPUTE and s.block == block]
        assert step.ms == pytest.approx(GATE_MS[1 if skip else 0] * FACTOR)


def test_served_gated_model_is_seeded_the_same_on_every_tier() -> None:
    a = load_served_model("fmnist-resnet+gates", untrained=True)
    b = load_served_model("fmnist-resnet+gates", untrained=True)
    assert isinstance(a, BlockNet) and is_gated(a)
    plain = load_served_model("fmnist-resnet", untrained=True)
    assert weights_hash(plain) != weights_hash(a) and not is_gated(plain)
    assert weights_hash(a) == weights_hash(b)
    assert weights_hash(a) != weights_hash(load_served_model("fmnist-resnet+gates", True, seed=1))
    with pytest.raises(ModelError, match="unknown model"):
        load_served_model("no-such-net+gates", untrained=True)
