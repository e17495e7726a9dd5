"""What bounds one client of a tier server: failed-authentication throttling.

Why apart from the handler: it is state about *clients* (addresses), not about
requests or the model, and it must stay small whatever an attacker sends, so
it is bounded in the addresses it remembers. ``max_addresses`` is the LRU
bound; an address that has not failed for a window is forgotten.

Example (a fake clock)::

    >>> now = [0.0]
    >>> t = AuthThrottle(failures=2, window_s=60.0, clock=lambda: now[0])
    >>> t.check("10.0.0.1"); t.failed("10.0.0.1"); t.failed("10.0.0.1")
    >>> t.check("10.0.0.1")
    60.0
    >>> now[0] = 61.0; t.check("10.0.0.1") is None
    True
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["AuthThrottle"]


class AuthThrottle:
    """After ``failures`` wrong tokens from one address within ``window_s``, that
    address is refused until the oldest of them leaves the window."""

    def __init__(
        self,
        failures: int,
        window_s: float,
        *,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, address: str) -> float | None:
        """Seconds the address must wait before it may try again, or None."""
        times = self._seen.get(address)
        if times is None:
            return None
        now = self._clock()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        if len(times) < self.failures:
            return None
        return times[0] + self.window_s - now

    def failed(self, address: str) -> None:
        times = self._seen.get(address)
        if times is None:
            times = self._seen[address] = deque(maxlen=self.failures)
            while len(self._seen) > self.max_addresses:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(address)
        times.append(self._clock())

    def succeeded(self, address: str) -> None:
        self._seen.pop(address, None)
