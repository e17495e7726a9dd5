"""Recipes for a learned bottleneck at the split (paper, Section 2.1.1).

1. **Head distillation** (Matsubara et al.): the encoder-decoder learns to
   reproduce the frozen teacher's features at ``target_cut`` (MSE), so the
   teacher's tail runs unchanged on the decoded features. No rate term; the
   prior is fitted afterwards so the latents can still be entropy-coded.
2. **Supervised compression** (Entropic Student style, Matsubara et al. 2022):
   starting from (1), minimise ``distillation + beta * bits`` where bits come
   from the learned factorised prior on noisy latents; then a short fine-tune
   of the tail on the decoded features. Sweeping ``beta`` gives the
   rate-accuracy curve.
3. **Variational bottleneck** (the privacy defence, ``variational=True``):
   starting from a trained deterministic bottleneck, the encoder learns a
   scale beside its mean and the loss gains ``kl_weight * KL / pixels``;
   sweeping ``kl_weight`` trades accuracy for what an inversion attacker can
   recover (:mod:`collabinfer.privacy`).

Everything is tuned on the validation split; checkpoints are cached by a hash
of the config, the teacher's weights and the data, like the classifier recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from collabinfer.data.fashion_mnist import Dataset, load_split
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import Bottleneck, bottleneck_net
from collabinfer.model.checkpoint import Checkpoint, load_weights
from collabinfer.progress import ProgressFn
from collabinfer.train.cache import Trained, cached, derived_slot, detached
from collabinfer.train.loop import Phase, batches, fit, require_tuning_split, steps_per_epoch


@dataclass(frozen=True)
class BottleneckConfig:
    target_cut: int = 4  # fmnist-resnet: after res2a, 32x14x14
    channels: int = 8
    hidden: int = 32
    distill_epochs: int = 2
    rate_epochs: int = 2  # supervised compression, tail frozen
    tail_epochs: int = 1  # then tail fine-tune, everything trained
    beta: float = 0.0  # weight of bits per input pixel; 0 = head distillation only
    lr: float = 2e-3
    batch_size: int = 128
    kd_temperature: float = 2.0
    ce_weight: float = 0.5  # labels too, not only the teacher: recovers the last points
    schedule: str = "cosine"  # per phase; part of the config so old checkpoints are not reused
    train_subset: int = 0  # 0 = the whole training split
    seed: int = 0
    variational: bool = False  # sample the latent (privacy defence); needs an init
    kl_weight: float = 0.0  # weight of the KL to N(0, 1) per input pixel

    def __post_init__(self) -> None:
        if self.channels < 1 or self.beta < 0 or self.distill_epochs < 0:
            raise ConfigError("channels >= 1, beta >= 0 and epochs >= 0 are required")
        if self.kl_weight < 0 or (self.kl_weight and not self.variational):
            raise ConfigError("kl_weight must be >= 0, and only a variational bottleneck has one")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', not {self.schedule!r}")


@dataclass(frozen=True)
class TrainedBottleneck:
    net: BlockNet  # encoder | decoder | tail
    bottleneck: Bottleneck
    config: BottleneckConfig
    metrics: dict[str, float]
    path: Path | None
    reused: bool
    key: str = ""


def _fit_prior(
    bn: Bottleneck, data: Dataset, steps: int, batch_size: int, g: torch.Generator
) -> None:
    """Fit only the prior to the (frozen) encoder's rounded latents (max likelihood)."""
    opt = torch.optim.Adam(bn.prior.parameters(), lr=0.05)
    bn.eval()
    step = 0
    while step < steps:
        for x, _ in batches(data, batch_size, g):
            with torch.no_grad():
                y = torch.round(bn.encoder(x))
            loss = bn.prior.bits(y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break


def train_bottleneck(
    config: BottleneckConfig,
    teacher: BlockNet,
    train: Dataset,
    val: Dataset,
    progress: ProgressFn | None = None,
    init: Bottleneck | None = None,
) -> tuple[BlockNet, Bottleneck, dict[str, float]]:
    """Train a bottleneck for ``teacher`` at ``config.target_cut`` (see module docstring).

    Progress: one bar per phase, ``"train bottleneck (distill)"``, ``(rate)``, ``(tail)``.
    """
    require_tuning_split(train, "bottleneck training")
    require_tuning_split(val, "bottleneck validation")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    if config.train_subset:
        train = train.subset(config.train_subset, config.seed)
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cut = config.target_cut
    shape = teacher.cut_points()[cut].shape
    if len(shape) != 3:
        raise ConfigError(f"target_cut {cut} carries shape {shape}; a feature map is needed")
    if config.variational and init is None:
        raise ConfigError("a variational bottleneck starts from a trained one: pass init")
    bn = (
        copy.deepcopy(init)
        if init is not None
        else Bottleneck(config.channels, shape[0], shape[1], config.hidden)
    )
    if config.variational and not bn.variational:
        bn = bn.to_variational()
    tail = copy.deepcopy(teacher)
    pixels = float(torch.tensor(teacher.input_shape).prod())
    stats: dict[str, float] = {}
    t0 = time.perf_counter()
    steps = steps_per_epoch(train, config.batch_size)

    def distill_loss(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.run_until(x, cut)
        feats, _bits = bn(x)
        return F.mse_loss(feats, target)

    def compress_loss(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
        feats, bits = bn(x)
        logits = tail.run_from(feats, cut)
        temp = config.kd_temperature
        kd = (
            F.kl_div(
                F.log_softmax(logits / temp, 1),
                F.softmax(t_logits / temp, 1),
                reduction="batchmean",
            )
            * temp
            * temp
        )
        ce = F.cross_entropy(logits, labels)
        loss = kd + config.ce_weight * ce + config.beta * bits.mean() / pixels
        if config.kl_weight:
            loss = loss + config.kl_weight * bn.kl(x).mean() / pixels
        return loss

    def compress_modes() -> None:
        bn.train()
        tail.eval()  # BatchNorm statistics stay the teacher's

    # 1. head distillation
    if init is None and config.distill_epochs:
        opt = torch.optim.Adam(
            list(bn.encoder.parameters()) + list(bn.decoder.parameters()), lr=config.lr
        )
        phase = Phase(
            "train bottleneck (distill)", config.distill_epochs, distill_loss, opt, modes=bn.train
        )
        fit(phase, train, config.batch_size, g, progress=progress)
        _fit_prior(bn, train, 200, config.batch_size, g)
    # 2. supervised compression: KD + beta * bits, tail frozen, then tail fine-tune
    for name, epochs in (("rate", config.rate_epochs), ("tail", config.tail_epochs)):
        if not epochs:
            continue
        params = list(bn.parameters())
        if name == "tail":
            tail_params = [p for b in tail.blocks[cut:] for p in b.parameters()]
            for p in tail_params:
                p.requires_grad_(True)
            params += tail_params
        opt = torch.optim.Adam(params, lr=config.lr if name == "rate" else config.lr / 4)
        # cosine decay within each phase: the last steps refine instead of bouncing
        sched: torch.optim.lr_scheduler.LRScheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
            if config.schedule == "cosine"
            else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        )
        phase = Phase(
            f"train bottleneck ({name})", epochs, compress_loss, opt, sched, modes=compress_modes
        )
        fit(phase, train, config.batch_size, g, progress=progress)
    for p in tail.parameters():
        p.requires_grad_(False)
    bn.eval()
    net = bottleneck_net(bn, tail, cut).eval()
    stats.update(evaluate_bottleneck(net, bn, val))
    stats["train_seconds"] = time.perf_counter() - t0
    return net, bn, stats


@torch.no_grad()
def evaluate_bottleneck(
    net: BlockNet, bn: Bottleneck, data: Dataset, batch_size: int = 500
) -> dict[str, float]:
    """Accuracy and the prior's estimated bits (the real bytes come from the codec)."""
    net.eval()
    bn.eval()
    correct, bits = 0, 0.0
    for i in range(0, len(data), batch_size):
        x, y = data.images[i : i + batch_size], data.labels[i : i + batch_size]
        correct += int((net(x).argmax(1) == y).sum())
        bits += float(bn.prior.bits(torch.round(bn.encoder(x))).sum())
    return {"val_acc": correct / len(data), "val_est_bytes": bits / 8 / len(data)}


def train_or_load_bottleneck(
    config: BottleneckConfig,
    teacher: BlockNet,
    train: Dataset,
    val: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    init: TrainedBottleneck | None = None,
    may_train: bool = True,
) -> TrainedBottleneck:
    """Cached by config + teacher weights + data (+ the init it started from)."""
    shape = teacher.cut_points()[config.target_cut].shape

    def load(ck: Checkpoint, path: Path) -> tuple[BlockNet, Bottleneck]:
        bn = Bottleneck(config.channels, shape[0], shape[1], config.hidden, config.variational)
        load_weights(bn, ck, path, prefix="bn.")
        tail = copy.deepcopy(teacher)
        load_weights(tail, ck, path, prefix="tail.")
        return bottleneck_net(bn.eval(), tail.eval(), config.target_cut).eval(), bn

    def train_now() -> Trained[tuple[BlockNet, Bottleneck]]:
        net, bn, stats = train_bottleneck(
            config, teacher, train, val, progress, init.bottleneck if init else None
        )
        blocks = _tail_blocks(net, teacher, config.target_cut)
        tail = BlockNet(list(zip(teacher.block_names, blocks, strict=True)), teacher.input_shape)
        return Trained((net, bn), detached(bn, "bn.") | detached(tail, "tail."), stats)

    slot = derived_slot(
        "bottleneck",
        config,
        teacher,
        train,
        cache,
        base_name="teacher",
        extra={"init": init.key if init else ""},
    )
    got = cached(
        slot,
        config=dataclasses.asdict(config),
        tuning={"bottleneck training": train, "bottleneck validation": val},
        load=load,
        train=train_now,
        may_train=may_train,
        progress=progress,
        task="train bottleneck",
    )
    net, bn = got.value
    return TrainedBottleneck(net, bn, config, got.metrics, got.path, got.reused, got.key)


def _tail_blocks(net: BlockNet, teacher: BlockNet, cut: int) -> list[nn.Module]:
    """The teacher's head blocks (unchanged) followed by the (possibly fine-tuned) tail."""
    return list(teacher.blocks[:cut]) + list(net.blocks[2:])


# The bottleneck Table 1 deploys (model id ``fmnist-resnet+bn``). beta was picked
# on the validation split from the rate-accuracy sweep (README, "Learned
# compression"); the test split played no part.
DEFAULT_BOTTLENECK = BottleneckConfig(
    target_cut=4, channels=8, hidden=64, distill_epochs=2, rate_epochs=2, tail_epochs=2, beta=0.1
)

# The variational bottleneck ``fmnist-resnet+vbn`` deploys: the KL weight the
# privacy assessment's validation rule chose (docs/privacy.md, "Choosing the
# KL weight"), trained from DEFAULT_BOTTLENECK.
DEFAULT_KL_WEIGHT = 0.1


def variational_config(
    base: BottleneckConfig, kl_weight: float, epochs: int = 1, tail_epochs: int = 1
) -> BottleneckConfig:
    """The variational bottleneck trained from ``base``: ``epochs`` of the rate phase
    with the KL term, then ``tail_epochs`` of tail fine-tuning (one recipe, so the
    assessment's sweep and the deployed model share their cache)."""
    return dataclasses.replace(
        base, variational=True, kl_weight=kl_weight, rate_epochs=epochs, tail_epochs=tail_epochs
    )


def default_bottleneck(
    teacher: BlockNet,
    cache: Path | None = None,
    data_root: str | Path | None = None,
    progress: ProgressFn | None = None,
    train: bool = True,
    config: BottleneckConfig = DEFAULT_BOTTLENECK,
) -> TrainedBottleneck:
    """The deployed bottleneck: head distillation, then supervised compression (cached).

    ``train=False`` only loads (a server must not start training): a missing
    checkpoint is a :class:`~collabinfer.errors.CheckpointError` saying how to make it.
    """
    tr, va = load_split("train", data_root), load_split("val", data_root)
    hd_cfg = dataclasses.replace(config, beta=0.0, rate_epochs=0, tail_epochs=0)
    hd = train_or_load_bottleneck(hd_cfg, teacher, tr, va, cache, progress, may_train=train)
    return train_or_load_bottleneck(
        config, teacher, tr, va, cache, progress, init=hd, may_train=train
    )


def default_variational_bottleneck(
    teacher: BlockNet,
    cache: Path | None = None,
    data_root: str | Path | None = None,
    progress: ProgressFn | None = None,
    train: bool = True,
    kl_weight: float = DEFAULT_KL_WEIGHT,
) -> TrainedBottleneck:
    """The deployed privacy defence (model id ``<teacher>+vbn``): the default
    bottleneck made variational (:func:`variational_config`), cached likewise."""
    det = default_bottleneck(teacher, cache, data_root, progress, train)
    tr, va = load_split("train", data_root), load_split("val", data_root)
    cfg = variational_config(DEFAULT_BOTTLENECK, kl_weight)
    return train_or_load_bottleneck(
        cfg, teacher, tr, va, cache, progress, init=det, may_train=train
    )
