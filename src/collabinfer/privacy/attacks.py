"""Model-inversion attacks on what crosses the wire (He, Zhang & Lee, ACSAC 2019).

Each attack turns received features (a :class:`~collabinfer.privacy.target.Target`'s
``send``) into image reconstructions in [0, 1]:

* :func:`rmle` (white-box, regularised maximum likelihood): the attacker has
  the head's weights and optimises ``x̂ = sigmoid(w)`` so that ``head(x̂)``
  matches what it received (squared error normalised by the features' own
  energy, so one step size fits every cut), plus a total-variation prior.
  The prior's weight is the attacker's to choose: :func:`tune_tv` picks it on
  the attacker's *auxiliary* images, never on the scored ones;
* :class:`InverseNet` trained by :func:`train_inverse` (black-box): pairs of
  (features, image) from auxiliary data, an up-sampling network that maps one
  to the other;
* :func:`train_shadow` + :func:`rmle` (query-free): the attacker has the tail
  (it runs the next tier) but never queries the device; it trains a fresh
  head of the known architecture so that the frozen tail classifies its
  features, which puts them in the same space as the real head's, then
  inverts the shadow.

*Adaptive* versions (:class:`AttackConfig.average_sends`) for stochastic
defences: the attacker knows the defence and its weights, so it observes
several sends of the same input and averages them (the noise's mean is the
clean signal), inverts the expectation (the head it differentiates is the
defence's mean, see :mod:`~collabinfer.privacy.target`), and trains its
inverse network on averaged *sampled* sends instead of clean features.

Every attack is seeded (``AttackConfig.seed``): the attacker's randomness is
its own business; the defence's randomness is fresh and never seeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError
from collabinfer.privacy.metrics import ssim
from collabinfer.privacy.names import ATTACKS
from collabinfer.privacy.target import Target
from collabinfer.progress import ProgressFn
from collabinfer.train.loop import Phase, fit

__all__ = [
    "ATTACKS",
    "AttackConfig",
    "InverseNet",
    "Reconstruction",
    "attack",
    "received",
    "rmle",
    "total_variation",
    "train_inverse",
    "train_shadow",
    "tune_tv",
]


@dataclass(frozen=True)
class AttackConfig:
    """The attacker's budget. Fixed before any target is scored (a-priori values
    from the papers' settings scaled to 28x28 images), except the TV weight,
    which the attacker tunes on its own auxiliary images."""

    rmle_steps: int = 150
    rmle_lr: float = 0.05
    tv_weights: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    tune_images: int = 8
    inverse_epochs: int = 5
    inverse_lr: float = 2e-3
    shadow_epochs: int = 2
    shadow_lr: float = 1e-3
    batch_size: int = 128
    average_sends: int = 8  # the adaptive attacker's K sends of one input
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.rmle_steps, self.inverse_epochs, self.shadow_epochs, self.average_sends) < 1:
            raise ConfigError("attack steps, epochs and average_sends must be >= 1")
        if not self.tv_weights or min(self.tv_weights) < 0:
            raise ConfigError("tv_weights must be a non-empty tuple of weights >= 0")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per image (N,): mean absolute difference of neighbours."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def received(target: Target, images: torch.Tensor, sends: int = 1) -> torch.Tensor:
    """What the attacker holds for each image: one send, or the mean of ``sends`` of them."""
    if sends == 1 or not target.stochastic:
        return target.send(images)
    return torch.stack([target.send(images) for _ in range(sends)]).mean(0)


def rmle(
    head: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    image_shape: tuple[int, ...],
    cfg: AttackConfig,
    tv_weight: float,
) -> torch.Tensor:
    """Reconstruct a batch whose ``head`` features should be ``z`` (each image on its own)."""
    w = torch.zeros(z.shape[0], *image_shape, requires_grad=True)
    opt = torch.optim.Adam([w], lr=cfg.rmle_lr)
    energy = z.flatten(1).square().sum(1).clamp_min(1e-8)
    for _ in range(cfg.rmle_steps):
        x = torch.sigmoid(w)
        err = (head(x) - z).flatten(1).square().sum(1) / energy
        loss = (err + tv_weight * total_variation(x)).sum()  # sum: images do not interact
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(w).detach()


def tune_tv(
    head: Callable[[torch.Tensor], torch.Tensor],
    send: Callable[[torch.Tensor], torch.Tensor],
    aux: Dataset,
    cfg: AttackConfig,
) -> float:
    """The TV weight with the best mean SSIM on ``cfg.tune_images`` auxiliary images."""
    x = aux.images[: cfg.tune_images]
    z = send(x)
    scores = {
        tv: float(ssim(x, rmle(head, z, tuple(x.shape[1:]), cfg, tv)).mean())
        for tv in cfg.tv_weights
    }
    return max(scores, key=lambda tv: scores[tv])


class InverseNet(nn.Module):
    """Features (a C x H x W map or a vector) -> an image, by 2x up-sampling steps.

    The input is standardised by a BatchNorm without parameters: features of
    different cuts differ in scale by orders of magnitude, and this keeps one
    learning rate right for all of them.
    """

    def __init__(
        self, feature_shape: tuple[int, ...], image_shape: tuple[int, ...], width: int = 64
    ) -> None:
        super().__init__()
        c_img, h_img, w_img = image_shape
        if len(feature_shape) == 3:
            c, h, _ = feature_shape
            steps = 0
            while h * 2**steps < h_img:
                steps += 1
            if h * 2**steps != h_img:
                raise ConfigError(
                    f"feature map {feature_shape} does not up-sample to {image_shape}"
                )
            self.inp: nn.Module = nn.Sequential(
                nn.BatchNorm2d(c, affine=False), nn.Conv2d(c, width, 3, 1, 1), nn.ReLU()
            )
        else:
            (d,) = feature_shape
            steps = 0
            while h_img % 2 ** (steps + 1) == 0 and steps < 2:
                steps += 1
            h0, w0 = h_img // 2**steps, w_img // 2**steps
            self.inp = nn.Sequential(
                nn.BatchNorm1d(d, affine=False),
                nn.Linear(d, width * h0 * w0),
                nn.ReLU(),
                nn.Unflatten(1, (width, h0, w0)),
            )
        ups: list[nn.Module] = []
        ch = width
        for _ in range(steps):
            ups += [nn.ConvTranspose2d(ch, max(ch // 2, 32), 4, 2, 1), nn.ReLU()]
            ch = max(ch // 2, 32)
        self.body = nn.Sequential(
            *ups,
            nn.Conv2d(ch, 32, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(32, c_img, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(self.inp(z)))


def _features_dataset(feats: torch.Tensor, images: torch.Tensor, split: str) -> Dataset:
    """(features as "images", index as "labels"): lets :func:`fit` walk feature/image pairs."""
    return Dataset(feats, torch.arange(images.shape[0]), split, "attack", "features")


def train_inverse(
    target: Target,
    aux: Dataset,
    cfg: AttackConfig,
    adaptive: bool,
    progress: ProgressFn | None = None,
) -> InverseNet:
    """Fit an :class:`InverseNet` on ``aux``'s (features, image) pairs.

    Non-adaptive: the features the head computes (the attacker does not know
    of a defence). Adaptive: the mean of ``average_sends`` real sends, as it
    will see them when it attacks.
    """
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        feats = torch.cat(
            [
                received(target, aux.images[i : i + 500], cfg.average_sends)
                if adaptive
                else target.head(aux.images[i : i + 500])
                for i in range(0, len(aux), 500)
            ]
        )
    net = InverseNet(tuple(feats.shape[1:]), tuple(aux.images.shape[1:]))
    images = aux.images

    def loss(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(net(z), images[idx])

    opt = torch.optim.Adam(net.parameters(), lr=cfg.inverse_lr)
    steps = cfg.inverse_epochs * ((len(aux) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    phase = Phase(
        f"attack: inverse network, {target.label}", cfg.inverse_epochs, loss, opt, sched, net.train
    )
    fit(phase, _features_dataset(feats, images, aux.split), cfg.batch_size, g, progress=progress)
    return net.eval()


def train_shadow(
    target: Target, aux: Dataset, cfg: AttackConfig, progress: ProgressFn | None = None
) -> nn.Module:
    """A fresh head trained so that the frozen tail classifies ``aux`` through it."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    shadow = target.new_head()
    opt = torch.optim.Adam(shadow.parameters(), lr=cfg.shadow_lr)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(target.tail(shadow(x)), y)

    phase = Phase(
        f"attack: shadow head, {target.label}", cfg.shadow_epochs, loss, opt, modes=shadow.train
    )
    fit(phase, aux, cfg.batch_size, g, progress=progress)
    for p in shadow.parameters():
        p.requires_grad_(False)
    return shadow.eval()


