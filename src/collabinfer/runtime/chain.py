"""The chain: the engine over simulated links, on a virtual clock.

Executing block ``k`` is one call whose result is the argument of the next
call, here or on the next tier (paper, Section 3.1). The per-block step lives
in :class:`~collabinfer.runtime.engine.Engine`; the chain only moves the
State between tiers:

* a transfer takes whatever the :class:`~collabinfer.runtime.link.Link` says on
  its virtual clock, and the answer travels back over the same links;
* a :class:`~collabinfer.errors.LinkError` on the way out makes the current
  tier finish the input itself (``state.fell_back``).

Compute is charged by the engine's one rule (:class:`~collabinfer.runtime.engine.Charger`):
measured time on tiers at factor 1, profiled time x factor on emulated tiers.
The device client (``serve/client.py``) runs the same engine over HTTP.

Example::

    >>> chain = Chain(net, [TierSpec("device")], [], StaticPolicy(local_plan))  # doctest: +SKIP
    >>> result = chain.run(x)                                                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from collabinfer.cache.reuse import Reuse
from collabinfer.errors import ConfigError, LinkError
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.cost import REPLY_BYTES
from collabinfer.plan.profile import Profile
from collabinfer.runtime.engine import Charger, Engine
from collabinfer.runtime.link import Link
from collabinfer.runtime.policy import Policy
from collabinfer.runtime.state import State, Step, StepKind
from collabinfer.topology.tiers import TierSpec, check_tiers


@dataclass(frozen=True)
class ChainResult:
    output: torch.Tensor
    state: State

    @property
    def latency_ms(self) -> float:
        return self.state.trace.latency_ms


class Chain:
    """Runs one model over a chain of tiers under a policy, on a virtual clock.

    ``profile`` (the model's :class:`~collabinfer.plan.profile.Profile`) is what
    emulated tiers are charged from; it is required when any tier's speed
    factor is not 1. ``reuse`` gives a tier (by index, usually the edge: 1) a
    semantic cache, the same one a tier server runs.
    """

    def __init__(
        self,
        model: BlockNet,
        tiers: Sequence[TierSpec],
        links: Sequence[Link],
        policy: Policy,
        reply_bytes: int = REPLY_BYTES,
        profile: Profile | None = None,
        reuse: Mapping[int, Reuse] | None = None,
    ) -> None:
        check_tiers(tiers)
        if len(links) != len(tiers) - 1:
            raise ConfigError(f"{len(tiers)} tiers need {len(tiers) - 1} links, got {len(links)}")
        self.tiers = tuple(tiers)
        self.links = tuple(links)
        self.policy = policy
        self.reply_bytes = reply_bytes
        self.engine = Engine(
            model,
            policy,
            Charger.for_tiers(tiers, profile),
            num_tiers=len(self.tiers),
            reuse=reuse,
        )
        self.model = self.engine.model

    def run(
        self, x: torch.Tensor, start_s: float = 0.0, request_id: str | None = None
    ) -> ChainResult:
        """Run one input (or a batch moving as one) from virtual time ``start_s``."""
        engine = self.engine
        state = engine.begin(x, request_id, start_s)
        while (handoff := engine.advance(state)) is not None:
            try:
                seconds = self.links[handoff.sender].transfer(handoff.nbytes, state.clock_s)
            except LinkError:  # the next tier is unreachable: finish here with what we hold
                engine.fall_back(state, handoff)
                continue
            engine.delivered(state, handoff, seconds)
        for hop in reversed(state.hops):
            try:
                seconds = self.links[hop].transfer(self.reply_bytes, state.clock_s)
            except LinkError:
                seconds = 0.0  # the answer is already computed; count no time
            state.add_step(Step(StepKind.REPLY, hop, seconds * 1e3, nbytes=self.reply_bytes))
        return ChainResult(state.output, state)
