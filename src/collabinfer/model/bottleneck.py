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

The **variational** bottleneck (paper, Section 3.3; ``variational=True``) is the
privacy defence: its encoder outputs a mean and a scale per latent element and
the device sends a *sample*, drawn afresh for every request, then rounded and
entropy-coded like the deterministic latent. A KL term to a standard normal
prior joins the training loss, so the weight of that term decides how much of
the input survives the noise. Because the sampling happens inside the encoder
block, every front end (the in-process chain, the device client, a tier
server hosting the encoder) runs the defence without knowing it exists.
"""

from __future__ import annotations

import copy
import math
import secrets
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


def fresh_generator() -> torch.Generator:
    """A generator seeded from the operating system's entropy, for one request.

    Why not torch's global generator: training code and tests seed it
    (``torch.manual_seed``), and a defence whose noise an attacker can replay
    by guessing a seed (or a request id) is no defence. 64 fresh bits a call
    cost about a microsecond.
    """
    return torch.Generator().manual_seed(secrets.randbits(63))


class VariationalEncoder(nn.Module):
    """Input -> a latent *sample*: mean + scale * noise, both predicted per element.

    Training draws the noise from torch's generator (reproducible, seeded by
    the recipe); inference draws it from :func:`fresh_generator` on every call.
    :meth:`moments` gives the mean and log-scale (for the KL term, and for an
    attacker who knows the weights).
    """

    LOG_SCALE_RANGE = (-7.0, 3.0)  # keeps exp() finite and the KL bounded

    def __init__(self, channels: int, hidden: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, 2, 1),
        )

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.net(x).chunk(2, dim=1)
        return mean, log_scale.clamp(*self.LOG_SCALE_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self.moments(x)
        if self.training:
            noise = torch.randn_like(mean)
        else:
            noise = torch.randn(mean.shape, generator=fresh_generator(), dtype=mean.dtype)
        return mean + log_scale.exp() * noise

    @classmethod
    def from_encoder(cls, enc: Encoder, log_scale: float = 0.0) -> VariationalEncoder:
        """Start from a trained deterministic encoder: same mean, scale ``exp(log_scale)``.

        The default, a scale of one integer step (the prior's), makes the
        noise matter from the first step: started from a tiny scale, the KL
        term's pull on the scale is too weak for a fine-tune of an epoch or two
        to grow it (measured: SSIM unchanged after one epoch from ``-4``), and
        the sweep would only measure the deterministic bottleneck again."""
        first, last = enc.net[0], enc.net[2]
        assert isinstance(first, nn.Conv2d) and isinstance(last, nn.Conv2d)
        out = cls(last.out_channels, first.out_channels, first.in_channels)
        new_first, new_last = out.net[0], out.net[2]
        assert isinstance(new_first, nn.Conv2d) and isinstance(new_last, nn.Conv2d)
        with torch.no_grad():
            new_first.load_state_dict(first.state_dict())
            c = last.out_channels
            new_last.weight.zero_()
            new_last.weight[:c].copy_(last.weight)
            assert new_last.bias is not None and last.bias is not None
            new_last.bias.fill_(log_scale)
            new_last.bias[:c].copy_(last.bias)
        return out


def kl_to_standard_normal(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, scale^2) || N(0, 1)) in nats, summed over each example's elements."""
    kl = 0.5 * (mean.square() + (2 * log_scale).exp() - 1.0) - log_scale
    return kl.flatten(1).sum(1)


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
    """Encoder + quantiser + prior + decoder, for training. Inference uses the BlockNet.

    ``variational``: the encoder is a :class:`VariationalEncoder` (see the module
    docstring); :meth:`kl` is then its KL term, else zero.
    """

    encoder: Encoder | VariationalEncoder

    def __init__(
        self,
        channels: int,
        out_channels: int,
        out_hw: int,
        hidden: int = 64,
        variational: bool = False,
    ) -> None:
        super().__init__()
        self.variational = variational
        self.encoder = VariationalEncoder(channels) if variational else Encoder(channels)
        self.quant = RoundST()
        self.prior = FactorizedLogistic(channels)
        self.decoder = Decoder(channels, out_channels, out_hw, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features at the target cut, and the estimated bits per example."""
        y = self.quant(self.encoder(x))
        return self.decoder(y), self.prior.bits(y)

    def kl(self, x: torch.Tensor) -> torch.Tensor:
        """The variational encoder's KL to the prior per example (nats); zeros otherwise."""
        if isinstance(self.encoder, VariationalEncoder):
            return kl_to_standard_normal(*self.encoder.moments(x))
        return torch.zeros(x.shape[0])

    def to_variational(self, log_scale: float = 0.0) -> Bottleneck:
        """A variational copy that starts where this deterministic one is."""
        if not isinstance(self.encoder, Encoder):
            raise ModelError("this bottleneck is already variational")
        out = copy.deepcopy(self)
        out.variational = True
        out.encoder = VariationalEncoder.from_encoder(self.encoder, log_scale)
        return out


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
    """Round to the integers the codec sends. Where a gradient is asked for (an
    inversion attacker optimising through the encoder), it passes straight
    through; the value is the rounded one either way."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        r = torch.round(y)
        if torch.is_grad_enabled() and y.requires_grad:
            return y + (r - y).detach()
        return r


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
    codec = register_tables(prior_tables(bottleneck, precision), tag)
    return DeployedBottleneck(net, codec, codec.name)


def prior_tables(bottleneck: Bottleneck, precision: int = 16) -> FactorizedTables:
    """The integer frequency tables of the learned prior: what both sides of a link code
    with, and what a model package stores (so a tier need not rebuild the prior)."""
    offsets, probs = bottleneck.prior.probabilities()
    return FactorizedTables.from_probabilities(probs, offsets, precision)


def register_tables(tables: FactorizedTables, tag: str) -> EntropyCodec:
    """Register the entropy codec ``ent-<tag>`` over ``tables``; the same tag with the same
    tables returns the registered codec, with other tables it is a :class:`ModelError`."""
    codec = EntropyCodec(tables, suffix=f"-{tag}")
    if codec.name in list_codecs():
        existing = get_codec(codec.name)
        if getattr(existing, "tables", None) != tables:
            raise ModelError(f"codec {codec.name} is registered with other tables")
        return existing  # type: ignore[return-value]
    register_codec(codec)
    return codec
