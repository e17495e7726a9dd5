"""The engine: the per-input step, written once for every front end.

One request is one :class:`~collabinfer.runtime.state.State`. On the tier that
holds it, :meth:`Engine.advance` repeats the step of the paper's block-function
chain (Section 3.1) until the request leaves that tier:

1. ask the :class:`~collabinfer.runtime.policy.Policy` what to do at this cut
   (it may evaluate an exit head first: the attempt is charged as an ``EXIT``
   step);
2. *continue*: decode the bytes in flight if there are any, run block ``k``,
   read its gate (did the branch run?), charge its time (:class:`Charger`),
   record the step and the path entry;
3. *offload*: encode the tensor with the decision's codec (a relay that ran no
   block forwards the very bytes it got) and return a :class:`Handoff`;
4. *exit*: the answer is the output (or the exit head's logits); return None.

A tier with a semantic cache (``reuse``, :mod:`collabinfer.cache`) looks the
request up when it arrives, before its first block: a hit answers at once
(a ``CACHE`` step, ``state.cache_hit``); a miss keeps its key, and the answer
is stored under it once known, whether this tier computed it or the next one
sent it back (:meth:`Engine.answered`). The key, lookup and insert are
charged to the tier as measured: they are the miss overhead the cache costs.

What a front end does with a :class:`Handoff` is the only thing that differs:
:class:`~collabinfer.runtime.chain.Chain` asks a simulated
:class:`~collabinfer.runtime.link.Link` how long it took, the device client
posts it over HTTP, a tier server forwards it to the next tier. Each then tells
the engine what happened, so link learning and fallback are written once too:
:meth:`Engine.delivered` (the bytes arrived: record the transfer, let the policy
learn the link, move the State on), :meth:`Engine.answered` (a remote tier sent
back the answer), or :meth:`Engine.fall_back` (the next tier is unreachable:
this tier finishes the input itself, from the exact tensor if it still holds it).

Example::

    >>> import torch
    >>> from collabinfer.model.zoo import create_model
    >>> from collabinfer.plan.cost import Plan
    >>> from collabinfer.runtime.policy import StaticPolicy
    >>> from collabinfer.topology.tiers import TierSpec
    >>> net = create_model("tiny-cnn").eval()
    >>> charger = Charger.for_tiers([TierSpec("device")])  # factor 1: charged what it measured
    >>> engine = Engine(net, StaticPolicy(Plan((0, 4), (None,))), charger)
    >>> state = engine.begin(torch.rand(1, 1, 28, 28))
    >>> engine.advance(state) is None, state.output.shape, len(state.path)
    (True, torch.Size([1, 10]), 4)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

from collabinfer.cache.reuse import Reuse
from collabinfer.codec import Encoded, get_codec
from collabinfer.errors import CodecError, ConfigError, PlanError
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.profile import Profile
from collabinfer.runtime.policy import Action, ExitAttempt, Policy
from collabinfer.runtime.state import PathEntry, State, Step, StepKind
from collabinfer.topology.tiers import TierSpec

__all__ = ["BlockExecutor", "Charger", "Engine", "Handoff", "RemoteAnswer"]

COMPUTE = StepKind.COMPUTE

BlockExecutor = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None, float]]
"""Runs block ``k`` on ``z``: ``(output, per-row gate decisions or None, compute ms)``.
The seam a tier server uses to batch the blocks of concurrent requests."""


class Charger:
    """The one emulation rule: what a step is charged on a tier.

    A tier at factor 1 is charged what it measured here. An *emulated* tier
    (factor != 1) is charged its *profiled* time (warm, median, batch 1) x the
    factor, because one cold run on this machine, multiplied by 100, would turn
    into tens of milliseconds the device model never meant, and because the plan
    was made from the same profile. A gated block is charged its profiled
    branch-run or branch-skipped time, whichever happened. A codec or exit head
    the profile did not time is charged its measured time x factor (the planner
    only plans profiled codecs, so this is the exception, not the rule).
    """

    def __init__(self, factor_of: Callable[[int], float], profile: Profile | None) -> None:
        self.factor_of = factor_of
        self.profile = profile
        blocks = profile.blocks if profile is not None else ()
        self.block_ms = tuple(b.open_ms if b.open_ms is not None else b.time_ms for b in blocks)
        self.skip_ms = tuple(b.skip_ms if b.skip_ms is not None else b.time_ms for b in blocks)

    @classmethod
    def for_tiers(cls, tiers: Sequence[TierSpec], profile: Profile | None = None) -> Charger:
        """Charges tier ``i`` by ``tiers[i]``; an emulated tier needs the profile."""
        factors = tuple(t.speed_factor for t in tiers)
        emulated = [t.name for t in tiers if t.emulated]
        if emulated and profile is None:
            raise ConfigError(
                f"emulated tiers {emulated} are charged profiled time x factor: pass the "
                "model's profile (collabinfer.profile_model)"
            )

        def factor_of(tier: int) -> float:
            if not 0 <= tier < len(factors):
                raise PlanError(f"no tier {tier} in a chain of {len(factors)}")
            return factors[tier]

        return cls(factor_of, profile)

    @classmethod
    def for_tier(cls, factor: float, profile: Profile | None = None) -> Charger:
        """One tier server's rule: every state it holds is charged at ``factor``."""
        if factor != 1.0 and profile is None:
            raise ConfigError(f"an emulated tier (x{factor:g}) needs the model's profile")
        return cls(lambda _tier: factor, profile)

    def check_model(self, model: BlockNet) -> None:
        if self.profile is not None and self.profile.num_blocks != model.num_blocks:
            raise ConfigError(
                f"profile has {self.profile.num_blocks} blocks, model {model.num_blocks}"
            )

    def codec_ms(self, factor: float, cut: int, codec: str, encode: bool, wall_ms: float) -> float:
        if factor != 1.0 and self.profile is not None:
            cost = self.profile.cuts[cut].codecs.get(codec)
            if cost is not None:
                return (cost.encode_ms if encode else cost.decode_ms) * factor
        return wall_ms * factor

    def exit_ms(self, factor: float, attempt: ExitAttempt) -> float:
        if factor != 1.0 and attempt.profiled_ms is not None:
            return attempt.profiled_ms * factor
        return attempt.wall_ms * factor


