"""Exit heads sit at cut points, take the tensor there, and score their confidence."""

from __future__ import annotations

import math

import pytest
import torch

from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.exits import ExitBranches, confidence
from collabinfer.model.zoo import create_model


@pytest.fixture(scope="module")
def net() -> BlockNet:
    torch.manual_seed(0)
    return create_model("fmnist-resnet").eval()


def test_for_model_places_heads_at_the_cuts(net: BlockNet) -> None:
    exits = ExitBranches.for_model(net, cuts=(1, 3, 5)).eval()
    points = net.cut_points()
    assert exits.cuts == (1, 3, 5)
    assert exits.names == ("after_stem", "after_res1b", "after_res2b")
    assert len(exits) == 3
    assert [exits.index_at(c) for c in range(9)] == [None, 0, None, 1, None, 2, None, None, None]
    assert torch.equal(exits.temperature, torch.ones(3))
    x = torch.rand(2, 1, 28, 28)
    with torch.inference_mode():
        for e, c in enumerate(exits.cuts):
            z = net.run_until(x, c)
            assert tuple(z.shape[1:]) == points[c].shape
            assert exits.logits(e, z).shape == (2, 10)


def test_a_head_on_flat_features_is_linear(net: BlockNet) -> None:
    exits = ExitBranches.for_model(net, cuts=(8,), num_classes=7)
    assert isinstance(exits.heads[0], torch.nn.Linear)
    assert exits.logits(0, torch.rand(3, 64)).shape == (3, 7)


@pytest.mark.parametrize("cuts", [(0, 3), (1, 9), (1, 12), (-1,)])
def test_cuts_outside_the_backbone_are_config_errors(net: BlockNet, cuts: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError):
        ExitBranches.for_model(net, cuts=cuts)


@pytest.mark.parametrize("cuts", [(3, 1), (1, 1, 3), ()])
def test_unsorted_repeated_or_empty_cuts_are_config_errors(
    net: BlockNet, cuts: tuple[int, ...]
) -> None:
    with pytest.raises(ConfigError):
        ExitBranches.for_model(net, cuts=cuts)


def test_mismatched_lengths_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ExitBranches((1, 2), [(4, 14, 14)], ["a", "b"], 10)


@pytest.mark.parametrize(
    "temps", [(1.0, 2.0), (1.0, 2.0, 3.0, 4.0), (1.0, 0.0, 2.0), (1.0, -1.0, 2.0), (math.nan,) * 3]
)
def test_set_temperatures_rejects_bad_values(net: BlockNet, temps: tuple[float, ...]) -> None:
    exits = ExitBranches.for_model(net, cuts=(1, 3, 5))
    with pytest.raises(ConfigError):
        exits.set_temperatures(temps)
    assert torch.equal(exits.temperature, torch.ones(3))  # left untouched


def test_temperatures_scale_the_calibrated_logits(net: BlockNet) -> None:
    exits = ExitBranches.for_model(net, cuts=(1, 3, 5)).eval()
    exits.set_temperatures([0.5, 2.0, 4.0])
    assert exits.temperature.tolist() == [0.5, 2.0, 4.0]
    z = torch.rand(4, 16, 28, 28)
    with torch.inference_mode():
        raw = exits.logits(1, z)
        assert torch.allclose(exits.calibrated(1, z), raw / 2.0)
        logits, conf = exits.score(1, z, "maxprob")
        assert torch.allclose(logits, raw / 2.0)
        assert torch.allclose(conf, torch.softmax(raw / 2.0, dim=1).amax(1))
        logits, conf = exits.score(1, z, "entropy")  # the baseline is uncalibrated
        assert torch.equal(logits, raw)
        assert torch.allclose(conf, confidence(raw, "entropy"))


def test_maxprob_lies_in_its_range() -> None:
    logits = 3.0 * torch.randn(64, 10)
    logits[0] = 0.0  # uniform: the least confident
    logits[1] = torch.tensor([100.0] + [0.0] * 9)  # one-hot: the most confident
    c = confidence(logits, "maxprob")
    assert c.shape == (64,)
    assert bool(((c > 0) & (c <= 1)).all())
    assert bool((c >= 0.1 - 1e-6).all())
    assert float(c[0]) == pytest.approx(0.1)
    assert float(c[1]) == pytest.approx(1.0)
    assert torch.allclose(c, torch.softmax(logits, 1).max(1).values)


def test_entropy_score_is_minus_the_entropy() -> None:
    logits = 3.0 * torch.randn(64, 10)
    logits[0] = 0.0
    logits[1] = torch.tensor([100.0] + [0.0] * 9)
    c = confidence(logits, "entropy")
    assert bool((c <= 0).all())
    assert bool((c >= -math.log(10) - 1e-5).all())
    assert float(c[0]) == pytest.approx(-math.log(10))
    assert float(c[1]) == pytest.approx(0.0, abs=1e-6)
    p = torch.softmax(logits, 1)
    assert torch.allclose(c, (p * p.log()).sum(1), atol=1e-5)
    # more peaked: more confident
    assert float(confidence(2 * logits[2:3], "entropy")) > float(c[2])


def test_unknown_score_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        confidence(torch.randn(2, 10), "margin")
