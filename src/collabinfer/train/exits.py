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
from collections.abc import Callable
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
from collabinfer.model.checkpoint import (
    Checkpoint,
    derived_path,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import is_gated
from collabinfer.train.classifier import random_hflip

ProgressFn = Callable[[str, int, int, dict[str, float]], None]


def require_tuning_split(data: Dataset, what: str) -> None:
    """Training, calibration and threshold choice must never see the test split."""
    if data.split == "test":
        raise ConfigError(f"{what} must not use the test split (it is for reported numbers only)")


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
    feats = []
    z = x
    want = set(cuts)
    for k, block in enumerate(backbone.blocks):
        z = block(z)
        if k + 1 in want:
            feats.append(z)
    feats.append(z)
    return feats


def train_exits(
    config: ExitConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    progress: ProgressFn | None = None,
) -> tuple[BlockNet, ExitBranches, dict[str, float]]:
    """Train heads (and, with ``joint_epochs``, the backbone); temperatures fitted on ``val``."""
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
    steps_per_epoch = (len(train) + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * (config.epochs + config.joint_epochs)
    step = 0
    t0 = time.perf_counter()
    stats: dict[str, float] = {}

    def run_phase(phase: str, epochs: int, joint: bool) -> None:
        nonlocal step
        if epochs == 0:
            return
        if joint:
            params = list(net.parameters()) + list(exits.parameters())
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.joint_lr, momentum=0.9, nesterov=True, weight_decay=5e-4
            )
        else:
            opt = torch.optim.Adam(exits.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
        if joint:  # ``net`` is our own copy then; a frozen backbone is never touched
            for p in net.parameters():
                p.requires_grad_(True)
        for _ in range(epochs):
            net.train(joint)
            exits.train()
            perm = torch.randperm(len(train), generator=g)
            for b in range(steps_per_epoch):
                idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
                x, y = train.images[idx], train.labels[idx]
                if config.hflip:
                    x = random_hflip(x, g)
                if joint:
                    feats = _features(net, x, exits.cuts)
                else:
                    with torch.no_grad():
                        feats = _features(net, x, exits.cuts)
                loss = sum(
                    (F.cross_entropy(exits.logits(e, feats[e]), y) for e in range(len(exits))),
                    torch.zeros(()),
                )
                if joint:
                    loss = loss + F.cross_entropy(feats[-1], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if progress is not None:
                    progress(phase, step, total, {"loss": float(loss.detach())})

    run_phase("exits (frozen backbone)", config.epochs, False)
    run_phase("exits (joint)", config.joint_epochs, True)
    if config.joint_epochs:
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
    from collabinfer.train.exit_rules import record_exits  # it imports this module

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
) -> TrainedExits:
    """Cached by config + backbone weights + training data."""
    # checked before the cache too: a hit must not hide a test split handed in by mistake
    require_tuning_split(train, "exit training")
    require_tuning_split(val, "exit validation")
    path, key = derived_path("exits", dataclasses.asdict(config), backbone, train.digest, cache)
    if path.exists():
        ck = load_checkpoint(path, model_name="exits", key=key)
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
        return TrainedExits(net.eval(), exits.eval(), config, ck.metrics, path, True)
    net, exits, stats = train_exits(config, backbone, train, val, progress)
    state = {f"exits.{k}": v.clone() for k, v in exits.state_dict().items()}
    if config.joint_epochs:
        state |= {f"backbone.{k}": v.clone() for k, v in net.state_dict().items()}
    save_checkpoint(path, Checkpoint("exits", key, dataclasses.asdict(config), stats, state))
    return TrainedExits(net, exits, config, stats, path, False)
