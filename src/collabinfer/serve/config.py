"""How one tier server runs: :class:`ServerConfig`, validated on creation.

Apart from :mod:`~collabinfer.serve.server` (the app) and
:mod:`~collabinfer.serve.handler` (the per-request work), which both read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from collabinfer.cache.keys import KEYS
from collabinfer.cache.semantic import EVICTIONS
from collabinfer.errors import ConfigError
from collabinfer.serve.wire import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_ROWS,
)

__all__ = ["TIER_INDEX", "ServerConfig", "parse_blocks"]

TIER_INDEX = {"device": 0, "edge": 1, "cloud": 2}
"""Plan index of the conventional tier names; other names take the header's index."""


@dataclass(frozen=True)
class ServerConfig:
    """How one tier server runs. ``stop=None`` hosts up to the last block;
    ``tier_index=None`` serves whatever tier index a request names.

    The limits bound what one request, one client and one connection may cost
    (``docs/serving.md``, "Limits"): a request over ``max_rows``,
    ``max_decoded_bytes`` or ``max_compute_ms`` is refused (413) before any
    payload byte is decoded; beyond ``max_in_flight`` requests are shed (503 with
    ``Retry-After``); a connection must send its headers within
    ``header_timeout_s`` and its body within ``body_timeout_s``, is closed after
    ``keep_alive_s`` idle, and beyond ``max_connections`` new ones are refused.
    ``auth_failures`` wrong tokens from one address within ``auth_window_s`` make
    it wait (429) for the rest of the window.
    """

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
    cache_size: int = 1024  # answers kept for retries, by request_id and body digest
    max_rows: int = DEFAULT_MAX_ROWS
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_compute_ms: float = 2000.0  # estimated from the profile: rows x batch-1 block times
    max_in_flight: int = 64
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 512
    auth_failures: int = 20
    auth_window_s: float = 60.0
    breaker_base_s: float = 1.0  # the next tier, after a failure: back off, then one trial
    breaker_max_s: float = 10.0
    tls_cert: str | None = None  # serve HTTPS with this certificate chain (PEM) ...
    tls_key: str | None = None  # ... and its private key
    next_ca: str | None = None  # CA bundle to verify an https:// next tier (None: system CAs)
    reuse_mb: float = 0.0  # the semantic cache's size in MiB (0: no cache), shared by all clients
    reuse_precision: float = 0.99  # hit precision its rule is fitted for (on validation streams)
    reuse_ttl_s: float | None = None  # an entry older than this never answers
    reuse_key: str = "features"  # features | latent | projection
    reuse_eviction: str = "lru"  # lru | lfu | cost

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
        counts = ("max_rows", "max_decoded_bytes", "max_in_flight", "max_connections")
        for name in (*counts, "auth_failures"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        seconds = ("max_compute_ms", "header_timeout_s", "body_timeout_s", "keep_alive_s")
        for name in (*seconds, "auth_window_s", "breaker_base_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.breaker_max_s >= self.breaker_base_s:
            raise ConfigError("breaker_max_s must be >= breaker_base_s")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not self.reuse_mb >= 0 or not 0 < self.reuse_precision <= 1:
            raise ConfigError("--cache-mb must be >= 0 and --cache-precision in (0, 1]")
        if self.reuse_ttl_s is not None and not self.reuse_ttl_s > 0:
            raise ConfigError(f"--cache-ttl-s must be > 0, got {self.reuse_ttl_s}")
        if self.reuse_key not in KEYS or self.reuse_eviction not in EVICTIONS:
            raise ConfigError(
                f"--cache-key must be one of {KEYS} and --cache-eviction one of {EVICTIONS}"
            )
        if self.reuse_mb > 0 and self.tier_index is None:
            raise ConfigError("a semantic cache needs a known tier index (name it edge or cloud)")


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
