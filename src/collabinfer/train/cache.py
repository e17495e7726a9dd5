"""Train-or-load, once: every recipe's checkpoint cache, with the test-split guard.

A recipe names its checkpoint by a :class:`Slot` (the file-name prefix and
the hash of everything that decides the weights: config, base weights, data)
and hands :func:`cached` two functions, one that loads a checkpoint into
modules and one that trains. Why one helper: the guard that no tuning split
is the test split runs *before* the cache lookup, so a cache hit cannot hide
a test split handed in by mistake; a corrupt file is reported, never silently
retrained; and "load only" (a server must not start training) says the same
thing for every kind of model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import CheckpointError
from collabinfer.model.checkpoint import (
    Checkpoint,
    config_key,
    default_cache_dir,
    load_checkpoint,
    save_checkpoint,
    weights_hash,
)
from collabinfer.progress import ProgressFn, report
from collabinfer.train.loop import require_tuning_split

__all__ = ["Cached", "Slot", "Trained", "cached", "derived_slot", "detached", "slot_for"]

T = TypeVar("T")


@dataclass(frozen=True)
class Slot:
    """Where one trained artefact lives: ``<cache>/checkpoints/<stem>-<key>.pt``.

    ``kind`` is the name the checkpoint records (a zoo model name, ``gates``,
    ``exits``, ``bottleneck``); loading a file of another kind is an error.
    """

    kind: str
    key: str
    path: Path


def slot_for(
    kind: str, key_source: Mapping[str, Any], data_digest: str, cache: Path | None = None
) -> Slot:
    """The slot for ``key_source`` (a JSON-able config, plus base-weight hashes) trained
    on data with ``data_digest``."""
    key = config_key(dict(key_source), data_digest)
    root = cache or default_cache_dir()
    return Slot(kind, key, root / "checkpoints" / f"{kind}-{key}.pt")


def derived_slot(
    kind: str,
    config: Any,
    base: torch.nn.Module,
    data: Dataset,
    cache: Path | None = None,
    *,
    base_name: str = "backbone",
    extra: Mapping[str, Any] | None = None,
) -> Slot:
    """The slot of something trained *on top of* a trained model (gates, exit heads,
    a bottleneck): keyed by its dataclass ``config``, the base model's weights
    (under ``base_name``), anything in ``extra`` and the training data."""
    key_source = dataclasses.asdict(config) | {base_name: weights_hash(base)} | dict(extra or {})
    return slot_for(kind, key_source, data.digest, cache)


@dataclass(frozen=True)
class Cached(Generic[T]):
    value: T
    metrics: dict[str, float]
    path: Path
    key: str
    reused: bool


@dataclass(frozen=True)
class Trained(Generic[T]):
    """What a recipe's train function returns: the modules, the weights to store,
    and the metrics to keep beside them."""

    value: T
    state: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


def cached(
    slot: Slot,
    *,
    config: Mapping[str, Any],
    tuning: Mapping[str, Dataset],
    load: Callable[[Checkpoint, Path], T],
    train: Callable[[], Trained[T]],
    may_train: bool = True,
    force: bool = False,
    progress: ProgressFn | None = None,
    task: str = "",
) -> Cached[T]:
    """Load ``slot`` if it exists (verified: kind, key, shapes), else ``train()`` and store.

    ``tuning`` names every split the recipe learns or chooses from; each must
    not be the test split. ``may_train=False`` only loads: a missing file is a
    :class:`CheckpointError` saying how to make it. ``force`` retrains. A reuse is
    reported to ``progress`` as ``task`` done in one step with ``{"reused": 1}`` (and
    the stored ``test_acc``, where there is one), so a log says what was not retrained.
    """
    for what, data in tuning.items():
        require_tuning_split(data, what)
    if slot.path.exists() and not force:
        ck = load_checkpoint(slot.path, model_name=slot.kind, key=slot.key)
        value = load(ck, slot.path)
        shown = {"reused": 1.0} | {k: ck.metrics[k] for k in ("test_acc",) if k in ck.metrics}
        report(progress, task or f"train {slot.kind}", 1, 1, shown)
        return Cached(value, ck.metrics, slot.path, slot.key, True)
    if not may_train:
        raise CheckpointError(
            f"no trained {slot.kind} in the cache ({slot.path}): "
            "run `collabinfer demo` (or `collabinfer train`) once to train it"
        )
    out = train()
    save_checkpoint(
        slot.path, Checkpoint(slot.kind, slot.key, dict(config), out.metrics, out.state)
    )
    return Cached(out.value, out.metrics, slot.path, slot.key, False)


def detached(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A copy of ``module``'s weights, keys under ``prefix``: what a checkpoint stores."""
    return {f"{prefix}{k}": v.detach().clone() for k, v in module.state_dict().items()}
