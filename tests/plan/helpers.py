"""Random profiles for planner tests (no model, no codec needed)."""

from __future__ import annotations

import random

from collabinfer.plan.profile import BlockProfile, CodecCost, CutProfile, Profile


def random_profile(
    n: int, seed: int, codecs: tuple[str, ...] = ("fp32", "fp16", "int8")
) -> Profile:
    rng = random.Random(seed)
    blocks = tuple(
        BlockProfile(
            i, f"b{i}", rng.randint(1, 10**6), rng.randint(0, 1000), (4,), rng.uniform(0.01, 5.0)
        )
        for i in range(n)
    )
    cuts = []
    for k in range(n + 1):
        # some cuts lack some codecs, as the input cut does in real profiles
        names = [c for c in codecs if rng.random() > 0.2] or [codecs[0]]
        cuts.append(
            CutProfile(
                k,
                f"c{k}",
                (4,),
                {
                    c: CodecCost(
                        rng.randint(1, 200_000),
                        rng.randint(20, 120),
                        rng.uniform(0.0, 0.5),
                        rng.uniform(0.0, 0.5),
                    )
                    for c in names
                },
            )
        )
    return Profile("random", blocks, tuple(cuts), 1, "synthetic")
