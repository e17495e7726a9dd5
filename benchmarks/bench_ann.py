"""Which ANN library backs the cache: faiss-cpu, hnswlib and usearch, measured side by side.

What decides it for a cache (``cache/index.py``): query time at 10^4-10^5 keys,
insert time, recall@1 against exact search, and whether a delete really frees
the slot (a cache evicts all the time). Each library found is measured on the
same clustered unit keys (64 dims by default), one thread; a missing one is
reported as such. The project depends on faiss-cpu only; to measure the other
two: ``pip install hnswlib usearch`` (hnswlib compiles, about a minute).

    python benchmarks/bench_ann.py [--entries 10000 100000] [--dim 64] [--queries 500]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable

import numpy as np


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn: Callable[[int], object], n: int) -> float:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


class Faiss:
    name = "faiss-cpu IVFFlat (nprobe 16)"

    def __init__(self, keys: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        dim = keys.shape[1]
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, max(2, len(keys) // 40))
        self.index.train(keys)
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.index.nprobe = 16
        self.index.add_with_ids(keys, np.arange(len(keys), dtype=np.int64))

    def query(self, q: np.ndarray) -> int:
        return int(self.index.search(q[None], 1)[1][0, 0])

    def add(self, key_id: int, q: np.ndarray) -> None:
        self.index.add_with_ids(q[None], np.array([key_id], dtype=np.int64))

    def delete(self, key_id: int) -> bool:
        """True when the vector is gone (not merely hidden)."""
        before = self.index.ntotal
        self.index.remove_ids(np.array([key_id], dtype=np.int64))
        return bool(self.index.ntotal == before - 1)


class Hnswlib:
    name = "hnswlib HNSW (M 16, ef 64)"

    def __init__(self, keys: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="l2", dim=keys.shape[1])
        self.index.init_index(max_elements=len(keys) * 2, M=16, allow_replace_deleted=True)
        self.index.set_num_threads(1)
        self.index.add_items(keys, np.arange(len(keys)))
        self.index.set_ef(64)

    def query(self, q: np.ndarray) -> int:
        return int(self.index.knn_query(q[None], k=1)[0][0, 0])

    def add(self, key_id: int, q: np.ndarray) -> None:
        self.index.add_items(q[None], np.array([key_id]))

    def delete(self, key_id: int) -> bool:
        before = self.index.get_current_count()
        self.index.mark_deleted(key_id)
        return bool(self.index.get_current_count() == before - 1)  # a tombstone keeps it


class Usearch:
    name = "usearch HNSW"

    def __init__(self, keys: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(ndim=keys.shape[1], metric="l2sq")
        self.index.add(np.arange(len(keys)), keys, threads=1)

    def query(self, q: np.ndarray) -> int:
        return int(self.index.search(q, 1).keys[0])

    def add(self, key_id: int, q: np.ndarray) -> None:
        self.index.add(key_id, q)

    def delete(self, key_id: int) -> bool:
        before = len(self.index)
        self.index.remove(key_id)
        return bool(len(self.index) == before - 1)


LIBRARIES = {"faiss": Faiss, "hnswlib": Hnswlib, "usearch": Usearch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"{'library':<32} {'entries':>8} {'build s':>8} {'query ms':>9} {'insert ms':>10} "
        f"{'delete ms':>10} {'recall@1':>9} {'delete frees':>13}"
    )
    for n in args.entries:
        keys = clustered(n, args.dim, rng)
        probes = keys[rng.integers(0, n, args.queries)]
        probes = probes + 0.01 * rng.standard_normal(probes.shape).astype(np.float32)
        exact = np.argmin(((keys[None, :, :] - probes[:200, None, :]) ** 2).sum(-1), axis=1)
        fresh = clustered(args.queries, args.dim, rng)
        for short, cls in LIBRARIES.items():
            module = {"faiss": "faiss", "hnswlib": "hnswlib", "usearch": "usearch"}[short]
            try:
                importlib.import_module(module)
            except ImportError:
                print(f"{cls.name:<32} {n:>8,}  not installed (pip install {module})")
                continue
            t0 = time.perf_counter()
            lib = cls(keys)
            build_s = time.perf_counter() - t0
            q_ms = timed(lambda i, lib=lib, p=probes: lib.query(p[i]), args.queries)
            recall = float(np.mean([lib.query(probes[i]) == exact[i] for i in range(200)]))
            i_ms = timed(lambda i, lib=lib, n=n, f=fresh: lib.add(n + i, f[i]), args.queries)
            frees = [False]

            def delete(i: int, lib=lib, frees=frees) -> None:
                frees[0] = lib.delete(i)

            d_ms = timed(delete, args.queries)
            print(
                f"{cls.name:<32} {n:>8,} {build_s:>8.1f} {q_ms:>9.3f} {i_ms:>10.3f} "
                f"{d_ms:>10.3f} {recall:>9.1%} {'yes' if frees[0] else 'no':>13}"
            )


if __name__ == "__main__":
    main()
