"""Recipe: train early-exit heads, frozen backbone or jointly, then calibrate them.

* **Frozen** (``joint_epochs=0``): the backbone (gated or not) runs in eval
  mode, exactly as at inference, and only the heads learn. Cheap, and the
  backbone's own accuracy cannot move.
* **Joint**: after the frozen phase, backbone and heads fine-tune together on
  ``CE(final) + sum_e CE(exit e)`` (BranchyNet's weighted sum with unit
  weights) at a small learning rate. Early heads get better features; the
  final classifier may lose a little. Only for ungated backbones (a gated one
  would need its rate loss too; train gates first, then frozen heads).

Then every head gets a temperature fitted on the **validation** split
(:func:`~collabinfer.model.calibration.fit_temperature`); the test split is
never read here (:func:`require_tuning_split` refuses it).

Checkpoints are cached by config + backbone weights + data, like the other
recipes.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.calibration import (
    ReliabilityBin,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
)
from collabinfer.model.checkpoint import Checkpoint, load_weights
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import is_gated
from collabinfer.progress import ProgressFn
from collabinfer.train.cache import Trained, cached, derived_slot, detached
from collabinfer.train.exit_rules import record_exits
from collabinfer.train.loop import LossFn, Phase, fit, require_tuning_split, steps_per_epoch


@dataclass(frozen=True)
class ExitConfig:
    cuts: tuple[int, ...] = (1, 3, 5)  # fmnist-resnet: after stem, after res1b, after res2b
    width: int = 32
    head_depth: int = 2  # strided convolutions in a head on a >= 14x14 map (see exit_head)
    epochs: int = 4  # heads only, backbone frozen
    joint_epochs: int = 0  # then backbone + heads together
    lr: float = 3e-3  # Adam, heads
    joint_lr: float = 0.01  # SGD, everything
    batch_size: int = 128
    hflip: bool = True
    train_subset: int = 0  # 0: the whole training split
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.joint_epochs < 0 or self.epochs + self.joint_epochs < 1:
            raise ConfigError("exit training needs at least one epoch", config=self)
        if not self.cuts:
            raise ConfigError("ExitConfig.cuts is empty")


@dataclass(frozen=True)
class ExitCalibration:
    name: str
    cut: int
    temperature: float
    head_accuracy: float  # on the validation split, every input (not only those that exit)
    ece_before: float
    ece_after: float
    reliability_before: tuple[ReliabilityBin, ...]
    reliability_after: tuple[ReliabilityBin, ...]


@dataclass(frozen=True)
class TrainedExits:
    backbone: BlockNet  # the input backbone, or the jointly fine-tuned copy
    exits: ExitBranches
    config: ExitConfig
    metrics: dict[str, float]
    path: Path | None
    reused: bool


def _features(backbone: BlockNet, x: torch.Tensor, cuts: tuple[int, ...]) -> list[torch.Tensor]:
    """The tensors at every exit cut plus the output (last), in one pass."""
    acts = backbone.activations(x)
    return [acts[c] for c in cuts] + [acts[-1]]


def train_exits(
    config: ExitConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    progress: ProgressFn | None = None,
) -> tuple[BlockNet, ExitBranches, dict[str, float]]:
    """Train heads (and, with ``joint_epochs``, the backbone); temperatures fitted on ``val``.

    Progress: one bar per phase, ``"train exits (frozen backbone)"`` then
    ``"train exits (joint)"``.
    """
    require_tuning_split(train, "exit training")
    require_tuning_split(val, "exit calibration")
    if config.joint_epochs and is_gated(backbone):
        raise ConfigError("joint exit training is for ungated backbones; use frozen heads")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    if config.train_subset:
        train = train.subset(config.train_subset, config.seed)
    net = copy.deepcopy(backbone).eval() if config.joint_epochs else backbone.eval()
    exits = ExitBranches.for_model(net, config.cuts, width=config.width, depth=config.head_depth)
    steps = steps_per_epoch(train, config.batch_size)
    t0 = time.perf_counter()
    stats: dict[str, float] = {}

    def loss_fn(joint: bool) -> LossFn:
        def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.set_grad_enabled(joint):
                feats = _features(net, x, exits.cuts)
            total = sum(
                (F.cross_entropy(exits.logits(e, feats[e]), y) for e in range(len(exits))),
                torch.zeros(()),
            )
            return total + F.cross_entropy(feats[-1], y) if joint else total

        return loss

    def modes(joint: bool) -> None:
        net.train(joint)
        exits.train()

    # frozen: heads only (Adam); joint: everything, our own copy of the backbone (SGD)
    if config.epochs:
        opt: torch.optim.Optimizer = torch.optim.Adam(exits.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs * steps)
        phase = Phase(
            "train exits (frozen backbone)",
            config.epochs,
            loss_fn(False),
            opt,
            sched,
            modes=lambda: modes(False),
        )
        fit(phase, train, config.batch_size, g, hflip=config.hflip, progress=progress)
    if config.joint_epochs:
        params = list(net.parameters()) + list(exits.parameters())
        opt = torch.optim.SGD(
            params, lr=config.joint_lr, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.joint_epochs * steps)
        for p in net.parameters():
            p.requires_grad_(True)
        phase = Phase(
            "train exits (joint)",
            config.joint_epochs,
            loss_fn(True),
            opt,
            sched,
            modes=lambda: modes(True),
        )
        fit(phase, train, config.batch_size, g, hflip=config.hflip, progress=progress)
        for p in net.parameters():
            p.requires_grad_(False)
    net.eval()
    exits.eval()
    for cal in calibrate_exits(net, exits, val):
        stats[f"val_head_acc_{cal.name}"] = cal.head_accuracy
        stats[f"val_ece_before_{cal.name}"] = cal.ece_before
        stats[f"val_ece_after_{cal.name}"] = cal.ece_after
        stats[f"temperature_{cal.name}"] = cal.temperature
    stats["train_seconds"] = time.perf_counter() - t0
    return net, exits, stats


def calibrate_exits(
    backbone: BlockNet, exits: ExitBranches, val: Dataset, bins: int = 15
) -> list[ExitCalibration]:
    """Fit one temperature per exit on ``val`` and set it; ECE before and after."""
    require_tuning_split(val, "exit calibration")
    logits = record_exits(backbone, exits, val).logits
    out, temps = [], []
    for e in range(len(exits)):
        lg = logits[e]
        t = fit_temperature(lg, val.labels)
        before = torch.softmax(lg, dim=1)
        after = torch.softmax(lg / t, dim=1)
        temps.append(t)
        out.append(
            ExitCalibration(
                name=exits.names[e],
                cut=exits.cuts[e],
                temperature=t,
                head_accuracy=float((lg.argmax(1) == val.labels).float().mean()),
                ece_before=expected_calibration_error(before, val.labels, bins),
                ece_after=expected_calibration_error(after, val.labels, bins),
                reliability_before=tuple(reliability_table(before, val.labels, bins)),
                reliability_after=tuple(reliability_table(after, val.labels, bins)),
            )
        )
    exits.set_temperatures(temps)
    return out


def train_or_load_exits(
    config: ExitConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    may_train: bool = True,
) -> TrainedExits:
    """Cached by config + backbone weights + training data."""

    def load(ck: Checkpoint, path: Path) -> tuple[BlockNet, ExitBranches]:
        exits = ExitBranches.for_model(
            backbone, config.cuts, width=config.width, depth=config.head_depth
        )
        load_weights(exits, ck, path, prefix="exits.")
        net = backbone
        if config.joint_epochs:
            net = copy.deepcopy(backbone)
            load_weights(net, ck, path, prefix="backbone.")
            for p in net.parameters():
                p.requires_grad_(False)
        return net.eval(), exits.eval()

    def train_now() -> Trained[tuple[BlockNet, ExitBranches]]:
        net, exits, stats = train_exits(config, backbone, train, val, progress)
        state = detached(exits, "exits.")
        if config.joint_epochs:
            state |= detached(net, "backbone.")
        return Trained((net, exits), state, stats)

    got = cached(
        derived_slot("exits", config, backbone, train, cache),
        config=dataclasses.asdict(config),
        tuning={"exit training": train, "exit validation": val},
        load=load,
        train=train_now,
        may_train=may_train,
        progress=progress,
        task="train exits",
    )
    net, exits = got.value
    return TrainedExits(net, exits, config, got.metrics, got.path, got.reused)
