"""The semantic cache: the H-kNN hit rule, namespaces, the byte bound, eviction, TTL, threads.

Eviction scenarios use a budget of exactly three entries (computed from the
cache's own per-slot accounting) so that one insert evicts exactly one entry,
and each scenario is built so the three policies evict three different entries.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from collabinfer.cache.index import ExactIndex
from collabinfer.cache.rule import OFF, HitRule
from collabinfer.cache.semantic import EVICTIONS, SLOT_OVERHEAD, Namespace, SemanticCache
from collabinfer.errors import ConfigError

from .conftest import FakeClock
from .helpers import random_keys, unit

NS = Namespace("tiny", "0123456789abcdef", 1, "pool2-v1")
OTHER = Namespace("tiny", "0123456789abcdef", 2, "pool2-v1")
NEAR = HitRule(1, 0.01)


def _logits(label: int, classes: int = 3, scale: float = 1.0) -> np.ndarray:
    out = np.zeros(classes, dtype=np.float32)
    out[label] = scale
    return out


def _basis(i: int, dim: int = 4) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[i]


def _entry_bytes(dim: int, classes: int) -> int:
    """What one slot of an exact-index namespace is charged."""
    return classes * 4 + SLOT_OVERHEAD + ExactIndex.row_bytes_for(dim)


def _hits(cache: SemanticCache, ns: Namespace, key: np.ndarray, rule: HitRule = NEAR) -> bool:
    return cache.lookup(ns, key, rule) is not None


def _consistent(cache: SemanticCache) -> None:
    s = cache.stats()
    assert s.bytes <= s.max_bytes
    assert s.inserts - s.evictions - s.expired == s.entries == len(cache)
    assert sum(s.namespaces.values()) == s.entries


# --- lookups and the H-kNN rule ----------------------------------------------------------------


def test_hits_and_misses_are_counted() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, _basis(0), _logits(1), cost_ms=1.0)
    hit = cache.lookup(NS, unit(_basis(0) + 0.01 * _basis(1)), NEAR)
    assert hit is not None and hit.label == 1
    np.testing.assert_array_equal(hit.logits, _logits(1))
    assert cache.lookup(NS, _basis(1), NEAR) is None  # far away
    assert cache.lookup(OTHER, _basis(0), NEAR) is None  # a namespace never inserted into
    assert cache.lookup(NS, _basis(0), OFF) is None  # a disabled rule never hits
    s = cache.stats()
    assert (s.hits, s.misses, s.inserts, s.entries) == (1, 3, 1, 1)
    assert s.hit_rate == pytest.approx(0.25)
    _consistent(cache)


def test_a_hit_returns_a_copy_of_the_logits() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, _basis(0), _logits(1), cost_ms=1.0)
    hit = cache.lookup(NS, _basis(0), NEAR)
    assert hit is not None
    hit.logits[:] = 99.0
    again = cache.lookup(NS, _basis(0), NEAR)
    assert again is not None
    np.testing.assert_array_equal(again.logits, _logits(1))


def _pair(dim: int = 8, step: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A query and two keys either side of it, each at squared distance ~step^2."""
    q = _basis(0, dim)
    return q, unit(q + step * _basis(1, dim)), unit(q - 1.5 * step * _basis(1, dim))


def test_k2_needs_two_agreeing_neighbours() -> None:
    q, a, b = _pair()
    rule = HitRule(2, 0.02)
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, a, _logits(2, scale=5.0), cost_ms=1.0)
    assert not _hits(cache, NS, q, rule)  # one neighbour is not a consensus
    assert _hits(cache, NS, q, HitRule(1, 0.02))  # ... though it is near enough for k=1
    cache.insert(NS, b, _logits(2, scale=3.0), cost_ms=1.0)
    hit = cache.lookup(NS, q, rule)
    assert hit is not None and hit.label == 2
    np.testing.assert_array_equal(hit.logits, _logits(2, scale=5.0))  # the nearest's answer
    assert hit.distance == pytest.approx(float(((q - a) ** 2).sum()), abs=1e-6)
    # the farther of the two outside tau: no consensus within tau
    tau_between = float(((q - a) ** 2).sum() + ((q - b) ** 2).sum()) / 2
    assert not _hits(cache, NS, q, HitRule(2, tau_between))
    assert _hits(cache, NS, q, HitRule(1, tau_between))


