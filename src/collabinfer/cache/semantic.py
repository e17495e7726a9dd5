"""The semantic cache: answers kept under a key near the request's, bounded in bytes.

What it is for (paper, Section 3.2): requests near in space and time are
similar, so an edge that has answered one can answer its neighbours without
running the tail. The key is what the device already sends (the split's
features, pooled, or the bottleneck's latent), so a miss costs one lookup and
one insert, nothing else.

Design, and why:

* **Namespaces** (:class:`Namespace`: model, weights hash, cut, key version):
  keys from different models, weights, cuts or key functions are not
  comparable, so each namespace has its own index; all share one byte budget.
* **Bounded in bytes, not entries**: every allocation (the index's rows, the
  answer and bookkeeping arrays) is decided here and counted as allocated,
  not as used, so :attr:`CacheStats.bytes` never exceeds ``max_bytes``.
* **Eviction** in batches (1/64 of a namespace's entries at a time, the
  lowest scores first), so each insert pays an amortised O(1) share of one
  vectorised pass: ``lru`` (last use), ``lfu`` (hits, then last use), ``cost``
  (compute saved x hits, then last use: FoggyCache's and Potluck's point that
  an entry is worth what it saves). Expired entries (TTL) go first.
* **Hit rule** (:class:`~collabinfer.cache.rule.HitRule`): the ``k`` nearest
  entries must all lie within ``tau``, agree on the label (FoggyCache's
  H-kNN consensus) and have answered with at least ``min_confidence``. The
  answer is the nearest entry's logits.
* **Duplicates**: an insert whose key is already held under the same label
  refreshes that entry, so two clients missing on the same input at once
  leave one entry, not two.
* **Thread-safe**: one lock around each lookup and insert (a few tens of us);
  every client of an edge shares the cache.

Example::

    >>> import numpy as np
    >>> from collabinfer.cache.rule import DEDUPE_DIST, HitRule
    >>> cache = SemanticCache(max_bytes=1 << 20)
    >>> ns = Namespace("tiny", "abc", 1, "pool2-v1")
    >>> key = np.array([1.0, 0.0], dtype=np.float32)
    >>> cache.insert(ns, key, np.array([0.1, 2.0], dtype=np.float32), cost_ms=1.5)
    >>> hit = cache.lookup(ns, np.array([0.99, 0.05], dtype=np.float32), HitRule(1, 0.01))
    >>> hit is not None and int(hit.label)
    1
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from collabinfer.cache.index import ANN_ABOVE, MIN_ANN_ABOVE, AdaptiveIndex
from collabinfer.cache.rule import DEDUPE_DIST, HitRule
from collabinfer.errors import ConfigError

__all__ = ["EVICTIONS", "CacheStats", "Hit", "Namespace", "SemanticCache", "Ticket"]

EVICTIONS = ("lru", "lfu", "cost")
EVICT_FRACTION = 64  # a full namespace evicts 1/64 of its entries at once
SLOT_OVERHEAD = 4 + 8 + 8 + 4 + 4 + 8 + 1  # label, created, used, hits, cost, free slot, live
MIN_SLOTS = 64


@dataclass(frozen=True)
class Namespace:
    """Keys are comparable only within one namespace."""

    model: str
    weights: str  # hash of the weights: new weights, new answers
    cut: int
    key: str  # key function and version

    def __str__(self) -> str:
        return f"{self.model}@{self.weights[:12]}/cut{self.cut}/{self.key}"


class Ticket(NamedTuple):
    """What a lookup found nearest (slot -1: nothing), in namespace state ``version``."""

    version: int
    slot: int
    distance: float


class Hit:
    """A cached answer: the nearest entry's logits and label, and its distance."""

    __slots__ = ("distance", "label", "logits")

    def __init__(self, logits: np.ndarray, label: int, distance: float) -> None:
        self.logits, self.label, self.distance = logits, label, distance


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    inserts: int
    refreshed: int  # inserts that found their key already held
    evictions: int
    expired: int
    entries: int
    bytes: int  # allocated, all namespaces
    max_bytes: int
    namespaces: dict[str, int]  # entries per namespace
    index: dict[str, str]  # index kind per namespace

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "inserts": self.inserts,
            "refreshed": self.refreshed,
            "evictions": self.evictions,
            "expired": self.expired,
            "entries": self.entries,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "namespaces": self.namespaces,
            "index": self.index,
        }


