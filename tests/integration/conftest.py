"""Integration tests train real models: give torch every core (unit tests use one)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _all_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)