def test_k2_with_disagreeing_labels_misses() -> None:
    q, a, b = _pair()
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, a, _logits(2), cost_ms=1.0)
    cache.insert(NS, b, _logits(0), cost_ms=1.0)
    assert not _hits(cache, NS, q, HitRule(2, 0.1))
    hit = cache.lookup(NS, q, HitRule(1, 0.1))  # k=1 takes the nearest alone
    assert hit is not None and hit.label == 2


def test_the_confidence_floor_applies_to_every_neighbour() -> None:
    q, a, b = _pair()
    sure = np.array([0.0, 0.0, 6.0], dtype=np.float32)  # softmax top ~0.995
    unsure = np.array([0.0, 0.0, 1.0], dtype=np.float32)  # softmax top ~0.58
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, a, sure, cost_ms=1.0)
    cache.insert(NS, b, unsure, cost_ms=1.0)
    assert _hits(cache, NS, q, HitRule(1, 0.02, 0.9))  # the nearest alone is sure
    assert not _hits(cache, NS, q, HitRule(2, 0.02, 0.9))  # the second is not
    assert _hits(cache, NS, q, HitRule(2, 0.02, 0.5))
    assert _hits(cache, NS, q, HitRule(2, 0.02))
    assert not _hits(cache, NS, b, HitRule(1, 1e-4, 0.9))


@pytest.mark.parametrize("step", [0.01, 0.1, 0.5])
def test_tau_is_respected(step: float) -> None:
    key = _basis(0, 8)
    q = unit(key + step * _basis(1, 8))
    d = float(((q - key) ** 2).sum())
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, key, _logits(1), cost_ms=1.0)
    assert not _hits(cache, NS, q, HitRule(1, d * 0.99))
    hit = cache.lookup(NS, q, HitRule(1, d * 1.01))
    assert hit is not None and hit.distance == pytest.approx(d, rel=1e-2)


@pytest.mark.parametrize("field", ["model", "weights", "cut", "key"])
def test_namespaces_isolate(field: str) -> None:
    changed = {"model": "other", "weights": "fedcba9876543210", "cut": 5, "key": "flat-v1"}
    other = replace(NS, **{field: changed[field]})
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, _basis(0), _logits(1), cost_ms=1.0)
    assert not _hits(cache, other, _basis(0))
    assert _hits(cache, NS, _basis(0))
    cache.insert(other, _basis(0), _logits(2), cost_ms=1.0)  # same key, its own entry
    hit_ns, hit_other = cache.lookup(NS, _basis(0), NEAR), cache.lookup(other, _basis(0), NEAR)
    assert hit_ns is not None and hit_ns.label == 1
    assert hit_other is not None and hit_other.label == 2
    assert cache.stats().entries == 2 and len(cache.stats().namespaces) == 2


def test_another_key_dimension_or_class_count_in_one_namespace_is_an_error() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, _basis(0, 4), _logits(1, classes=3), cost_ms=1.0)
    with pytest.raises(ConfigError):
        cache.insert(NS, _basis(0, 5), _logits(1, classes=3), cost_ms=1.0)
    with pytest.raises(ConfigError):
        cache.insert(NS, _basis(0, 4), _logits(1, classes=4), cost_ms=1.0)
    cache.insert(OTHER, _basis(0, 5), _logits(1, classes=4), cost_ms=1.0)  # fine elsewhere
    assert cache.stats().entries == 2


# --- duplicates ------------------------------------------------------------------------------


def test_inserting_the_same_key_twice_refreshes_one_entry() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, _basis(0), _logits(1, scale=1.0), cost_ms=1.0)
    cache.insert(NS, _basis(0), _logits(1, scale=7.0), cost_ms=1.0)
    s = cache.stats()
    assert (s.entries, s.inserts, s.refreshed) == (1, 1, 1)
    hit = cache.lookup(NS, _basis(0), NEAR)
    assert hit is not None
    np.testing.assert_array_equal(hit.logits, _logits(1, scale=7.0))  # the newer answer
    _consistent(cache)


@pytest.mark.parametrize("dim", [16, 64, 512])
def test_every_repeated_key_is_recognised_despite_float_rounding(dim: int) -> None:
    # the index's expanded distance |k|^2 - 2 k.q + |q|^2 is not exactly 0 for q == k
    cache = SemanticCache(max_bytes=64 << 20)
    keys = random_keys(300, dim, seed=dim)
    for _ in range(2):
        for key in keys:
            cache.insert(NS, key, _logits(0), cost_ms=1.0)
    s = cache.stats()
    assert (s.entries, s.refreshed) == (300, 300)


