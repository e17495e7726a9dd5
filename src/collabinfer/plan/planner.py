"""The planner: latency- (or energy-) optimal cuts and codecs for a chain of tiers.

Neurosurgeon (Kang et al., 2017) picks one cut by trying each; with a chain of
``m`` tiers, relays and a codec per transfer the search space grows as
``n^(m-1) * C^(m-1)``. :class:`Planner` solves it exactly with a dynamic
programme over "tier ``r`` holds the tensor at cut ``k``" in
``O(m^2 * n * C)`` numpy work, so the policy can re-plan for every input
(``benchmarks/bench_planner.py``: ~0.1 ms for 50 blocks and 3 tiers). The cost
it minimises is :func:`collabinfer.plan.cost.evaluate_plan`; :func:`exhaustive_plan`
enumerates every plan with that function and is what the tests compare against.

Example::

    >>> planner = Planner(profile, tiers)                       # doctest: +SKIP
    >>> plan = planner.plan([PROFILES["lte"], PROFILES["wan"]])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from collabinfer.errors import ConfigError, PlanError
from collabinfer.plan.cost import (
    OBJECTIVES,
    REPLY_BYTES,
    Plan,
    PowerModel,
    evaluate_plan,
    serialisation_ms,
    transfers,
)
from collabinfer.plan.profile import Profile
from collabinfer.topology.links import HEADER_BYTES, LinkProfile
from collabinfer.topology.tiers import TierSpec, check_tiers

INF = math.inf

PrivacyMap = Mapping[tuple[int, str], float]
"""The strongest inversion attacker's SSIM per (cut, codec) the device may send,
from the privacy assessment (``experiments.privacy_schema.privacy_bounds``)."""


def private_sends(
    profile: Profile, privacy: PrivacyMap | None, max_ssim: float | None
) -> set[tuple[int, str]] | None:
    """The (cut, codec) pairs the device may send under a privacy bound; ``None``: no bound.

    A pair the assessment did not score is not allowed: an unmeasured send is
    not known to be private. Nothing is sent at the last cut, so it needs no entry.
    """
    if max_ssim is None:
        return None
    if privacy is None:
        raise ConfigError(
            "a privacy bound (max_ssim) needs the assessment's SSIM per cut and codec"
        )
    return {
        (k, c)
        for k, cut in enumerate(profile.cuts)
        for c in cut.codecs
        if privacy.get((k, c), INF) <= max_ssim
    }


class Planner:
    """Precomputes what does not depend on the link, then plans in microseconds."""

    def __init__(
        self,
        profile: Profile,
        tiers: Sequence[TierSpec],
        codecs: Sequence[str] | None = None,
        objective: str = "latency",
        power: PowerModel | None = None,
        min_device_blocks: int = 0,
        privacy: PrivacyMap | None = None,
        max_ssim: float | None = None,
    ) -> None:
        """``max_ssim``: the privacy bound, the largest SSIM the strongest attacker may
        reach on what the device sends (``privacy`` per cut and codec); it replaces the
        blunt ``min_device_blocks`` where an assessment exists, and both may be set."""
        check_tiers(tiers)
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES)}")
        n = profile.num_blocks
        if not 0 <= min_device_blocks <= n:
            raise ConfigError(f"min_device_blocks must be in 0..{n}, got {min_device_blocks}")
        self.profile = profile
        self.tiers = tuple(tiers)
        self.objective = objective
        self.power = power or PowerModel()
        self.min_device_blocks = min_device_blocks
        names = sorted({c for cut in profile.cuts for c in cut.codecs})
        if codecs is not None:
            unknown = set(codecs) - set(names)
            if unknown:
                raise ConfigError(f"codecs {sorted(unknown)} are not in the profile ({names})")
            names = [c for c in names if c in set(codecs)]
        if not names:
            raise ConfigError("no codec left to plan with")
        self.codec_names = tuple(names)
        self.n = n
        self.prefix = np.concatenate([[0.0], np.cumsum([b.time_ms for b in profile.blocks])])
        shape = (n + 1, len(names))
        self.wire = np.full(shape, INF)
        self.enc = np.full(shape, INF)
        self.dec = np.full(shape, INF)
        for k, cut in enumerate(profile.cuts):
            for j, name in enumerate(names):
                cost = cut.codecs.get(name)
                if cost is not None:
                    self.wire[k, j] = cost.wire_bytes
                    self.enc[k, j] = cost.encode_ms
                    self.dec[k, j] = cost.decode_ms
        # Objective weights (see cost.py): compute/codec work on each tier, and per link
        # the weight of its RTT and of its serialisation time.
        m = len(tiers)
        if objective == "latency":
            self.alpha = np.ones(m)
            self.beta_rtt = 1.0
            self.beta_ser = np.ones(m - 1)
        else:
            p = self.power
            self.alpha = np.full(m, p.idle_w)
            self.alpha[0] = p.compute_w
            self.beta_rtt = p.idle_w
            self.beta_ser = np.full(m - 1, p.idle_w)
            if m > 1:
                self.beta_ser[0] = p.tx_w
        self.speed = np.array([t.speed_factor for t in tiers])
        # what the device may send: INF where the privacy bound forbids (cut, codec)
        self.device_send = np.zeros(shape)
        allowed = private_sends(profile, privacy, max_ssim)
        if allowed is not None:
            for k in range(n + 1):
                for j, name in enumerate(names):
                    if (k, name) not in allowed:
                        self.device_send[k, j] = INF

    def _ser_ms(self, link: LinkProfile) -> np.ndarray:
        """Serialisation ms of every (cut, codec) payload on ``link``, as serialisation_ms."""
        per_packet = link.mtu_bytes - HEADER_BYTES
        with np.errstate(invalid="ignore"):
            packets = np.maximum(1.0, np.ceil(self.wire / per_packet))
        return 8.0 * (self.wire + HEADER_BYTES * packets) / (link.bandwidth_mbps * 1e3)

    def plan(self, links: Sequence[LinkProfile]) -> Plan:
        """The optimal plan for these link conditions (one per adjacent tier pair)."""
        m, n = len(self.tiers), self.n
        if len(links) != m - 1:
            raise ConfigError(f"{m} tiers need {m - 1} links, got {len(links)}")
        w = self.alpha * self.speed  # weight of one ms of measured work on each tier
        P = self.prefix
        # E[a][k]: best cost with tier a having computed up to cut k (and about to send).
        E = np.full((m, n + 1), INF)
        S = np.full((m, n + 1), INF)  # S[r][k]: tier r has received+decoded cut k
        src = np.full((m, n + 1), -1, dtype=np.int64)
        src_codec = np.full((m, n + 1), -1, dtype=np.int64)
        E[0] = w[0] * P
        E[0, : self.min_device_blocks] = INF
        for r in range(1, m):
            for a in range(r):
                # cost of transferring cut k with codec c from a to r, shape (n+1, C);
                # reply serialisation is charged at the RTT's (idle) weight
                fixed = (
                    sum(
                        links[h].rtt_ms + serialisation_ms(links[h], REPLY_BYTES)
                        for h in range(a, r)
                    )
                    * self.beta_rtt
                )
                ser = sum(self.beta_ser[h] * self._ser_ms(links[h]) for h in range(a, r))
                t_cost = w[a] * self.enc + fixed + ser + w[r] * self.dec
                if a == 0:
                    t_cost = t_cost + self.device_send
                best_c = np.argmin(t_cost, axis=1)
                cand = E[a] + t_cost[np.arange(n + 1), best_c]
                cand[n] = INF  # receiving the finished output is pointless
                better = cand < S[r]
                S[r] = np.where(better, cand, S[r])
                src[r] = np.where(better, a, src[r])
                src_codec[r] = np.where(better, best_c, src_codec[r])
            # tier r runs at least one block: E[r][k'] = min_{k<k'} S[r][k] - wP[k] + wP[k']
            shifted = S[r] - w[r] * P
            pm = np.minimum.accumulate(shifted)
            E[r, 1:] = pm[:-1] + w[r] * P[1:]
        final = E[:, n]
        last = int(np.argmin(final))
        if not np.isfinite(final[last]):
            raise PlanError("no feasible plan (is every cut missing a codec?)")
        # Backtrack: which tier ran which range, who sent to whom with which codec.
        boundaries = [0] * m + [n]
        for t in range(last + 1, m + 1):
            boundaries[t] = n
        codecs: list[str | None] = [None] * m
        tier, end = last, n
        while tier > 0:  # tier ran [start, end); boundaries[tier + 1] == end already
            start = int(np.argmin(S[tier, :end] - w[tier] * P[:end]))
            sender = int(src[tier, start])
            codecs[sender] = self.codec_names[int(src_codec[tier, start])]
            for t in range(sender + 1, tier + 1):  # relays between sender and tier hold nothing
                boundaries[t] = start
            tier, end = sender, start
        cost = evaluate_plan(self.profile, self.tiers, links, boundaries, codecs, self.power)
        return Plan(tuple(boundaries), tuple(codecs), self.objective, cost)


def exhaustive_plan(
    profile: Profile,
    tiers: Sequence[TierSpec],
    links: Sequence[LinkProfile],
    codecs: Sequence[str] | None = None,
    objective: str = "latency",
    power: PowerModel | None = None,
    min_device_blocks: int = 0,
    privacy: PrivacyMap | None = None,
    max_ssim: float | None = None,
) -> Plan:
    """Try every plan; exponential, for tests and small models only."""
    n, m = profile.num_blocks, len(tiers)
    allowed = private_sends(profile, privacy, max_ssim)
    best: Plan | None = None
    for inner in itertools.combinations_with_replacement(range(n + 1), m - 1):
        b = (0, *inner, n)
        if b[1] < min_device_blocks:
            continue
        moves = transfers(b)
        options = []
        for sender, _, cut in moves:
            names = [
                c
                for c in profile.cuts[cut].codecs
                if (codecs is None or c in codecs)
                and (allowed is None or sender != 0 or (cut, c) in allowed)
            ]
            options.append([(sender, c) for c in names])
        for combo in itertools.product(*options):
            chosen: list[str | None] = [None] * m
            for sender, c in combo:
                chosen[sender] = c
            cost = evaluate_plan(profile, tiers, links, b, chosen, power)
            if best is None or cost.objective(objective) < best.cost.objective(objective) - 1e-12:
                best = Plan(b, tuple(chosen), objective, cost)
    if best is None:
        raise PlanError("no feasible plan")
    return best
