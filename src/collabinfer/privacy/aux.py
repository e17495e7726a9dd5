"""The attacker's auxiliary data, and the guard that keeps it off the scored images.

An inversion attacker trains (inverse network, shadow head) and tunes (the
rMLE prior's weight) on images of its own. Scoring it on images it trained on
would flatter it, so every assessment calls :func:`require_disjoint` before
it attacks: the auxiliary set must not be the test split, and no auxiliary
image may equal a scored one byte for byte (a subset of the test split under
another name would pass the first check, not the second).

Two auxiliary sets are in the threat model: the training split (same
distribution) and :func:`class_subset` of it (a disjoint set of classes: the
attacker has seen shoes and bags, and is scored on shirts too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError

__all__ = ["class_subset", "image_digests", "require_disjoint"]


def image_digests(images: torch.Tensor) -> set[bytes]:
    """One digest per image, of its exact float32 bytes."""
    flat = images.detach().to(torch.float32).contiguous().flatten(1).numpy()
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat}


def require_disjoint(aux: Dataset, scored: Dataset) -> None:
    """Raise :class:`ConfigError` if the attacker's data could contain a scored image."""
    if aux.split == "test":
        raise ConfigError("the attacker's auxiliary data must not come from the test split")
    shared = image_digests(aux.images) & image_digests(scored.images)
    if shared:
        raise ConfigError(
            f"the attacker's auxiliary data contains {len(shared)} of the scored images"
        )


def class_subset(data: Dataset, classes: Sequence[int], n: int | None = None) -> Dataset:
    """The examples of ``classes`` only (the first ``n`` of them, in order, if given)."""
    if not classes:
        raise ConfigError("class_subset needs at least one class")
    keep = torch.isin(data.labels, torch.tensor(list(classes)))
    idx = keep.nonzero().flatten()
    if n is not None:
        idx = idx[:n]
    if idx.numel() == 0:
        raise ConfigError(f"no examples of classes {list(classes)} in the {data.split} split")
    tag = ",".join(str(c) for c in classes)
    digest = hashlib.sha256(f"{data.digest}:classes={tag}:{n}".encode()).hexdigest()
    return Dataset(data.images[idx], data.labels[idx], data.split, data.source, digest)
