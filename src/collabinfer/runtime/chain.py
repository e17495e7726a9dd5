"""The chain executor: block functions across tiers, joined by links.

Executing block ``k`` is one call whose result is the argument of the next
call, here or on the next tier (paper, Section 3.1). After every block the
policy decides; the chain carries out the decision, measures what it did and
writes the :class:`~collabinfer.runtime.state.Trace`:

* compute is *measured* on this CPU (wall time of the block) and multiplied by
  the tier's speed factor;
* transfers take whatever the :class:`~collabinfer.runtime.link.Link` says on
  its virtual clock (the request) and the answer travels back over the same
  links;
* a relay (a tier that runs no block) forwards the bytes it got unchanged;
* a :class:`~collabinfer.errors.LinkError` on the way out makes the current
  tier finish the input itself, and the state is marked ``fell_back``.

Everything in-process; ``serve/`` puts the same State on real sockets.

Example::

    >>> chain = Chain(net, [TierSpec("device")], [], StaticPolicy(local_plan))  # doctest: +SKIP
    >>> result = chain.run(x)                                                    # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from collabinfer.codec import Encoded, get_codec
from collabinfer.errors import ConfigError, LinkError, PlanError
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.cost import REPLY_BYTES
from collabinfer.plan.policy import Action, Policy
from collabinfer.plan.profile import Profile
from collabinfer.runtime.link import Link
from collabinfer.runtime.state import PathEntry, State, Step, StepKind
from collabinfer.runtime.tier import TierSpec, check_tiers

COMPUTE = StepKind.COMPUTE


@dataclass(frozen=True)
class ChainResult:
    output: torch.Tensor
    state: State

    @property
    def latency_ms(self) -> float:
        return self.state.trace.latency_ms


class Chain:
    """Runs one model over a chain of tiers under a policy, on a virtual clock."""

    def __init__(
        self,
        model: BlockNet,
        tiers: Sequence[TierSpec],
        links: Sequence[Link],
        policy: Policy,
        reply_bytes: int = REPLY_BYTES,
        profile: Profile | None = None,
    ) -> None:
        """With ``profile``, an *emulated* tier (speed factor != 1) is charged the
        profiled (warm, median) time x factor instead of this run's wall time x factor,
        so one cold run on this machine is not multiplied into the device's latency;
        tiers at factor 1 are always charged what they measured."""
        check_tiers(tiers)
        if len(links) != len(tiers) - 1:
            raise ConfigError(f"{len(tiers)} tiers need {len(tiers) - 1} links, got {len(links)}")
        self.model = model.eval()
        self.tiers = tuple(tiers)
        self.links = tuple(links)
        self.policy = policy
        self.reply_bytes = reply_bytes
        self._factors = tuple(t.speed_factor for t in tiers)
        if profile is not None and profile.num_blocks != model.num_blocks:
            raise ConfigError(f"profile has {profile.num_blocks} blocks, model {model.num_blocks}")
        self.profile = profile
        self._charged = tuple(profile is not None and t.speed_factor != 1.0 for t in tiers)
        # A gated block is charged its profiled branch-run or branch-skipped time.
        self._block_ms = (
            tuple(b.open_ms if b.open_ms is not None else b.time_ms for b in profile.blocks)
            if profile
            else ()
        )
        self._skip_ms = (
            tuple(b.skip_ms if b.skip_ms is not None else b.time_ms for b in profile.blocks)
            if profile
            else ()
        )

    def _codec_ms(self, tier: int, wall_ms: float, cut: int, codec: str, encode: bool) -> float:
        """Virtual ms of one encode or decode on ``tier`` (see ``profile`` above)."""
        if self._charged[tier] and self.profile is not None:
            cost = self.profile.cuts[cut].codecs.get(codec)
            if cost is not None:
                return (cost.encode_ms if encode else cost.decode_ms) * self._factors[tier]
        return wall_ms * self._factors[tier]

    def run(
        self, x: torch.Tensor, start_s: float = 0.0, request_id: str | None = None
    ) -> ChainResult:
        """Run one input (or a batch moving as one) from virtual time ``start_s``."""
        state = State(z=x, start_s=start_s)
        if request_id is not None:
            state.request_id = request_id
        with torch.inference_mode():
            self._run(state, start_s)
        return ChainResult(state.z, state)

    def _run(self, state: State, start_s: float) -> None:
        blocks = tuple(self.model.blocks)  # ModuleList indexing costs ~1 us a call
        n = len(blocks)
        trace = state.trace
        add_step = trace.steps.append
        add_path = state.path.append
        factors = self._factors
        charged, block_ms, skip_ms = self._charged, self._block_ms, self._skip_ms
        clock_ms = start_s * 1e3
        encoded: Encoded | None = None  # bytes in flight, until a tier decodes them
        hops: list[int] = []
        encoded_at = -1
        local_only = False
        perf = time.perf_counter
        self.policy.begin(state)
        decide = self.policy.decide
        while True:
            tier = state.tier
            decision = decide(state, n)
            action = decision.action
            attempt = decision.attempt
            if attempt is not None:  # the policy evaluated an exit head here
                vms = (
                    attempt.profiled_ms
                    if charged[tier] and attempt.profiled_ms is not None
                    else attempt.wall_ms
                ) * factors[tier]
                trace.add(Step(StepKind.EXIT, tier, vms, attempt.cut, wall_ms=attempt.wall_ms))
                clock_ms += vms
            if local_only and action is Action.OFFLOAD:
                action = Action.CONTINUE
            if action is Action.CONTINUE:
                k = state.next_block
                if k >= n:
                    raise PlanError("policy asked to continue past the last block")
                if encoded is not None:
                    state.z, ms = self._decode(encoded)
                    vms = self._codec_ms(tier, ms, k, encoded.header.codec, False)
                    trace.add(Step(StepKind.DECODE, tier, vms, wall_ms=ms))
                    clock_ms += vms
                    encoded = None
                block = blocks[k]
                t0 = perf()
                state.z = block(state.z)
                ms = (perf() - t0) * 1e3
                gate = getattr(block, "last_ran", None)  # a gated block: did its branch run?
                ran = True if gate is None else bool(gate.any())
                if charged[tier]:
                    vms = (block_ms[k] if ran else skip_ms[k]) * factors[tier]
                else:
                    vms = ms * factors[tier]
                add_step(Step(COMPUTE, tier, vms, k, 0, ms))
                clock_ms += vms
                add_path(PathEntry(k, tier, ran))
                state.next_block = k + 1
            elif action is Action.OFFLOAD:
                if tier + 1 >= len(self.tiers):
                    raise PlanError(f"tier {self.tiers[tier].name} has no next tier to offload to")
                if encoded is None:
                    if decision.codec is None:
                        raise PlanError("an offload from a tier holding a tensor needs a codec")
                    t0 = perf()
                    encoded = get_codec(decision.codec).encode(state.z)
                    ms = (perf() - t0) * 1e3
                    vms = self._codec_ms(tier, ms, state.next_block, decision.codec, True)
                    trace.add(Step(StepKind.ENCODE, tier, vms, wall_ms=ms))
                    clock_ms += vms
                    encoded_at = tier
                nbytes = encoded.payload_bytes + encoded.header_bytes
                try:
                    seconds = self.links[tier].transfer(nbytes, clock_ms / 1e3)
                except LinkError:
                    # The next tier is unreachable: finish here with what we hold.
                    trace.add(Step(StepKind.FALLBACK, tier, 0.0))
                    state.fell_back = True
                    local_only = True
                    if encoded_at == tier:  # we still hold the exact tensor: skip the codec
                        encoded = None
                    continue
                self.policy.observe_transfer(tier, nbytes, seconds, clock_ms / 1e3)
                trace.add(Step(StepKind.TRANSFER, tier, seconds * 1e3, nbytes=nbytes))
                clock_ms += seconds * 1e3
                hops.append(tier)
                if tier == 0 and state.next_block == 0:
                    state.raw_input_left_device = True
                state.tier = tier + 1
            else:  # EXIT
                if attempt is not None and attempt.fired:  # an early exit: its head answers
                    state.z = attempt.logits
                    state.exited_early = True
                    encoded = None
                if encoded is not None:
                    state.z, ms = self._decode(encoded)
                    vms = self._codec_ms(tier, ms, state.next_block, encoded.header.codec, False)
                    trace.add(Step(StepKind.DECODE, tier, vms, wall_ms=ms))
                    clock_ms += vms
                for hop in reversed(hops):
                    try:
                        seconds = self.links[hop].transfer(self.reply_bytes, clock_ms / 1e3)
                    except LinkError:
                        seconds = 0.0  # the answer is already computed; count no time
                    trace.add(Step(StepKind.REPLY, hop, seconds * 1e3, nbytes=self.reply_bytes))
                    clock_ms += seconds * 1e3
                return

    @staticmethod
    def _decode(encoded: Encoded) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        z = get_codec(encoded.header.codec).decode(encoded)
        return z, (time.perf_counter() - t0) * 1e3
