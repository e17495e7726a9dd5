"""A circuit breaker for the next tier: a tier that failed is not asked again at once.

Why: without one, a hung tier costs every request its whole deadline, and the
tier computes the abandoned requests later anyway. After a failure (an error,
a timeout, a 5xx, an answer that does not fit) the breaker *opens*: senders
fall back at once, for a back-off period that doubles with every failed trial
(``base_s``, ``2 base_s``, ... up to ``max_s``). When it has passed, one
sender gets a *trial* (the caller should probe cheaply first, e.g. the health
endpoint with a short timeout); its success closes the breaker, its failure
opens it again for longer. The tier server (towards the cloud) and the device
client (towards the edge) both use it.

Example (a fake clock)::

    >>> now = [0.0]
    >>> b = CircuitBreaker(base_s=1.0, max_s=8.0, clock=lambda: now[0])
    >>> b.allow(), b.failure(), b.allow()
    ('send', None, 'refuse')
    >>> now[0] = 1.5
    >>> b.allow(), b.allow()          # one trial at a time
    ('trial', 'refuse')
    >>> b.success(); b.allow()
    'send'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from collabinfer.errors import ConfigError

__all__ = ["CircuitBreaker", "Permit"]

Permit = Literal["send", "trial", "refuse"]
"""``send``: closed, go ahead; ``trial``: the one probe after a back-off; ``refuse``: fall back."""


class CircuitBreaker:
    """Closed, open or half-open (see the module docstring); thread-safe."""

    def __init__(
        self,
        base_s: float = 1.0,
        max_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (0 < base_s <= max_s):
            raise ConfigError(f"breaker back-off needs 0 < base_s <= max_s, got {base_s}, {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._lock = threading.Lock()
        self._backoff_s = 0.0  # 0: closed
        self._open_until = 0.0
        self._trial_since: float | None = None
        self.opened = 0  # times it opened (a metric)

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        with self._lock:
            if self._backoff_s == 0.0:
                return "closed"
            return "half_open" if self._clock() >= self._open_until else "open"

    def retry_in_s(self) -> float:
        """Seconds until the next trial (0 when closed or due)."""
        with self._lock:
            return max(0.0, self._open_until - self._clock()) if self._backoff_s else 0.0

    def allow(self) -> Permit:
        """May a request go to the tier now? A trial that never reported back
        (its sender was cancelled) is given up after ``max_s``."""
        with self._lock:
            if self._backoff_s == 0.0:
                return "send"
            now = self._clock()
            if now < self._open_until:
                return "refuse"
            if self._trial_since is not None and now - self._trial_since < self.max_s:
                return "refuse"
            self._trial_since = now
            return "trial"

    def success(self) -> None:
        with self._lock:
            self._backoff_s = 0.0
            self._open_until = 0.0
            self._trial_since = None

    def failure(self) -> None:
        with self._lock:
            if self._backoff_s == 0.0:
                self.opened += 1
                self._backoff_s = self.base_s
            elif self._trial_since is not None:  # a failed trial: wait longer
                self._backoff_s = min(self.max_s, 2 * self._backoff_s)
            self._open_until = self._clock() + self._backoff_s
            self._trial_since = None
