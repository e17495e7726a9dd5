"""Nearest-neighbour indexes for cache keys: exact on a contiguous buffer, IVF from faiss.

Why two: a lookup is on every miss's critical path, so it must cost far less
than the tail it might save. Exact search over a contiguous buffer is the
fastest thing there is for a few thousand keys, but it grows linearly:
measured here (one thread, 64 dims, ``benchmarks/bench_cache.py``) ~0.07 ms at
10^3 keys, ~0.17 ms at 10^4, ~2.6 ms at 10^5. Above ``ann_above`` keys the
:class:`AdaptiveIndex` moves to faiss's inverted-file index (``IndexIVFFlat``,
~0.1 ms a query at 10^5 keys), whose deletes really remove the vector from
its list (with a hash-table direct map, ~13 us each).

Why faiss and not the others (measured on this machine, ``benchmarks/bench_ann.py``,
10^5 keys): faiss IVF queries in 0.055 ms and inserts in 0.026 ms; hnswlib
(0.098 / 0.415 ms) compiles for about a minute at install and deletes by
tombstone (the slot stays allocated until it is replaced); usearch deletes
properly but was the slowest (0.310 / 0.283 ms); faiss's own HNSW cannot delete
at all. A cache evicts all the time, so deletion that frees memory decides it.

Distances are squared L2 (keys are unit vectors, so ``d = 2 - 2 cos``).
Exact search is faiss's brute-force ``knn`` over our buffer, on one thread:
numpy's matrix-vector product goes through a multi-threaded BLAS whose
threads spin against the server's own work (measured on a loaded 2-core
machine: 11-12 ms at 10^4 keys against 0.4-0.5 ms for ``faiss.knn``).
Ids are the caller's ints (the cache's slot numbers).

Example::

    >>> import numpy as np
    >>> index = ExactIndex(dim=2)
    >>> index.add(7, np.array([1.0, 0.0], dtype=np.float32))
    >>> index.add(9, np.array([0.0, 1.0], dtype=np.float32))
    >>> ids, dist = index.search(np.array([0.9, 0.1], dtype=np.float32), 1)
    >>> int(ids[0]), round(float(dist[0]), 2)
    (7, 0.02)
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np

from collabinfer.errors import ConfigError

__all__ = [
    "ANN_ABOVE",
    "AdaptiveIndex",
    "ExactIndex",
    "IVFIndex",
    "KeyIndex",
]

ANN_ABOVE = 5_000
"""Keys above which :class:`AdaptiveIndex` switches to IVF: exact search at 10^4 keys
(64 dims) costs ~0.1-0.2 ms here, a good share of the issue's 0.2 ms miss budget,
IVF ~20-40 us; the one-off training at the switch costs ~0.5 s."""
IVF_POINTS_PER_LIST = 20  # training keys per list; faiss would like 39, 20 clusters fine
IVF_MAX_LISTS = 256  # ~400 keys a list at 10^5: a 16-list probe scans ~6k keys
MIN_ANN_ABOVE = 2 * IVF_POINTS_PER_LIST  # IVF needs this many keys to train on
IVF_NPROBE = 16
IVF_OVERHEAD_BYTES = 40  # per vector beyond the key: its id in the list, the hash-map entry
IVF_SLACK = 2  # inverted lists are std::vectors: up to twice the bytes they hold


def single_threaded() -> None:
    """faiss on one thread: the cache's searches are small and run beside the model's
    own compute, where extra threads only fight over the cores (set on first use, not
    on import)."""
    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)


class KeyIndex(Protocol):
    """What the cache needs of an index; ``search`` returns ids and squared distances,
    nearest first, at most ``k`` (fewer when the index holds fewer)."""

    dim: int

    def __len__(self) -> int: ...
    def add(self, key_id: int, key: np.ndarray) -> None: ...
    def remove(self, key_id: int) -> None: ...
    def search(self, key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def nbytes(self) -> int: ...


class ExactIndex:
    """Exact k-NN over a contiguous float32 buffer; delete swaps the last row into the hole.

    The owner sizes the buffer (:meth:`reserve`), so that a cache bounded in
    bytes decides every allocation; :meth:`nbytes` reports what is allocated,
    not what is used. ``add`` on a full buffer doubles it (for standalone use).
    """

    def __init__(self, dim: int, capacity: int = 256) -> None:
        if dim < 1:
            raise ConfigError(f"key dimension must be >= 1, got {dim}")
        self.dim = dim
        self._keys = np.zeros((max(0, capacity), dim), dtype=np.float32)
        self._ids = np.zeros(max(0, capacity), dtype=np.int64)
        self._row: dict[int, int] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, key_id: int, key: np.ndarray) -> None:
        if key_id in self._row:
            raise ConfigError(f"key id {key_id} is already in the index")
        if self._n == len(self._ids):
            self._grow(max(1, 2 * len(self._ids)))
        row = self._n
        self._keys[row] = key
        self._ids[row] = key_id
        self._row[key_id] = row
        self._n += 1

    def remove(self, key_id: int) -> None:
        row = self._row.pop(key_id)
        last = self._n - 1
        if row != last:  # O(1): the last row moves into the hole
            moved = int(self._ids[last])
            self._keys[row] = self._keys[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._n = last

    def search(self, key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self._n
        if n == 0 or k < 1:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        single_threaded()
        dist, rows = faiss.knn(key.reshape(1, -1), self._keys[:n], min(k, n))
        return self._ids[rows[0]].copy(), np.maximum(dist[0], 0.0)

    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, keys) of every entry, for moving them to another index."""
        return self._ids[: self._n].copy(), self._keys[: self._n].copy()

    @property
    def capacity(self) -> int:
        return len(self._ids)

    def reserve(self, capacity: int) -> None:
        """Resize the buffer to ``capacity`` rows (never below the rows held)."""
        if capacity != len(self._ids):
            self._grow(max(capacity, self._n))

    def row_bytes(self) -> int:
        return self.row_bytes_for(self.dim)

    @staticmethod
    def row_bytes_for(dim: int) -> int:
        return dim * 4 + 8  # key, id

    def nbytes(self) -> int:
        return len(self._ids) * self.row_bytes()

    def _grow(self, capacity: int) -> None:
        n = self._n
        keys = np.zeros((capacity, self.dim), dtype=np.float32)
        ids = np.zeros(capacity, dtype=np.int64)
        keys[:n], ids[:n] = self._keys[:n], self._ids[:n]
        self._keys, self._ids = keys, ids


