"""BlockNet: a network as an ordered list of named blocks with cut points.

A *block* is the unit the runtime schedules (a layer or a residual stage). The
*cut point* ``k`` sits before block ``k``: cut 0 is the input, cut ``n`` the
output. Every consumer (splitting, profiling, exits, the chain) goes through
the two seams :meth:`BlockNet.run_until` and :meth:`BlockNet.run_from`, so
"split then merge equals the monolithic forward" is one property to test.

Example::

    >>> import torch
    >>> from torch import nn
    >>> net = BlockNet.from_sequential(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    >>> x = torch.randn(1, 2, 2)
    >>> z = net.run_until(x, 1)
    >>> torch.equal(net.run_from(z, 1), net(x))
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from collabinfer.errors import ModelError


@dataclass(frozen=True)
class CutPoint:
    """What is known about the tensor that exists at cut ``index`` (batch 1)."""

    index: int
    name: str  # "input", "output" or "after_<block name>"
    shape: tuple[int, ...]  # without the batch dimension

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class BlockNet(nn.Module):
    """An ordered list of named blocks; ``forward`` is ``run_from(run_until(x, k), k)``."""

    def __init__(
        self,
        blocks: Sequence[tuple[str, nn.Module]] | Iterable[nn.Module],
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        items = list(blocks)
        if not items:
            raise ModelError("a BlockNet needs at least one block")
        names: list[str] = []
        modules: list[nn.Module] = []
        for i, item in enumerate(items):
            if isinstance(item, tuple):
                name, module = item
            else:
                name, module = f"b{i}", item
            if not isinstance(module, nn.Module):
                raise ModelError(f"block {i} is a {type(module).__name__}, not an nn.Module")
            if name in names:
                raise ModelError(f"duplicate block name {name!r}")
            names.append(name)
            modules.append(module)
        self.block_names: tuple[str, ...] = tuple(names)
        self.blocks = nn.ModuleList(modules)
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    @classmethod
    def from_sequential(
        cls, seq: nn.Sequential, input_shape: tuple[int, ...] | None = None
    ) -> BlockNet:
        """Each child of ``seq`` becomes one block, keeping its name."""
        return cls([(name, m) for name, m in seq.named_children()], input_shape=input_shape)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def _check_cut(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.num_blocks:
            raise ModelError(
                f"cut point {k!r} is out of range 0..{self.num_blocks}",
                blocks=self.num_blocks,
            )

    def run_range(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks ``start .. stop-1`` on the tensor that exists at cut ``start``."""
        self._check_cut(start)
        self._check_cut(stop)
        if stop < start:
            raise ModelError(f"cannot run backwards from cut {start} to cut {stop}")
        for block in self.blocks[start:stop]:
            z = block(z)
        return z

    def run_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The head: the tensor at cut ``k`` for input ``x``."""
        return self.run_range(x, 0, k)

    def run_from(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """The tail: the output for the tensor ``z`` that exists at cut ``k``."""
        return self.run_range(z, k, self.num_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tensor at every cut in one pass: ``activations(x)[k]`` is ``run_until(x, k)``
        (index 0 is ``x`` itself, index ``num_blocks`` the output). What exit heads,
        profiles, byte counts and attacks read; gradients flow unless the caller
        runs it under ``torch.no_grad()``."""
        acts = [x]
        for block in self.blocks:
            acts.append(block(acts[-1]))
        return acts

    def cut_points(self, input_shape: tuple[int, ...] | None = None) -> list[CutPoint]:
        """Shapes at every cut, found by one batch-1 forward pass in eval mode."""
        shape = input_shape or self.input_shape
        if shape is None:
            raise ModelError("cut_points needs an input_shape (none was given or stored)")
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters(), None)
            dtype = param.dtype if param is not None else torch.float32
            z = torch.zeros((1, *shape), dtype=dtype)
            cuts = [CutPoint(0, "input", tuple(shape))]
            with torch.inference_mode():
                for i, block in enumerate(self.blocks):
                    z = block(z)
                    name = "output" if i == self.num_blocks - 1 else f"after_{self.block_names[i]}"
                    cuts.append(CutPoint(i + 1, name, tuple(z.shape[1:])))
        finally:
            self.train(was_training)
        return cuts
