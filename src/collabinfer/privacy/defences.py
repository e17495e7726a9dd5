"""Defences applied on the device to the features before they are coded and sent.

Two baselines from He, Zhang & Lee (IoTJ 2020), both stochastic and both
drawing fresh randomness per call (:func:`~collabinfer.model.bottleneck.fresh_generator`,
never a fixed seed or the request id):

* :class:`GaussianNoise`: add ``N(0, (sigma * s)^2)`` where ``s`` is the
  standard deviation of *this input's* features, so ``sigma`` is a
  noise-to-signal ratio that means the same at every cut;
* :class:`FeatureDropout`: zero each element with probability ``p`` and scale
  the rest by ``1 / (1 - p)`` so the tail sees the same expected features.

Neither retrains the tail: that is what makes them cheap, and why they cost
accuracy. The third defence, the variational bottleneck, lives in the model
(:class:`~collabinfer.model.bottleneck.VariationalEncoder`) because it is
trained with the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from collabinfer.errors import ConfigError
from collabinfer.model.bottleneck import fresh_generator
from collabinfer.privacy.names import DEFENCES

__all__ = ["DEFENCES", "Defence", "FeatureDropout", "GaussianNoise"]


class Defence(Protocol):
    @property
    def name(self) -> str: ...  # one of DEFENCES

    @property
    def setting(self) -> str: ...

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class GaussianNoise:
    sigma: float
    name: str = "noise"

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"noise sigma must be > 0, got {self.sigma}")

    @property
    def setting(self) -> str:
        return f"sigma={self.sigma:g}"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        s = z.flatten(1).std(1).view(-1, *([1] * (z.dim() - 1)))
        noise = torch.randn(z.shape, generator=fresh_generator(), dtype=z.dtype)
        return z + self.sigma * s * noise


@dataclass(frozen=True)
class FeatureDropout:
    p: float
    name: str = "dropout"

    def __post_init__(self) -> None:
        if not 0 < self.p < 1:
            raise ConfigError(f"dropout p must lie in (0, 1), got {self.p}")

    @property
    def setting(self) -> str:
        return f"p={self.p:g}"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(z.shape, generator=fresh_generator()) >= self.p
        return torch.where(keep, z / (1 - self.p), torch.zeros_like(z))
