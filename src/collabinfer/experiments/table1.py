"""Table 1 of the paper, measured: LC, EC, CC, the best static split, and collabinfer.

Every row runs the real model on the real Fashion-MNIST test images, one input
at a time (batch 1), through :class:`~collabinfer.runtime.chain.Chain`. Compute
runs on this CPU; tiers at factor 1 are charged what they measured, emulated
tiers their profiled time x speed factor (see ``Chain``); links are
:class:`~collabinfer.runtime.link.SimulatedLink` s on a virtual clock that replay
the same seeded fluctuating bandwidth trace for every row. Inputs arrive every
``arrival_interval_s`` (a camera's frame rate), so input ``i`` meets the link
as it is at ``i * arrival_interval_s``.

Rows:

* ``LC``: the small local model, entirely on the device.
* ``EC``: the full model on the edge; the raw image is sent (8-bit pixels).
* ``CC``: the full model on the cloud; the raw image crosses the access link
  and the WAN (the edge only relays).
* ``static-split``: the planner's best plan for the trace's *mean* bandwidth,
  fixed for every input.
* ``collabinfer``: re-plans per input from an EWMA estimate of the link built
  from its own transfers (:class:`~collabinfer.plan.policy.AdaptivePolicy`),
  over real sockets (``experiments/table1_real.py``) unless ``real_sockets`` is
  off; then ``collabinfer-virtual`` keeps the same policy on the virtual clock
  over all inputs. It may use the learned bottleneck (:class:`BottleneckCandidate`).

Both split rows keep the raw input on the device by default
(``private_splits``): that is the privacy half of the paper's promise, and it
makes them choose among feature cuts instead of trivially sending the image.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import Profile
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.exit_policy import DeviceExits, ExitingPolicy
from collabinfer.runtime.link import BandwidthTrace, SimulatedLink, synthetic_trace
from collabinfer.runtime.policy import AdaptivePolicy, Policy, StaticPolicy
from collabinfer.topology.links import LinkProfile, get_profile
from collabinfer.topology.tiers import TierSpec, describe_tiers

if TYPE_CHECKING:
    from collabinfer.train.exit_rules import ExitRecords

PARADIGMS = ("LC", "EC", "CC", "static-split", "collabinfer")

# Why these factors (README, "Why these tiers"): the device stands for an
# IoT-class camera board (a microcontroller-class or low-clock Cortex-A core
# without tuned kernels), ~100x slower than one core of this CPU, so the full
# model's device time (~150 ms) is about 3x the edge round trip over LTE. The
# edge *is* this CPU. The cloud is a bigger server (2x faster) behind a WAN.
DEVICE_FACTOR = 100.0
EDGE_FACTOR = 1.0
CLOUD_FACTOR = 0.5


@dataclass(frozen=True)
class Table1Config:
    link: str = "lte"
    wan: str = "wan"
    fluctuating: bool = True
    trace_seed: int = 7
    volatility: float = 0.6
    arrival_interval_s: float = 0.1
    device_factor: float = DEVICE_FACTOR
    edge_factor: float = EDGE_FACTOR
    cloud_factor: float = CLOUD_FACTOR
    full_model: str = "fmnist-resnet"
    local_model: str = "fmnist-small"
    num_inputs: int = 10_000
    subset_seed: int = 0
    private_splits: bool = True
    ewma_alpha: float = 0.3
    recovery_s: float = 2.0
    real_sockets: bool = True  # the collabinfer row over real servers, relays and sockets
    real_inputs: int = 1000  # how many of the inputs the real-socket row runs (wall time!)
    dynamic: bool = True  # the collabinfer row runs the gated backbone with device exits
    dynamic_max_drop: float = 0.005  # validation accuracy the exit rule may give up
    bottleneck: bool = True  # offer the learned bottleneck to the collabinfer row
    bottleneck_max_drop: float = 0.01  # validation accuracy it may lose against the teacher
    link_seed: int = 0

    def __post_init__(self) -> None:
        get_profile(self.link)
        get_profile(self.wan)
        if self.num_inputs < 1 or self.arrival_interval_s <= 0:
            raise ConfigError("num_inputs and arrival_interval_s must be positive")

    def tiers(self) -> list[TierSpec]:
        return [
            TierSpec("device", self.device_factor, "IoT-class camera board (emulated)"),
            TierSpec("edge", self.edge_factor, "this CPU"),
            TierSpec("cloud", self.cloud_factor, "bigger server behind a WAN (emulated)"),
        ]


@dataclass(frozen=True)
class Row:
    paradigm: str
    accuracy: float
    latency_p50_ms: float
    latency_p95_ms: float
    bytes_per_input: float
    raw_input_leaves_device: bool
    edge_cpu_ms_per_input: float
    measured_on: str
    plan: str = ""  # the plan (or, for collabinfer, how often each plan was chosen)
    fallbacks: int = 0
    num_inputs: int = 0
    exited_on_device: float = 0.0  # fraction of inputs answered by a device exit (0 bytes)


@dataclass(frozen=True)
class Table1Result:
    conditions: dict[str, Any]
    rows: tuple[Row, ...]
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {"conditions": self.conditions, "rows": [dataclasses.asdict(r) for r in self.rows]}


@dataclass(frozen=True)
class BottleneckCandidate:
    """A deployed learned bottleneck the collabinfer row may use instead of plain cuts."""

    name: str  # the model id on the wire, e.g. fmnist-resnet+bn
    net: BlockNet
    profile: Profile  # with the entropy codec at cut 1, bytes measured on validation images
    val_accuracy: float
    teacher_val_accuracy: float

    def wins(
        self,
        cfg: Table1Config,
        full_profile: Profile,
        tiers: list[TierSpec],
        links: list[LinkProfile],
        min_device_blocks: int,
    ) -> tuple[bool, str]:
        """Use it when its best plan is predicted faster at the mean link *and* its
        validation accuracy is within ``cfg.bottleneck_max_drop`` of the teacher's."""
        plain = Planner(full_profile, tiers, min_device_blocks=min_device_blocks).plan(links)
        learned = Planner(self.profile, tiers, min_device_blocks=min_device_blocks).plan(links)
        drop = self.teacher_val_accuracy - self.val_accuracy
        faster = learned.cost.latency_ms < plain.cost.latency_ms
        ok = drop <= cfg.bottleneck_max_drop
        why = (
            f"predicted {learned.cost.latency_ms:.1f} ms vs "
            f"{plain.cost.latency_ms:.1f} ms "
            f"for plain cuts at the mean link; validation accuracy {self.val_accuracy:.2%} vs "
            f"teacher {self.teacher_val_accuracy:.2%} (allowed drop {cfg.bottleneck_max_drop:.1%})"
        )
        return faster and ok, why


