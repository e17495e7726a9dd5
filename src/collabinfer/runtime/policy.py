"""Policies: after every block, *exit*, *continue here* or *send to the next tier*.

A policy is asked once per request before the first block (:meth:`Policy.begin`,
where it may re-plan) and then after every block (:meth:`Policy.decide`). The
plan it picks travels inside the :class:`~collabinfer.runtime.state.State`, so a
remote tier follows the device's plan without knowing its policy
(:class:`PlanFollower`, what every tier server runs).

* :class:`StaticPolicy` follows one fixed plan (LC, EC, CC, best static split).
* :class:`AdaptivePolicy` re-plans per input from running link estimates: the
  ``collabinfer`` row of Table 1.
* :class:`~collabinfer.runtime.exit_policy.ExitingPolicy` wraps either and
  tries exit heads on the device first.

A policy also *learns*: the engine tells it about every transfer it made
(:meth:`Policy.observe_transfer`, a one-way time on a virtual clock), every
round trip it saw over a real socket (:meth:`Policy.observe_round_trip`) and
every RTT probe (:meth:`Policy.observe_rtt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

import torch

from collabinfer.errors import ConfigError, PlanError
from collabinfer.plan.cost import Plan
from collabinfer.plan.planner import Planner
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.state import State


class Action(StrEnum):
    CONTINUE = "continue"
    OFFLOAD = "offload"
    EXIT = "exit"


class ExitAttempt(NamedTuple):
    """An exit head the policy evaluated before deciding (the engine charges its time)."""

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
        """A one-way transfer of ``nbytes`` over ``link`` took ``seconds`` from ``at_s``."""

    def observe_round_trip(self, link: int, nbytes: int, seconds: float, at_s: float) -> float:
        """A request of ``nbytes`` and its small answer took ``seconds`` on the network
        (the receiver's own time already subtracted); returns the one-way seconds the
        policy attributes to the request."""

    def observe_rtt(self, link: int, seconds: float) -> None:
        """An explicit round-trip sample (a ping) on ``link``."""


class _Blind:
    """Observation verbs of a policy that learns nothing about its links."""

    def observe_transfer(self, link: int, nbytes: int, seconds: float, at_s: float) -> None:
        return None

    def observe_round_trip(self, link: int, nbytes: int, seconds: float, at_s: float) -> float:
        return seconds / 2  # no RTT estimate to split it by: half each way

    def observe_rtt(self, link: int, seconds: float) -> None:
        return None


def follow_plan(plan: Plan, state: State, num_blocks: int) -> Decision:
    """The decision that ``plan`` prescribes at the state's cut and tier."""
    k = state.next_block
    if k >= num_blocks:
        return EXIT
    if k < plan.boundaries[state.tier + 1]:
        return CONTINUE
    return Decision(Action.OFFLOAD, plan.codecs[state.tier])


class PlanFollower(_Blind):
    """Follows the plan the State carries (a tier server's policy: the device chose it)."""

    def begin(self, state: State) -> None:
        if state.plan is None:
            raise PlanError("a PlanFollower needs a State that carries a plan")

    def decide(self, state: State, num_blocks: int) -> Decision:
        if state.plan is None:
            raise PlanError("a PlanFollower needs a State that carries a plan")
        return follow_plan(state.plan, state, num_blocks)


class StaticPolicy(_Blind):
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

    def observe_round_trip(self, link: int, nbytes: int, seconds: float, at_s: float) -> float:
        if not 0 <= link < len(self.estimators):
            return seconds / 2
        return self.estimators[link].observe_round_trip(nbytes, seconds, at_s)

    def observe_rtt(self, link: int, seconds: float) -> None:
        if 0 <= link < len(self.estimators):
            self.estimators[link].observe_rtt(seconds)
