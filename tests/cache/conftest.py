"""Cache tests: faiss on one thread (CI has 2 cores; OpenMP threads that outnumber
them spin), and small helpers for unit keys."""

from __future__ import annotations

import faiss
import pytest

faiss.omp_set_num_threads(1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class FakeClock:
    """A clock the test moves by hand (``SemanticCache(clock=...)``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