@dataclass(frozen=True)
class DynamicCandidate:
    """A gated backbone with calibrated, path-aware exits tried on the device."""

    name: str  # the model id on the wire, e.g. fmnist-resnet+gates
    net: BlockNet  # the gated backbone the tiers run
    profile: Profile  # gated blocks at their validation execution rates (what the planner sees)
    exits: DeviceExits
    val_accuracy: float  # gated backbone + exit rule, on the validation split
    backbone_val_accuracy: float
    describe: str

    def wrap(self, policy: Policy) -> Policy:
        return ExitingPolicy(policy, self.exits)


def make_dynamic_candidate(
    full: BlockNet,
    full_name: str,
    backbone_val_accuracy: float,
    train: Dataset,
    val: Dataset,
    max_drop: float,
    cache: Path | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    repeats: int = 50,
) -> DynamicCandidate:
    """The deployed gated backbone + exits trained on it + the exit rule chosen on
    validation (path-aware, least compute within ``max_drop``), profiled at batch 1."""
    from collabinfer.model.dynamic import flops_table
    from collabinfer.model.gates import gated_blocks
    from collabinfer.plan.profile import median_ms, one_thread, profile_model, with_gate_rates
    from collabinfer.train.exit_rules import calibrated_rule, record_exits
    from collabinfer.train.exits import ExitConfig, train_or_load_exits
    from collabinfer.train.gates import DEFAULT_GATES, GATES_SUFFIX, train_or_load_gates

    gates = train_or_load_gates(DEFAULT_GATES, full, train, val, cache, progress)
    net = gates.net
    trained = train_or_load_exits(ExitConfig(), net, train, val, cache, progress)
    exits = trained.exits
    records = record_exits(net, exits, val)
    chosen = calibrated_rule(records, flops_table(net, exits), max_drop=max_drop, path_aware=True)
    name = full_name + GATES_SUFFIX
    with one_thread():
        rates = _exec_rates(net, records)
        profile = with_gate_rates(profile_model(net, name, repeats=repeats), rates)
        g = torch.Generator().manual_seed(0)
        acts = [torch.rand((1, *(net.input_shape or ())), generator=g)]
        with torch.inference_mode():
            for block in net.blocks:
                acts.append(block(acts[-1]))
            head_ms = [
                median_ms(lambda e=e, z=acts[c]: exits.score(e, z, chosen.rule.score), repeats)
                for e, c in enumerate(exits.cuts)
            ]
    gate_index = [i for i, _ in gated_blocks(net)]
    return DynamicCandidate(
        name=name,
        net=net,
        profile=profile,
        exits=DeviceExits(exits, chosen.rule, gate_index, head_ms),
        val_accuracy=chosen.val.accuracy,
        backbone_val_accuracy=backbone_val_accuracy,
        describe=(
            f"gated {full_name} (target rate {DEFAULT_GATES.target_rate:g}) with exits at "
            f"{', '.join(exits.names)}; thresholds chosen on validation for least compute "
            f"within {100 * max_drop:g} points, path-aware; tried on the device only"
        ),
    )


