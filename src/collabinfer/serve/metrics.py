"""Prometheus metrics of one tier server, on a registry of its own.

Why per app: two servers in one process (tests, the hop benchmark) must not
share or double-register counters, so nothing goes to prometheus_client's
global registry. ``GET /metrics`` renders :meth:`ServerMetrics.render`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "collabinfer_server"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Every metric the server exports; attribute names match the metric names."""

    def __init__(self, tier: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, p = self.registry, PREFIX
        self.requests = Counter(
            f"{p}_requests", "infer requests answered, by HTTP status", ["code"], registry=reg
        )
        self.latency = Histogram(
            f"{p}_request_seconds",
            "wall time of an infer request inside this server",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.bytes_in = Counter(f"{p}_bytes_in", "request body bytes received", registry=reg)
        self.bytes_out = Counter(
            f"{p}_bytes_out", "request body bytes forwarded to the next tier", registry=reg
        )
        self.errors = Counter(f"{p}_errors", "refused or failed requests", ["reason"], registry=reg)
        self.queue_depth = Gauge(
            f"{p}_queue_depth", "infer requests in progress on this tier", registry=reg
        )
        self.batch_size = Histogram(
            f"{p}_batch_size",
            "requests run together per block call",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.computations = Counter(
            f"{p}_computations", "requests processed (not answered from the cache)", registry=reg
        )
        self.cache_hits = Counter(
            f"{p}_cache_hits", "retries answered from the request_id cache", registry=reg
        )
        self.fallbacks = Counter(
            f"{p}_fallbacks", "requests finished here because the next tier failed", registry=reg
        )
        self.info = Gauge(f"{p}_info", "static labels of this server", ["tier"], registry=reg)
        self.info.labels(tier).set(1)

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)
