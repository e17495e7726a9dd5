"""What an attacker attacks: one cut of one model, one codec, one defence.

A :class:`Target` holds the three views the attacks need, and nothing else:

* ``send(x)``: exactly what the receiving tier decodes, one input at a time
  through the real codec (``codec.decode(codec.encode(z))``), after the
  device's defence, with the defence's fresh randomness on every call;
* ``head(x)``: the device's computation as a differentiable, deterministic
  function (for a stochastic defence, its expectation: the clean features
  under noise and inverted dropout, the encoder's *mean* under the variational
  bottleneck). A white-box attacker optimises through it;
* ``tail(z)``: the receiver's model from decoded features to logits; the
  shadow-model attacker trains a head against it, and it gives the task
  accuracy the defence leaves.

``new_head()`` is a freshly initialised copy of the head's architecture (the
shadow attacker knows the architecture, not the weights). The two ends of the
paradigm axis are targets too: cut 0 (the image itself, EC and CC) and
:func:`nothing_sent` (LC), so one table scores them all the same way.

    >>> from collabinfer.model.zoo import tiny_cnn
    >>> t = feature_target(tiny_cnn().eval(), 1, "int8")
    >>> t.send(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 4, 14, 14])
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from collabinfer.codec import Codec, get_codec
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import Bottleneck, VariationalEncoder
from collabinfer.privacy.defences import Defence

__all__ = ["Target", "bottleneck_target", "feature_target", "nothing_sent"]

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Target:
    cut: int  # the cut of the full model whose place the features take (0: the image)
    codec: str  # the codec on the wire ("none" when nothing is sent)
    defence: str  # one of privacy.defences.DEFENCES
    setting: str  # the defence's setting ("" for none)
    head: Fn
    send: Fn
    tail: Fn
    new_head: Callable[[], nn.Module]
    stochastic: bool
    sends: bool = True  # False: nothing leaves the device (LC)

    @property
    def label(self) -> str:
        where = "image" if self.cut == 0 else f"cut {self.cut}"
        extra = f" {self.defence} {self.setting}" if self.defence != "none" else ""
        return f"{where} {self.codec}{extra}"


M = TypeVar("M", bound=nn.Module)


def _frozen(module: M) -> M:
    """An eval-mode copy without gradients for its weights: attacks differentiate
    through it with respect to images only (and the caller's model is left as it was)."""
    out = copy.deepcopy(module).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def _per_input(codec: Codec, z: torch.Tensor) -> torch.Tensor:
    """Each input coded on its own, as the device sends it (batch 1)."""
    return torch.cat([codec.decode(codec.encode(z[i : i + 1])) for i in range(z.shape[0])])


def feature_target(net: BlockNet, cut: int, codec: str, defence: Defence | None = None) -> Target:
    """``net``'s activations at ``cut`` (0: the input image), defended, then coded."""
    if not 0 <= cut < net.num_blocks:
        raise ConfigError(f"cut must be in 0..{net.num_blocks - 1}, got {cut}")
    c = get_codec(codec)
    net = _frozen(net)

    def head(x: torch.Tensor) -> torch.Tensor:
        return net.run_until(x, cut)

    @torch.no_grad()
    def send(x: torch.Tensor) -> torch.Tensor:
        z = head(x)
        return _per_input(c, defence(z) if defence is not None else z)

    def tail(z: torch.Tensor) -> torch.Tensor:
        return net.run_from(z, cut)

    def new_head() -> nn.Module:
        fresh = copy.deepcopy(nn.Sequential(*net.blocks[:cut]))
        for m in fresh.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and m is not fresh:
                reset()
        return fresh.requires_grad_(True).train()

    return Target(
        cut,
        codec,
        defence.name if defence is not None else "none",
        defence.setting if defence is not None else "",
        head,
        send,
        tail,
        new_head,
        stochastic=defence is not None,
    )


def bottleneck_target(
    net: BlockNet, bottleneck: Bottleneck, codec: Codec, cut: int, setting: str
) -> Target:
    """A learned bottleneck's latent (``net`` is ``encoder | decoder | tail``):
    rounded and entropy-coded by ``codec``; variational when its encoder is.

    ``cut`` is the teacher cut the bottleneck stands in for (for the table).
    """
    enc = _frozen(bottleneck.encoder)
    variational = isinstance(enc, VariationalEncoder)
    net = _frozen(net)

    def head(x: torch.Tensor) -> torch.Tensor:
        if isinstance(enc, VariationalEncoder):
            return enc.moments(x)[0]
        return enc(x)

    @torch.no_grad()
    def send(x: torch.Tensor) -> torch.Tensor:
        return _per_input(codec, torch.round(enc(x)))  # a fresh sample per call when variational

    def tail(z: torch.Tensor) -> torch.Tensor:
        return net.run_from(z, 1)

    def new_head() -> nn.Module:
        fresh = copy.deepcopy(enc)
        for m in fresh.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
        fresh.requires_grad_(True).train()
        if isinstance(fresh, VariationalEncoder):
            return _MeanOnly(fresh)
        return fresh

    return Target(
        cut,
        codec.name,
        "variational" if variational else "none",
        setting if variational else "",
        head,
        send,
        tail,
        new_head,
        stochastic=variational,
    )


class _MeanOnly(nn.Module):
    """A variational encoder's mean path: the shadow's differentiable stand-in."""

    def __init__(self, enc: VariationalEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc.moments(x)[0]


def nothing_sent(net: BlockNet) -> Target:
    """Local computing: the attacker on the link sees no bytes about the input."""

    def empty(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 0)

    return Target(
        net.num_blocks,
        "none",
        "none",
        "",
        empty,
        empty,
        lambda z: z,
        nn.Identity,
        stochastic=False,
        sends=False,
    )
