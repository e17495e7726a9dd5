"""A million inserts into a 64 MiB cache never exceed it: counted, and as the process sees it."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from collabinfer.cache.semantic import Namespace, SemanticCache

MIB = 2**20


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / MIB


@pytest.mark.integration
def test_a_million_inserts_stay_within_64_mib() -> None:
    budget = 64 * MIB
    cache = SemanticCache(budget, eviction="lru")
    ns = Namespace("m", "w", 1, "pool2-v1")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1000, 10)).astype(np.float32)
    before = rss_mib()
    worst = 0
    n, chunk = 1_000_000, 10_000
    for start in range(0, n, chunk):
        keys = rng.standard_normal((chunk, 64)).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        for i in range(chunk):
            cache.insert(ns, keys[i], logits[i % 1000], 1.0)
            worst = max(worst, cache.nbytes())
        assert worst <= budget, f"{worst} B allocated after {start + chunk} inserts"
    st = cache.stats()
    assert st.inserts == n and st.evictions > 0 and st.entries < n
    assert st.index[str(ns)] == "ivf"  # it outgrew exact search on the way
    grown = rss_mib() - before
    # the counted bytes bound what the process holds (allocator slack aside)
    assert grown <= budget / MIB * 1.25, f"RSS grew {grown:.0f} MiB for a 64 MiB cache"
