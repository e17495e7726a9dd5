"""How one tier server runs: :class:`ServerConfig`, validated on creation.

Apart from :mod:`~collabinfer.serve.server` (the app) and
:mod:`~collabinfer.serve.handler` (the per-request work), which both read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from collabinfer.errors import ConfigError
from collabinfer.serve.wire import DEFAULT_MAX_BODY_BYTES

__all__ = ["TIER_INDEX", "ServerConfig", "parse_blocks"]

TIER_INDEX = {"device": 0, "edge": 1, "cloud": 2}
"""Plan index of the conventional tier names; other names take the header's index."""


@dataclass(frozen=True)
class ServerConfig:
    """How one tier server runs. ``stop=None`` hosts up to the last block;
    ``tier_index=None`` serves whatever tier index a request names."""

    tier_name: str
    tier_index: int | None = None
    start: int = 0
    stop: int | None = None
    next_url: str | None = None
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    batch_window_ms: float = 0.0  # 0: no batching
    max_batch: int = 32
    next_timeout_s: float = 10.0
    speed_factor: float = 1.0  # > 1: charged profiled time x factor, slept, labelled
    cache_size: int = 1024  # answers kept for retries, by request_id

    def __post_init__(self) -> None:
        if not self.tier_name:
            raise ConfigError("a tier server needs a tier name")
        if self.tier_index is not None and self.tier_index < 0:
            raise ConfigError(f"tier index must be >= 0, got {self.tier_index}")
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ConfigError(f"blocks {self.start}:{self.stop} is not a non-empty range")
        if self.next_url is not None and not self.next_url.startswith(("http://", "https://")):
            raise ConfigError(f"--next must be an http(s) URL, got {self.next_url!r}")
        if self.token is not None and not self.token:
            raise ConfigError("--token must not be empty")
        if self.max_body_bytes < 1 or self.max_batch < 1 or self.cache_size < 1:
            raise ConfigError("max_body_bytes, max_batch and cache_size must be >= 1")
        if self.batch_window_ms < 0 or not self.next_timeout_s > 0:
            raise ConfigError("batch_window_ms must be >= 0 and next_timeout_s > 0")
        if not self.speed_factor >= 1.0:
            raise ConfigError(f"speed_factor must be >= 1 (a slower tier), got {self.speed_factor}")


def parse_blocks(spec: str | None) -> tuple[int, int | None]:
    """``"A:B"`` like a Python slice with non-negative ends: ``"3:"``, ``":5"``, ``"2:7"``.

    Returns ``(start, stop)``, ``stop=None`` meaning "to the last block"; the
    model's block count is checked when the server is built.
    """
    if spec is None or spec.strip() in ("", ":"):
        return 0, None
    parts = spec.split(":")
    if len(parts) != 2:
        raise ConfigError(f"--blocks {spec!r} must look like A:B, A: or :B")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else None
    except ValueError:
        raise ConfigError(f"--blocks {spec!r}: A and B must be integers") from None
    if start < 0 or (stop is not None and stop <= start):
        raise ConfigError(f"--blocks {spec!r} is not a non-empty range of block indices")
    return start, stop
