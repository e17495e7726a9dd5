"""The dynamic inference engine: gated blocks and early exits that really save work.

:class:`DynamicNet` runs a (possibly gated) backbone with (optional) exits under
an :class:`ExitRule`. After each block that carries an exit, the exit's head
runs on the inputs still in flight whose *path* allows it (path-aware exits,
paper 3.1.2); the inputs whose confidence passes the exit's threshold leave
with that head's answer, and the batch is **compacted** to the survivors
(``index_select``; nothing is masked and recomputed), so a batch of N costs
what N runs at batch 1 cost and gives the same answers.

The path of an input is a bit mask over the gated blocks (bit ``j`` set: gated
block ``j`` ran its branch). A rule may restrict each exit to a set of
allowed masks over the gated blocks before it; an exit whose condition fails
is not evaluated at all.

Compute is counted per input from what ran, with per-block FLOPs measured by
``torch.utils.flop_counter`` (:func:`flops_table`), so the FLOP count follows
the path actually run.

Example::

    >>> from collabinfer.model.zoo import create_model
    >>> net = DynamicNet(create_model("tiny-cnn").eval())
    >>> net.infer(torch.rand(3, 1, 28, 28)).exit_index.tolist()
    [0, 0, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from collabinfer.errors import ConfigError, ModelError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.exits import SCORES, ExitBranches
from collabinfer.model.gates import GatedResidual, gated_blocks, gates_forced

NEVER = math.inf  # an exit threshold that never fires


@dataclass(frozen=True)
class ExitRule:
    """When each exit fires: ``confidence >= thresholds[e]``, if the path allows it.

    ``allowed_paths[e]`` is the set of path masks (over *all* gated blocks, only
    the bits of gated blocks before exit ``e`` are compared) for which exit
    ``e`` is evaluated; ``None`` evaluates it always.
    """

    thresholds: tuple[float, ...]
    score: str = "maxprob"
    allowed_paths: tuple[frozenset[int] | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"unknown exit score {self.score!r}; choose from {SCORES}")
        if self.allowed_paths is not None and len(self.allowed_paths) != len(self.thresholds):
            raise ConfigError("allowed_paths needs one entry per exit")
        if any(math.isnan(t) for t in self.thresholds):
            raise ConfigError("an exit threshold is NaN")

    @classmethod
    def never(cls, num_exits: int) -> ExitRule:
        return cls(tuple([NEVER] * num_exits))

    def active(self, e: int) -> bool:
        return self.thresholds[e] != NEVER

    def to_json(self) -> dict[str, object]:
        return {
            "thresholds": [t if t != NEVER else None for t in self.thresholds],
            "score": self.score,
            "allowed_paths": None
            if self.allowed_paths is None
            else [None if a is None else sorted(a) for a in self.allowed_paths],
        }


@dataclass(frozen=True)
class DynamicOutput:
    """What one :meth:`DynamicNet.infer` did, per input (original batch order)."""

    logits: torch.Tensor  # (N, C): the answer of the classifier the input left by
    exit_index: torch.Tensor  # (N,) int64: exit taken; len(exits) = the final classifier
    ran: torch.Tensor  # (N, G) bool: gated block j ran its branch (False if not reached)
    tried: torch.Tensor  # (N, E) bool: exit e's head was evaluated
    path: torch.Tensor  # (N,) int64: the bit mask of ``ran``


@dataclass(frozen=True)
class FlopsTable:
    """FLOPs of every piece at batch 1, as ``torch.utils.flop_counter`` counts them."""

    block_open: tuple[int, ...]  # block k with its branch run (plain blocks: their FLOPs)
    block_skip: tuple[int, ...]  # block k with its branch skipped (plain blocks: = open)
    head: tuple[int, ...]  # exit head e
    gate_index: tuple[int, ...] = field(default=())  # block index of gated block j

    @property
    def backbone(self) -> int:
        return sum(self.block_open)


def _count(fn: object) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()  # type: ignore[operator]
    return int(counter.get_total_flops())


def flops_table(backbone: BlockNet, exits: ExitBranches | None = None) -> FlopsTable:
    """Per-block FLOPs with gates forced open and forced closed, and per-head FLOPs."""
    backbone.eval()
    shape = backbone.input_shape
    if shape is None:
        raise ConfigError("flops_table needs a backbone with input_shape")
    x = torch.zeros((1, *shape))
    with torch.inference_mode():
        acts = [x]
        with gates_forced(backbone, "open"):
            for block in backbone.blocks:
                acts.append(block(acts[-1]))
    opened, skipped = [], []
    for k, block in enumerate(backbone.blocks):
        with gates_forced(backbone, "open"):
            opened.append(_count(lambda b=block, a=acts[k]: b(a)))
        if isinstance(block, GatedResidual):  # in "auto" mode the gate runs either way
            gate = _count(lambda b=block, a=acts[k]: b.decide(a))
            with gates_forced(backbone, "closed"):
                skipped.append(_count(lambda b=block, a=acts[k]: b(a)) + gate)
            opened[-1] += gate
        else:
            skipped.append(opened[-1])
    heads = []
    if exits is not None:
        exits.eval()
        for e, c in enumerate(exits.cuts):
            heads.append(_count(lambda e=e, a=acts[c]: exits.logits(e, a)))
    gidx = tuple(i for i, _ in gated_blocks(backbone))
    return FlopsTable(tuple(opened), tuple(skipped), tuple(heads), gidx)


class DynamicNet(nn.Module):
    """A backbone (gated or not) with optional exits, run under an :class:`ExitRule`."""

    def __init__(
        self,
        backbone: BlockNet,
        exits: ExitBranches | None = None,
        rule: ExitRule | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.exits = exits
        num_exits = len(exits) if exits is not None else 0
        if exits is not None and exits.cuts[-1] >= backbone.num_blocks:
            raise ConfigError("an exit cut lies at or beyond the backbone's output")
        self.rule = rule or ExitRule.never(num_exits)
        if len(self.rule.thresholds) != num_exits:
            raise ConfigError(
                f"rule has {len(self.rule.thresholds)} thresholds for {num_exits} exits"
            )
        self._gated = {i: j for j, (i, _) in enumerate(gated_blocks(backbone))}
        self._exit_after = {c - 1: e for e, c in enumerate(exits.cuts)} if exits else {}
        self._allowed: dict[int, tuple[int, torch.Tensor]] = {}
        self._allowed_sets: dict[int, tuple[int, frozenset[int]]] = {}
        if self.rule.allowed_paths is not None and exits is not None:
            for e, allowed in enumerate(self.rule.allowed_paths):
                if allowed is None:
                    continue
                bits = 0
                for i, j in self._gated.items():
                    if i < exits.cuts[e]:
                        bits |= 1 << j
                self._allowed[e] = (bits, torch.tensor(sorted(allowed), dtype=torch.int64))
                self._allowed_sets[e] = (bits, frozenset(allowed))

    @property
    def num_exits(self) -> int:
        return len(self.exits) if self.exits is not None else 0

    @property
    def num_gates(self) -> int:
        return len(self._gated)

    def with_rule(self, rule: ExitRule) -> DynamicNet:
        """The same modules (shared, not copied) under another rule."""
        return DynamicNet(self.backbone, self.exits, rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer(x).logits

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> DynamicOutput:
        """Run ``x`` (N, ...) with per-input exits and gates; see the module docstring."""
        n = x.shape[0]
        if n == 1:
            return self._infer_one(x)
        num_exits, num_gates = self.num_exits, self.num_gates
        exit_index = torch.full((n,), num_exits, dtype=torch.int64)
        ran = torch.zeros((n, num_gates), dtype=torch.bool)
        tried = torch.zeros((n, num_exits), dtype=torch.bool)
        path = torch.zeros(n, dtype=torch.int64)
        out: torch.Tensor | None = None
        active = torch.arange(n)
        rule, exits = self.rule, self.exits
        z = x
        for k, block in enumerate(self.backbone.blocks):
            z = block(z)
            j = self._gated.get(k)
            if j is not None:
                r = cast(GatedResidual, block).last_ran
                if r is None:
                    raise ModelError(f"gated block {k} did not record its decision")
                ran[active, j] = r
                path[active] |= r.long() << j
            e = self._exit_after.get(k)
            if e is None or exits is None or not rule.active(e):
                continue
            cond = self._allowed.get(e)
            if cond is None:
                rows = None
                zz = z
            else:
                mask, allowed = cond
                ok = torch.isin(path[active] & mask, allowed)
                if not bool(ok.any()):
                    continue
                rows = ok.nonzero().squeeze(1)
                zz = z.index_select(0, rows)
            logits, conf = exits.score(e, zz, rule.score)
            who = active if rows is None else active[rows]
            tried[who, e] = True
            fire = conf >= rule.thresholds[e]
            if not bool(fire.any()):
                continue
            if out is None:
                out = torch.empty((n, logits.shape[1]), dtype=logits.dtype)
            gone = who[fire]
            out[gone] = logits[fire]
            exit_index[gone] = e
            keep = torch.ones(active.shape[0], dtype=torch.bool)
            keep[fire.nonzero().squeeze(1) if rows is None else rows[fire]] = False
            if not bool(keep.any()):
                return DynamicOutput(out, exit_index, ran, tried, path)
            active = active[keep]
            z = z[keep]
        if out is None:  # nobody left early: z is the whole batch, in order
            return DynamicOutput(z, exit_index, ran, tried, path)
        out[active] = z
        return DynamicOutput(out, exit_index, ran, tried, path)

    def _infer_one(self, x: torch.Tensor) -> DynamicOutput:
        """Batch 1 on Python scalars: the same decisions as the batched path without its
        index bookkeeping (~40 us per gated block and per exit at this model's size)."""
        rule, exits = self.rule, self.exits
        num_exits = self.num_exits
        ran = [False] * self.num_gates
        tried = [False] * num_exits
        path = 0
        z = x
        out_exit = num_exits
        for k, block in enumerate(self.backbone.blocks):
            z = block(z)
            j = self._gated.get(k)
            if j is not None:
                r = cast(GatedResidual, block).last_ran
                if r is None:
                    raise ModelError(f"gated block {k} did not record its decision")
                if bool(r[0]):
                    ran[j] = True
                    path |= 1 << j
            e = self._exit_after.get(k)
            if e is None or exits is None or not rule.active(e):
                continue
            cond = self._allowed_sets.get(e)
            if cond is not None and (path & cond[0]) not in cond[1]:
                continue
            logits, conf = exits.score(e, z, rule.score)
            tried[e] = True
            if float(conf[0]) >= rule.thresholds[e]:
                z, out_exit = logits, e
                break
        return DynamicOutput(
            z,
            torch.tensor([out_exit], dtype=torch.int64),
            torch.tensor([ran], dtype=torch.bool).reshape(1, self.num_gates),
            torch.tensor([tried], dtype=torch.bool).reshape(1, num_exits),
            torch.tensor([path], dtype=torch.int64),
        )


def per_input_flops(
    out: DynamicOutput, flops: FlopsTable, exit_cuts: Sequence[int]
) -> torch.Tensor:
    """FLOPs each input spent: blocks reached (branch run or skipped) plus heads tried."""
    n = out.exit_index.shape[0]
    num_blocks = len(flops.block_open)
    stop = torch.tensor([*exit_cuts, num_blocks], dtype=torch.int64)[out.exit_index]  # (N,)
    total = torch.zeros(n, dtype=torch.float64)
    gpos = {k: j for j, k in enumerate(flops.gate_index)}
    for k in range(num_blocks):
        reached = stop > k
        j = gpos.get(k)
        if j is None:
            total += reached.double() * flops.block_open[k]
        else:
            cost = torch.where(out.ran[:, j], flops.block_open[k], flops.block_skip[k])
            total += reached.double() * cost.double()
    if flops.head:
        total += out.tried.double() @ torch.tensor(flops.head, dtype=torch.float64)
    return total
