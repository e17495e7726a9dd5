"""SSIM/PSNR/recognisability, the two feature defences and the variational encoder."""

from __future__ import annotations

import pytest
import torch

from collabinfer.errors import ConfigError
from collabinfer.model.bottleneck import (
    Bottleneck,
    Encoder,
    VariationalEncoder,
    kl_to_standard_normal,
)
from collabinfer.privacy.defences import FeatureDropout, GaussianNoise
from collabinfer.privacy.metrics import PSNR_CAP_DB, psnr, recognisability, ssim
from collabinfer.train.bottleneck import BottleneckConfig


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28)


def test_ssim_is_one_for_a_copy_and_falls_with_noise() -> None:
    x = _images()
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    mild = ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    heavy = ssim(x, (x + 0.5 * torch.randn_like(x)).clamp(0, 1))
    assert bool((heavy < mild).all()) and bool((mild < 1).all())


def test_psnr_caps_an_exact_copy_and_is_finite_otherwise() -> None:
    x = _images(2)
    assert psnr(x, x).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]
    y = (x + 0.1).clamp(0, 1)
    assert bool((psnr(x, y) < PSNR_CAP_DB).all())


def test_metrics_refuse_mismatched_batches() -> None:
    with pytest.raises(ConfigError, match="one shape"):
        ssim(_images(2), _images(3))


def test_recognisability_is_the_classifiers_accuracy() -> None:
    labels = torch.tensor([0, 1, 0, 1])

    def always_zero(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], 2)

    assert recognisability(always_zero, _images(), labels) == 0.5


@pytest.mark.parametrize("defence", [GaussianNoise(0.5), FeatureDropout(0.5)])
def test_defences_draw_fresh_randomness_whatever_the_seed(defence) -> None:
    z = torch.rand(2, 8, 7, 7) + 0.5
    torch.manual_seed(0)
    a = defence(z)
    torch.manual_seed(0)
    b = defence(z)
    assert not torch.equal(a, b)  # a replayed seed does not replay the defence


def test_noise_is_relative_to_each_inputs_features() -> None:
    z = torch.randn(2, 64, 14, 14) * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)
    out = GaussianNoise(0.5)(z)
    ratio = (out - z).flatten(1).std(1) / z.flatten(1).std(1)
    assert torch.allclose(ratio, torch.tensor([0.5, 0.5]), atol=0.03)


def test_dropout_zeroes_p_of_the_features_and_keeps_the_mean() -> None:
    z = torch.ones(1, 64, 32, 32)
    out = FeatureDropout(0.7)(z)
    assert abs(float((out == 0).float().mean()) - 0.7) < 0.02
    assert abs(float(out.mean()) - 1.0) < 0.05


def test_defence_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        GaussianNoise(0.0)
    with pytest.raises(ConfigError):
        FeatureDropout(1.0)


def test_variational_encoder_starts_at_the_deterministic_mean() -> None:
    enc = Encoder(4)
    var = VariationalEncoder.from_encoder(enc, log_scale=-4.0)
    x = _images(2)
    mean, log_scale = var.moments(x)
    assert torch.allclose(mean, enc(x), atol=1e-6)
    assert torch.allclose(log_scale, torch.full_like(log_scale, -4.0))


def test_variational_encoder_samples_afresh_per_call_in_eval() -> None:
    var = VariationalEncoder.from_encoder(Encoder(4), log_scale=0.0).eval()
    x = _images(1)
    torch.manual_seed(0)
    a = var(x)
    torch.manual_seed(0)
    b = var(x)
    assert not torch.equal(a, b)
    mean, _ = var.moments(x)
    with torch.no_grad():
        draws = torch.stack([var(x) for _ in range(400)])
    assert torch.allclose(draws.mean(0), mean, atol=0.25)  # unbiased around the mean
    assert abs(float(draws.std(0).mean()) - 1.0) < 0.1  # scale exp(0) = 1


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(2, 4, 7, 7)
    assert torch.allclose(kl_to_standard_normal(zeros, zeros), torch.zeros(2))
    assert bool((kl_to_standard_normal(zeros + 1, zeros - 2) > 0).all())


def test_bottleneck_to_variational_and_its_kl() -> None:
    bn = Bottleneck(4, 16, 14, hidden=8)
    assert float(bn.kl(_images(2)).abs().sum()) == 0.0
    var = bn.to_variational()
    assert var.variational and isinstance(var.encoder, VariationalEncoder)
    assert bool((var.kl(_images(2)) > 0).all())


def test_kl_weight_needs_a_variational_bottleneck() -> None:
    with pytest.raises(ConfigError, match="variational"):
        BottleneckConfig(kl_weight=0.1)
    assert BottleneckConfig(variational=True, kl_weight=0.1).kl_weight == 0.1
