"""Table 1's rows, one small builder each, and the one way a row runs on the virtual clock.

Every row is the same thing: a model, tiers, links and a policy, run over the
same inputs, trace and tier factors through :class:`~collabinfer.runtime.chain.Chain`.
A builder takes the :class:`Setting` every row shares and returns its
:class:`RowSetup`; :data:`ROW_BUILDERS` is the table of them:

* ``LC``: the small local model, entirely on the device.
* ``EC``: the full model on the edge; the raw image is sent (8-bit pixels).
* ``CC``: the full model on the cloud; the raw image crosses the access link
  and the WAN (the edge only relays).
* ``static-split``: the planner's best plan for the trace's *mean* bandwidth,
  fixed for every input.
* ``collabinfer``: re-plans per input from an EWMA estimate of the link built
  from its own transfers (:func:`collab_policy`), running what
  :class:`Deployed` says (the gated backbone with device exits by default).

Compute runs on this CPU at batch 1; tiers at factor 1 are charged what they
measured, emulated tiers their profiled time x speed factor (the engine's one
rule). Inputs arrive every ``arrival_interval_s`` (a camera's frame rate), so
input ``i`` meets the link as it is at ``i * arrival_interval_s``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from collabinfer.cache.reuse import Reuse
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.experiments.table1.schema import Row, Table1Config
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import Profile
from collabinfer.progress import ProgressFn, report
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.exit_policy import DeviceExits, ExitingPolicy
from collabinfer.runtime.link import BandwidthTrace, SimulatedLink, synthetic_trace
from collabinfer.runtime.policy import AdaptivePolicy, Policy, StaticPolicy
from collabinfer.topology.links import LinkProfile, get_profile
from collabinfer.topology.tiers import TierSpec

__all__ = [
    "ROW_BUILDERS",
    "Deployed",
    "RowSetup",
    "Setting",
    "build_trace",
    "collab_policy",
    "describe_plan_mix",
    "describe_sends",
    "device_send",
    "run_virtual_row",
]


@dataclass(frozen=True)
class Deployed:
    """What the collabinfer rows run: a model id on the wire, its net, profile and exits."""

    name: str
    net: BlockNet
    profile: Profile
    exits: DeviceExits | None = None
    spec: str | None = None  # what a tier server loads (a package dir); None: ``name``


@dataclass(frozen=True)
class Setting:
    """What every row of one run shares: config, inputs, trace, models and profiles."""

    cfg: Table1Config
    data: Dataset
    trace: BandwidthTrace | None
    full: BlockNet
    local: BlockNet
    full_profile: Profile
    local_profile: Profile
    collab: Deployed
    reuse: Reuse | None = None  # the collabinfer rows' edge cache (keys and rules; emptied per row)

    @property
    def access(self) -> LinkProfile:
        return get_profile(self.cfg.link)

    @property
    def wan(self) -> LinkProfile:
        return get_profile(self.cfg.wan)

    @property
    def mean_access(self) -> LinkProfile:
        """The access link at the trace's mean bandwidth: what a static plan assumes."""
        if self.trace is None:
            return self.access
        return dataclasses.replace(self.access, bandwidth_mbps=self.trace.mean_mbps())

    def links(self, count: int) -> list[SimulatedLink]:
        """Fresh seeded links for a row: every row meets the same link behaviour."""
        links = [
            SimulatedLink(self.access, self.trace, seed=self.cfg.link_seed),
            SimulatedLink(self.wan, None, seed=self.cfg.link_seed + 1),
        ]
        return links[:count]


@dataclass(frozen=True)
class RowSetup:
    model: BlockNet
    tiers: list[TierSpec]
    links: list[SimulatedLink]
    policy: Policy
    profile: Profile
    reuse: Reuse | None = None  # the edge's semantic cache (a fresh one per row)


def build_trace(cfg: Table1Config, duration_s: float) -> BandwidthTrace | None:
    if not cfg.fluctuating:
        return None
    mean = get_profile(cfg.link).bandwidth_mbps
    return synthetic_trace(mean, duration_s, cfg.trace_seed, volatility=cfg.volatility)


def fixed_plan(
    profile: Profile,
    tiers: Sequence[TierSpec],
    links: Sequence[LinkProfile],
    boundaries: tuple[int, ...],
    codecs: tuple[str | None, ...],
) -> Plan:
    cost = evaluate_plan(profile, tiers, links, boundaries, codecs)
    return Plan(boundaries, codecs, "latency", cost)


def collab_policy(
    cfg: Table1Config, profile: Profile, tiers: Sequence[TierSpec], exits: DeviceExits | None
) -> Policy:
    """The collabinfer rows' policy, virtual clock and real sockets alike: re-plan per
    input from EWMA link estimates, trying the exits on the device first."""
    planner = Planner(
        profile,
        tiers,
        min_device_blocks=cfg.min_device_blocks,
        privacy=cfg.privacy_map(),
        max_ssim=cfg.max_attack_ssim,
    )
    estimators = [
        LinkEstimator(get_profile(cfg.link), alpha=cfg.ewma_alpha, recovery_s=cfg.recovery_s),
        LinkEstimator(get_profile(cfg.wan), alpha=cfg.ewma_alpha, recovery_s=cfg.recovery_s),
    ]
    policy: Policy = AdaptivePolicy(planner, estimators[: len(tiers) - 1])
    return ExitingPolicy(policy, exits) if exits is not None else policy


