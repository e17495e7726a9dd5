"""Dynamic depth: ConvNet-AIG-style gates that skip residual branches per input.

A :class:`GatedResidual` wraps a :class:`~collabinfer.model.zoo.ResidualBlock`
and asks a tiny :class:`Gate` (global pooling + two linear layers, Veit &
Belongie 2018) whether this input needs the block's residual branch. Training
samples the decision with Gumbel-softmax and a straight-through hard sample,
so the network sees the same on/off behaviour it will meet at inference; at
inference the decision is deterministic (``open`` iff the gate's open logit is
larger).

A skipped branch is *not executed*: at batch 1 the block returns
``relu(shortcut(x))`` without touching its convolutions, and in a batch only
the inputs whose gate opened go through the branch (index, run, scatter back),
never a multiply-by-zero. Forced open (:func:`gates_forced`) every block is
the ungated block, bit for bit.

The gated model stays a :class:`~collabinfer.model.blocks.BlockNet`: a gated
block is still one block, tensor in, tensor out, so splitting, serving and the
chain need no change; the chain reads :attr:`GatedResidual.last_ran` to record
the path.

Example::

    >>> from collabinfer.model.zoo import create_model
    >>> net = gate_net(create_model("fmnist-resnet"))
    >>> [i for i, _ in gated_blocks(net)]
    [1, 2, 3, 4, 5, 6]
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from collabinfer.errors import ConfigError, ModelError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.zoo import ResidualBlock

GATE_MODES = ("auto", "open", "closed")
_Folded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Gate(nn.Module):
    """Two logits (skip, run) from the globally pooled block input."""

    def __init__(self, channels: int, hidden: int = 16, open_bias: float = 2.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)
        with torch.no_grad():  # start (almost) always open: fine-tuning begins at the backbone
            self.fc2.bias.copy_(torch.tensor([0.0, open_bias]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        return self.fc2(torch.relu(self.bn(self.fc1(s))))

    def _folded(self, hw: int) -> _Folded:
        """Eval-mode gate as ``relu(sum_hw(x) @ w1.T + b1) @ wd + bd``: the mean's 1/HW
        and BN folded into fc1, the two logits into their difference. Cached, and
        rebuilt when any source tensor changed in place (``_version`` counts in-place
        writes: optimiser steps, ``load_state_dict``, hand edits under ``no_grad``).
        Replacing a parameter *object* is not detected; nothing in collabinfer does."""
        cache = self.__dict__.get("_cache")
        if cache is not None and cache[0] == hw:
            refs, versions, folded = cache[1], cache[2], cache[3]
            if all(t._version == v for t, v in zip(refs, versions, strict=True)):
                return folded
        bn = self.bn
        if bn.running_mean is None or bn.running_var is None:
            raise ModelError("a gate's BatchNorm must track running statistics")
        refs = (
            self.fc1.weight,
            self.fc1.bias,
            self.fc2.weight,
            self.fc2.bias,
            bn.weight,
            bn.bias,
            bn.running_mean,
            bn.running_var,
        )
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w1 = (self.fc1.weight * (scale / hw)[:, None]).t().contiguous()
            b1 = (self.fc1.bias - bn.running_mean) * scale + bn.bias
            wd = self.fc2.weight[1] - self.fc2.weight[0]
            bd = self.fc2.bias[1] - self.fc2.bias[0]
        folded = (w1, b1, wd, bd)
        # plain __dict__: nn.Module.__setattr__ is slow, and this is no parameter
        self.__dict__["_cache"] = (hw, refs, tuple(t._version for t in refs), folded)
        return folded

    def decide_eval(self, x: torch.Tensor) -> torch.Tensor:
        """``run the branch?`` per input with eval-mode BN: the same decision as
        ``logits[:, 1] > logits[:, 0]`` in fewer ops (the gate is per-input overhead)."""
        w1, b1, wd, bd = self._folded(x.shape[2] * x.shape[3])
        h = torch.relu(torch.addmm(b1, x.sum(dim=(2, 3)), w1))
        return torch.mv(h, wd) + bd > 0


class GatedResidual(nn.Module):
    """``relu(shortcut(x) + g * branch(x))`` with ``g`` in {0, 1} chosen per input."""

    def __init__(self, block: ResidualBlock, hidden: int = 16, tau: float = 1.0) -> None:
        super().__init__()
        self.block = block
        self.gate = Gate(block.conv1.in_channels, hidden)
        self.tau = tau
        self.mode = "auto"
        # What the last forward did (read by the chain, the rate loss and the experiment).
        self.last_ran: torch.Tensor | None = None  # bool per input (inference)
        self.last_gate: torch.Tensor | None = None  # hard 0/1 per input with gradient (training)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        return b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x)))))

    def decide(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic inference decision per input (bool)."""
        if self.mode == "open":
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if self.mode == "closed":
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if not self.gate.training:
            return self.gate.decide_eval(x)
        logits = self.gate(x)
        return logits[:, 1] > logits[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode == "auto":
            g = F.gumbel_softmax(self.gate(x), tau=self.tau, hard=True)[:, 1]
            self.__dict__["last_gate"] = g  # plain __dict__: nn.Module.__setattr__ is slow
            self.__dict__["last_ran"] = g.detach() > 0.5
            return torch.relu(self.block.shortcut(x) + g[:, None, None, None] * self.branch(x))
        run = self.decide(x)
        self.__dict__["last_ran"] = run
        self.__dict__["last_gate"] = None
        shortcut = self.block.shortcut(x)
        if x.shape[0] == 1:  # the batch-1 hot path: no indexing at all
            if bool(run[0]):
                return torch.relu(self.branch(x) + shortcut)
            return torch.relu(shortcut)
        if bool(run.all()):
            return torch.relu(self.branch(x) + shortcut)
        if not bool(run.any()):
            return torch.relu(shortcut)
        idx = run.nonzero().squeeze(1)
        out = shortcut.index_add(0, idx, self.branch(x.index_select(0, idx)))
        return torch.relu(out)


def gate_net(backbone: BlockNet, hidden: int = 16, tau: float = 1.0) -> BlockNet:
    """A copy of ``backbone`` with every residual block gated (weights copied, gates new)."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, block in zip(backbone.block_names, backbone.blocks, strict=True):
        b = copy.deepcopy(block)
        blocks.append((name, GatedResidual(b, hidden, tau) if isinstance(b, ResidualBlock) else b))
    if not any(isinstance(m, GatedResidual) for _, m in blocks):
        raise ModelError("gate_net: the backbone has no residual blocks to gate")
    return BlockNet(blocks, backbone.input_shape)


def gated_blocks(net: BlockNet) -> list[tuple[int, GatedResidual]]:
    """``(block index, gated block)`` for every gated block, in order."""
    return [(i, b) for i, b in enumerate(net.blocks) if isinstance(b, GatedResidual)]


def is_gated(net: BlockNet) -> bool:
    return bool(gated_blocks(net))


@contextlib.contextmanager
def gates_forced(net: BlockNet, mode: str) -> Iterator[BlockNet]:
    """Force every gate ``open`` or ``closed`` (or back to ``auto``) inside the block."""
    if mode not in GATE_MODES:
        raise ConfigError(f"gate mode must be one of {GATE_MODES}, not {mode!r}")
    gates = [g for _, g in gated_blocks(net)]
    before = [g.mode for g in gates]
    for g in gates:
        g.mode = mode
    try:
        yield net
    finally:
        for g, m in zip(gates, before, strict=True):
            g.mode = m


def gate_rates(net: BlockNet) -> torch.Tensor:
    """Mean hard gate of every gated block in the last training forward (differentiable)."""
    rates = []
    for i, g in gated_blocks(net):
        if g.last_gate is None:
            raise ModelError(f"block {i} has no training-time gate output; run a training forward")
        rates.append(g.last_gate.mean())
    return torch.stack(rates)


def last_path(net: BlockNet) -> torch.Tensor:
    """``(N, G)`` bool: which gated blocks ran for each input of the last inference forward."""
    cols = []
    for i, g in gated_blocks(net):
        if g.last_ran is None:
            raise ModelError(f"block {i} has not run yet")
        cols.append(g.last_ran)
    return torch.stack(cols, dim=1)