@dataclass(frozen=True)
class Reconstruction:
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    seconds: float  # the attack's whole cost: training, tuning and inverting


def attack(
    name: str,
    target: Target,
    scored: torch.Tensor,
    aux: Dataset,
    cfg: AttackConfig,
    adaptive: bool = False,
    progress: ProgressFn | None = None,
) -> Reconstruction:
    """Run attack ``name`` (one of :data:`ATTACKS`) on ``scored`` images sent through ``target``.

    ``aux`` is the attacker's data (for ``inverse-ood``, pass the class
    subset); the caller checks it is disjoint from ``scored``.
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {ATTACKS}")
    if adaptive and not target.stochastic:
        raise ConfigError(f"{target.label} is deterministic: there is nothing to adapt to")
    t0 = time.perf_counter()
    shape = tuple(scored.shape[1:])
    sends = cfg.average_sends if adaptive else 1
    if name == "prior":
        out = aux.images.mean(0, keepdim=True).expand_as(scored).clone()
    elif not target.sends:
        raise ConfigError(f"nothing is sent at {target.label}: only the prior attack applies")
    elif name == "identity":
        if target.cut != 0:
            raise ConfigError("the identity attack reads an image: cut 0 only")
        out = received(target, scored, sends).clamp(0, 1)
    elif name == "rmle":
        tv = tune_tv(target.head, lambda x: received(target, x, sends), aux, cfg)
        out = rmle(target.head, received(target, scored, sends), shape, cfg, tv)
    elif name in ("inverse", "inverse-ood"):
        net = train_inverse(target, aux, cfg, adaptive, progress)
        with torch.no_grad():
            out = net(received(target, scored, sends))
    else:  # shadow: query-free, so its TV weight is tuned on the shadow's own features
        shadow = train_shadow(target, aux, cfg, progress)
        tv = tune_tv(shadow, shadow, aux, cfg)
        out = rmle(shadow, received(target, scored, sends), shape, cfg, tv)
    return Reconstruction(out.detach(), time.perf_counter() - t0)
