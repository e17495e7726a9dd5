"""Shared test setup: one torch thread (CI has 2 cores; oversubscribed OpenMP
threads spin and slow everything down), deterministic seeds."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
