"""The key-index contract, run over every index, checked against numpy brute force.

Exact indexes must return the brute-force ids; IVF is approximate, so it must
return true distances for the ids it gives, nearest first, and find a held key
from a query that is a tiny perturbation of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from collabinfer.cache.index import IVF_POINTS_PER_LIST, AdaptiveIndex, ExactIndex, IVFIndex
from collabinfer.errors import ConfigError

from .helpers import clustered_keys, perturbed, random_keys

DIM = 16
ANN_ABOVE = 300  # small, so the adaptive index switches to IVF within these tests


def _ivf() -> IVFIndex:
    return IVFIndex(DIM, random_keys(2000, DIM, seed=99))


Index = ExactIndex | IVFIndex | AdaptiveIndex
Make = Callable[[], Index]

INDEXES: dict[str, Make] = {
    "exact": lambda: ExactIndex(DIM),
    "ivf": _ivf,
    "adaptive": lambda: AdaptiveIndex(DIM, ann_above=ANN_ABOVE),
}


@pytest.fixture(params=sorted(INDEXES))
def make(request: pytest.FixtureRequest) -> Make:
    return INDEXES[request.param]


def _is_exact(index: Index) -> bool:
    return isinstance(index, ExactIndex) or (
        isinstance(index, AdaptiveIndex) and index.kind == "exact"
    )


def _brute(keys: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    d = ((keys.astype(np.float64) - q.astype(np.float64)) ** 2).sum(1)
    order = np.argsort(d, kind="stable")[:k]
    return ids[order], d[order]


def _filled(index: Index, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Add ``n`` clustered keys under scattered (non-contiguous) ids; return (ids, keys)."""
    keys, _ = clustered_keys(n, DIM, seed)
    ids = np.random.default_rng(seed).permutation(n).astype(np.int64) * 3 + 7
    for key_id, key in zip(ids, keys, strict=True):
        index.add(int(key_id), key)
    return ids, keys


@pytest.mark.parametrize("n", [50, 1000])
def test_search_is_nearest_first_with_true_distances(make: Make, n: int) -> None:
    index = make()
    ids, keys = _filled(index, n, seed=n)
    assert len(index) == n
    row = {int(i): r for r, i in enumerate(ids)}
    queries = random_keys(40, DIM, seed=1)
    for q in queries:
        got, dist = index.search(q, 5)
        want, want_d = _brute(keys, ids, q, 5)
        assert len(got) == len(dist) and 1 <= len(got) <= 5
        assert len(set(got.tolist())) == len(got)
        assert np.all(np.diff(dist) >= -1e-6), "not nearest first"
        true = np.array([((keys[row[int(i)]] - q) ** 2).sum() for i in got])
        np.testing.assert_allclose(dist, true, atol=1e-5)
        assert dist[0] >= want_d[0] - 1e-5  # nothing beats the true nearest
        if _is_exact(index):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(dist, want_d, atol=1e-5)


def test_perturbed_queries_find_their_key(make: Make) -> None:
    index = make()
    ids, keys = _filled(index, 1000, seed=3)
    queries = perturbed(keys[:300], seed=4)
    found = sum(int(index.search(q, 1)[0][0]) == int(i) for q, i in zip(queries, ids, strict=False))
    assert found / len(queries) >= (1.0 if _is_exact(index) else 0.99)


def test_remove_really_removes(make: Make) -> None:
    index = make()
    ids, keys = _filled(index, 600, seed=5)
    gone = set(np.random.default_rng(6).choice(ids, 200, replace=False).tolist())
    for count, key_id in enumerate(sorted(gone), start=1):
        index.remove(key_id)
        assert len(index) == 600 - count
    for key_id, key in zip(ids, keys, strict=True):
        got, dist = index.search(key, 10)
        assert not gone & set(got.tolist()), "a removed id came back"
        if int(key_id) not in gone:  # every other id is still there, under its own key
            assert int(got[0]) == int(key_id) and dist[0] < 1e-5
    # a removed id can be added again, under a new key
    reborn = int(next(iter(gone)))
    new_key = random_keys(1, DIM, seed=7)[0]
    index.add(reborn, new_key)
    assert len(index) == 401
    got, dist = index.search(new_key, 1)
    assert int(got[0]) == reborn and dist[0] < 1e-5


