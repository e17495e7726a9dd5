"""The variational bottleneck deployed: the device samples afresh per request, in the
chain and through the device client to a real tier app, and the edge only decodes."""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest
import torch

from collabinfer.errors import ConfigError
from collabinfer.model.bottleneck import Bottleneck, bottleneck_net, deploy
from collabinfer.model.zoo import create_model
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.profile import profile_model
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.policy import StaticPolicy
from collabinfer.serve import ServerConfig, create_app
from collabinfer.serve.client import DeviceClient
from collabinfer.serve.server import load_served_model
from collabinfer.testing.links import MockLink
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

NAME = "tiny-cnn+vbn"
TIERS = (TierSpec("device", 1.0), TierSpec("edge", 1.0))


@pytest.fixture(scope="module")
def deployed():
    torch.manual_seed(0)
    teacher = create_model("tiny-cnn").eval()
    det = Bottleneck(channels=2, out_channels=4, out_hw=14, hidden=8)
    var = det.to_variational(log_scale=0.5).eval()  # noise of scale ~1.6 integer steps
    net = bottleneck_net(var, teacher, 2).eval()
    dep = deploy(net, var, "vbn-test")
    prof = profile_model(
        net,
        NAME,
        repeats=1,
        cut_codecs={1: [dep.codec_name]},
        byte_samples=torch.rand(4, 1, 28, 28),
    )
    b, c = (0, 1, net.num_blocks), (dep.codec_name, None)
    plan = Plan(b, c, "latency", evaluate_plan(prof, TIERS, [LinkProfile("l", 10.0, 5.0)], b, c))
    return net, prof, plan


def test_the_chain_sends_a_fresh_sample_of_the_same_input(deployed) -> None:
    net, prof, plan = deployed
    chain = Chain(copy.deepcopy(net), TIERS, [MockLink(0.001)], StaticPolicy(plan), profile=prof)
    x = torch.rand(1, 1, 28, 28)
    outs = []
    for _ in range(3):
        torch.manual_seed(0)  # a replayed seed must not replay the noise
        r = chain.run(x)
        assert r.state.trace.bytes_sent(0) > 0 and r.state.path[0].tier == 0
        outs.append(r.output)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_the_device_client_samples_and_the_edge_decodes(deployed) -> None:
    net, prof, plan = deployed
    edge = create_app(ServerConfig("edge", tier_index=1), copy.deepcopy(net), NAME, profile=prof)
    x = torch.rand(1, 28, 28)

    async def main():
        async with edge.router.lifespan_context(edge):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=edge))
            client = DeviceClient(
                copy.deepcopy(net),
                NAME,
                "http://edge",
                StaticPolicy(plan),
                TIERS,
                profile=prof,
                http=http,
                rtt_probe_s=None,
            )
            try:
                return [await client.infer(x, f"v-{i}") for i in range(3)]
            finally:
                await http.aclose()

    results = asyncio.run(main())
    for r in results:
        assert r.answered_by == 1 and not r.fell_back
        assert (r.path[0].block, r.path[0].tier) == (0, 0)  # the encoder ran on the device
    logits = [r.output for r in results]
    assert not torch.equal(logits[0], logits[1]) and not torch.equal(logits[1], logits[2])


def test_serving_a_variational_bottleneck_needs_trained_weights() -> None:
    with pytest.raises(ConfigError, match="trained weights"):
        load_served_model("tiny-cnn+vbn", untrained=True)
