"""The attacks on tiny models and synthetic images: each recovers something, honestly scored."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.errors import ConfigError
from collabinfer.model.bottleneck import Bottleneck, bottleneck_net, deploy
from collabinfer.model.zoo import create_model
from collabinfer.privacy.attacks import (
    AttackConfig,
    InverseNet,
    attack,
    received,
    rmle,
    total_variation,
)
from collabinfer.privacy.aux import class_subset, image_digests, require_disjoint
from collabinfer.privacy.defences import GaussianNoise
from collabinfer.privacy.metrics import ssim
from collabinfer.privacy.target import bottleneck_target, feature_target, nothing_sent

CFG = AttackConfig(
    rmle_steps=60,
    tv_weights=(1e-3, 1e-1),
    tune_images=4,
    inverse_epochs=6,
    shadow_epochs=1,
    batch_size=32,
    average_sends=4,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("tiny-cnn").eval()


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, Dataset]:
    return synthetic_dataset(192, seed=1, split="train"), synthetic_dataset(8, seed=3, split="test")


def _gray(x: torch.Tensor) -> float:
    return float(ssim(x, torch.full_like(x, 0.5)).mean())


def test_feature_target_sends_decoded_int8_bytes_one_input_at_a_time(net) -> None:
    t = feature_target(net, 1, "int8")
    x = torch.rand(3, 1, 28, 28)
    sent, clean = t.send(x), t.head(x)
    assert sent.shape == clean.shape and not torch.equal(sent, clean)  # quantised
    assert torch.allclose(sent, clean, atol=float(clean.abs().max()) / 100)
    step = float(clean[1].max() - clean[1].min()) / 255  # one int8 step of input 1's range
    assert float((t.send(x[1:2]) - sent[1:2]).abs().max()) <= step * 1.01  # coded per input
    assert not t.stochastic and t.label == "cut 1 int8"


def test_a_target_leaves_the_callers_model_untouched(net) -> None:
    before = [p.requires_grad for p in net.parameters()]
    feature_target(net, 2, "fp32")
    assert [p.requires_grad for p in net.parameters()] == before


def test_a_defended_target_is_stochastic_and_its_head_is_clean(net) -> None:
    t = feature_target(net, 1, "fp32", GaussianNoise(1.0))
    x = torch.rand(2, 1, 28, 28)
    assert t.stochastic and t.defence == "noise" and t.setting == "sigma=1"
    assert not torch.equal(t.send(x), t.send(x))
    avg = received(t, x, sends=64)
    one = t.send(x)
    err = lambda z: float((z - t.head(x)).square().mean())  # noqa: E731
    assert err(avg) < err(one) / 8  # averaging sends recovers the clean features


def test_rmle_recovers_an_image_from_early_features(net, data) -> None:
    _, test = data
    x = test.images
    t = feature_target(net, 1, "fp32")
    rec = rmle(t.head, t.send(x), (1, 28, 28), dataclasses.replace(CFG, rmle_steps=150), 1e-3)
    assert float(ssim(x, rec).mean()) > _gray(x) + 0.3


def test_total_variation_prefers_smooth_images() -> None:
    flat = torch.full((1, 1, 28, 28), 0.5)
    noisy = torch.rand(1, 1, 28, 28)
    assert float(total_variation(flat)) == 0.0 < float(total_variation(noisy))


@pytest.mark.parametrize("shape", [(4, 14, 14), (4, 7, 7), (16,), (4, 28, 28)])
def test_inverse_net_maps_any_cut_to_an_image(shape) -> None:
    with torch.no_grad():
        out = InverseNet(shape, (1, 28, 28))(torch.rand(2, *shape))
    assert out.shape == (2, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_inverse_net_refuses_a_map_that_does_not_upsample() -> None:
    with pytest.raises(ConfigError, match="up-sample"):
        InverseNet((4, 5, 5), (1, 28, 28))


@pytest.mark.parametrize("name", ["inverse", "shadow"])
def test_learned_attacks_beat_the_mean_image(net, data, name) -> None:
    aux, test = data
    t = feature_target(net, 1, "int8")
    prior = attack("prior", t, test.images, aux, CFG)
    rec = attack(name, t, test.images, aux, CFG)
    assert rec.images.shape == test.images.shape and rec.seconds > 0
    assert float(ssim(test.images, rec.images).mean()) > float(
        ssim(test.images, prior.images).mean()
    )


def test_identity_reads_the_sent_image_and_prior_needs_nothing(net, data) -> None:
    aux, test = data
    rec = attack("identity", feature_target(net, 0, "u8"), test.images, aux, CFG)
    assert float(ssim(test.images, rec.images).mean()) > 0.99
    lc = nothing_sent(net)
    guess = attack("prior", lc, test.images, aux, CFG)
    assert torch.allclose(guess.images[0], aux.images.mean(0))
    with pytest.raises(ConfigError, match="nothing is sent"):
        attack("rmle", lc, test.images, aux, CFG)


def test_attack_arguments_are_checked(net, data) -> None:
    aux, test = data
    t = feature_target(net, 2, "fp32")
    with pytest.raises(ConfigError, match="unknown attack"):
        attack("magic", t, test.images, aux, CFG)
    with pytest.raises(ConfigError, match="deterministic"):
        attack("rmle", t, test.images, aux, CFG, adaptive=True)
    with pytest.raises(ConfigError, match="cut 0"):
        attack("identity", t, test.images, aux, CFG)


def test_bottleneck_target_sends_integers_and_variational_sends_vary(net) -> None:
    bn = Bottleneck(2, 4, 14, hidden=8).eval()
    bnet = bottleneck_net(bn, net, 1).eval()
    dep = deploy(bnet, bn, "privtest")
    x = torch.rand(2, 1, 28, 28)
    det = bottleneck_target(bnet, bn, dep.codec, 1, "")
    sent = det.send(x)
    assert torch.equal(sent, sent.round()) and torch.equal(sent, det.send(x))
    assert det.defence == "none" and not det.stochastic
    var = bn.to_variational(log_scale=1.0).eval()
    vt = bottleneck_target(bottleneck_net(var, net, 1), var, dep.codec, 1, "kl=0.1")
    assert vt.stochastic and vt.defence == "variational" and vt.setting == "kl=0.1"
    assert not torch.equal(vt.send(x), vt.send(x))
    assert torch.allclose(vt.head(x), var.encoder.moments(x)[0])  # the attacker's mean


def test_adaptive_attack_on_noise_beats_the_naive_one(net, data) -> None:
    aux, test = data
    t = feature_target(net, 1, "fp32", GaussianNoise(3.0))
    naive = attack("rmle", t, test.images, aux, CFG)
    adaptive = attack("rmle", t, test.images, aux, dataclasses.replace(CFG, average_sends=16), True)
    assert float(ssim(test.images, adaptive.images).mean()) > float(
        ssim(test.images, naive.images).mean()
    )


def test_aux_data_that_contains_a_scored_image_is_refused() -> None:
    train = synthetic_dataset(32, seed=1, split="train")
    scored = synthetic_dataset(8, seed=3, split="test")
    require_disjoint(train, scored)  # disjoint: fine
    leaky = Dataset(
        torch.cat([train.images, scored.images[:1]]),
        torch.cat([train.labels, scored.labels[:1]]),
        "train",
        "x",
        "leaky",
    )
    with pytest.raises(ConfigError, match="contains 1 of the scored images"):
        require_disjoint(leaky, scored)
    with pytest.raises(ConfigError, match="test split"):
        require_disjoint(scored, scored)
    assert len(image_digests(train.images)) == len(train)


def test_class_subset_keeps_only_those_classes() -> None:
    data = synthetic_dataset(64, seed=1, split="train")
    sub = class_subset(data, (0, 1, 2), n=5)
    assert len(sub) <= 5 and set(sub.labels.tolist()) <= {0, 1, 2}
    with pytest.raises(ConfigError, match="no examples"):
        class_subset(synthetic_dataset(4, seed=1, num_classes=2, split="train"), (7,))
