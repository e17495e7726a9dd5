"""Cache keys: unit float32 vectors of the declared size, one request at a time, and
pooled keys that forgive a small shift more than a different image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from collabinfer.cache.keys import FlatKey, Keyer, PooledKey, ProjectionKey, ProjectionNet
from collabinfer.errors import ConfigError

SHAPE = (1, 3, 8, 8)


def _projection(out_dim: int = 8, seed: int = 0) -> ProjectionKey:
    torch.manual_seed(seed)
    return ProjectionKey(ProjectionNet(3 * 2 * 2, out_dim=out_dim, grid=2))


KEYERS: dict[str, tuple[Callable[[], Keyer], int]] = {  # a keyer, and its dims for SHAPE
    "pooled1": (lambda: PooledKey(1), 3),
    "pooled2": (lambda: PooledKey(2), 12),
    "pooled4": (lambda: PooledKey(4), 48),
    "flat": (FlatKey, 3 * 8 * 8),
    "projection": (_projection, 8),
}


@pytest.mark.parametrize("name", sorted(KEYERS))
def test_keys_are_unit_float32_of_the_expected_dims(name: str) -> None:
    make, dims = KEYERS[name]
    keyer = make()
    for seed in range(3):
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
        key = keyer(z)
        assert isinstance(key, np.ndarray) and key.dtype == np.float32
        assert key.shape == (dims,)
        assert float(np.linalg.norm(key)) == pytest.approx(1.0, abs=1e-5)
    assert keyer(torch.ones(SHAPE)).shape == (dims,)
    assert isinstance(keyer.version, str) and keyer.version


@pytest.mark.parametrize("name", sorted(KEYERS))
def test_a_batch_of_two_is_a_config_error(name: str) -> None:
    keyer = KEYERS[name][0]()
    with pytest.raises(ConfigError):
        keyer(torch.randn(2, *SHAPE[1:]))


@pytest.mark.parametrize("name", sorted(KEYERS))
def test_keys_do_not_depend_on_the_scale_of_the_features(name: str) -> None:
    keyer = KEYERS[name][0]()
    z = torch.randn(SHAPE)
    if name == "projection":  # the net is not homogeneous (biases); only the same input
        np.testing.assert_array_equal(keyer(z), keyer(z.clone()))
    else:
        np.testing.assert_allclose(keyer(z), keyer(3.0 * z), atol=1e-6)


def test_a_zero_tensor_gives_a_finite_key() -> None:
    for keyer in (PooledKey(2), FlatKey()):
        assert np.isfinite(keyer(torch.zeros(SHAPE))).all()


def test_pooled_key_passes_flat_features_through() -> None:
    z = torch.randn(1, 10)
    key = PooledKey(2)(z)
    np.testing.assert_allclose(key, (z[0] / z[0].norm()).numpy(), atol=1e-6)


def test_bad_key_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        PooledKey(0)
    with pytest.raises(ConfigError):
        ProjectionNet(4, out_dim=0)
    with pytest.raises(ConfigError):
        ProjectionNet(4, out_dim=17)


def test_projection_pools_on_its_own_grid() -> None:
    net = ProjectionNet(3 * 4 * 4, out_dim=8, grid=4)
    assert ProjectionKey(net)(torch.randn(SHAPE)).shape == (8,)


def test_projection_version_follows_the_weights() -> None:
    same_a, same_b = _projection(seed=1), _projection(seed=1)
    assert same_a.version == same_b.version  # same weights, same version
    assert _projection(seed=2).version != same_a.version
    net = ProjectionNet(12, out_dim=8, grid=2)
    before = ProjectionKey(net).version
    with torch.no_grad():
        net.net[0].weight[0, 0] += 1e-3
    assert ProjectionKey(net).version != before
    assert PooledKey(2).version in before  # the pooling it was trained on is part of it
    assert PooledKey(2).version != PooledKey(4).version != FlatKey().version


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Random low-frequency images: noise on a coarse grid, upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 5, 5, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("grid", [2, 4])
def test_pooled_key_forgives_a_one_pixel_shift_more_than_another_image(grid: int) -> None:
    keyer = PooledKey(grid)
    images = _smooth_images(8, seed=grid)
    for i in range(len(images)):
        x = images[i : i + 1]
        shifted = torch.roll(x, shifts=(1, 1), dims=(2, 3))
        key = keyer(x)
        d_shift = float(((key - keyer(shifted)) ** 2).sum())
        d_other = min(
            float(((key - keyer(images[j : j + 1])) ** 2).sum())
            for j in range(len(images))
            if j != i
        )
        assert d_shift < d_other
