"""State: what travels along the chain for one request.

A :class:`State` is the argument of every block function (the paper's
serverless recursion, Section 3.1): the features, the index of the next block,
which tier holds it, the path taken so far, and a :class:`Trace` of every step
with its (virtual) time and bytes. The trace is what Table 1 is computed from.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from collabinfer.plan.cost import Plan


class StepKind(StrEnum):
    COMPUTE = "compute"  # one block on one tier
    ENCODE = "encode"
    DECODE = "decode"
    TRANSFER = "transfer"  # request bytes over one link
    REPLY = "reply"  # the answer travelling back over one link
    EXIT = "exit"  # an exit head evaluated
    FALLBACK = "fallback"  # a tier failed and the device took over


class Step(NamedTuple):
    """One thing that happened to a request (a NamedTuple: the chain makes one per block,
    and tuple construction is ~5x cheaper than a frozen dataclass's)."""

    kind: StepKind
    tier: int
    ms: float  # virtual-clock duration (measured compute x tier speed factor, or link time)
    block: int | None = None
    nbytes: int = 0
    wall_ms: float = 0.0  # real time spent on this machine for this step


@dataclass
class Trace:
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> None:
        self.steps.append(step)

    @property
    def latency_ms(self) -> float:
        """Steps happen one after another, so the request's latency is their sum."""
        return sum(s.ms for s in self.steps)

    def compute_ms(self, tier: int) -> float:
        return sum(
            s.ms
            for s in self.steps
            if s.tier == tier
            and s.kind in (StepKind.COMPUTE, StepKind.ENCODE, StepKind.DECODE, StepKind.EXIT)
        )

    def wall_ms(self, tier: int) -> float:
        """Real CPU time this machine spent for ``tier`` (compute and codec work)."""
        return sum(
            s.wall_ms
            for s in self.steps
            if s.tier == tier
            and s.kind in (StepKind.COMPUTE, StepKind.ENCODE, StepKind.DECODE, StepKind.EXIT)
        )

    def bytes_sent(self, from_tier: int = 0) -> int:
        """Bytes that left ``from_tier`` over its uplink (header + payload)."""
        return sum(
            s.nbytes for s in self.steps if s.kind == StepKind.TRANSFER and s.tier == from_tier
        )


class PathEntry(NamedTuple):
    block: int
    tier: int
    ran: bool  # False when a gate skipped the block


@dataclass
class State:
    """One request in flight. ``z`` is the tensor at cut ``next_block``."""

    z: torch.Tensor
    next_block: int = 0
    tier: int = 0
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    path: list[PathEntry] = field(default_factory=list)
    exits_tried: list[int] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace)
    start_s: float = 0.0  # virtual time the input arrived
    plan: Plan | None = None  # set by the policy on the device; followed by every tier
    raw_input_left_device: bool = False
    fell_back: bool = False
    exited_early: bool = False
