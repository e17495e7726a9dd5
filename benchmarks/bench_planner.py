"""Re-plan time: how long one Planner.plan() takes for a 50-block model.

The policy re-plans for every input, so a plan must cost far less than a
block. Target: <= 1 ms for 50 blocks and three tiers (device, edge, cloud).
Also prints the exhaustive search time for the same problem, side by side,
as the ratio the DP buys.

    python benchmarks/bench_planner.py [--blocks 50] [--repeats 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from collabinfer.plan.planner import Planner, exhaustive_plan
from collabinfer.topology.links import PROFILES
from collabinfer.topology.tiers import TierSpec
from plan.helpers import random_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    profile = random_profile(args.blocks, seed=0)
    tiers = [TierSpec("device", 100.0), TierSpec("edge", 1.0), TierSpec("cloud", 0.5)]
    planner = Planner(profile, tiers, min_device_blocks=1)
    rng = random.Random(0)
    base = [PROFILES["lte"], PROFILES["wan"]]
    links = []
    for _ in range(args.repeats):  # a different bandwidth estimate every call, as in use
        a = base[0].__class__(**{**base[0].__dict__, "bandwidth_mbps": rng.uniform(0.5, 20)})
        links.append([a, base[1]])
    for ls in links[:50]:
        planner.plan(ls)
    samples = []
    for ls in links:
        t0 = time.perf_counter()
        planner.plan(ls)
        samples.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(samples)
    p95 = sorted(samples)[int(0.95 * len(samples))]
    t0 = time.perf_counter()
    ex = exhaustive_plan(profile, tiers, links[0], min_device_blocks=1)
    ex_ms = (time.perf_counter() - t0) * 1e3
    dp = planner.plan(links[0])
    same = abs(dp.cost.latency_ms - ex.cost.latency_ms) < 1e-6
    print(
        f"re-plan, {args.blocks} blocks, 3 tiers, {len(planner.codec_names)} codecs: "
        f"median {med:.3f} ms, p95 {p95:.3f} ms over {args.repeats} calls (target <= 1 ms)"
    )
    print(
        f"exhaustive search, same problem: {ex_ms:.0f} ms; DP/exhaustive time ratio "
        f"{med / ex_ms:.2e}; same optimum: {same}"
    )


if __name__ == "__main__":
    main()