def _confidence(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of each row's top class."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(1.0 / e.sum(axis=1))


class _Space:
    """One namespace: an index plus answer and bookkeeping arrays by slot."""

    def __init__(self, dim: int, classes: int, ann_above: int) -> None:
        self.dim, self.classes = dim, classes
        self.index = AdaptiveIndex(dim, ann_above)
        self.capacity = 0
        self.logits = np.zeros((0, classes), dtype=np.float32)
        self.label = np.zeros(0, dtype=np.int32)
        self.created = np.zeros(0, dtype=np.float64)
        self.used = np.zeros(0, dtype=np.float64)
        self.hits = np.zeros(0, dtype=np.int32)
        self.cost = np.zeros(0, dtype=np.float32)
        self.live = np.zeros(0, dtype=bool)
        self._free = np.zeros(0, dtype=np.int64)  # a stack of free slots: no Python ints held
        self.n_free = 0
        self.version = 0  # bumped by every add and drop: a Ticket from before is void

    @property
    def entries(self) -> int:
        return self.capacity - self.n_free

    def pop_free(self) -> int:
        self.n_free -= 1
        return int(self._free[self.n_free])

    def push_free(self, slot: int) -> None:
        self._free[self.n_free] = slot
        self.n_free += 1

    def slot_bytes(self) -> int:
        return self.classes * 4 + SLOT_OVERHEAD

    def bytes_for(self, capacity: int) -> int:
        return capacity * self.slot_bytes() + self.index.bytes_for(capacity)

    def nbytes(self) -> int:
        return self.bytes_for(self.capacity)

    def resize(self, capacity: int) -> None:
        old = self.capacity
        keep = min(old, capacity)

        def grown(a: np.ndarray) -> np.ndarray:
            b = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            b[:keep] = a[:keep]
            return b

        self.logits, self.label = grown(self.logits), grown(self.label)
        self.created, self.used = grown(self.created), grown(self.used)
        self.hits, self.cost, self.live = grown(self.hits), grown(self.cost), grown(self.live)
        if capacity >= old:
            free = np.zeros(capacity, dtype=np.int64)
            free[: self.n_free] = self._free[: self.n_free]
            new = np.arange(capacity - 1, old - 1, -1, dtype=np.int64)  # low slots first
            free[self.n_free : self.n_free + len(new)] = new
            self._free, self.n_free = free, self.n_free + len(new)
        else:  # shrinking: only when every slot is free
            if self.entries:
                raise ConfigError("a namespace shrinks only when empty")
            self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)
            self.n_free = capacity
        self.index.reserve(capacity)
        self.capacity = capacity

    def drop(self, slot: int) -> None:
        self.version += 1
        self.index.remove(slot)
        self.live[slot] = False
        self.push_free(slot)


