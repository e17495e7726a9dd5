"""Miss overhead of the edge's semantic cache, beside the tail it could save.

A miss costs the edge one key, one lookup and one insert on top of the tail
it runs anyway. Targets (issue "Computational reuse"): lookup + insert <= 0.2 ms
at 10^4 entries and <= 0.5 ms at 10^5. Printed side by side in one run: the
median and p95 of (key + lookup + insert) per miss for exact search and for
IVF at each size, and the median time of the tail blocks the edge runs at
batch 1 (``fmnist-resnet`` from cut 1, untrained weights: time does not
depend on them). Keys are pooled cut-1 features of random smooth images plus
noise, so the index holds realistically clustered keys.

    python benchmarks/bench_cache.py [--sizes 1000 10000 100000] [--misses 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np
import torch
from torch.nn import functional as F

from collabinfer.cache.index import ANN_ABOVE, MIN_ANN_ABOVE
from collabinfer.cache.keys import PooledKey
from collabinfer.cache.rule import HitRule
from collabinfer.cache.semantic import Namespace, SemanticCache
from collabinfer.model.zoo import create_model

CUT = 1
RULE = HitRule(3, 0.01, 0.9)


def smooth_images(n: int, g: torch.Generator) -> torch.Tensor:
    low = torch.rand(n, 1, 7, 7, generator=g)
    return F.interpolate(low, size=28, mode="bilinear", align_corners=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--misses", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    net = create_model("fmnist-resnet").eval()
    key = PooledKey(2)
    with torch.inference_mode():
        base = net.run_until(smooth_images(2000, g), CUT)
        keys = np.stack([key(base[i : i + 1]) for i in range(len(base))])
        z = base[:1]
        tail = [0.0] * 200
        for i in range(len(tail)):
            t0 = time.perf_counter()
            net.run_from(z, CUT)
            tail[i] = (time.perf_counter() - t0) * 1e3
    tail_ms = statistics.median(tail[20:])
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(10).astype(np.float32)
    print(f"key {key.version}: {keys.shape[1]} dims; tail (blocks {CUT}..) {tail_ms:.3f} ms")
    print(f"{'index':>6} {'entries':>8} {'median ms':>10} {'p95 ms':>8} {'vs tail':>8}")
    for size in args.sizes:
        for kind in ("exact", "ivf"):
            # IVF as the cache runs it: switched to at ANN_ABOVE keys (or just below a
            # smaller size), trained then, and grown without retraining
            ann_above = 10**9 if kind == "exact" else max(MIN_ANN_ABOVE, min(ANN_ABOVE, size - 1))
            cache = SemanticCache(1 << 31, ann_above=ann_above)
            ns = Namespace("fmnist-resnet", "bench", CUT, key.version)

            def noisy(i: int) -> np.ndarray:
                v = keys[i % len(keys)] + rng.normal(0, 0.02, keys.shape[1]).astype(np.float32)
                return v / np.linalg.norm(v)

            for i in range(size):
                cache.insert(ns, noisy(i), logits, 1.0)
            if cache.stats().index[str(ns)] != kind:
                raise SystemExit(f"expected a {kind} index at {size} entries")
            samples, parts = [], []
            for i in range(args.misses):
                z_i = base[i % len(base) : i % len(base) + 1]
                t0 = time.perf_counter()
                k = key(z_i)
                t1 = time.perf_counter()
                hit, ticket = cache.probe(ns, -k, RULE)  # the opposite key: a miss
                t2 = time.perf_counter()
                if hit is None:  # as the engine does: the probe's ticket spares a search
                    cache.insert(ns, -k, logits, 1.0, ticket)
                t3 = time.perf_counter()
                samples.append((t3 - t0) * 1e3)
                parts.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
            med = statistics.median(samples)
            p95 = sorted(samples)[int(0.95 * len(samples))]
            k_ms, l_ms, i_ms = (statistics.median(p[j] for p in parts) for j in range(3))
            print(
                f"{kind:>6} {size:>8,} {med:>10.3f} {p95:>8.3f} {med / tail_ms:>7.1%}"
                f"   (key {k_ms:.3f}, lookup {l_ms:.3f}, insert {i_ms:.3f})"
            )


if __name__ == "__main__":
    main()
