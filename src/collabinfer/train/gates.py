"""Recipe: fine-tune a gated copy of a trained ResNet (ConvNet-AIG, Veit & Belongie 2018).

Every residual block gets a :class:`~collabinfer.model.gates.Gate`; the
network fine-tunes with Gumbel-softmax straight-through gates on

``CE(label-smoothed) + kd_weight * KD(teacher) + rate_weight * sum_b (rate_b - target)^2``

where ``rate_b`` is block ``b``'s fraction of open gates in the batch (the
"target rate" loss of ConvNet-AIG) and the teacher is the ungated backbone
(distillation keeps the accuracy the gates would otherwise cost). Gates
start open (bias), so fine-tuning starts at the backbone.

Tuned on the validation split only; cached by config + backbone weights + data.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from collabinfer.data.fashion_mnist import Dataset, load_split
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import Checkpoint, load_weights
from collabinfer.model.gates import gate_net, gate_rates, gated_blocks
from collabinfer.progress import ProgressFn
from collabinfer.train.cache import Trained, cached, derived_slot, detached
from collabinfer.train.loop import Phase, fit, require_tuning_split, steps_per_epoch


@dataclass(frozen=True)
class GateConfig:
    target_rate: float = 0.6  # fraction of inputs that should run each gated block
    epochs: int = 3
    lr: float = 0.02  # backbone (SGD, cosine)
    gate_lr: float = 0.1  # gates learn from scratch: a larger step
    rate_weight: float = 2.0
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    label_smoothing: float = 0.1
    tau: float = 1.0  # Gumbel-softmax temperature
    hidden: int = 16
    batch_size: int = 128
    hflip: bool = True
    train_subset: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"target_rate must be in (0, 1], got {self.target_rate}")
        if self.epochs < 1 or self.tau <= 0:
            raise ConfigError("epochs >= 1 and tau > 0 are required", config=self)


@dataclass(frozen=True)
class TrainedGates:
    net: BlockNet
    config: GateConfig
    metrics: dict[str, float]
    path: Path | None
    reused: bool


@torch.inference_mode()
def gated_accuracy(
    net: BlockNet, data: Dataset, batch_size: int = 500
) -> tuple[float, list[float]]:
    """Accuracy with hard gates, and each gated block's execution rate, on ``data``."""
    net.eval()
    gates = gated_blocks(net)
    correct = 0
    ran = torch.zeros(len(gates))
    for i in range(0, len(data), batch_size):
        logits = net(data.images[i : i + batch_size])
        correct += int((logits.argmax(1) == data.labels[i : i + batch_size]).sum())
        for j, (_, g) in enumerate(gates):
            if g.last_ran is not None:  # every gated forward records it
                ran[j] += g.last_ran.float().sum()
    n = max(1, len(data))
    return correct / n, (ran / n).tolist()


def train_gates(
    config: GateConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    progress: ProgressFn | None = None,
) -> tuple[BlockNet, dict[str, float]]:
    require_tuning_split(train, "gate training")
    require_tuning_split(val, "gate validation")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    if config.train_subset:
        train = train.subset(config.train_subset, config.seed)
    teacher = backbone.eval()
    net = gate_net(backbone, config.hidden, config.tau)
    for p in net.parameters():
        p.requires_grad_(True)
    gate_params = [p for _, b in gated_blocks(net) for p in b.gate.parameters()]
    gate_ids = {id(p) for p in gate_params}
    rest = [p for p in net.parameters() if id(p) not in gate_ids]
    opt = torch.optim.SGD(
        [
            {"params": rest, "lr": config.lr, "weight_decay": 5e-4},
            {"params": gate_params, "lr": config.gate_lr, "weight_decay": 0.0},
        ],
        momentum=0.9,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, steps_per_epoch(train, config.batch_size) * config.epochs
    )
    t_kd = config.kd_temperature

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Mapping[str, float]]:
        logits = net(x)
        rates = gate_rates(net)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        loss = loss + config.rate_weight * ((rates - config.target_rate) ** 2).sum()
        if config.kd_weight:
            with torch.no_grad():
                soft = torch.softmax(teacher(x) / t_kd, dim=1)
            kd = F.kl_div(torch.log_softmax(logits / t_kd, dim=1), soft, reduction="batchmean")
            loss = loss + config.kd_weight * kd * t_kd**2
        return loss, {"rate": float(rates.detach().mean())}

    t0 = time.perf_counter()
    history = fit(
        Phase(
            "train gates",
            config.epochs,
            loss=loss_fn,
            optimizer=opt,
            scheduler=sched,
            modes=net.train,
            after_epoch=lambda _: {"val_acc": gated_accuracy(net, val)[0]},
        ),
        train,
        config.batch_size,
        g,
        hflip=config.hflip,
        progress=progress,
    )
    stats = {f"val_acc_epoch{e}": h["val_acc"] for e, h in enumerate(history, start=1)}
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    acc, rates_val = gated_accuracy(net, val)
    stats["val_acc"] = acc
    stats["val_exec_rate"] = sum(rates_val) / len(rates_val)
    for (i, _), r in zip(gated_blocks(net), rates_val, strict=True):
        stats[f"val_exec_rate_{net.block_names[i]}"] = r
    stats["train_seconds"] = time.perf_counter() - t0
    return net, stats


def train_or_load_gates(
    config: GateConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    may_train: bool = True,
) -> TrainedGates:
    """Cached by config + backbone weights + data; ``may_train=False`` only loads."""

    def load(ck: Checkpoint, path: Path) -> BlockNet:
        net = gate_net(backbone, config.hidden, config.tau)
        load_weights(net, ck, path)
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def train_now() -> Trained[BlockNet]:
        net, stats = train_gates(config, backbone, train, val, progress)
        return Trained(net, detached(net), stats)

    got = cached(
        derived_slot("gates", config, backbone, train, cache),
        config=dataclasses.asdict(config),
        tuning={"gate training": train, "gate validation": val},
        load=load,
        train=train_now,
        may_train=may_train,
        progress=progress,
        task="train gates",
    )
    return TrainedGates(got.value, config, got.metrics, got.path, got.reused)


# The gated model Table 1 deploys (model id ``fmnist-resnet+gates``): the default
# config, fixed before any test-split number was seen.
DEFAULT_GATES = GateConfig()


def default_gates(
    backbone: BlockNet,
    cache: Path | None = None,
    data_root: str | Path | None = None,
    progress: ProgressFn | None = None,
    train: bool = True,
    config: GateConfig = DEFAULT_GATES,
) -> TrainedGates:
    """The deployed gated backbone (cached). ``train=False`` only loads (servers must not
    train): a missing checkpoint is a :class:`~collabinfer.errors.CheckpointError`."""
    tr, va = load_split("train", data_root), load_split("val", data_root)
    return train_or_load_gates(config, backbone, tr, va, cache, progress, may_train=train)