class SemanticCache:
    """Answers under keys, per namespace, within ``max_bytes`` (see the module docstring).

    ``clock`` (seconds) is injectable so a virtual-clock run can age entries in
    its own time. ``ann_above``: keys per namespace above which search moves
    from exact to IVF.
    """

    def __init__(
        self,
        max_bytes: int,
        eviction: str = "lru",
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        ann_above: int = ANN_ABOVE,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError(f"cache size must be >= 1 byte, got {max_bytes}")
        if eviction not in EVICTIONS:
            raise ConfigError(f"unknown eviction {eviction!r}; choose one of {EVICTIONS}")
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError(f"ttl must be > 0 seconds, got {ttl_s}")
        if ann_above < MIN_ANN_ABOVE:
            raise ConfigError(f"ann_above must be >= {MIN_ANN_ABOVE} (IVF's training keys)")
        self.max_bytes = int(max_bytes)
        self.eviction = eviction
        self.ttl_s = ttl_s
        self.clock = clock
        self.ann_above = ann_above
        self._spaces: dict[Namespace, _Space] = {}
        self._lock = threading.Lock()
        self._hits = self._misses = self._inserts = self._refreshed = 0
        self._evictions = self._expired = 0

    # --- the two verbs -----------------------------------------------------------------------

    def lookup(self, ns: Namespace, key: np.ndarray, rule: HitRule) -> Hit | None:
        """The cached answer when the rule's ``k`` nearest agree within ``tau``, else None."""
        return self.probe(ns, key, rule)[0]

    def probe(
        self, ns: Namespace, key: np.ndarray, rule: HitRule
    ) -> tuple[Hit | None, Ticket | None]:
        """:meth:`lookup`, plus a :class:`Ticket` that lets the insert after a miss skip
        its own search (it is honoured only if nothing changed in the namespace since)."""
        key = np.ascontiguousarray(key, dtype=np.float32).reshape(-1)
        with self._lock:
            space = self._spaces.get(ns)
            hit: Hit | None = None
            ticket: Ticket | None = None
            if space is not None and rule.enabled and key.shape[0] == space.dim:
                hit, ticket = self._consensus(space, key, rule)
            if hit is None:
                self._misses += 1
            else:
                self._hits += 1
            return hit, ticket

    def insert(
        self,
        ns: Namespace,
        key: np.ndarray,
        logits: np.ndarray,
        cost_ms: float,
        ticket: Ticket | None = None,
    ) -> None:
        """Keep ``logits`` (one row) under ``key``; ``cost_ms`` is what a hit on it saves.
        ``ticket``: what :meth:`probe` found for this key (saves a search)."""
        key = np.ascontiguousarray(key, dtype=np.float32).reshape(-1)
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        label = int(np.argmax(logits))
        with self._lock:
            space = self._space(ns, key.shape[0], logits.shape[0])
            now = self.clock()
            if ticket is not None and ticket.version == space.version:
                ids = np.array([ticket.slot] if ticket.slot >= 0 else [], dtype=np.int64)
                dist = np.array([ticket.distance], dtype=np.float32)
            else:
                ids, dist = space.index.search(key, 1)
            if len(ids) and dist[0] <= DEDUPE_DIST and space.label[ids[0]] == label:
                slot = int(ids[0])  # the same key answered again (e.g. two clients at once)
                space.logits[slot], space.created[slot], space.used[slot] = logits, now, now
                self._refreshed += 1
                return
            if not space.n_free:
                self._make_room(space)
            if not space.n_free:
                return  # the budget cannot hold even one entry of this namespace
            slot = space.pop_free()
            space.index.add(slot, key)
            space.version += 1
            space.logits[slot], space.label[slot] = logits, label
            space.created[slot] = space.used[slot] = now
            space.hits[slot], space.cost[slot], space.live[slot] = 0, cost_ms, True
            self._inserts += 1

    # --- introspection -----------------------------------------------------------------------

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                inserts=self._inserts,
                refreshed=self._refreshed,
                evictions=self._evictions,
                expired=self._expired,
                entries=sum(s.entries for s in self._spaces.values()),
                bytes=self._bytes(),
                max_bytes=self.max_bytes,
                namespaces={str(ns): s.entries for ns, s in self._spaces.items()},
                index={str(ns): s.index.kind for ns, s in self._spaces.items()},
            )

    def __len__(self) -> int:
        with self._lock:
            return sum(s.entries for s in self._spaces.values())

    def nbytes(self) -> int:
        """Bytes allocated now, all namespaces (never more than ``max_bytes``)."""
        with self._lock:
            return self._bytes()

    def clear(self) -> None:
        with self._lock:
            self._spaces.clear()

    # --- inside ------------------------------------------------------------------------------

    def _bytes(self) -> int:
        return sum(s.nbytes() for s in self._spaces.values())

    def _consensus(
        self, space: _Space, key: np.ndarray, rule: HitRule
    ) -> tuple[Hit | None, Ticket]:
        ids, dist = space.index.search(key, rule.k)
        ticket = Ticket(
            space.version, int(ids[0]) if len(ids) else -1, float(dist[0]) if len(ids) else 0.0
        )
        if len(ids) < rule.k or dist[-1] > rule.tau:
            return None, ticket
        now = self.clock()
        if self.ttl_s is not None:
            stale = ids[now - space.created[ids] > self.ttl_s]
            if len(stale):
                for slot in stale:
                    space.drop(int(slot))
                self._expired += len(stale)
                return None, ticket._replace(version=-1)  # changed: the insert searches
        labels = space.label[ids]
        if not bool((labels == labels[0]).all()):
            return None, ticket
        if rule.min_confidence > 0 and _confidence(space.logits[ids]).min() < rule.min_confidence:
            return None, ticket
        space.used[ids] = now
        nearest = int(ids[0])
        space.hits[nearest] += 1
        return Hit(space.logits[nearest].copy(), int(labels[0]), float(dist[0])), ticket

    def _space(self, ns: Namespace, dim: int, classes: int) -> _Space:
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = _Space(dim, classes, self.ann_above)
        elif space.dim != dim or space.classes != classes:
            raise ConfigError(
                f"namespace {ns} holds {space.dim}-dim keys and {space.classes} classes, "
                f"got {dim} and {classes}"
            )
        return space

    def _make_room(self, space: _Space) -> None:
        """Grow this namespace within the budget; when it cannot, evict."""
        others = self._bytes() - space.nbytes()
        allowed = self.max_bytes - others
        want = max(MIN_SLOTS, 2 * space.capacity)
        fits = self._largest_fitting(space, allowed, want)
        if fits > space.capacity:
            space.resize(fits)
            return
        if space.entries > 0:
            self._evict(space, max(1, space.entries // EVICT_FRACTION))
            return
        if space.bytes_for(1) > self.max_bytes:
            return  # not even one entry fits: evicting the others would gain nothing
        # an empty new namespace squeezed out by the others: take room from the largest
        for other in sorted(self._spaces.values(), key=lambda s: -s.nbytes()):
            if other is space or other.entries == 0:
                continue
            while other.entries:  # expired entries go first, then the policy's order
                self._evict(other, other.entries)
            other.resize(0)
            allowed = self.max_bytes - (self._bytes() - space.nbytes())
            fits = self._largest_fitting(space, allowed, want)
            if fits > space.capacity:
                space.resize(fits)
                return

    @staticmethod
    def _largest_fitting(space: _Space, allowed: int, want: int) -> int:
        """The largest capacity <= ``want`` whose allocation fits in ``allowed`` bytes."""
        lo, hi = space.capacity, want
        if space.bytes_for(hi) <= allowed:
            return hi
        while lo < hi:  # bytes_for is monotone in capacity
            mid = (lo + hi + 1) // 2
            if space.bytes_for(mid) <= allowed:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _evict(self, space: _Space, count: int) -> None:
        live = np.flatnonzero(space.live)
        if len(live) == 0:
            return
        if self.ttl_s is not None:
            stale = live[self.clock() - space.created[live] > self.ttl_s]
            if len(stale):
                for slot in stale:
                    space.drop(int(slot))
                self._expired += len(stale)
                return
        if self.eviction == "lru":
            order = np.argsort(space.used[live], kind="stable")
        elif self.eviction == "lfu":
            order = np.lexsort((space.used[live], space.hits[live]))
        else:  # cost: compute saved so far, then recency
            saved = space.cost[live] * space.hits[live]
            order = np.lexsort((space.used[live], saved))
        for slot in live[order[:count]]:
            space.drop(int(slot))
        self._evictions += min(count, len(live))
