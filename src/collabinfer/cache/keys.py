"""Cache keys: unit vectors computed from the tensor the edge already holds.

Why the split's own features: the device sends them anyway, so the key costs
the edge one pooling (or one small matmul), never a second feature extractor
or the raw pixels (which would break the split's privacy). Three kinds:

* :class:`PooledKey` (``features``): the cut's tensor average-pooled to a
  ``grid x grid`` map per channel. Pooling buys tolerance to the small shifts
  that separate two views of one object, and a key of ``channels x grid^2``
  floats instead of the full map.
* :class:`FlatKey` (``latent``): the learned bottleneck's latent, flattened;
  it is already small (a few hundred values) and trained to keep what the
  task needs.
* :class:`ProjectionKey` (``projection``): a small learned map of the pooled
  features to 32-64 dims (:class:`ProjectionNet`, trained by metric learning on
  train images in :mod:`collabinfer.train.projection`), so that views of one
  object land close and other objects far.

Every key is L2-normalised, so squared distances lie in [0, 4] and one
threshold scale serves every key kind. ``version`` goes into the cache
namespace: a changed key function never meets keys of the old one.

Example::

    >>> import torch
    >>> key = PooledKey(grid=2)
    >>> key(torch.ones(1, 3, 8, 8)).shape
    (12,)
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from collabinfer.errors import ConfigError

__all__ = ["KEYS", "FlatKey", "Keyer", "PooledKey", "ProjectionKey", "ProjectionNet"]

KEYS = ("features", "latent", "projection")
EPS = 1e-12


class Keyer(Protocol):
    """Turns one request's tensor at the cut (a batch of one) into a unit key."""

    @property
    def version(self) -> str: ...

    def __call__(self, z: torch.Tensor) -> np.ndarray: ...


def _unit(v: torch.Tensor) -> np.ndarray:
    """Normalised in numpy: at batch 1, each torch op costs more than the arithmetic."""
    a = v.detach().reshape(-1).float().numpy()
    return np.asarray(a / max(float(np.sqrt(a @ a)), EPS), dtype=np.float32)


def _one_row(z: torch.Tensor) -> torch.Tensor:
    if z.shape[0] != 1:
        raise ConfigError(f"a cache key is one request's tensor; got a batch of {z.shape[0]}")
    return z


class PooledKey:
    """The cut's features average-pooled to ``grid x grid`` per channel (1-D tensors as is)."""

    def __init__(self, grid: int = 2) -> None:
        if grid < 1:
            raise ConfigError(f"pooling grid must be >= 1, got {grid}")
        self.grid = grid

    @property
    def version(self) -> str:
        return f"pool{self.grid}-v1"

    def pooled(self, z: torch.Tensor) -> torch.Tensor:
        """(rows, features): pooled and flattened, before normalising (for training)."""
        if z.dim() == 4:
            z = F.adaptive_avg_pool2d(z, self.grid)
        return z.reshape(z.shape[0], -1)

    def __call__(self, z: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return _unit(self.pooled(_one_row(z)))


class FlatKey:
    """The whole tensor, flattened (the bottleneck's latent: already small)."""

    @property
    def version(self) -> str:
        return "flat-v1"

    def __call__(self, z: torch.Tensor) -> np.ndarray:
        return _unit(_one_row(z).detach())


class ProjectionNet(nn.Module):
    """Features pooled to ``grid x grid`` -> a short unit embedding (two linear layers)."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int = 128, grid: int = 4) -> None:
        super().__init__()
        if not 1 <= out_dim <= in_dim * 4:
            raise ConfigError(f"projection to {out_dim} dims from {in_dim} makes no sense")
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class ProjectionKey:
    """A trained :class:`ProjectionNet` over the :class:`PooledKey` it was trained on."""

    def __init__(self, net: ProjectionNet) -> None:
        self.net = net.eval()
        pooled = self.pooled = PooledKey(net.grid)
        digest = hashlib.sha256()
        for name, tensor in sorted(net.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        self._version = f"proj{net.out_dim}-{pooled.version}-{digest.hexdigest()[:10]}"

    @property
    def version(self) -> str:
        return self._version

    def __call__(self, z: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return _unit(self.net(self.pooled.pooled(_one_row(z))))