def _exec_rates(net: BlockNet, records: ExitRecords) -> dict[int, float]:
    """Validation execution rate of every gated block, by block index."""
    from collabinfer.model.gates import gated_blocks

    rates = records.ran.float().mean(0).tolist() if records.ran.numel() else []
    return {i: r for (i, _), r in zip(gated_blocks(net), rates, strict=True)}


def build_trace(cfg: Table1Config, duration_s: float) -> BandwidthTrace | None:
    if not cfg.fluctuating:
        return None
    mean = get_profile(cfg.link).bandwidth_mbps
    return synthetic_trace(mean, duration_s, cfg.trace_seed, volatility=cfg.volatility)


def fixed_plan(
    profile: Profile,
    tiers: list[TierSpec],
    links: list[LinkProfile],
    boundaries: tuple[int, ...],
    codecs: tuple[str | None, ...],
) -> Plan:
    cost = evaluate_plan(profile, tiers, links, boundaries, codecs)
    return Plan(boundaries, codecs, "latency", cost)


ProgressFn = Callable[[str, int, int], None]


def describe_plan_mix(plans: Counter[str]) -> str:
    """``"plan A (93%); plan B (7%)"``: how often each plan was chosen."""
    n = sum(plans.values()) or 1
    return "; ".join(f"{k} ({100 * v / n:.0f}%)" for k, v in plans.most_common())


