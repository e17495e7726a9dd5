"""The learned bottleneck: deployable BlockNet, deterministic codec, planner sees it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from collabinfer.errors import ModelError
from collabinfer.model.bottleneck import Bottleneck, bottleneck_net, deploy
from collabinfer.model.zoo import create_model
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import profile_model
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec


@pytest.fixture(scope="module")
def deployed():
    torch.manual_seed(0)
    teacher = create_model("tiny-cnn").eval()
    bn = Bottleneck(channels=2, out_channels=4, out_hw=14, hidden=8).eval()
    with torch.no_grad():  # a prior that is not flat
        bn.prior.log_scale.fill_(0.5)
    net = bottleneck_net(bn, teacher, 2).eval()
    return teacher, bn, deploy(net, bn, "test")


def test_net_is_encoder_decoder_then_the_teachers_tail(deployed) -> None:
    teacher, _, dep = deployed
    assert dep.net.block_names[:2] == ("encoder", "decoder")
    assert dep.net.block_names[2:] == teacher.block_names[2:]
    cuts = dep.net.cut_points()
    assert cuts[1].shape == (2, 7, 7) and cuts[2].shape == (4, 14, 14)
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        z = dep.net.run_until(x, 1)
        assert torch.equal(z, torch.round(z))  # the device sends integers


def test_codec_round_trip_is_exact_and_deterministic(deployed) -> None:
    _, _, dep = deployed
    x = torch.rand(1, 1, 28, 28)
    with torch.inference_mode():
        z = dep.net.run_until(x, 1)
        a, b = dep.codec.encode(z), dep.codec.encode(z)
        assert a.payload == b.payload
        assert torch.equal(dep.codec.decode(a), z)
        # split through the codec equals the monolithic forward
        assert torch.equal(dep.net.run_from(dep.codec.decode(a), 1), dep.net(x))
    assert a.payload_bytes < 2 * 7 * 7  # entropy coding beats one byte per symbol


def test_deploy_is_idempotent_and_refuses_other_tables(deployed) -> None:
    _, bn, dep = deployed
    assert deploy(dep.net, bn, "test").codec is dep.codec
    other = Bottleneck(channels=2, out_channels=4, out_hw=14, hidden=8)
    with torch.no_grad():
        other.prior.log_scale.fill_(2.0)
    with pytest.raises(ModelError, match="other tables"):
        deploy(dep.net, other, "test")


def test_planner_chooses_the_latent_on_a_slow_link(deployed) -> None:
    _, _, dep = deployed
    prof = profile_model(
        dep.net,
        "tiny+bn",
        repeats=3,
        cut_codecs={1: [dep.codec_name]},
        byte_samples=torch.rand(8, 1, 28, 28),
    )
    assert dep.codec_name in prof.cuts[1].codecs
    # measured bytes, but fixed times: the choice must not depend on this machine's noise
    prof = dataclasses.replace(
        prof,
        blocks=tuple(dataclasses.replace(b, time_ms=1.0) for b in prof.blocks),
        cuts=tuple(
            dataclasses.replace(
                c,
                codecs={
                    k: dataclasses.replace(v, encode_ms=0.01, decode_ms=0.01)
                    for k, v in c.codecs.items()
                },
            )
            for c in prof.cuts
        ),
    )
    tiers = [TierSpec("device", 100.0), TierSpec("edge")]
    plan = Planner(prof, tiers, min_device_blocks=1).plan([LinkProfile("slow", 0.05, 10.0)])
    assert plan.boundaries == (0, 1, dep.net.num_blocks)
    assert plan.codecs[0] == dep.codec_name


def test_bad_target_cut() -> None:
    teacher = create_model("tiny-cnn")
    with pytest.raises(ModelError, match="target_cut"):
        bottleneck_net(Bottleneck(2, 4, 14, 8), teacher, 0)