def test_k_larger_than_len(make: Make) -> None:
    index = make()
    ids, keys = _filled(index, 5, seed=8)
    got, dist = index.search(keys[0], 20)
    assert 1 <= len(got) <= 5 and len(dist) == len(got)
    assert int(got[0]) == int(ids[0])
    assert set(got.tolist()) <= set(ids.tolist())
    if _is_exact(index):
        assert sorted(got.tolist()) == sorted(ids.tolist())


def test_empty_index_answers_nothing(make: Make) -> None:
    index = make()
    assert len(index) == 0
    got, dist = index.search(random_keys(1, DIM, seed=0)[0], 3)
    assert len(got) == 0 and len(dist) == 0
    index.add(1, random_keys(1, DIM, seed=1)[0])
    got, dist = index.search(random_keys(1, DIM, seed=0)[0], 0)
    assert len(got) == 0 and len(dist) == 0


def test_remove_to_empty_then_search(make: Make) -> None:
    index = make()
    ids, keys = _filled(index, 10, seed=9)
    for key_id in ids:
        index.remove(int(key_id))
    assert len(index) == 0
    assert len(index.search(keys[0], 3)[0]) == 0


def test_nbytes_grows_with_what_is_held(make: Make) -> None:
    index = make()
    before = index.nbytes()
    _filled(index, 1000, seed=10)
    assert index.nbytes() > before


# --- ExactIndex ------------------------------------------------------------------------------


def test_exact_swap_delete_keeps_every_other_id_findable() -> None:
    index = ExactIndex(DIM, capacity=4)
    scale = np.random.default_rng(11).uniform(0.5, 2.0, (64, 1)).astype(np.float32)
    keys = random_keys(64, DIM, seed=11) * scale  # not unit: a stale norm would show
    for i, key in enumerate(keys):
        index.add(i, key)
    alive = set(range(64))
    # remove the last row, the first row, and rows in between, checking after each
    for victim in [63, 0, 31, 32, 1, 62, *range(2, 30)]:
        index.remove(victim)
        alive.discard(victim)
        assert len(index) == len(alive)
        held = np.array(sorted(alive))
        for i in alive:
            got, dist = index.search(keys[i], 3)
            want, want_d = _brute(keys[held], held, keys[i], 3)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(dist, want_d, atol=1e-5)
    held_ids, held_keys = index.keys()
    assert set(held_ids.tolist()) == alive
    for i, key in zip(held_ids, held_keys, strict=True):
        np.testing.assert_array_equal(key, keys[i])


def test_exact_add_of_a_held_id_is_an_error() -> None:
    index = ExactIndex(DIM)
    index.add(3, random_keys(1, DIM, seed=0)[0])
    with pytest.raises(ConfigError):
        index.add(3, random_keys(1, DIM, seed=1)[0])


def test_exact_rejects_a_zero_dimension() -> None:
    with pytest.raises(ConfigError):
        ExactIndex(0)


def test_exact_reserve_never_drops_rows_and_nbytes_follows_capacity() -> None:
    index = ExactIndex(DIM, capacity=8)
    keys = random_keys(100, DIM, seed=12)
    for i, key in enumerate(keys):
        index.add(i, key)  # grows past 8 by doubling
    assert index.capacity >= 100
    for capacity in [10, 0, 100, 500, 1]:
        index.reserve(capacity)
        assert index.capacity == max(capacity, 100)
        assert index.nbytes() == index.capacity * index.row_bytes()
        assert len(index) == 100
        for i in (0, 50, 99):
            got, _ = index.search(keys[i], 1)
            assert int(got[0]) == i
    index.reserve(500)
    big = index.nbytes()
    index.reserve(200)
    assert index.nbytes() < big


