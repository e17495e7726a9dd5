"""Exits across tiers: the device leaves early when an exit head is confident.

:class:`DeviceExits` holds the exit heads, the rule chosen on validation
(:class:`~collabinfer.model.dynamic.ExitRule`) and the gated block indices, and
answers one question at a cut on the device: *is there an exit here that this
input's path allows, and does it fire?* :class:`ExitingPolicy` asks it for the
engine, so the in-process chain and the real-socket device client apply the
rule in one place.

Only the device tries exits: an input that exits there sends zero bytes and
keeps its data on the device, which is the point of exiting before the link.
The plan (where to offload) comes from the wrapped policy; exits are tried at
the exit cuts the device reaches under that plan. Gates change the plan
through the profile (:func:`~collabinfer.plan.profile.with_gate_rates`: a gated
backbone is cheaper to run locally, so the planner may keep more blocks on the
device, paper 3.1.1) and each input's path through the path conditions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch

from collabinfer.errors import ConfigError
from collabinfer.model.dynamic import ExitRule
from collabinfer.model.exits import ExitBranches
from collabinfer.runtime.policy import EXIT, Decision, ExitAttempt, Policy
from collabinfer.runtime.state import PathEntry, State


class DeviceExits:
    """Exit heads + rule + which blocks are gated: tries an exit at a cut."""

    def __init__(
        self,
        exits: ExitBranches,
        rule: ExitRule,
        gate_index: Sequence[int] = (),
        head_ms: Sequence[float] | None = None,
    ) -> None:
        if len(rule.thresholds) != len(exits):
            raise ConfigError(f"rule has {len(rule.thresholds)} thresholds for {len(exits)} exits")
        if head_ms is not None and len(head_ms) != len(exits):
            raise ConfigError(f"need one profiled head time per exit, got {len(head_ms)}")
        self.exits = exits.eval()
        self.rule = rule
        self.gate_bit = {k: j for j, k in enumerate(gate_index)}
        self.head_ms = tuple(head_ms) if head_ms is not None else None
        self._masks: list[int] = []
        for c in exits.cuts:
            m = 0
            for k, j in self.gate_bit.items():
                if k < c:
                    m |= 1 << j
            self._masks.append(m)

    def path_bits(self, path: Sequence[PathEntry]) -> int:
        bits = 0
        for entry in path:
            j = self.gate_bit.get(entry.block)
            if j is not None and entry.ran:
                bits |= 1 << j
        return bits

    def applies(self, cut: int, path: Sequence[PathEntry]) -> int | None:
        """The exit to try at ``cut`` for this path, or None."""
        e = self.exits.index_at(cut)
        if e is None or not self.rule.active(e):
            return None
        allowed = self.rule.allowed_paths[e] if self.rule.allowed_paths is not None else None
        if allowed is not None and (self.path_bits(path) & self._masks[e]) not in allowed:
            return None
        return e

    @torch.inference_mode()
    def attempt(self, cut: int, z: torch.Tensor, path: Sequence[PathEntry]) -> ExitAttempt | None:
        """Evaluate the exit at ``cut`` (if any applies); fires when every input is confident."""
        e = self.applies(cut, path)
        if e is None:
            return None
        t0 = time.perf_counter()
        logits, conf = self.exits.score(e, z, self.rule.score)
        fired = bool((conf >= self.rule.thresholds[e]).all())
        ms = (time.perf_counter() - t0) * 1e3
        return ExitAttempt(cut, fired, logits, ms, self.head_ms[e] if self.head_ms else None)


class ExitingPolicy:
    """Wraps a policy: on the device, try the exit at each cut first (once per cut)."""

    def __init__(self, inner: Policy, exits: DeviceExits) -> None:
        self.inner = inner
        self.device_exits = exits

    def begin(self, state: State) -> None:
        self.inner.begin(state)

    def decide(self, state: State, num_blocks: int) -> Decision:
        k = state.next_block
        if state.tier == 0 and k < num_blocks and k not in state.exits_tried:
            attempt = self.device_exits.attempt(k, state.output, state.path)
            if attempt is not None:
                state.exits_tried.append(k)
                if attempt.fired:
                    return dataclasses.replace(EXIT, attempt=attempt)
                decision = self.inner.decide(state, num_blocks)
                return dataclasses.replace(decision, attempt=attempt)
        return self.inner.decide(state, num_blocks)

    def observe_transfer(self, link: int, nbytes: int, seconds: float, at_s: float) -> None:
        self.inner.observe_transfer(link, nbytes, seconds, at_s)

    def observe_round_trip(self, link: int, nbytes: int, seconds: float, at_s: float) -> float:
        return self.inner.observe_round_trip(link, nbytes, seconds, at_s)

    def observe_rtt(self, link: int, seconds: float) -> None:
        self.inner.observe_rtt(link, seconds)


__all__ = ["DeviceExits", "ExitingPolicy"]
