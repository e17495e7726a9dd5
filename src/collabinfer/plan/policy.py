"""Policies: after every block, *exit*, *continue here* or *send to the next tier*.

A policy is asked once per request before the first block (:meth:`Policy.begin`,
where it may re-plan) and then after every block (:meth:`Policy.decide`). The
plan it picks travels inside the :class:`~collabinfer.runtime.state.State`, so a
remote tier can follow the device's plan without knowing its policy.

* :class:`StaticPolicy` follows one fixed plan (LC, EC, CC, best static split).
* :class:`AdaptivePolicy` re-plans per input from running link estimates: the
  ``collabinfer`` row of Table 1. Later capabilities (exits, gates, cache)
  extend it by overriding :meth:`decide`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

import torch

from collabinfer.errors import ConfigError
from collabinfer.plan.cost import Plan
from collabinfer.plan.planner import Planner
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.state import State


class Action(StrEnum):
    CONTINUE = "continue"
    OFFLOAD = "offload"
    EXIT = "exit"


class ExitAttempt(NamedTuple):
    """An exit head the policy evaluated before deciding (the chain charges its time)."""

    cut: int
    fired: bool
    logits: torch.Tensor
    wall_ms: float  # measured here
    profiled_ms: float | None  # the head's profiled time, charged on emulated tiers


@dataclass(frozen=True)
class Decision:
    action: Action
    codec: str | None = None  # for OFFLOAD: how to encode (None: forward the bytes as received)
    attempt: ExitAttempt | None = None  # an exit head tried at this cut (EXIT: it fired)


CONTINUE = Decision(Action.CONTINUE)
EXIT = Decision(Action.EXIT)


class Policy(Protocol):
    def begin(self, state: State) -> None:
        """Called on the device before block 0; sets ``state.plan``."""

    def decide(self, state: State, num_blocks: int) -> Decision:
        """Called with ``state.next_block`` = the cut just reached."""

    def observe_transfer(self, link: int, nbytes: int, seconds: float, at_s: float) -> None:
        """Told about every transfer (started at virtual time ``at_s``)."""


def follow_plan(plan: Plan, state: State, num_blocks: int) -> Decision:
    """The decision that ``plan`` prescribes at the state's cut and tier."""
    k = state.next_block
    if k >= num_blocks:
        return EXIT
    if k < plan.end_of(state.tier):
        return CONTINUE
    return Decision(Action.OFFLOAD, plan.codecs[state.tier])


class StaticPolicy:
    """Follows the same plan for every input."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def begin(self, state: State) -> None:
        state.plan = self.plan

    def decide(self, state: State, num_blocks: int) -> Decision:
        # follow_plan, inlined: this runs after every block and is the chain's hot path
        k = state.next_block
        if k >= num_blocks:
            return EXIT
        plan = state.plan or self.plan
        if k < plan.boundaries[state.tier + 1]:
            return CONTINUE
        return Decision(Action.OFFLOAD, plan.codecs[state.tier])

    def observe_transfer(self, link: int, nbytes: int, seconds: float, at_s: float) -> None:
        return None


class AdaptivePolicy:
    """Re-plans every input from EWMA link estimates (:class:`LinkEstimator`).

    The device observes its own uplink directly; the estimate of a later link
    is fed by the tier that uses it (in-process: the chain reports every
    transfer; over HTTP the answer carries the timings back).
    """

    def __init__(self, planner: Planner, estimators: Sequence[LinkEstimator]) -> None:
        if len(estimators) != len(planner.tiers) - 1:
            raise ConfigError(
                f"{len(planner.tiers)} tiers need {len(planner.tiers) - 1} link estimators"
            )
        self.planner = planner
        self.estimators = list(estimators)
        self.plans_made = 0

    def current_plan(self, now_s: float | None = None) -> Plan:
        return self.planner.plan([e.estimate(now_s) for e in self.estimators])

    def begin(self, state: State) -> None:
        state.plan = self.current_plan(state.start_s)
        self.plans_made += 1

    def decide(self, state: State, num_blocks: int) -> Decision:
        if state.plan is None:
            raise ConfigError("AdaptivePolicy.decide called before begin()")
        return follow_plan(state.plan, state, num_blocks)

    def observe_transfer(self, link: int, nbytes: int, seconds: float, at_s: float) -> None:
        self.estimators[link].observe(nbytes, seconds, at_s)