def test_the_same_key_under_another_label_is_a_second_entry() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, _basis(0), _logits(1), cost_ms=1.0)
    cache.insert(NS, _basis(0), _logits(2), cost_ms=1.0)
    s = cache.stats()
    assert (s.entries, s.refreshed) == (2, 0)
    assert not _hits(cache, NS, _basis(0), HitRule(2, 0.01))  # and they disagree


# --- the byte bound --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ann_above", "max_bytes", "n"),
    [(10**9, 200_000, 20_000), (300, 1_000_000, 8_000)],
    ids=["exact", "ivf"],
)
def test_bytes_never_exceed_the_bound(ann_above: int, max_bytes: int, n: int) -> None:
    cache = SemanticCache(max_bytes=max_bytes, ann_above=ann_above)
    keys = random_keys(n, 16, seed=0)
    labels = np.random.default_rng(1).integers(0, 10, n)
    entries = []
    for key, label in zip(keys, labels, strict=True):
        cache.insert(NS, key, _logits(int(label), classes=10), cost_ms=1.0)
        s = cache.stats()
        assert s.bytes <= max_bytes
        entries.append(s.entries)
    s = cache.stats()
    assert s.evictions > 0 and s.inserts == n
    assert max(entries[n // 2 :]) <= max(entries[: n // 2])  # it stopped growing
    assert s.entries < n // 2
    assert s.entries * _entry_bytes(16, 10) <= max_bytes
    if ann_above < n:
        assert s.index[str(NS)] == "ivf"
    _consistent(cache)


def test_a_budget_too_small_for_one_entry_inserts_nothing() -> None:
    cache = SemanticCache(max_bytes=_entry_bytes(4, 3) - 1)
    cache.insert(NS, _basis(0), _logits(1), cost_ms=1.0)
    cache.insert(NS, _basis(1), _logits(1), cost_ms=1.0)
    s = cache.stats()
    assert (s.entries, s.inserts) == (0, 0)
    assert not _hits(cache, NS, _basis(0))
    _consistent(cache)


def test_a_budget_of_one_entry_keeps_the_latest() -> None:
    cache = SemanticCache(max_bytes=_entry_bytes(4, 3))
    for i in range(4):
        cache.insert(NS, _basis(i), _logits(1), cost_ms=1.0)
        assert cache.stats().entries == 1
        assert _hits(cache, NS, _basis(i))
    _consistent(cache)


def _fill(cache: SemanticCache, ns: Namespace, n: int, seed: int) -> np.ndarray:
    keys = random_keys(n, 16, seed)
    for i, key in enumerate(keys):
        cache.insert(ns, key, _logits(i % 3), cost_ms=1.0)
    return keys


def test_a_second_namespace_can_insert_when_the_first_filled_the_budget() -> None:
    cache = SemanticCache(max_bytes=20_000)
    _fill(cache, NS, 400, seed=0)
    full = cache.stats()
    assert full.evictions > 0  # the first namespace really filled the budget
    key = random_keys(1, 16, seed=1)[0]
    cache.insert(OTHER, key, _logits(2), cost_ms=1.0)
    assert _hits(cache, OTHER, key)
    _consistent(cache)
    # and the first can still insert afterwards, within the budget
    again = random_keys(1, 16, seed=2)[0]
    cache.insert(NS, again, _logits(0), cost_ms=1.0)
    assert _hits(cache, NS, again) and _hits(cache, OTHER, key)
    _consistent(cache)


def test_a_second_namespace_can_insert_when_the_first_is_partly_expired(
    clock: FakeClock,
) -> None:
    cache = SemanticCache(max_bytes=20_000, ttl_s=10.0, clock=clock)
    keys = random_keys(150, 16, seed=0)
    for i, key in enumerate(keys):  # 100 at t=0, 50 at t=5: fills the budget, no eviction
        clock.now = 0.0 if i < 100 else 5.0
        cache.insert(NS, key, _logits(i % 3), cost_ms=1.0)
    assert cache.stats().evictions == 0
    clock.now = 12.0  # the first 100 are stale, the last 50 are not
    key = random_keys(1, 16, seed=1)[0]
    cache.insert(OTHER, key, _logits(2), cost_ms=1.0)
    assert _hits(cache, OTHER, key)
    _consistent(cache)


def test_an_entry_that_can_never_fit_evicts_nothing() -> None:
    cache = SemanticCache(max_bytes=20_000)
    keys = _fill(cache, NS, 100, seed=0)
    before = cache.stats().entries
    huge = np.zeros(10_000, dtype=np.float32)  # 40 kB of logits > the whole budget
    cache.insert(OTHER, random_keys(1, 16, seed=1)[0], huge, cost_ms=1.0)
    assert cache.stats().entries == before
    assert _hits(cache, NS, keys[-1])


# --- eviction policies -----------------------------------------------------------------------

P, Q, R, W = (_basis(i) for i in range(4))
NAMED = {"P": P, "Q": Q, "R": R, "W": W}
VICTIM = {"lru": "P", "lfu": "Q", "cost": "R"}


def _three_entry_cache(
    eviction: str, clock: FakeClock, ttl_s: float | None = None
) -> SemanticCache:
    per = _entry_bytes(4, 3)
    return SemanticCache(max_bytes=3 * per + per // 2, eviction=eviction, ttl_s=ttl_s, clock=clock)


@pytest.mark.parametrize("eviction", EVICTIONS)
def test_each_policy_evicts_its_own_victim(eviction: str, clock: FakeClock) -> None:
    """Inserted Q, R, P; then P hit 3 times, Q once (it is worth 100 ms), R twice, last.

    lru evicts P (least recently used, though last inserted and most hit),
    lfu evicts Q (fewest hits, though it saves the most), cost evicts R
    (least saved: 2 x 1 ms, though most recently used).
    """
    assert set(VICTIM) == set(EVICTIONS)
    cache = _three_entry_cache(eviction, clock)
    for name, cost in [("Q", 100.0), ("R", 1.0), ("P", 1.0)]:
        cache.insert(NS, NAMED[name], _logits(1), cost_ms=cost)
        clock.now += 1
    assert cache.stats().entries == 3
    for name in ["P", "P", "P", "Q", "R", "R"]:
        assert _hits(cache, NS, NAMED[name])
        clock.now += 1
    cache.insert(NS, W, _logits(1), cost_ms=1.0)
    s = cache.stats()
    assert (s.entries, s.evictions) == (3, 1)
    survivors = {name for name in "PQRW" if _hits(cache, NS, NAMED[name])}
    assert survivors == set("PQRW") - {VICTIM[eviction]}


def test_lfu_breaks_ties_by_recency(clock: FakeClock) -> None:
    cache = _three_entry_cache("lfu", clock)
    for key in (P, Q, R):
        cache.insert(NS, key, _logits(1), cost_ms=1.0)
        clock.now += 1
    for key in (Q, P, R):  # one hit each; Q's is the oldest
        assert _hits(cache, NS, key)
        clock.now += 1
    cache.insert(NS, W, _logits(1), cost_ms=1.0)
    assert not _hits(cache, NS, Q)
    assert all(_hits(cache, NS, key) for key in (P, R, W))


@pytest.mark.parametrize("eviction", EVICTIONS)
def test_expired_entries_are_evicted_first(eviction: str, clock: FakeClock) -> None:
    cache = _three_entry_cache(eviction, clock, ttl_s=10.0)
    for key, cost in [(P, 100.0), (Q, 1.0), (R, 1.0)]:
        cache.insert(NS, key, _logits(1), cost_ms=cost)
        clock.now += 1
    clock.now = 9.0
    for _ in range(3):  # P: most used, most recent, worth most; but created first
        assert _hits(cache, NS, P)
    clock.now = 10.5  # P (created at 0) is stale; Q (at 1) and R (at 2) are not
    cache.insert(NS, W, _logits(1), cost_ms=1.0)
    s = cache.stats()
    assert (s.expired, s.evictions, s.entries) == (1, 0, 3)
    assert all(_hits(cache, NS, key) for key in (Q, R, W))
    assert not _hits(cache, NS, P)
    _consistent(cache)


# --- TTL -------------------------------------------------------------------------------------


def test_an_expired_entry_never_answers(clock: FakeClock) -> None:
    cache = SemanticCache(max_bytes=1 << 20, ttl_s=10.0, clock=clock)
    cache.insert(NS, P, _logits(1), cost_ms=1.0)
    clock.now = 5.0
    assert _hits(cache, NS, P)
    clock.now = 10.0
    assert _hits(cache, NS, P)  # exactly ttl old: still fresh (hits do not extend it)
    clock.now = 10.5
    assert not _hits(cache, NS, P)
    s = cache.stats()
    assert (s.expired, s.entries) == (1, 0)
    clock.now = 11.0
    assert not _hits(cache, NS, P)
    assert cache.stats().expired == 1  # counted once
    _consistent(cache)


def test_an_expired_neighbour_breaks_the_consensus(clock: FakeClock) -> None:
    q, a, b = _pair()
    cache = SemanticCache(max_bytes=1 << 20, ttl_s=10.0, clock=clock)
    cache.insert(NS, a, _logits(1), cost_ms=1.0)
    clock.now = 8.0
    cache.insert(NS, b, _logits(1), cost_ms=1.0)
    assert _hits(cache, NS, q, HitRule(2, 0.02))
    clock.now = 12.0  # a is stale, b is fresh
    assert not _hits(cache, NS, q, HitRule(2, 0.02))
    assert cache.stats().expired == 1
    assert _hits(cache, NS, b, HitRule(1, 0.02))  # b still answers on its own
    _consistent(cache)


def test_a_fresh_insert_of_an_expired_key_answers_again(clock: FakeClock) -> None:
    cache = SemanticCache(max_bytes=1 << 20, ttl_s=10.0, clock=clock)
    cache.insert(NS, P, _logits(1), cost_ms=1.0)
    clock.now = 20.0
    cache.insert(NS, P, _logits(1, scale=2.0), cost_ms=1.0)  # refreshes its creation time
    hit = cache.lookup(NS, P, NEAR)
    assert hit is not None
    np.testing.assert_array_equal(hit.logits, _logits(1, scale=2.0))


# --- threads ---------------------------------------------------------------------------------


def _run_threads(work: list[threading.Thread]) -> None:
    for t in work:
        t.start()
    for t in work:
        t.join()


def test_threads_inserting_distinct_keys_keep_all_of_them() -> None:
    cache = SemanticCache(max_bytes=64 << 20)
    keys = random_keys(16 * 500, 16, seed=0)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def client(i: int) -> None:
        try:
            start.wait()
            mine = keys[i * 500 : (i + 1) * 500]
            for j, key in enumerate(mine):
                cache.insert(NS, key, _logits(j % 3), cost_ms=1.0)
                hit = cache.lookup(NS, key, HitRule(1, 1e-6))
                assert hit is not None and hit.label == j % 3
                cache.lookup(NS, mine[j // 2], NEAR)
        except BaseException as e:
            errors.append(e)

    _run_threads([threading.Thread(target=client, args=(i,)) for i in range(16)])
    assert errors == []
    s = cache.stats()
    assert s.entries == 16 * 500 and s.inserts == 16 * 500 and s.evictions == 0
    assert s.hits + s.misses == 2 * 16 * 500
    _consistent(cache)


def test_threads_inserting_the_same_keys_leave_one_entry_each() -> None:
    cache = SemanticCache(max_bytes=64 << 20)
    keys = random_keys(200, 16, seed=1)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def client(i: int) -> None:
        try:
            start.wait()
            order = np.random.default_rng(i).permutation(200)
            for j in order:
                cache.insert(NS, keys[j], _logits(int(j) % 3), cost_ms=1.0)
                cache.lookup(NS, keys[j], NEAR)
        except BaseException as e:
            errors.append(e)

    _run_threads([threading.Thread(target=client, args=(i,)) for i in range(16)])
    assert errors == []
    s = cache.stats()
    assert (s.entries, s.inserts, s.refreshed) == (200, 200, 16 * 200 - 200)
    assert s.hits == 16 * 200
    _consistent(cache)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": 0},
        {"max_bytes": -5},
        {"max_bytes": 1 << 20, "eviction": "fifo"},
        {"max_bytes": 1 << 20, "eviction": "LRU"},
        {"max_bytes": 1 << 20, "ttl_s": 0.0},
        {"max_bytes": 1 << 20, "ttl_s": -1.0},
    ],
)
def test_bad_constructor_arguments_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(**kwargs)  # type: ignore[arg-type]


def test_clear_empties_every_namespace() -> None:
    cache = SemanticCache(max_bytes=1 << 20)
    cache.insert(NS, P, _logits(1), cost_ms=1.0)
    cache.insert(OTHER, P, _logits(1), cost_ms=1.0)
    cache.clear()
    assert len(cache) == 0 and cache.stats().bytes == 0
    assert not _hits(cache, NS, P) and not _hits(cache, OTHER, P)
