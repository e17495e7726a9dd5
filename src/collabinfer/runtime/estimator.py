"""What the device believes about its link, learned from its own transfers.

A planner that picks a split point needs bandwidth and RTT *now*, not the
nominal profile. The device only sees how long its own transfers took, so
:class:`LinkEstimator` turns those durations into an EWMA estimate and hands
back a :class:`~collabinfer.runtime.link.LinkProfile` the planner already
understands.

    >>> from collabinfer.runtime.link import get_profile
    >>> est = LinkEstimator(get_profile("lte"))
    >>> est.observe(100_000, 0.5)   # slower than 5.85 Mbit/s would allow
    >>> est.bandwidth_mbps < 5.85
    True
"""

from __future__ import annotations

import dataclasses
import math

from collabinfer.errors import ConfigError
from collabinfer.topology.links import LinkProfile, check_nbytes, packet_count, wire_bytes

__all__ = ["LinkEstimator"]


class LinkEstimator:
    """EWMA estimate of link rate and RTT from observed one-way transfers.

    ``alpha=0.3`` weighs the newest sample 0.3, so a step change is ~88 % absorbed
    after ~6 transfers and 66 % after 3, while one outlier moves the estimate by
    only 30 % of its error: reactive enough to follow a handover, smooth enough
    to ignore a single jittery transfer.

    Bandwidth samples count header bytes (:func:`wire_bytes` with the initial
    profile's MTU), so the estimate is a link rate in the same units as
    ``LinkProfile.bandwidth_mbps`` and :meth:`estimate` can be fed straight back
    into a :class:`~collabinfer.runtime.link.SimulatedLink` or a planner.

    Staleness: a device that stopped offloading after a dip gets no new samples,
    so a pessimistic estimate would keep it local forever. With ``recovery_s``
    set and times passed to :meth:`observe` and :meth:`estimate`, an estimate
    nobody refreshed relaxes (in log-bandwidth) toward the nominal profile with
    that time constant, so the device tries the link again. The price is one
    slow input per recovery while the link is still bad.
    """

    def __init__(
        self,
        initial: LinkProfile,
        alpha: float = 0.3,
        min_packets: int = 2,
        recovery_s: float = 0.0,
    ) -> None:
        if not (0.0 < alpha <= 1.0):
            raise ConfigError(f"alpha must be in (0, 1], got {alpha!r}")
        if isinstance(min_packets, bool) or not isinstance(min_packets, int) or min_packets < 1:
            raise ConfigError(f"min_packets must be an int >= 1, got {min_packets!r}")
        self._initial = initial
        self._alpha = float(alpha)
        self._min_packets = min_packets
        self._bps = initial.bandwidth_mbps * 1e6
        self._rtt_s = initial.rtt_ms / 1e3
        self._samples = 0
        if not (math.isfinite(recovery_s) and recovery_s >= 0):
            raise ConfigError(f"recovery_s must be finite and >= 0, got {recovery_s!r}")
        self._recovery_s = float(recovery_s)
        self._last_sample_s: float | None = None

    @property
    def bandwidth_mbps(self) -> float:
        return self._bps / 1e6

    @property
    def rtt_ms(self) -> float:
        return self._rtt_s * 1e3

    @property
    def samples(self) -> int:
        """Observations folded in so far (bandwidth and RTT-only alike)."""
        return self._samples

    def _ewma(self, old: float, sample: float) -> float:
        return (1.0 - self._alpha) * old + self._alpha * sample

    def observe(self, nbytes: int, seconds: float, at_s: float | None = None) -> None:
        """Fold in one transfer of ``nbytes`` that took ``seconds`` one way.

        Transfers smaller than ``min_packets`` packets are all delay and say
        nothing about bandwidth, so they only update the RTT (sample
        ``2 * seconds``, slightly high by their tiny serialisation time). Larger
        ones give ``wire_bits / (seconds - rtt/2)``. If a transfer finished within
        the estimated one-way delay, that delay estimate is what is wrong, so it
        too is used as an RTT sample rather than dividing by ~0.
        """
        nbytes = check_nbytes(nbytes)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"seconds must be finite and > 0, got {seconds!r}")
        mtu = self._initial.mtu_bytes
        serial_s = seconds - self._rtt_s / 2
        if packet_count(nbytes, mtu) < self._min_packets or serial_s <= 0:
            self._rtt_s = self._ewma(self._rtt_s, 2.0 * seconds)
        else:
            if at_s is not None and self._last_sample_s is not None:
                self._bps = self._relaxed_bps(at_s)  # fold the sample into what we believed
            self._bps = self._ewma(self._bps, 8.0 * wire_bytes(nbytes, mtu) / serial_s)
            if at_s is not None:
                self._last_sample_s = at_s + seconds
        self._samples += 1

    def observe_round_trip(self, nbytes: int, seconds: float, at_s: float | None = None) -> float:
        """Fold in a request of ``nbytes`` whose round trip, less the receiver's own
        time, took ``seconds``; returns the one-way seconds attributed to the request.

        A sender over a real socket sees only ``request + rtt/2 + reply + rtt/2``.
        The reply is small, so the one-way request time (serialisation + rtt/2,
        what :meth:`observe` wants) is ``seconds - rtt_est/2``. If that is not
        positive the round trip took less than half the RTT we believed: the RTT
        estimate is what is wrong, so ``seconds`` becomes an RTT sample instead
        (and nothing is attributed to the request).
        """
        one_way_s = seconds - self._rtt_s / 2
        if one_way_s > 0:
            self.observe(nbytes, one_way_s, at_s)
            return one_way_s
        self.observe_rtt(seconds)
        return 0.0

    def observe_rtt(self, seconds: float) -> None:
        """Fold in an explicit round-trip sample (e.g. a ping or a request/ack)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"rtt sample must be finite and >= 0, got {seconds!r}")
        self._rtt_s = self._ewma(self._rtt_s, float(seconds))
        self._samples += 1

    def _relaxed_bps(self, now_s: float) -> float:
        if self._recovery_s <= 0 or self._last_sample_s is None:
            return self._bps
        age = max(0.0, now_s - self._last_sample_s)
        w = math.exp(-age / self._recovery_s)
        prior = self._initial.bandwidth_mbps * 1e6
        return math.exp(w * math.log(self._bps) + (1.0 - w) * math.log(prior))

    def estimate(self, now_s: float | None = None) -> LinkProfile:
        """The initial profile with the current bandwidth and RTT substituted
        (relaxed toward the nominal bandwidth if ``now_s`` is given and the last
        sample is stale, see the class docstring)."""
        bps = self._bps if now_s is None else self._relaxed_bps(now_s)
        return dataclasses.replace(self._initial, bandwidth_mbps=bps / 1e6, rtt_ms=self.rtt_ms)