def _lc(s: Setting) -> RowSetup:
    tiers = s.cfg.tiers()[:1]
    plan = fixed_plan(s.local_profile, tiers, [], (0, s.local.num_blocks), (None,))
    return RowSetup(s.local, tiers, [], StaticPolicy(plan), s.local_profile)


def _ec(s: Setting) -> RowSetup:
    tiers = s.cfg.tiers()[:2]
    plan = fixed_plan(s.full_profile, tiers, [s.access], (0, 0, s.full.num_blocks), ("u8", None))
    return RowSetup(s.full, tiers, s.links(1), StaticPolicy(plan), s.full_profile)


def _cc(s: Setting) -> RowSetup:
    tiers = s.cfg.tiers()
    n = s.full.num_blocks
    plan = fixed_plan(s.full_profile, tiers, [s.access, s.wan], (0, 0, 0, n), ("u8", None, None))
    return RowSetup(s.full, tiers, s.links(2), StaticPolicy(plan), s.full_profile)


def _static_split(s: Setting) -> RowSetup:
    tiers = s.cfg.tiers()
    planner = Planner(
        s.full_profile,
        tiers,
        min_device_blocks=s.cfg.min_device_blocks,
        privacy=s.cfg.privacy_map(),
        max_ssim=s.cfg.max_attack_ssim,
    )
    plan = planner.plan([s.mean_access, s.wan])
    return RowSetup(s.full, tiers, s.links(2), StaticPolicy(plan), s.full_profile)


def _collabinfer(s: Setting) -> RowSetup:
    tiers = s.cfg.tiers()
    c = s.collab
    policy = collab_policy(s.cfg, c.profile, tiers, c.exits)
    reuse = s.reuse.emptied() if s.reuse is not None else None
    return RowSetup(c.net, tiers, s.links(2), policy, c.profile, reuse)


ROW_BUILDERS: dict[str, Callable[[Setting], RowSetup]] = {
    "LC": _lc,
    "EC": _ec,
    "CC": _cc,
    "static-split": _static_split,
    "collabinfer": _collabinfer,
}


def device_send(plan: Plan | None, bytes_from_device: int) -> str | None:
    """``"cut:codec"`` of what the device sent under ``plan``; ``None`` if it sent nothing
    (an exit answered, or the plan keeps everything on the device)."""
    if plan is None or bytes_from_device <= 0 or plan.codecs[0] is None:
        return None
    return f"{plan.boundaries[1]}:{plan.codecs[0]}"


def describe_sends(sends: Counter[str]) -> str:
    """The row's ``sends`` field: each distinct "cut:codec" once, the most frequent first."""
    return ",".join(k for k, _ in sends.most_common())


def describe_plan_mix(plans: Counter[str]) -> str:
    """``"plan A (93%); plan B (7%)"``: how often each plan was chosen."""
    n = sum(plans.values()) or 1
    return "; ".join(f"{k} ({100 * v / n:.0f}%)" for k, v in plans.most_common())


def run_virtual_row(
    paradigm: str, setup: RowSetup, s: Setting, progress: ProgressFn | None = None
) -> tuple[Row, list[float]]:
    """Every input through the chain on the virtual clock; the row and its latencies."""
    reuse = {1: setup.reuse} if setup.reuse is not None else None
    chain = Chain(
        setup.model, setup.tiers, setup.links, setup.policy, profile=setup.profile, reuse=reuse
    )
    data, interval = s.data, s.cfg.arrival_interval_s
    lat: list[float] = []
    correct = sent = fallbacks = exited = hits = 0
    raw = False
    edge_ms = 0.0
    plans: Counter[str] = Counter()
    sends: Counter[str] = Counter()
    for i in range(len(data)):
        result = chain.run(data.images[i : i + 1], start_s=i * interval)
        st = result.state
        lat.append(result.latency_ms)
        correct += int(result.output.argmax(1).item() == int(data.labels[i]))
        sent += st.trace.bytes_sent(0)
        send = device_send(st.plan, st.trace.bytes_sent(0))
        if send is not None:
            sends[send] += 1
        raw = raw or st.raw_input_left_device
        if len(setup.tiers) > 1:
            edge_ms += st.trace.wall_ms(1)
        fallbacks += int(st.fell_back)
        exited += int(st.exited_early)
        hits += int(st.cache_hit)
        if st.plan is not None:
            plans[st.plan.describe(setup.model.block_names)] += 1
        report(progress, paradigm, i + 1, len(data))
    n = len(data)
    row = Row(
        paradigm=paradigm,
        accuracy=correct / n,
        latency_p50_ms=float(np.percentile(lat, 50)),
        latency_p95_ms=float(np.percentile(lat, 95)),
        bytes_per_input=sent / n,
        raw_input_leaves_device=raw,
        edge_cpu_ms_per_input=edge_ms / n,
        measured_on="virtual-clock",
        plan=describe_plan_mix(plans),
        fallbacks=fallbacks,
        num_inputs=n,
        exited_on_device=exited / n,
        sends=describe_sends(sends),
        cache_hits=hits / n if setup.reuse is not None else None,
    )
    return row, lat
