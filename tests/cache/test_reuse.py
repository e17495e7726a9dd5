"""Reuse: the engine's glue. A cut without a rule, or a batch, is never probed; a miss
stored is a hit on the same tensor, with the logits stored."""

from __future__ import annotations

import numpy as np
import torch

from collabinfer.cache.keys import FlatKey, PooledKey
from collabinfer.cache.reuse import Reuse
from collabinfer.cache.rule import OFF, HitRule
from collabinfer.cache.semantic import SemanticCache


def _reuse(cache: SemanticCache | None = None) -> Reuse:
    return Reuse(
        cache if cache is not None else SemanticCache(max_bytes=1 << 20),
        model="tiny",
        weights="0123456789abcdef",
        keys={1: PooledKey(2), 2: FlatKey(), 3: PooledKey(2)},
        rules={1: HitRule(1, 1e-4), 3: OFF, 4: HitRule(1, 1e-4)},  # 4 has no key
    )


def test_probe_is_none_where_the_cut_is_not_cached() -> None:
    reuse = _reuse()
    z = torch.randn(1, 4, 6, 6)
    for cut in (0, 2, 3, 4):  # no key, no rule, a disabled rule, a rule but no key
        assert not reuse.covers(cut)
        assert reuse.probe(z, cut) is None
    assert reuse.covers(1)
    assert reuse.cache.stats().misses == 0  # none of them looked anything up


def test_probe_is_none_for_a_batch() -> None:
    reuse = _reuse()
    assert reuse.probe(torch.randn(2, 4, 6, 6), 1) is None
    assert reuse.cache.stats().misses == 0


def test_a_stored_miss_is_a_hit_with_the_stored_logits() -> None:
    reuse = _reuse()
    z = torch.randn(1, 4, 6, 6)
    logits = torch.tensor([[0.1, 2.5, -1.0]])
    miss = reuse.probe(z, 1)
    assert miss is not None and miss.hit is None and miss.ms >= 0
    assert miss.ns.cut == 1 and miss.ns.model == "tiny" and miss.ns.key == PooledKey(2).version
    assert reuse.store(miss, logits, cost_ms=3.0) >= 0
    again = reuse.probe(z.clone(), 1)
    assert again is not None and again.hit is not None
    assert again.hit.label == 1
    np.testing.assert_array_equal(again.hit.logits, logits[0].numpy())
    np.testing.assert_array_equal(again.key, miss.key)
    s = reuse.cache.stats()
    assert (s.hits, s.misses, s.entries) == (1, 1, 1)


def test_cuts_do_not_share_answers() -> None:
    reuse = Reuse(
        SemanticCache(max_bytes=1 << 20),
        "tiny",
        "w",
        keys={1: PooledKey(2), 3: PooledKey(2)},  # the same key function at two cuts
        rules={1: HitRule(1, 1e-4), 3: HitRule(1, 1e-4)},
    )
    z = torch.randn(1, 4, 6, 6)
    miss = reuse.probe(z, 1)
    assert miss is not None
    reuse.store(miss, torch.tensor([1.0, 0.0]), cost_ms=1.0)
    other = reuse.probe(z, 3)
    assert other is not None and other.hit is None


def test_another_model_sharing_the_cache_misses() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    first = _reuse(cache)
    second = Reuse(cache, "tiny", "fedcba9876543210", first.keys, first.rules)  # new weights
    z = torch.randn(1, 4, 6, 6)
    miss = first.probe(z, 1)
    assert miss is not None
    first.store(miss, torch.tensor([0.0, 1.0]), cost_ms=1.0)
    assert first.cache is cache and second.cache is cache and len(cache) == 1
    probe = second.probe(z, 1)
    assert probe is not None and probe.hit is None
    hit = first.probe(z, 1)
    assert hit is not None and hit.hit is not None


def test_emptied_keeps_keys_rules_and_policy_over_an_empty_cache() -> None:
    cache = SemanticCache(max_bytes=123_456, eviction="cost", ttl_s=5.0, ann_above=500)
    reuse = _reuse(cache)
    z = torch.randn(1, 4, 6, 6)
    miss = reuse.probe(z, 1)
    assert miss is not None
    reuse.store(miss, torch.tensor([0.0, 1.0]), cost_ms=1.0)
    fresh = reuse.emptied()
    assert fresh.cache is not cache and len(fresh.cache) == 0 and len(cache) == 1
    c = fresh.cache
    assert (c.max_bytes, c.eviction, c.ttl_s, c.clock, c.ann_above) == (
        123_456,
        "cost",
        5.0,
        cache.clock,
        500,
    )
    assert fresh.rules == reuse.rules and fresh.keys == reuse.keys
    probe = fresh.probe(z, 1)
    assert probe is not None and probe.hit is None and probe.ns == miss.ns