class IVFIndex:
    """faiss ``IndexIVFFlat`` with a hash-table direct map (so a delete is O(list), not O(n)).

    The coarse quantiser is trained once, on the keys it starts with (the
    cache's own contents when it outgrows exact search), with
    ``IVF_POINTS_PER_LIST`` keys per list and at most ``IVF_MAX_LISTS`` lists.
    It is not retrained as the cache grows: a rebuild would stall the request
    path for seconds, and at the sizes a 64 MiB cache reaches (~10^5 keys) the
    lists stay short enough (printed by ``benchmarks/bench_cache.py``).
    """

    def __init__(self, dim: int, training: np.ndarray, nprobe: int = IVF_NPROBE) -> None:
        single_threaded()
        n = len(training)
        if n < 2 * IVF_POINTS_PER_LIST:
            raise ConfigError(f"IVF needs >= {2 * IVF_POINTS_PER_LIST} training keys, got {n}")
        self.dim = dim
        self.nlist = max(2, min(IVF_MAX_LISTS, n // IVF_POINTS_PER_LIST))
        self._index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, self.nlist)
        self._index.cp.min_points_per_centroid = IVF_POINTS_PER_LIST // 2  # quiet, on purpose
        self._index.train(np.ascontiguousarray(training, dtype=np.float32))
        self._index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        self._index.nprobe = min(nprobe, self.nlist)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, key_id: int, key: np.ndarray) -> None:
        self._index.add_with_ids(key.reshape(1, -1), np.array([key_id], dtype=np.int64))
        self._n += 1

    def add_many(self, ids: np.ndarray, keys: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(keys), ids.astype(np.int64))
        self._n += len(ids)

    def remove(self, key_id: int) -> None:
        removed = self._index.remove_ids(np.array([key_id], dtype=np.int64))  # type: ignore[arg-type]
        self._n -= int(removed)

    def search(self, key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._n == 0 or k < 1:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        dist, ids = self._index.search(key.reshape(1, -1), min(k, self._n))
        keep = ids[0] >= 0  # faiss pads with -1 when the probed lists hold fewer than k
        return ids[0][keep].astype(np.int64), dist[0][keep]

    def nbytes(self) -> int:
        """An upper bound: faiss allocates inside C++, out of our sight."""
        per_key = (self.dim * 4 + 8) * IVF_SLACK + IVF_OVERHEAD_BYTES
        return self._n * per_key + self.nlist * self.dim * 4

    def bytes_per_key(self) -> int:
        return (self.dim * 4 + 8) * IVF_SLACK + IVF_OVERHEAD_BYTES


class AdaptiveIndex:
    """Exact search while small, IVF once it holds more than ``ann_above`` keys.

    It does not move back when it shrinks: retraining on every swing would
    cost more than the few microseconds IVF costs over exact at small sizes.
    """

    def __init__(self, dim: int, ann_above: int = ANN_ABOVE, nprobe: int = IVF_NPROBE) -> None:
        if ann_above < MIN_ANN_ABOVE:
            raise ConfigError(f"ann_above must be >= {MIN_ANN_ABOVE} (IVF's training keys)")
        self.dim = dim
        self.ann_above = ann_above
        self.nprobe = nprobe
        self._index: ExactIndex | IVFIndex = ExactIndex(dim, capacity=0)  # the owner reserves

    @property
    def kind(self) -> str:
        return "exact" if isinstance(self._index, ExactIndex) else "ivf"

    def __len__(self) -> int:
        return len(self._index)

    def add(self, key_id: int, key: np.ndarray) -> None:
        self._index.add(key_id, key)
        exact = self._index
        if isinstance(exact, ExactIndex) and len(exact) > self.ann_above:
            ids, keys = exact.keys()
            ivf = IVFIndex(self.dim, keys, self.nprobe)
            ivf.add_many(ids, keys)
            self._index = ivf

    def remove(self, key_id: int) -> None:
        self._index.remove(key_id)

    def search(self, key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(key, k)

    def reserve(self, capacity: int) -> None:
        """Rows the exact buffer holds (IVF allocates per key: nothing to reserve)."""
        if isinstance(self._index, ExactIndex):
            self._index.reserve(capacity)

    def bytes_for(self, capacity: int) -> int:
        """What the index would allocate for ``capacity`` keys (for the owner's budget):
        the exact buffer's rows, or IVF's per-key bound; the switch to IVF is
        charged from the moment it could happen."""
        exact = ExactIndex.row_bytes_for(self.dim)
        ivf = (self.dim * 4 + 8) * IVF_SLACK + IVF_OVERHEAD_BYTES
        ivf_now = self.kind == "ivf" or capacity > self.ann_above  # IVF never moves back
        per_key = max(exact, ivf) if ivf_now else exact
        centroids = IVF_MAX_LISTS * self.dim * 4 if ivf_now else 0
        return capacity * per_key + centroids

    def nbytes(self) -> int:
        return self._index.nbytes()
