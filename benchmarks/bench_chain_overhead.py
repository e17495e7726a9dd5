"""Chain overhead: the block-function chain vs a plain forward pass, batch 1.

Runs the same model on the same input both ways, interleaved, in-process, no
link (one tier, everything local), and prints the ratio of medians. Target:
<= 1.05x. The chain's extra work per block is the policy call, two clock reads
and one trace entry.

    python benchmarks/bench_chain_overhead.py [--model fmnist-resnet] [--repeats 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from collabinfer.model.zoo import create_model
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.profile import profile_model
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.policy import StaticPolicy
from collabinfer.topology.tiers import TierSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-resnet")
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = create_model(args.model).eval()
    prof = profile_model(net, args.model, repeats=5)
    tiers = [TierSpec("device", 1.0)]
    n = net.num_blocks
    plan = Plan((0, n), (None,), "latency", evaluate_plan(prof, tiers, [], (0, n), (None,)))
    chain = Chain(net, tiers, [], StaticPolicy(plan))
    x = torch.rand(1, *net.input_shape)  # type: ignore[misc]

    def plain() -> None:
        with torch.inference_mode():
            net(x)

    def chained() -> None:
        chain.run(x)

    for _ in range(50):
        plain()
        chained()
    a, b = [], []
    for _ in range(args.repeats):  # interleave so drift hits both equally
        t0 = time.perf_counter()
        plain()
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        chained()
        b.append(time.perf_counter() - t0)
    ma, mb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
    print(f"{args.model}, batch 1, {args.threads} thread(s), {args.repeats} interleaved repeats")
    print(
        f"plain forward median {ma:.3f} ms; chain median {mb:.3f} ms; "
        f"ratio {mb / ma:.3f}x (target <= 1.05x); overhead {1e3 * (mb - ma) / n:.1f} us per block"
    )


if __name__ == "__main__":
    main()
