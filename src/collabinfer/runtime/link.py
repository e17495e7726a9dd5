"""The wire between tiers, simulated on a virtual clock.

A :class:`Link` answers one question: how long does sending ``nbytes`` take if
it starts at virtual time ``start_s``? Keeping the interface that small lets the
runtime be tested with :class:`collabinfer.testing.links.MockLink`, simulated with
:class:`SimulatedLink`, and later run unchanged over a real transport.

Packets and profiles (:class:`~collabinfer.topology.links.LinkProfile`,
:func:`~collabinfer.topology.links.wire_bytes`) live in
:mod:`collabinfer.topology.links`, shared with the planner and the estimator.

    >>> from collabinfer.topology.links import get_profile
    >>> link = SimulatedLink(get_profile("lte"))
    >>> round(link.transfer(100_000, start_s=0.0), 4)
    0.1655
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from collabinfer.errors import ConfigError
from collabinfer.topology.links import (
    LinkProfile,
    check_finite,
    check_nbytes,
    packet_count,
    wire_bytes,
)

__all__ = ["BandwidthTrace", "Link", "SimulatedLink", "synthetic_trace"]


@dataclass(frozen=True)
class BandwidthTrace:
    """Piecewise-constant bandwidth, repeating with period ``period_s``.

    Segment ``i`` runs from ``times_s[i]`` to ``times_s[i+1]`` (the last one to
    ``period_s``) at ``mbps[i]``. The period is explicit because the last
    segment's length cannot be inferred from start times alone.
    """

    times_s: tuple[float, ...]
    mbps: tuple[float, ...]
    period_s: float

    def __post_init__(self) -> None:
        times = tuple(float(t) for t in self.times_s)
        rates = tuple(float(r) for r in self.mbps)
        object.__setattr__(self, "times_s", times)  # accept lists / numpy arrays
        object.__setattr__(self, "mbps", rates)
        if not times or len(times) != len(rates):
            raise ConfigError(f"trace needs equal, non-zero lengths: {len(times)} vs {len(rates)}")
        if times[0] != 0.0:
            raise ConfigError(f"trace must start at time 0.0, got {times[0]}")
        for i, (a, b) in enumerate(itertools.pairwise(times)):
            if not b > a or not math.isfinite(b):
                raise ConfigError(f"trace times must strictly increase: {a} then {b}", index=i + 1)
        for i, r in enumerate(rates):
            if not (math.isfinite(r) and r > 0):
                raise ConfigError(f"trace bandwidth must be finite and > 0, got {r}", index=i)
        period = check_finite(self.period_s, "period_s", low=times[-1], strict=True)
        object.__setattr__(self, "period_s", period)

    @cached_property
    def _cum_bits(self) -> list[float]:
        """Bits delivered from 0 to each segment start, plus the whole period."""
        cum = [0.0]
        ends = (*self.times_s[1:], self.period_s)
        for start, end, rate in zip(self.times_s, ends, self.mbps, strict=True):
            cum.append(cum[-1] + rate * 1e6 * (end - start))
        return cum

    def _segment(self, t_s: float) -> tuple[int, float, float]:
        """(segment index, offset into period, whole periods before t)."""
        q = math.floor(t_s / self.period_s)
        r = t_s - q * self.period_s
        if r >= self.period_s:  # float rounding at an exact multiple
            q, r = q + 1, 0.0
        return bisect.bisect_right(self.times_s, r) - 1, r, float(q)

    def at(self, t_s: float) -> float:
        """Bandwidth (Mbit/s) in force at time ``t_s``."""
        i, _, _ = self._segment(check_finite(t_s, "time", low=0.0, strict=False))
        return self.mbps[i]

    def mean_mbps(self) -> float:
        """Time-weighted mean over one period."""
        return self._cum_bits[-1] / self.period_s / 1e6

    def _bits_until(self, t_s: float) -> float:
        i, r, q = self._segment(t_s)
        within = self.mbps[i] * 1e6 * (r - self.times_s[i])
        return q * self._cum_bits[-1] + self._cum_bits[i] + within

    def transfer_seconds(self, nbits: float, start_s: float) -> float:
        """Exact time to deliver ``nbits`` starting at ``start_s``, in O(log n).

        Inverts the cumulative-bits function instead of walking segments, so a
        transfer spanning thousands of segments (or periods) costs one bisect.
        """
        start = check_finite(start_s, "start_s", low=0.0, strict=False)
        if check_finite(nbits, "nbits", low=0.0, strict=False) == 0.0:
            return 0.0
        per_period = self._cum_bits[-1]
        target = self._bits_until(start) + nbits
        q = math.floor(target / per_period)
        rem = target - q * per_period
        if rem < 0.0:
            q, rem = q - 1, rem + per_period
        elif rem >= per_period:
            q, rem = q + 1, rem - per_period
        i = min(bisect.bisect_right(self._cum_bits, rem) - 1, len(self.mbps) - 1)
        end = q * self.period_s + self.times_s[i] + (rem - self._cum_bits[i]) / (self.mbps[i] * 1e6)
        return max(0.0, end - start)

    def to_csv(self, path: str | Path) -> None:
        """Write ``time_s,mbps`` rows; a last row ``<period_s>,`` marks the end."""
        with open(path, "w", newline="") as f:
            f.write("time_s,mbps\n")
            for t, r in zip(self.times_s, self.mbps, strict=True):
                f.write(f"{t!r},{r!r}\n")
            f.write(f"{self.period_s!r},\n")

    @classmethod
    def from_csv(cls, path: str | Path) -> BandwidthTrace:
        """Read a trace written by :meth:`to_csv` or a measured ``time_s,mbps`` log.

        Without the end row, the last segment lasts as long as the one before it
        (measured logs are sampled uniformly), or 1 s for a one-row file.
        """
        try:
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
        except OSError as e:
            raise ConfigError(f"cannot read trace: {e}", path=str(path)) from None
        if not rows or [c.strip() for c in rows[0]] != ["time_s", "mbps"]:
            raise ConfigError("trace CSV must start with 'time_s,mbps'", path=str(path), line=1)
        times: list[float] = []
        rates: list[float] = []
        period: float | None = None
        for lineno, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            where = {"path": str(path), "line": lineno}
            if period is not None:
                raise ConfigError("rows after the end row (a time with empty mbps)", **where)
            if len(row) != 2:
                raise ConfigError(f"expected 2 columns, got {len(row)}: {row!r}", **where)
            try:
                t = float(row[0])
                r = float(row[1]) if row[1].strip() else None
            except ValueError:
                raise ConfigError(f"not a number in {row!r}", **where) from None
            if not math.isfinite(t) or (times and t <= times[-1]) or (not times and t != 0.0):
                raise ConfigError(f"time {t} must be finite, start at 0 and increase", **where)
            if r is None:
                period = t
                continue
            if not (math.isfinite(r) and r > 0):
                raise ConfigError(f"mbps must be finite and > 0, got {r}", **where)
            times.append(t)
            rates.append(r)
        if not times:
            raise ConfigError("trace CSV has no data rows", path=str(path))
        if period is None:
            period = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1.0)
        return cls(tuple(times), tuple(rates), period)


def synthetic_trace(
    mean_mbps: float,
    duration_s: float,
    seed: int,
    step_s: float = 0.5,
    volatility: float = 0.5,
    dip_prob: float = 0.03,
    dip_factor: float = 0.15,
    corr_time_s: float = 5.0,
) -> BandwidthTrace:
    """Seeded fluctuating bandwidth, one segment every ``step_s`` for ``duration_s``.

    Model: log-bandwidth ``x`` is a stationary AR(1) (discrete Gauss-Markov)
    process, ``x[k+1] = phi * x[k] + volatility * sqrt(1 - phi^2) * eps``, with
    ``phi = exp(-step_s / corr_time_s)`` and ``x[0] ~ N(0, volatility^2)``, so its
    stationary std is ``volatility`` whatever the step. Each segment starts a
    dip with probability ``dip_prob``: it and the next 1-5 segments (uniform) are
    multiplied by ``dip_factor`` (handover, shadowing). Finally the trace is
    scaled so its time-weighted mean is exactly ``mean_mbps``.
    """
    mean = check_finite(mean_mbps, "mean_mbps", low=0.0, strict=True)
    duration = check_finite(duration_s, "duration_s", low=0.0, strict=True)
    step = check_finite(step_s, "step_s", low=0.0, strict=True)
    vol = check_finite(volatility, "volatility", low=0.0, strict=False)
    tau = check_finite(corr_time_s, "corr_time_s", low=0.0, strict=True)
    if not 0.0 <= dip_prob <= 1.0:
        raise ConfigError(f"dip_prob must be in [0, 1], got {dip_prob!r}")
    if not 0.0 < dip_factor <= 1.0:
        raise ConfigError(f"dip_factor must be in (0, 1], got {dip_factor!r}")
    n = max(1, math.ceil(duration / step - 1e-9))
    rng = np.random.default_rng(seed)
    phi = math.exp(-step / tau)
    eps = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = vol * eps[0]
    for k in range(1, n):
        x[k] = phi * x[k - 1] + vol * math.sqrt(1.0 - phi * phi) * eps[k]
    dipped = np.zeros(n, dtype=bool)
    starts = rng.random(n) < dip_prob
    lengths = rng.integers(2, 7, size=n)
    for j in np.flatnonzero(starts):
        dipped[j : j + lengths[j]] = True
    rate = np.exp(x) * np.where(dipped, dip_factor, 1.0)
    times = np.arange(n) * step
    durations = np.diff(np.append(times, duration))
    rate *= mean / (float(rate @ durations) / duration)
    return BandwidthTrace(tuple(times.tolist()), tuple(rate.tolist()), duration)


@runtime_checkable
class Link(Protocol):
    """Anything that can say how long a one-way transfer takes."""

    @property
    def profile(self) -> LinkProfile: ...

    def transfer(self, nbytes: int, start_s: float) -> float:
        """One-way duration (s) of sending ``nbytes`` starting at ``start_s``."""
        ...


class SimulatedLink:
    """A seeded simulated link: delay + serialisation + retransmissions.

    ``duration = max(0, rtt/2 + jitter) + serialisation + losses * rtt`` where
    serialisation integrates the trace (or the constant profile rate) over all
    wire bits: the original ones first, then per loss one full packet (or the
    whole message, if smaller). Losses are
    stop-and-wait: each lost packet stalls the sender one RTT and is resent until
    delivered, so ``losses ~ NegativeBinomial(packets, 1 - loss)`` with mean
    ``packets * loss / (1 - loss)``. That is pessimistic next to windowed TCP but
    analytic, which the tests and planners rely on. Every call draws the same
    random numbers whether or not jitter/loss are zero, so the same seed and
    call sequence give the same durations.
    """

    def __init__(self, profile: LinkProfile, trace: BandwidthTrace | None = None, seed: int = 0):
        self._profile = profile
        self._trace = trace
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @property
    def trace(self) -> BandwidthTrace | None:
        return self._trace

    def reset(self) -> None:
        """Re-seed, so the next calls repeat the durations from construction."""
        self._rng = np.random.default_rng(self._seed)

    def bandwidth_at(self, t_s: float) -> float:
        """Link rate (Mbit/s) in force at ``t_s``."""
        if self._trace is None:
            check_finite(t_s, "time", low=0.0, strict=False)
            return self._profile.bandwidth_mbps
        return self._trace.at(t_s)

    def _serialise(self, nbits: float, t_s: float) -> float:
        if self._trace is None:
            return nbits / (self._profile.bandwidth_mbps * 1e6)
        return self._trace.transfer_seconds(nbits, t_s)

    def transfer(self, nbytes: int, start_s: float) -> float:
        """One-way duration (s) of ``nbytes`` sent at ``start_s``; see the class doc."""
        n = check_nbytes(nbytes)
        start = check_finite(start_s, "start_s", low=0.0, strict=False)
        p = self._profile
        packets = packet_count(n, p.mtu_bytes)
        bits = 8.0 * wire_bytes(n, p.mtu_bytes)
        delay = max(0.0, (p.rtt_ms / 2 + p.jitter_ms * self._rng.standard_normal()) / 1e3)
        losses = int(self._rng.negative_binomial(packets, 1.0 - p.loss))
        t = start + self._serialise(bits, start)
        resend_bits = 8.0 * min(p.mtu_bytes, bits / 8)
        if self._trace is None:
            t += losses * (p.rtt_ms / 1e3 + self._serialise(resend_bits, t))
        else:
            for _ in range(losses):
                t += p.rtt_ms / 1e3
                t += self._serialise(resend_bits, t)
        return (t - start) + delay
