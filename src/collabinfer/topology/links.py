"""Link profiles: the static description of a wire between two tiers, and its packet maths.

Why at the bottom of the package: the cost model, the planner, the link
estimator, the simulated links and the serving relay all speak in
:class:`LinkProfile` s and count bytes with :func:`wire_bytes`, so these few
definitions must not depend on any of them.

Packet model (shared by everyone through :func:`wire_bytes`): a message is
cut into ``ceil(nbytes / (mtu - 40))`` packets, each carrying 40 bytes of IP+TCP
headers. A zero-byte message still sends one header-only packet, because an empty
reply is still a packet on the wire. Bandwidths are link rates, so headers count.

    >>> wire_bytes(3000, 1500)
    3120
    >>> get_profile("lte").bandwidth_mbps
    5.85
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from collabinfer.errors import ConfigError

__all__ = [
    "HEADER_BYTES",
    "PROFILES",
    "LinkProfile",
    "check_finite",
    "check_nbytes",
    "get_profile",
    "packet_count",
    "wire_bytes",
]

HEADER_BYTES = 40  # IPv4 (20) + TCP (20) headers per packet, no options


def check_finite(value: float, name: str, *, low: float, strict: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < low or (strict and v == low):
        op = ">" if strict else ">="
        raise ConfigError(f"{name} must be a finite number {op} {low}, got {value!r}")
    return v


@dataclass(frozen=True)
class LinkProfile:
    """Static description of one link: uplink rate, delay, noise and loss.

    ``jitter_ms`` is the std-dev of per-transfer one-way delay noise (the delay is
    truncated at 0); ``loss`` is the independent per-packet loss probability.
    """

    name: str
    bandwidth_mbps: float
    rtt_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    mtu_bytes: int = 1500
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"link profile name must be a non-empty string, got {self.name!r}")
        check_finite(self.bandwidth_mbps, "bandwidth_mbps", low=0.0, strict=True)
        check_finite(self.rtt_ms, "rtt_ms", low=0.0, strict=False)
        check_finite(self.jitter_ms, "jitter_ms", low=0.0, strict=False)
        if not (0.0 <= self.loss < 1.0):  # also rejects NaN
            raise ConfigError(f"loss must be in [0, 1), got {self.loss!r}", link=self.name)
        mtu = self.mtu_bytes
        if isinstance(mtu, bool) or not isinstance(mtu, int) or mtu <= HEADER_BYTES:
            raise ConfigError(f"mtu_bytes must be an int > {HEADER_BYTES}, got {mtu!r}")


def _neurosurgeon(name: str, bandwidth_mbps: float, rtt_ms: float) -> LinkProfile:
    note = (
        f"uplink {bandwidth_mbps} Mbit/s from Neurosurgeon (Kang et al., ASPLOS 2017); "
        f"RTT {rtt_ms} ms is OUR ASSUMPTION, not from the paper"
    )
    return LinkProfile(name, bandwidth_mbps, rtt_ms, note=note)


PROFILES: dict[str, LinkProfile] = {
    "3g": _neurosurgeon("3g", 1.1, 120.0),
    "lte": _neurosurgeon("lte", 5.85, 50.0),
    "wifi": _neurosurgeon("wifi", 18.88, 10.0),
    "wan": LinkProfile(
        "wan",
        100.0,
        40.0,
        note="edge->cloud backbone; 100 Mbit/s and RTT 40 ms are both OUR ASSUMPTION",
    ),
}


def get_profile(name: str) -> LinkProfile:
    """Look up a built-in profile; unknown names list the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown link profile {name!r}; known: {known}") from None


def check_nbytes(nbytes: int) -> int:
    """Validate a message size the same way for every Link (numpy ints allowed)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral) or nbytes < 0:
        raise ConfigError(f"nbytes must be a non-negative int, got {nbytes!r}")
    return int(nbytes)


def packet_count(nbytes: int, mtu_bytes: int) -> int:
    """Packets needed for ``nbytes`` of payload (at least one, see module doc)."""
    return max(1, -(-nbytes // (mtu_bytes - HEADER_BYTES)))


def wire_bytes(nbytes: int, mtu_bytes: int) -> int:
    """Bytes actually serialised: payload plus one header per packet."""
    return nbytes + HEADER_BYTES * packet_count(nbytes, mtu_bytes)
