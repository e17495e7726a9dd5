"""Random unit keys for the cache tests (seeded: every call with a seed is the same data)."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_keys(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit keys spread uniformly over the sphere."""
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def clustered_keys(
    n: int, dim: int, seed: int, clusters: int = 40, spread: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit keys around ``clusters`` random centres, and each key's cluster."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, dim)))
    which = rng.integers(0, clusters, n)
    return unit(centres[which] + spread * rng.standard_normal((n, dim))), which


def perturbed(keys: np.ndarray, seed: int, eps: float = 1e-3) -> np.ndarray:
    """Each key moved by a tiny random step (still its own nearest neighbour)."""
    rng = np.random.default_rng(seed)
    return unit(keys + eps * rng.standard_normal(keys.shape))
