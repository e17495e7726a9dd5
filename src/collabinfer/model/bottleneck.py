"""Bottleneck injection: a small encoder on the device, a decoder on the server.

Naive splitting ships feature maps larger than the input (16x28x28 floats after
the stem of ``fmnist-resnet``). A learned bottleneck replaces the teacher's head
up to cut ``target_cut`` with an asymmetric pair (paper, Section 2.1.1):

* the **encoder** runs on the device: two strided convolutions, ~0.2 MFLOPs,
  down to ``channels x 7 x 7`` latents;
* the latents are rounded to integers and entropy-coded under a learned
  per-channel prior (:class:`FactorizedLogistic`);
* the **decoder** runs on the server and reproduces the teacher's features at
  ``target_cut``, after which the teacher's own tail continues.

:func:`bottleneck_net` returns a :class:`~collabinfer.model.blocks.BlockNet`
whose cut 1 is the latent, so the planner, the chain and the profiler treat it
like any other model; the codec at that cut is made by
:meth:`FactorizedLogistic.tables` + :class:`collabinfer.codec.entropy.EntropyCodec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from collabinfer.codec import Codec, get_codec, list_codecs, register_codec
from collabinfer.codec.entropy import EntropyCodec, FactorizedTables
from collabinfer.errors import ModelError
from collabinfer.model.blocks import BlockNet


class Encoder(nn.Module):
    """Input (1x28x28) -> latent (channels x 7 x 7). Kept tiny: it runs on the device."""

    def __init__(self, channels: int, hidden: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latent -> the teacher's features at the target cut (ReLU output, so non-negative)."""

    def __init__(self, channels: int, out_channels: int, out_hw: int, hidden: int = 64) -> None:
        super().__init__()
        if out_hw not in (7, 14, 28):
            raise ModelError(f"decoder can only produce 7, 14 or 28 px features, not {out_hw}")
        ups: list[nn.Module] = []
        hw, c = 7, channels
        while hw < out_hw:
            ups += [nn.ConvTranspose2d(c, hidden, 4, 2, 1), nn.BatchNorm2d(hidden), nn.ReLU()]
            hw, c = hw * 2, hidden
        self.net = nn.Sequential(
            *ups,
            nn.Conv2d(c, hidden, 3, 1, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, 1, 1),
            nn.ReLU(),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class RoundST(nn.Module):
    """Quantise to integers: uniform noise while training (a differentiable proxy for
    the rate), hard rounding at inference (what the entropy coder sends)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            return y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return torch.round(y)


class FactorizedLogistic(nn.Module):
    """A per-channel discretised logistic prior over integer latents.

    ``P(k) = sigmoid((k + 0.5 - mu_c) / s_c) - sigmoid((k - 0.5 - mu_c) / s_c)``:
    two numbers per channel, cheap to turn into integer frequency tables for
    the entropy coder, and a good fit for the peaked, roughly symmetric
    latents a rate penalty produces.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        loc = self.loc.view(1, -1, 1, 1)
        scale = self.log_scale.exp().view(1, -1, 1, 1)
        upper = torch.sigmoid((y + 0.5 - loc) / scale)
        lower = torch.sigmoid((y - 0.5 - loc) / scale)
        return (upper - lower).clamp_min(1e-9)

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        """Estimated bits per example (sum over latent elements)."""
        return -torch.log2(self.likelihood(y)).flatten(1).sum(1)

    @torch.no_grad()
    def probabilities(self, tail_mass: float = 1e-7) -> tuple[list[int], list[list[float]]]:
        """Per channel: the smallest symbol and the probabilities of a support wide
        enough that at most ``tail_mass`` falls outside (symbols outside are clamped)."""
        offsets, probs = [], []
        for mu, ls in zip(self.loc.tolist(), self.log_scale.tolist(), strict=True):
            s = math.exp(ls)
            radius = max(1, math.ceil(s * math.log(2.0 / tail_mass)) + 1)
            lo = math.floor(mu) - radius
            ks = torch.arange(lo, math.ceil(mu) + radius + 1, dtype=torch.float64)
            p = torch.sigmoid((ks + 0.5 - mu) / s) - torch.sigmoid((ks - 0.5 - mu) / s)
            p = p.clamp_min(0.0)
            offsets.append(int(lo))
            probs.append((p / p.sum()).tolist())
        return offsets, probs


class Bottleneck(nn.Module):
    """Encoder + quantiser + prior + decoder, for training. Inference uses the BlockNet."""

    def __init__(self, channels: int, out_channels: int, out_hw: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = Encoder(channels)
        self.quant = RoundST()
        self.prior = FactorizedLogistic(channels)
        self.decoder = Decoder(channels, out_channels, out_hw, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features at the target cut, and the estimated bits per example."""
        y = self.quant(self.encoder(x))
        return self.decoder(y), self.prior.bits(y)


def bottleneck_net(bottleneck: Bottleneck, teacher: BlockNet, target_cut: int) -> BlockNet:
    """The deployable model: ``encoder | decoder | teacher blocks target_cut..n``.

    Rounding happens in the codec (the chain encodes the latent at cut 1);
    in-process without a codec, the decoder sees unrounded latents, so the
    encoder block rounds itself to keep both paths identical.
    """
    if not 1 <= target_cut < teacher.num_blocks:
        raise ModelError(f"target_cut must be in 1..{teacher.num_blocks - 1}")
    enc = nn.Sequential(bottleneck.encoder, _Round())
    blocks: list[tuple[str, nn.Module]] = [("encoder", enc), ("decoder", bottleneck.decoder)]
    for name, block in zip(
        teacher.block_names[target_cut:], teacher.blocks[target_cut:], strict=True
    ):
        blocks.append((name, block))
    return BlockNet(blocks, input_shape=teacher.input_shape)


class _Round(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.round(y)


@dataclass(frozen=True)
class DeployedBottleneck:
    """A trained bottleneck made deployable: the BlockNet and the entropy codec for cut 1."""

    net: BlockNet
    codec: Codec
    codec_name: str


def deploy(
    net: BlockNet, bottleneck: Bottleneck, tag: str, precision: int = 16
) -> DeployedBottleneck:
    """The one explicit step from trained weights to something that can send bytes.

    Builds integer frequency tables from the learned prior and registers an
    :class:`~collabinfer.codec.entropy.EntropyCodec` named ``ent-<tag>`` (both
    sides of a link derive the same tables from the same weights). Calling it
    twice with the same tag and weights returns the registered codec.
    """
    offsets, probs = bottleneck.prior.probabilities()
    tables = FactorizedTables.from_probabilities(probs, offsets, precision)
    codec = EntropyCodec(tables, suffix=f"-{tag}")
    if codec.name in list_codecs():
        existing = get_codec(codec.name)
        if getattr(existing, "tables", None) != tables:
            raise ModelError(f"codec {codec.name} is registered with other tables")
        codec = existing  # type: ignore[assignment]
    else:
        register_codec(codec)
    return DeployedBottleneck(net, codec, codec.name)