class Handoff(NamedTuple):
    """The State must leave tier ``sender``: these bytes (the tensor at ``cut``) go next."""

    encoded: Encoded
    sender: int
    cut: int

    @property
    def nbytes(self) -> int:
        """What crosses the link: the codec's header and payload."""
        return self.encoded.payload_bytes + self.encoded.header_bytes


class RemoteAnswer(NamedTuple):
    """What a remote tier sent back for a handed-off State (decoded by the front end)."""

    output: torch.Tensor
    tier: int  # the tier that produced the output
    path: tuple[PathEntry, ...]  # the remote's path; it continues the one it was sent
    steps: tuple[Step, ...]  # the remote's steps (its own links: measured round trips)
    fell_back: bool  # the answering tier finished the input itself
    cached: bool = False  # a tier's semantic cache answered


class Engine:
    """Runs a State on the tier that holds it (see the module docstring).

    ``num_tiers`` (None: the plan decides, as on a tier server) guards against
    a policy offloading past the last tier. ``check_finite`` refuses decoded
    bytes holding NaN or infinity (a server decoding what a client sent).
    ``executor`` replaces the plain block call (a server batching requests).
    ``reuse`` maps a tier to its semantic cache.
    """

    def __init__(
        self,
        model: BlockNet,
        policy: Policy,
        charger: Charger,
        *,
        num_tiers: int | None = None,
        check_finite: bool = False,
        executor: BlockExecutor | None = None,
        reuse: Mapping[int, Reuse] | None = None,
    ) -> None:
        charger.check_model(model)
        self.model = model.eval()
        self.policy = policy
        self.charger = charger
        self.num_tiers = num_tiers
        self.check_finite = check_finite
        self.executor = executor
        self.reuse = dict(reuse or {})
        self._blocks = tuple(model.blocks)  # ModuleList indexing costs ~1 us a call

    def begin(self, x: torch.Tensor, request_id: str | None = None, start_s: float = 0.0) -> State:
        """A new State for input ``x`` on tier 0, its plan chosen by the policy."""
        state = State(z=x, start_s=start_s)
        if request_id is not None:
            state.request_id = request_id
        self.policy.begin(state)
        return state

    def advance(self, state: State) -> Handoff | None:
        """Step the State on its tier until it exits (None) or must leave (a Handoff)."""
        blocks = self._blocks
        n = len(blocks)
        tier = state.tier
        factor = self.charger.factor_of(tier)
        emulated = factor != 1.0
        block_ms, skip_ms = self.charger.block_ms, self.charger.skip_ms
        steps = state.trace.steps
        add_step = steps.append
        add_path = state.path.append
        decide = self.policy.decide
        execute = self.executor
        perf = time.perf_counter
        elapsed = state.elapsed_ms
        try:
            with torch.inference_mode():
                while True:
                    decision = decide(state, n)
                    action = decision.action
                    attempt = decision.attempt
                    if attempt is not None:  # the policy evaluated an exit head here
                        vms = self.charger.exit_ms(factor, attempt)
                        add_step(Step(StepKind.EXIT, tier, vms, attempt.cut, 0, attempt.wall_ms))
                        elapsed += vms
                    if action is Action.OFFLOAD and state.local_only:
                        action = Action.CONTINUE
                    if action is Action.CONTINUE:
                        k = state.next_block
                        if k >= n:
                            raise PlanError("policy asked to continue past the last block")
                        if state.encoded is not None:
                            elapsed += self._decode(state, tier, factor, k)
                        if state.cache_tier != tier and tier in self.reuse:
                            state.elapsed_ms = elapsed
                            if self._probe(state, tier, factor):
                                return None  # the cache answered
                            elapsed = state.elapsed_ms
                        if execute is None:
                            block = blocks[k]
                            t0 = perf()
                            z = block(state.z)
                            ms = (perf() - t0) * 1e3
                            gate = getattr(block, "last_ran", None)  # a gated block's decisions
                        else:
                            z, gate, ms = execute(k, state.output)
                        state.z = z
                        ran = True if gate is None else bool(gate.any())
                        vms = (block_ms[k] if ran else skip_ms[k]) * factor if emulated else ms
                        add_step(Step(COMPUTE, tier, vms, k, 0, ms))
                        elapsed += vms
                        add_path(PathEntry(k, tier, ran))
                        state.next_block = k + 1
                    elif action is Action.OFFLOAD:
                        if self.num_tiers is not None and tier + 1 >= self.num_tiers:
                            raise PlanError(f"tier {tier} has no next tier to offload to")
                        if state.encoded is None:
                            elapsed += self._encode(state, tier, factor, decision.codec)
                        assert state.encoded is not None  # set by _encode
                        return Handoff(state.encoded, tier, state.next_block)
                    else:  # EXIT
                        if attempt is not None and attempt.fired:  # the exit head answers
                            state.z = attempt.logits
                            state.exited_early = True
                            state.encoded = None
                        if state.encoded is not None:
                            elapsed += self._decode(state, tier, factor, state.next_block)
                        if state.cache_probe is not None:
                            state.elapsed_ms = elapsed
                            self._store(state)
                            elapsed = state.elapsed_ms
                        return None
        finally:
            state.elapsed_ms = elapsed

    def _probe(self, state: State, tier: int, factor: float) -> bool:
        """Look the arriving State up in this tier's cache; True when it answered."""
        state.cache_tier = tier
        probe = self.reuse[tier].probe(state.output, state.next_block)
        if probe is None:
            return False
        state.add_step(Step(StepKind.CACHE, tier, probe.ms * factor, state.next_block, 0, probe.ms))
        if probe.hit is None:
            state.cache_probe, state.cache_probe_ms = probe, state.elapsed_ms
            return False
        state.z = torch.from_numpy(probe.hit.logits).reshape(1, -1)
        state.cache_hit = True
        return True

    def _store(self, state: State) -> None:
        """The answer of a missed probe is known: keep it (what a hit would have saved:
        the time from the probe to here)."""
        probe = state.cache_probe
        assert probe is not None
        state.cache_probe = None
        tier = state.cache_tier
        saved_ms = state.elapsed_ms - state.cache_probe_ms
        ms = self.reuse[tier].store(probe, state.output, saved_ms)
        factor = self.charger.factor_of(tier)
        state.add_step(Step(StepKind.CACHE, tier, ms * factor, probe.ns.cut, 0, ms))

    def _decode(self, state: State, tier: int, factor: float, cut: int) -> float:
        encoded = state.encoded
        assert encoded is not None
        t0 = time.perf_counter()
        z = get_codec(encoded.header.codec).decode(encoded)
        if self.check_finite and not bool(torch.isfinite(z).all()):
            raise CodecError("payload holds non-finite values", request_id=state.request_id)
        ms = (time.perf_counter() - t0) * 1e3
        vms = self.charger.codec_ms(factor, cut, encoded.header.codec, False, ms)
        state.trace.steps.append(Step(StepKind.DECODE, tier, vms, wall_ms=ms))
        state.z, state.encoded = z, None
        return vms

    def _encode(self, state: State, tier: int, factor: float, codec: str | None) -> float:
        if codec is None:
            raise PlanError("an offload from a tier holding a tensor needs a codec")
        t0 = time.perf_counter()
        encoded = get_codec(codec).encode(state.output)
        ms = (time.perf_counter() - t0) * 1e3
        vms = self.charger.codec_ms(factor, state.next_block, codec, True, ms)
        state.trace.steps.append(Step(StepKind.ENCODE, tier, vms, wall_ms=ms))
        state.encoded, state.encoded_by = encoded, tier
        return vms

    def delivered(
        self,
        state: State,
        handoff: Handoff,
        seconds: float,
        *,
        nbytes: int | None = None,
        round_trip: bool = False,
        at_s: float | None = None,
    ) -> None:
        """The hand-off reached the next tier: the State is there now.

        ``seconds`` is the one-way time (a virtual-clock link), or with
        ``round_trip`` what a real socket showed (request and answer, less the
        receiver's own time), which the policy splits. ``nbytes`` defaults to
        the codec's bytes; a front end that framed them counts its own.
        """
        sent = handoff.nbytes if nbytes is None else nbytes
        when = state.clock_s if at_s is None else at_s
        if round_trip:
            seconds = self.policy.observe_round_trip(handoff.sender, sent, seconds, when)
        else:
            self.policy.observe_transfer(handoff.sender, sent, seconds, when)
        state.add_step(Step(StepKind.TRANSFER, handoff.sender, seconds * 1e3, nbytes=sent))
        state.hops.append(handoff.sender)
        if handoff.sender == 0 and handoff.cut == 0:
            state.raw_input_left_device = True
        state.tier = handoff.sender + 1

    def answered(self, state: State, answer: RemoteAnswer, at_s: float | None = None) -> None:
        """A remote tier finished the State: take its answer, path and steps.

        The links a remote tier used are learned from the transfer steps it
        reports (each a round trip it measured, less its downstream's time).
        """
        when = state.clock_s if at_s is None else at_s
        state.z, state.encoded = answer.output, None
        mine = tuple(state.path)
        path = answer.path if answer.path[: len(mine)] == mine else mine + answer.path
        state.path = list(path)
        for step in answer.steps:
            state.add_step(step)
            if step.kind == StepKind.TRANSFER and step.tier >= 1:
                self.policy.observe_round_trip(step.tier, step.nbytes, step.ms / 1e3, when)
        state.tier = answer.tier
        if answer.fell_back:
            state.fell_back_on = answer.tier
        if answer.cached:
            state.cache_hit = True
        if state.cache_probe is not None:  # our miss: keep the answer the next tier sent
            self._store(state)

    def fall_back(self, state: State, handoff: Handoff, sent: bool = False) -> None:
        """The next tier is unreachable: this tier finishes the State (call advance again).

        ``sent``: the bytes may have left before the failure (a timeout after the
        upload), which for the raw input means it left the device.
        """
        state.add_step(Step(StepKind.FALLBACK, state.tier, 0.0))
        state.fell_back_on = state.tier
        state.local_only = True
        if sent and handoff.sender == 0 and handoff.cut == 0:
            state.raw_input_left_device = True
        if state.encoded_by == state.tier:  # we still hold the exact tensor: skip the codec
            state.encoded = None