def _run_row(
    paradigm: str,
    model: BlockNet,
    tiers: list[TierSpec],
    links: list[SimulatedLink],
    policy: Policy,
    data: Dataset,
    cfg: Table1Config,
    progress: ProgressFn | None,
    profile: Profile,
) -> tuple[Row, list[float]]:
    chain = Chain(model, tiers, links, policy, profile=profile)
    lat: list[float] = []
    correct = 0
    sent = 0
    raw = False
    edge_ms = 0.0
    fallbacks = 0
    exited = 0
    plans: Counter[str] = Counter()
    for i in range(len(data)):
        result = chain.run(data.images[i : i + 1], start_s=i * cfg.arrival_interval_s)
        st = result.state
        lat.append(result.latency_ms)
        correct += int(result.output.argmax(1).item() == int(data.labels[i]))
        sent += st.trace.bytes_sent(0)
        raw = raw or st.raw_input_left_device
        if len(tiers) > 1:
            edge_ms += st.trace.wall_ms(1)
        fallbacks += int(st.fell_back)
        exited += int(st.exited_early)
        if st.plan is not None:
            plans[st.plan.describe(model.block_names)] += 1
        if progress is not None:
            progress(paradigm, i + 1, len(data))
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
    )
    return row, lat


def run_table1(
    cfg: Table1Config,
    full: BlockNet,
    local: BlockNet,
    full_profile: Profile,
    local_profile: Profile,
    test: Dataset,
    progress: ProgressFn | None = None,
    paradigms: tuple[str, ...] = PARADIGMS,
    cache: Path | None = None,
    log_dir: Path | None = None,
    bottleneck: BottleneckCandidate | None = None,
    dynamic: DynamicCandidate | None = None,
) -> Table1Result:
    """Run every row on the same inputs, trace and tiers; return rows + latency samples."""
    unknown = set(paradigms) - set(PARADIGMS)
    if unknown:
        raise ConfigError(f"unknown paradigms {sorted(unknown)}; choose from {PARADIGMS}")
    torch.manual_seed(0)
    data = test.subset(cfg.num_inputs, cfg.subset_seed)
    duration = len(data) * cfg.arrival_interval_s + 10.0
    trace = build_trace(cfg, duration)
    access, wan = get_profile(cfg.link), get_profile(cfg.wan)
    tiers3 = cfg.tiers()
    nominal = [access, wan]
    mean_access = dataclasses.replace(access, bandwidth_mbps=trace.mean_mbps()) if trace else access
    n = full.num_blocks
    min_dev = 1 if cfg.private_splits else 0

    def links3() -> list[SimulatedLink]:
        return [
            SimulatedLink(access, trace, seed=cfg.link_seed),
            SimulatedLink(wan, None, seed=cfg.link_seed + 1),
        ]

    rows: list[Row] = []
    samples: dict[str, list[float]] = {}
    extra: dict[str, Any] = {}
    ci_model, ci_profile, ci_name = full, full_profile, cfg.full_model
    if dynamic is not None:
        ci_model, ci_profile, ci_name = dynamic.net, dynamic.profile, dynamic.name
        extra["collabinfer_dynamic"] = {
            "model": dynamic.name,
            "rule": dynamic.exits.rule.to_json(),
            "val_accuracy": dynamic.val_accuracy,
            "backbone_val_accuracy": dynamic.backbone_val_accuracy,
            "how": dynamic.describe,
        }
        if bottleneck is not None:
            extra["collabinfer_bottleneck"] = {
                "used": False,
                "why": "the row runs the gated backbone with exits (dynamic); "
                "pass --no-dynamic to consider the bottleneck",
                "model": bottleneck.name,
            }
            bottleneck = None
    if bottleneck is not None:
        use, why = bottleneck.wins(cfg, full_profile, tiers3, [mean_access, wan], min_dev)
        extra["collabinfer_bottleneck"] = {"used": use, "why": why, "model": bottleneck.name}
        if use:
            ci_model, ci_profile, ci_name = bottleneck.net, bottleneck.profile, bottleneck.name
    for paradigm in paradigms:
        static: tuple[BlockNet, list[TierSpec], list[SimulatedLink], Plan, Profile] | None = None
        if paradigm == "LC":
            lc_tiers = tiers3[:1]
            plan = fixed_plan(local_profile, lc_tiers, [], (0, local.num_blocks), (None,))
            static = (local, lc_tiers, [], plan, local_profile)
        elif paradigm == "EC":
            plan = fixed_plan(full_profile, tiers3[:2], [access], (0, 0, n), ("u8", None))
            static = (full, tiers3[:2], links3()[:1], plan, full_profile)
        elif paradigm == "CC":
            plan = fixed_plan(full_profile, tiers3, nominal, (0, 0, 0, n), ("u8", None, None))
            static = (full, tiers3, links3(), plan, full_profile)
        elif paradigm == "static-split":
            plan = Planner(full_profile, tiers3, min_device_blocks=min_dev).plan([mean_access, wan])
            static = (full, tiers3, links3(), plan, full_profile)
        if static is not None:
            model, tiers, links, plan, profile = static
            row, lat = _run_row(
                paradigm, model, tiers, links, StaticPolicy(plan), data, cfg, progress, profile
            )
        else:
            planner = Planner(ci_profile, tiers3, min_device_blocks=min_dev)
            estimators = [
                LinkEstimator(access, alpha=cfg.ewma_alpha, recovery_s=cfg.recovery_s),
                LinkEstimator(wan, alpha=cfg.ewma_alpha, recovery_s=cfg.recovery_s),
            ]
            policy: Policy = AdaptivePolicy(planner, estimators)
            if dynamic is not None:
                policy = dynamic.wrap(policy)
            row, lat = _run_row(
                paradigm, ci_model, tiers3, links3(), policy, data, cfg, progress, ci_profile
            )
            if cfg.real_sockets:
                # the same policy on the virtual clock over all inputs, kept beside the
                # real-socket row (which runs a subset, in wall time) for comparison
                rows.append(dataclasses.replace(row, paradigm="collabinfer-virtual"))
                samples["collabinfer-virtual"] = lat
                from collabinfer.experiments.table1_real import run_real_row

                real_data = data.subset(min(cfg.real_inputs, len(data)), cfg.subset_seed)
                row, lat, info = run_real_row(
                    cfg,
                    ci_model,
                    ci_profile,
                    real_data,
                    trace,
                    cache,
                    progress,
                    log_dir,
                    ci_name,
                    exits=dynamic.exits if dynamic is not None else None,
                )
                extra.update(info)
        rows.append(row)
        samples[paradigm] = lat
    conditions = {
        "link_profile": dataclasses.asdict(access),
        "wan_profile": dataclasses.asdict(wan),
        "fluctuating_trace": cfg.fluctuating,
        "trace_seed": cfg.trace_seed,
        "trace_mean_mbps": trace.mean_mbps() if trace else access.bandwidth_mbps,
        "trace_volatility": cfg.volatility if trace else 0.0,
        "link_seed": cfg.link_seed,
        "arrival_interval_s": cfg.arrival_interval_s,
        "tiers": [dataclasses.asdict(t) for t in tiers3],
        "tier_speed_factors": {t.name: t.speed_factor for t in tiers3},
        "tier_labels": describe_tiers(tiers3),
        "num_inputs": len(data),
        "subset_seed": cfg.subset_seed,
        "full_model": cfg.full_model,
        "local_model": cfg.local_model,
        "private_splits": cfg.private_splits,
        "ewma_alpha": cfg.ewma_alpha,
        "full_model_device_ms": full_profile.total_ms() * cfg.device_factor,
        "compute": "run on this CPU at batch 1; emulated tiers (factor != 1) are charged the "
        "profiled median time x factor, tiers at factor 1 their measured time",
        "links": "SimulatedLink on a virtual clock (RTTs are assumptions, see link_profile.note)",
        "profile_measured_on": full_profile.measured_on,
        "config": dataclasses.asdict(cfg),
        **extra,
    }
    return Table1Result(conditions, tuple(rows), samples)
