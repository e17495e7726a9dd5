"""A tiny synthetic image dataset for unit tests (no files, no network).

Each class is a fixed random 28x28 template; an example is its class template
plus seeded noise, clipped to [0, 1]. Small models learn it in a few steps,
which is what tests need: real learning signal, zero I/O.
"""

from __future__ import annotations

import hashlib

import torch

from collabinfer.data.fashion_mnist import Dataset


def synthetic_dataset(
    n: int = 256,
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.15,
    split: str = "synthetic",
) -> Dataset:
    g = torch.Generator().manual_seed(1234)  # templates are the same for every split
    templates = torch.rand(num_classes, 1, 28, 28, generator=g)
    g.manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = (templates[labels] + noise * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    digest = hashlib.sha256(f"synthetic:{n}:{num_classes}:{seed}:{noise}".encode()).hexdigest()
    return Dataset(images, labels, split, "synthetic", digest)
