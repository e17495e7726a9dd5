"""One engine: the same plan and inputs through the in-process chain and over HTTP agree.

The chain runs the engine over mock links; the device client runs it over
HTTP to an edge app, which continues the State with the same engine and
forwards it to a cloud app (both in-process through ``httpx.ASGITransport``:
the wire format, validation and the servers' code paths are all real, only
the sockets are not). Per input, both must take the same path (blocks, tiers,
gate decisions), try the same exits, exit at the same place, answer from the
same tier with the same logits, and fall back in the same way.
"""

from __future__ import annotations

import asyncio
import copy
from contextlib import AsyncExitStack

import httpx
import pytest
import torch

from collabinfer.model.blocks import BlockNet
from collabinfer.model.dynamic import ExitRule
from collabinfer.model.exits import ExitBranches, confidence
from collabinfer.model.gates import gated_blocks
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.runtime.chain import Chain, ChainResult
from collabinfer.runtime.exit_policy import DeviceExits, ExitingPolicy
from collabinfer.runtime.policy import StaticPolicy
from collabinfer.runtime.state import StepKind
from collabinfer.serve import ServerConfig, create_app
from collabinfer.serve.client import ClientResult, DeviceClient
from collabinfer.serve.server import load_served_model
from collabinfer.testing.links import MockLink
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

from .conftest import grid_images, synthetic_profile

NAME = "tiny-cnn+gates"
TIERS = (TierSpec("device", 10.0), TierSpec("edge", 1.0), TierSpec("cloud", 1.0))
PLAN = (0, 2, 3, 4)  # device: stem + gated block; edge: pooling; cloud: fc
CODECS = ("fp32", "fp32", None)
EXIT_CUTS = (1, 2)


class Refused(httpx.AsyncBaseTransport):
    """The cloud is down: every connection is refused."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)


def _net(xs: torch.Tensor) -> BlockNet:
    """The gated model, its gate biased to run the branch for about half of ``xs``."""
    net = load_served_model(NAME, untrained=True).eval()
    ((k, gate),) = gated_blocks(net)
    with torch.inference_mode():
        logits = gate.gate(net.run_until(xs, k))
    margin = (logits[:, 1] - logits[:, 0]).median()
    with torch.no_grad():
        gate.gate.fc2.bias[1] -= margin
    return net


def _exits(net: BlockNet, xs: torch.Tensor) -> DeviceExits:
    """Heads at cuts 1 and 2, thresholds at their median confidence on ``xs``: some fire."""
    torch.manual_seed(3)
    heads = ExitBranches.for_model(net, cuts=EXIT_CUTS).eval()
    with torch.inference_mode():
        thresholds = tuple(
            float(confidence(heads.calibrated(e, net.run_until(xs, c)), "maxprob").median())
            for e, c in enumerate(EXIT_CUTS)
        )
    ((k, _),) = gated_blocks(net)
    return DeviceExits(heads, ExitRule(thresholds), gate_index=[k], head_ms=(0.2, 0.2))


def _setup(xs: torch.Tensor) -> tuple[BlockNet, DeviceExits, Plan]:
    net = _net(xs)
    prof = synthetic_profile(net, NAME, [1.0, 2.0, 0.1, 0.1])
    links = [LinkProfile("a", 10.0, 10.0), LinkProfile("b", 100.0, 20.0)]
    plan = Plan(PLAN, CODECS, "latency", evaluate_plan(prof, TIERS, links, PLAN, CODECS))
    return net, _exits(net, xs), plan


def _policy(exits: DeviceExits, plan: Plan) -> ExitingPolicy:
    return ExitingPolicy(StaticPolicy(plan), exits)


def _in_process(
    net: BlockNet, exits: DeviceExits, plan: Plan, xs: torch.Tensor, cloud_down: bool
) -> list[ChainResult]:
    prof = synthetic_profile(net, NAME, [1.0, 2.0, 0.1, 0.1])
    links = [
        MockLink(latency_s=0.01),
        MockLink(latency_s=0.02, fail_on=range(10**6) if cloud_down else ()),
    ]
    chain = Chain(copy.deepcopy(net), TIERS, links, _policy(exits, plan), profile=prof)
    return [chain.run(x[None], request_id=f"in-{i}") for i, x in enumerate(xs)]


def _over_http(
    net: BlockNet, exits: DeviceExits, plan: Plan, xs: torch.Tensor, cloud_down: bool
) -> list[ClientResult]:
    prof = synthetic_profile(net, NAME, [1.0, 2.0, 0.1, 0.1])
    cloud = create_app(ServerConfig("cloud", tier_index=2), copy.deepcopy(net), NAME)
    to_cloud: httpx.AsyncBaseTransport = Refused() if cloud_down else httpx.ASGITransport(app=cloud)
    edge = create_app(
        ServerConfig("edge", tier_index=1, next_url="http://cloud"),
        copy.deepcopy(net),
        NAME,
        next_transport=to_cloud,
    )

    async def main() -> list[ClientResult]:
        async with AsyncExitStack() as stack:
            for app in (cloud, edge):
                await stack.enter_async_context(app.router.lifespan_context(app))
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=edge))
            stack.push_async_callback(http.aclose)
            client = DeviceClient(
                copy.deepcopy(net),
                NAME,
                "http://edge",
                _policy(exits, plan),
                TIERS,
                profile=prof,
                http=http,
                rtt_probe_s=None,
            )
            return [await client.infer(x, f"http-{i}") for i, x in enumerate(xs)]

    return asyncio.run(main())


def _exits_tried(steps) -> list[int | None]:
    return [s.block for s in steps if s.kind == StepKind.EXIT and s.tier == 0]


@pytest.mark.parametrize("cloud_down", [False, True], ids=["all-up", "cloud-down"])
def test_chain_and_device_client_run_one_plan_the_same_way(cloud_down: bool) -> None:
    xs = grid_images(16, seed=11)
    net, exits, plan = _setup(xs)
    chain = _in_process(net, exits, plan, xs, cloud_down)
    http = _over_http(net, exits, plan, xs, cloud_down)
    exited = sum(r.state.exited_early for r in chain)
    assert 0 < exited < len(xs), "some inputs exit on the device, some go on"
    gate_ran = {p.ran for r in chain for p in r.state.path if p.block == 1}
    assert gate_ran == {True, False}, "the gate runs the branch for some inputs only"
    for a, b in zip(chain, http, strict=True):
        st = a.state
        assert st.plan is not None and st.plan.boundaries == b.plan.boundaries
        assert [tuple(p) for p in st.path] == [tuple(p) for p in b.path], (
            "same blocks, tiers, gates"
        )
        assert _exits_tried(st.trace.steps) == _exits_tried(b.steps), "same exits tried"
        assert st.exited_early == b.exited_early
        assert st.tier == b.answered_by
        assert st.fell_back == (b.fell_back or b.remote_fell_back)
        assert st.raw_input_left_device == b.raw_input_left_device is False
        assert torch.equal(a.output, b.output), "fp32 at every cut: the very same logits"
        if st.exited_early:
            assert st.trace.bytes_sent(0) == 0 and b.bytes_sent == 0
        else:
            assert st.trace.bytes_sent(0) > 0 and b.bytes_sent > 0
    if cloud_down:  # the edge finished what did not exit: one fallback each, on tier 1
        assert all(r.state.fell_back_on == 1 for r in chain if not r.state.exited_early)
        assert all(r.remote_fell_back for r in http if not r.exited_early)
