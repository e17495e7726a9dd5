"""What the collabinfer row may deploy beyond the plain backbone, each trained once.

* :class:`DynamicCandidate`: the gated backbone with calibrated, path-aware exits
  tried on the device (the default);
* :class:`BottleneckCandidate`: the learned bottleneck, used only when predicted
  faster at the mean link and within ``bottleneck_max_drop`` of the teacher on
  validation.

Both are built from cached checkpoints (:mod:`collabinfer.train`): the first
``make demo`` trains them, later runs only load them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from collabinfer.data.fashion_mnist import Dataset, load_split
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import deploy
from collabinfer.model.dynamic import flops_table
from collabinfer.model.gates import gated_blocks
from collabinfer.model.zoo import BOTTLENECK_SUFFIX, GATES_SUFFIX
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import Profile, median_ms, one_thread, profile_model, with_gate_rates
from collabinfer.progress import ProgressFn
from collabinfer.runtime.exit_policy import DeviceExits
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec
from collabinfer.train.bottleneck import default_bottleneck
from collabinfer.train.exit_rules import ExitRecords, calibrated_rule, record_exits
from collabinfer.train.exits import ExitConfig, train_or_load_exits
from collabinfer.train.gates import DEFAULT_GATES, train_or_load_gates

__all__ = [
    "BottleneckCandidate",
    "DynamicCandidate",
    "make_bottleneck_candidate",
    "make_dynamic_candidate",
]


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
        max_drop: float,
        full_profile: Profile,
        tiers: list[TierSpec],
        links: list[LinkProfile],
        min_device_blocks: int,
    ) -> tuple[bool, str]:
        """Use it when its best plan is predicted faster at the mean link *and* its
        validation accuracy is within ``max_drop`` of the teacher's."""
        plain = Planner(full_profile, tiers, min_device_blocks=min_device_blocks).plan(links)
        learned = Planner(self.profile, tiers, min_device_blocks=min_device_blocks).plan(links)
        drop = self.teacher_val_accuracy - self.val_accuracy
        faster = learned.cost.latency_ms < plain.cost.latency_ms
        why = (
            f"predicted {learned.cost.latency_ms:.1f} ms vs {plain.cost.latency_ms:.1f} ms "
            f"for plain cuts at the mean link; validation accuracy {self.val_accuracy:.2%} vs "
            f"teacher {self.teacher_val_accuracy:.2%} (allowed drop {max_drop:.1%})"
        )
        return faster and drop <= max_drop, why


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


def make_bottleneck_candidate(
    teacher: BlockNet,
    name: str,
    teacher_val_accuracy: float,
    data_root: Path | None = None,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
) -> BottleneckCandidate:
    """Train (once) and deploy the default learned bottleneck; profile it on validation images."""
    tb = default_bottleneck(teacher, cache, data_root, progress)
    dep = deploy(tb.net, tb.bottleneck, tb.key[:8])
    with one_thread():
        prof = profile_model(
            dep.net,
            name + BOTTLENECK_SUFFIX,
            repeats=50,
            cut_codecs={1: [dep.codec_name]},
            byte_samples=load_split("val", data_root).images[:200],
        )
    return BottleneckCandidate(
        name + BOTTLENECK_SUFFIX, dep.net, prof, tb.metrics["val_acc"], teacher_val_accuracy
    )


def make_dynamic_candidate(
    full: BlockNet,
    full_name: str,
    backbone_val_accuracy: float,
    train: Dataset,
    val: Dataset,
    max_drop: float,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    repeats: int = 50,
) -> DynamicCandidate:
    """The deployed gated backbone + exits trained on it + the exit rule chosen on
    validation (path-aware, least compute within ``max_drop``), profiled at batch 1."""
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
        x = torch.rand((1, *(net.input_shape or ())), generator=g)
        with torch.inference_mode():
            acts = net.activations(x)
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
    rates = records.ran.float().mean(0).tolist() if records.ran.numel() else []
    return {i: r for (i, _), r in zip(gated_blocks(net), rates, strict=True)}
