"""The one cost model: what a plan costs in latency and device energy.

The planner optimises it, the brute-force check enumerates it, the policy and
the reports predict with it. A *plan* assigns every tier a contiguous range of
blocks: tier ``t`` runs blocks ``[b[t], b[t+1])``. The device (tier 0) holds
the input; a later tier that runs no block is a *relay*: it forwards the bytes
it receives unchanged. Each transfer from a sender ``a`` to the next tier that
runs blocks, ``r``, carries the tensor at cut ``b[r]`` in the codec the sender
chose, and crosses links ``a .. r-1``. Per link crossed it costs the link's RTT
(request there, answer back) plus the serialisation of the request and of
the :data:`REPLY_BYTES` answer, packet headers included;
the sender pays the encode and the receiver the decode, both scaled by the
tier's speed factor.

Device energy (``objective="energy"``) follows a three-state power model (see
:class:`PowerModel`): compute power while the device computes or encodes,
radio power while it serialises bytes onto its uplink, idle power for the
rest of the request.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from collabinfer.errors import ConfigError, PlanError
from collabinfer.plan.profile import Profile
from collabinfer.topology.links import LinkProfile, wire_bytes
from collabinfer.topology.tiers import TierSpec

OBJECTIVES = ("latency", "energy")
REPLY_BYTES = 64  # an answer: class id, confidence, request id and framing


def serialisation_ms(link: LinkProfile, payload_bytes: float) -> float:
    """Time to put ``payload_bytes`` on the link, counting the packet headers it adds
    (:func:`~collabinfer.runtime.link.wire_bytes`), exactly as the simulated link does."""
    return 8.0 * wire_bytes(int(payload_bytes), link.mtu_bytes) / (link.bandwidth_mbps * 1e3)


def hop_ms(link: LinkProfile, payload_bytes: float) -> float:
    """A request over one link and the answer back: RTT plus both serialisations."""
    return link.rtt_ms + serialisation_ms(link, payload_bytes) + serialisation_ms(link, REPLY_BYTES)


@dataclass(frozen=True)
class PowerModel:
    """Device power draw in watts (W x ms = mJ). Defaults are our assumption.

    They stand for a Raspberry-Pi-class camera board with a cellular modem:
    ~1 W busy CPU, ~0.25 W idle, ~1.5 W while the radio transmits (the order of
    magnitude of LTE uplink power in Huang et al., MobiSys 2012). Change them
    for your hardware; the planner only needs their ratios.
    """

    compute_w: float = 1.0
    tx_w: float = 1.5
    idle_w: float = 0.25

    def __post_init__(self) -> None:
        if min(self.compute_w, self.tx_w, self.idle_w) < 0:
            raise ConfigError("power draws must be >= 0 W")


@dataclass(frozen=True)
class PlanCost:
    latency_ms: float
    energy_mj: float
    tier_compute_ms: tuple[float, ...]  # block compute per tier (scaled)
    codec_ms: float  # all encode + decode work
    link_ms: tuple[float, ...]  # time spent on each link (RTT + serialisation)
    wire_bytes: tuple[int, ...]  # bytes that crossed each link
    device_tx_ms: float  # serialisation time on the device's uplink

    def objective(self, name: str) -> float:
        return self.latency_ms if name == "latency" else self.energy_mj


@dataclass(frozen=True)
class Plan:
    """Where every block runs and how each sender encodes; see the module docstring.

    ``predicted`` is the planner's cost; a plan a tier received over the wire
    carries none (``objective="received"``): it is only followed, never judged.
    """

    boundaries: tuple[int, ...]
    codecs: tuple[str | None, ...]
    objective: str = "received"
    predicted: PlanCost | None = None

    @property
    def cost(self) -> PlanCost:
        """The predicted cost; a :class:`PlanError` for a plan that carries none."""
        if self.predicted is None:
            raise PlanError(f"plan {self.describe()} carries no predicted cost (it was received)")
        return self.predicted

    @property
    def num_tiers(self) -> int:
        return len(self.codecs)

    def runs_blocks(self, tier: int) -> bool:
        return self.boundaries[tier] < self.boundaries[tier + 1]

    def end_of(self, tier: int) -> int:
        """The cut at which ``tier`` stops running blocks."""
        return self.boundaries[tier + 1]

    @property
    def raw_input_leaves_device(self) -> bool:
        return self.boundaries[1] == 0 and self.boundaries[-1] > 0

    def describe(self, block_names: Sequence[str] | None = None) -> str:
        parts = []
        for t in range(self.num_tiers):
            a, b = self.boundaries[t], self.boundaries[t + 1]
            if a < b:
                rng = (
                    f"{a}:{b}" if block_names is None else f"{block_names[a]}..{block_names[b - 1]}"
                )
                parts.append(f"t{t}[{rng}]")
            if self.codecs[t]:
                parts.append(f"-{self.codecs[t]}->")
        return " ".join(parts)


def check_boundaries(boundaries: Sequence[int], num_blocks: int, num_tiers: int) -> None:
    b = list(boundaries)
    if len(b) != num_tiers + 1 or b[0] != 0 or b[-1] != num_blocks:
        raise PlanError(f"boundaries {b} must have {num_tiers + 1} entries from 0 to {num_blocks}")
    if any(x > y for x, y in itertools.pairwise(b)):
        raise PlanError(f"boundaries {b} must be non-decreasing")


def transfers(boundaries: Sequence[int]) -> list[tuple[int, int, int]]:
    """(sender, receiver, cut) for every transfer the plan makes, in order."""
    n = boundaries[-1]
    out = []
    sender = 0
    for t in range(1, len(boundaries) - 1):
        if boundaries[t] < boundaries[t + 1]:  # tier t runs blocks: it receives
            out.append((sender, t, boundaries[t]))
            sender = t
        if boundaries[t] == n:
            break
    return out


def evaluate_plan(
    profile: Profile,
    tiers: Sequence[TierSpec],
    links: Sequence[LinkProfile],
    boundaries: Sequence[int],
    codecs: Sequence[str | None],
    power: PowerModel | None = None,
) -> PlanCost:
    """The cost of one explicit plan: the reference the planner is checked against."""
    m = len(tiers)
    if len(links) != m - 1:
        raise ConfigError(f"{m} tiers need {m - 1} links, got {len(links)}")
    check_boundaries(boundaries, profile.num_blocks, m)
    power = power or PowerModel()
    compute = []
    for t in range(m):
        ms = sum(profile.blocks[k].time_ms for k in range(boundaries[t], boundaries[t + 1]))
        compute.append(ms * tiers[t].speed_factor)
    link_ms = [0.0] * (m - 1)
    wire = [0] * (m - 1)
    codec_ms = 0.0
    device_busy = compute[0]
    device_tx = 0.0
    for sender, receiver, cut in transfers(boundaries):
        name = codecs[sender]
        if name is None or name not in profile.cuts[cut].codecs:
            raise PlanError(f"tier {sender} sends cut {cut} with unknown codec {name!r}")
        cost = profile.cuts[cut].codecs[name]
        enc = cost.encode_ms * tiers[sender].speed_factor
        codec_ms += enc + cost.decode_ms * tiers[receiver].speed_factor
        if sender == 0:
            device_busy += enc
        for h in range(sender, receiver):
            link_ms[h] += hop_ms(links[h], cost.wire_bytes)
            wire[h] += cost.wire_bytes
            if h == 0:
                device_tx += serialisation_ms(links[h], cost.wire_bytes)
    latency = sum(compute) + codec_ms + sum(link_ms)
    energy = (
        power.compute_w * device_busy
        + power.tx_w * device_tx
        + power.idle_w * max(0.0, latency - device_busy - device_tx)
    )
    return PlanCost(
        latency, energy, tuple(compute), codec_ms, tuple(link_ms), tuple(wire), device_tx
    )
