"""State: what travels along the chain for one request.

A :class:`State` is the argument of every block function (the paper's
serverless recursion, Section 3.1): the features, the index of the next block,
which tier holds it, the path taken so far, and a :class:`Trace` of every step
with its (virtual) time and bytes. The trace is what Table 1 is computed from.

The same State crosses real sockets: ``serve/wire.py`` maps it to a request
header (cut, plan, path, request id) plus the codec's bytes, and a tier server
rebuilds it from them and continues it with the same engine
(:mod:`collabinfer.runtime.engine`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import torch

from collabinfer.cache.reuse import Probe
from collabinfer.codec import Encoded
from collabinfer.errors import PlanError
from collabinfer.plan.cost import Plan


class StepKind(StrEnum):
    COMPUTE = "compute"  # one block on one tier
    ENCODE = "encode"
    DECODE = "decode"
    TRANSFER = "transfer"  # request bytes over one link
    REPLY = "reply"  # the answer travelling back over one link
    EXIT = "exit"  # an exit head evaluated
    FALLBACK = "fallback"  # a tier failed and the device took over
    CACHE = "cache"  # a semantic-cache key, lookup or insert on a tier


WORK_KINDS = frozenset(
    (StepKind.COMPUTE, StepKind.ENCODE, StepKind.DECODE, StepKind.EXIT, StepKind.CACHE)
)
"""Steps that are CPU work on a tier (what an emulated tier is charged for)."""


class Step(NamedTuple):
    """One thing that happened to a request (a NamedTuple: the chain makes one per block,
    and tuple construction is ~5x cheaper than a frozen dataclass's)."""

    kind: StepKind
    tier: int
    ms: float  # charged duration: profiled (or measured) compute x tier factor, or link time
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
        return sum(s.ms for s in self.steps if s.tier == tier and s.kind in WORK_KINDS)

    def wall_ms(self, tier: int) -> float:
        """Real CPU time this machine spent for ``tier`` (compute and codec work)."""
        return sum(s.wall_ms for s in self.steps if s.tier == tier and s.kind in WORK_KINDS)

    def unslept_ms(self, tier: int, since: int = 0) -> float:
        """Of the work on ``tier`` from step ``since`` on, how much more it was charged
        than it took here: what a front end in wall time sleeps to emulate a slower tier."""
        charged = wall = 0.0
        for s in self.steps[since:]:
            if s.tier == tier and s.kind in WORK_KINDS:
                charged += s.ms
                wall += s.wall_ms
        return max(0.0, charged - wall)

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
    """One request in flight: the tensor ``z`` at cut ``next_block`` on tier ``tier``.

    ``z`` is None while the tensor exists only as ``encoded`` bytes (just received,
    not yet decoded); a tier decodes them before its first block, and a relay that
    runs none forwards them unchanged. ``elapsed_ms`` is the charged time so far
    (the virtual clock reads ``start_s + elapsed_ms``).
    """

    z: torch.Tensor | None
    next_block: int = 0
    tier: int = 0
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    path: list[PathEntry] = field(default_factory=list)
    exits_tried: list[int] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace)
    start_s: float = 0.0  # virtual time the input arrived
    plan: Plan | None = None  # set by the policy on the device; followed by every tier
    raw_input_left_device: bool = False
    fell_back_on: int | None = None  # the tier that finished the input after its next failed
    exited_early: bool = False  # an exit head answered
    elapsed_ms: float = 0.0
    encoded: Encoded | None = None  # bytes in flight, until a tier decodes them
    encoded_by: int = -1  # the tier that encoded them
    hops: list[int] = field(default_factory=list)  # links crossed, in order
    local_only: bool = False  # the next tier failed: this tier finishes the input
    # Per-row gate decisions (block -> bool per batch row) when z holds several rows:
    # the path records whether a block ran for *any* row; a server that batched
    # several requests into one state splits these back per request.
    gate_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    cache_hit: bool = False  # a tier's semantic cache answered
    cache_tier: int = -1  # the tier whose cache was probed (-1: none yet)
    cache_probe: Probe | None = None  # that tier's missed probe, stored once answered
    cache_probe_ms: float = 0.0  # elapsed_ms when it was probed: what a hit would save

    @property
    def fell_back(self) -> bool:
        return self.fell_back_on is not None

    @property
    def clock_s(self) -> float:
        return self.start_s + self.elapsed_ms / 1e3

    @property
    def output(self) -> torch.Tensor:
        """The answer (logits) of a finished request."""
        if self.z is None:
            raise PlanError("the request holds no decoded tensor yet", request_id=self.request_id)
        return self.z

    def add_step(self, step: Step) -> None:
        self.trace.steps.append(step)
        self.elapsed_ms += step.ms