# --- IVFIndex and AdaptiveIndex --------------------------------------------------------------


def test_ivf_needs_enough_training_keys() -> None:
    with pytest.raises(ConfigError):
        IVFIndex(DIM, random_keys(2 * IVF_POINTS_PER_LIST - 1, DIM, seed=0))


def test_adaptive_switches_past_ann_above_and_keeps_every_key() -> None:
    index = AdaptiveIndex(DIM, ann_above=ANN_ABOVE)
    keys, _ = clustered_keys(ANN_ABOVE + 200, DIM, seed=13)
    for i in range(ANN_ABOVE):
        index.add(i, keys[i])
    assert index.kind == "exact"
    index.add(ANN_ABOVE, keys[ANN_ABOVE])
    assert index.kind == "ivf" and len(index) == ANN_ABOVE + 1
    for i in range(ANN_ABOVE + 1, len(keys)):
        index.add(i, keys[i])
    assert len(index) == len(keys)
    for i, key in enumerate(keys):  # those added before the switch, and after
        got, dist = index.search(key, 1)
        assert int(got[0]) == i and dist[0] < 1e-5
    # it does not move back when it shrinks
    for i in range(ANN_ABOVE):
        index.remove(i)
    assert index.kind == "ivf" and len(index) == 200


def test_adaptive_bytes_for_is_monotone_and_charges_the_switch() -> None:
    # the cache's binary search over capacities relies on this
    index = AdaptiveIndex(DIM, ann_above=ANN_ABOVE)
    costs = [index.bytes_for(c) for c in range(0, 3 * ANN_ABOVE)]
    assert all(b >= a for a, b in itertools.pairwise(costs))
    per_key_before = costs[ANN_ABOVE] - costs[ANN_ABOVE - 1]
    per_key_after = costs[ANN_ABOVE + 2] - costs[ANN_ABOVE + 1]
    assert per_key_after >= per_key_before
    assert costs[ANN_ABOVE + 1] - costs[ANN_ABOVE] > per_key_after  # the centroids


def test_adaptive_allocates_no_more_than_bytes_for_once_switched() -> None:
    index = AdaptiveIndex(DIM, ann_above=ANN_ABOVE)
    for i, key in enumerate(random_keys(ANN_ABOVE + 50, DIM, seed=14)):
        index.add(i, key)
    assert index.kind == "ivf"
    assert index.nbytes() <= index.bytes_for(len(index))


@pytest.mark.parametrize("capacity", [1, 64, ANN_ABOVE])
def test_adaptive_allocates_no_more_than_bytes_for_after_reserve(capacity: int) -> None:
    index = AdaptiveIndex(DIM, ann_above=ANN_ABOVE)
    index.reserve(capacity)
    assert index.nbytes() <= index.bytes_for(capacity)


def test_adaptive_allocates_nothing_uncounted_at_capacity_zero() -> None:
    index = AdaptiveIndex(DIM, ann_above=ANN_ABOVE)
    assert index.nbytes() <= index.bytes_for(0)
    index.reserve(0)
    assert index.nbytes() <= index.bytes_for(0)


def test_adaptive_with_a_small_ann_above_fails_early_or_keeps_working() -> None:
    try:
        index = AdaptiveIndex(DIM, ann_above=50)
    except ConfigError:
        return  # rejecting it up front is fine
    for i, key in enumerate(random_keys(100, DIM, seed=15)):
        index.add(i, key)  # today: ConfigError on the 51st
    assert len(index) == 100


def test_adaptive_allocates_no_more_than_bytes_for_after_shrinking_back() -> None:
    index = AdaptiveIndex(DIM, ann_above=ANN_ABOVE)
    for i, key in enumerate(random_keys(ANN_ABOVE + 1, DIM, seed=16)):
        index.add(i, key)
    for i in range(ANN_ABOVE - 50):
        index.remove(i)
    assert index.kind == "ivf" and len(index) == 51
    assert index.nbytes() <= index.bytes_for(len(index))
