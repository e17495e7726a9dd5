"""A deterministic, scriptable :class:`~collabinfer.runtime.link.Link` for tests.

Runtime code under test only sees the ``Link`` protocol, so a test can swap in a
:class:`MockLink` to check which transfers were attempted and to make a chosen
one fail, without any randomness or sockets.

    >>> link = MockLink(seconds_per_byte=1e-6, latency_s=0.01, fail_on={1})
    >>> link.transfer(1000, 0.0)
    0.011
    >>> link.transfer(5, 1.0)
    Traceback (most recent call last):
    ...
    collabinfer.errors.LinkError: mock link failure (call=1, nbytes=5, start_s=1.0)
    >>> link.calls
    [(1000, 0.0), (5, 1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from collabinfer.errors import ConfigError, LinkError
from collabinfer.topology.links import LinkProfile, check_nbytes

__all__ = ["MockLink"]


class MockLink:
    """Duration ``latency_s + seconds_per_byte * nbytes``; records every call.

    ``fail_on`` holds 0-based call indices (the position the call gets in
    ``calls``) on which :class:`LinkError` is raised instead of returning; failed
    calls are still recorded, since the attempt is what a fallback test checks.
    ``profile`` defaults to one matching the duration function.
    """

    def __init__(
        self,
        seconds_per_byte: float = 0.0,
        latency_s: float = 0.0,
        fail_on: Iterable[int] = (),
        profile: LinkProfile | None = None,
    ) -> None:
        for name, value in (("seconds_per_byte", seconds_per_byte), ("latency_s", latency_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
        self.seconds_per_byte = float(seconds_per_byte)
        self.latency_s = float(latency_s)
        self.fail_on: set[int] = set(fail_on)
        self.calls: list[tuple[int, float]] = []
        if profile is None:
            mbps = 8.0 / (self.seconds_per_byte * 1e6) if self.seconds_per_byte > 0 else 1e6
            profile = LinkProfile("mock", mbps, 2e3 * self.latency_s, note="MockLink")
        self._profile = profile

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    def transfer(self, nbytes: int, start_s: float) -> float:
        nbytes = check_nbytes(nbytes)
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ConfigError(f"start_s must be finite and >= 0, got {start_s!r}")
        index = len(self.calls)
        self.calls.append((nbytes, start_s))
        if index in self.fail_on:
            raise LinkError("mock link failure", call=index, nbytes=nbytes, start_s=start_s)
        return self.latency_s + self.seconds_per_byte * nbytes
