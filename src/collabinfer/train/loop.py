"""The one training loop every recipe runs: seeded batches, a step, progress.

Why one loop: the classifier, gate, exit and bottleneck recipes differ in
their loss, their optimiser and which modules are in training mode, not in
how they walk the data. Walking it in one place keeps the random-number
order identical across recipes (one ``randperm`` per epoch from the recipe's
generator, then one flip draw per batch), which is what makes a cached
checkpoint reproducible from its config, and it gives every recipe the same
progress reports: a bar per phase (``"train fmnist-resnet"``,
``"train bottleneck (rate)"``), a ``loss`` on each step and, where the recipe
validates after an epoch, one report carrying ``val_acc``.

Example::

    >>> import torch
    >>> from collabinfer.data.synthetic import synthetic_dataset
    >>> data = synthetic_dataset(8, seed=0, split="train")
    >>> [x.shape[0] for x, _ in batches(data, 3, torch.Generator().manual_seed(0))]
    [3, 3, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError
from collabinfer.progress import NO_STATS, ProgressFn, report

__all__ = [
    "LossFn",
    "Phase",
    "batches",
    "fit",
    "random_hflip",
    "require_tuning_split",
    "steps_per_epoch",
]

LossFn = Callable[
    [torch.Tensor, torch.Tensor], torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]
]
"""``loss(x, y)``: the batch's loss, optionally with numbers to show beside the bar."""


def require_tuning_split(data: Dataset, what: str) -> None:
    """Training, calibration and threshold choice must never see the test split."""
    if data.split == "test":
        raise ConfigError(f"{what} must not use the test split (it is for reported numbers only)")


def random_hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (one draw per image from ``g``)."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def steps_per_epoch(data: Dataset, batch_size: int) -> int:
    return (len(data) + batch_size - 1) // batch_size


def batches(
    data: Dataset, batch_size: int, g: torch.Generator, hflip: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch in a seeded order: a permutation from ``g``, then (with ``hflip``) one
    flip draw per batch, drawn as the batch is taken."""
    perm = torch.randperm(len(data), generator=g)
    for i in range(0, len(data), batch_size):
        idx = perm[i : i + batch_size]
        x = data.images[idx]
        yield (random_hflip(x, g) if hflip else x), data.labels[idx]


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one optimiser: ``epochs`` passes over the data.

    ``modes`` puts the modules into the modes this phase trains in; it runs at
    the start of every epoch, because ``after_epoch`` (validation) leaves them
    in eval mode. ``after_epoch(epoch)`` returns the numbers to report and keep
    (``{"val_acc": 0.91}``).
    """

    task: str
    epochs: int
    loss: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    modes: Callable[[], object] | None = None
    after_epoch: Callable[[int], Mapping[str, float]] | None = None


def fit(
    phase: Phase,
    data: Dataset,
    batch_size: int,
    g: torch.Generator,
    *,
    hflip: bool = False,
    progress: ProgressFn | None = None,
) -> list[Mapping[str, float]]:
    """Run ``phase``; what ``after_epoch`` returned, one mapping per epoch."""
    total = steps_per_epoch(data, batch_size) * phase.epochs
    step = 0
    history: list[Mapping[str, float]] = []
    for epoch in range(1, phase.epochs + 1):
        if phase.modes is not None:
            phase.modes()
        smoothed: float | None = None
        for x, y in batches(data, batch_size, g, hflip):
            out = phase.loss(x, y)
            loss, shown = out if isinstance(out, tuple) else (out, NO_STATS)
            phase.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            phase.optimizer.step()
            if phase.scheduler is not None:
                phase.scheduler.step()
            step += 1
            value = float(loss.detach())
            smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
            report(progress, phase.task, step, total, {"epoch": epoch, "loss": smoothed, **shown})
        if phase.after_epoch is not None:
            stats = phase.after_epoch(epoch)
            history.append(stats)
            report(progress, phase.task, step, total, {"epoch": epoch, **stats})
    return history
