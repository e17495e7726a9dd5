"""Prometheus metrics of one tier server, on a registry of its own.

Why per app: two servers in one process (tests, the hop benchmark) must not
share or double-register counters, so nothing goes to prometheus_client's
global registry. ``GET /metrics`` renders :meth:`ServerMetrics.render`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collabinfer.cache.semantic import SemanticCache

PREFIX = "collabinfer_server"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LOOKUP_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)


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
        self.reuse_seconds = Histogram(
            f"{p}_semantic_cache_seconds",
            "semantic cache work per request: key + lookup, and the insert after a miss",
            ["op"],
            buckets=LOOKUP_BUCKETS,
            registry=reg,
        )

    def watch(self, cache: SemanticCache) -> None:
        """Export the semantic cache's counters, read from the cache at each scrape."""
        self.registry.register(_CacheCollector(cache))

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    """Hits, misses, evictions, entries and bytes of a semantic cache, at scrape time
    (read from its own counters, so nothing is counted twice)."""

    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        st = self.cache.stats()
        p = f"{PREFIX}_semantic_cache"
        for name, value, what in (
            ("hits", st.hits, "lookups the cache answered"),
            ("misses", st.misses, "lookups it did not"),
            ("inserts", st.inserts, "answers stored"),
            ("evictions", st.evictions, "entries evicted for room"),
            ("expired", st.expired, "entries dropped by their TTL"),
        ):
            yield CounterMetricFamily(f"{p}_{name}", what, value=value)
        yield GaugeMetricFamily(f"{p}_entries", "entries held", value=st.entries)
        yield GaugeMetricFamily(f"{p}_bytes", "bytes allocated", value=st.bytes)
        yield GaugeMetricFamily(f"{p}_max_bytes", "the byte budget", value=st.max_bytes)


def render_models(metrics: Mapping[str, ServerMetrics]) -> bytes:
    """``GET /metrics`` of a server hosting several models: one exposition in which
    every sample carries a ``model`` label (each model keeps its own registry, so
    one family would otherwise appear once per model, which Prometheus rejects).
    One model renders as before, unlabelled."""
    if len(metrics) == 1:
        return next(iter(metrics.values())).render()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ByModel(metrics))
    return generate_latest(registry)


class _ByModel(Collector):
    def __init__(self, metrics: Mapping[str, ServerMetrics]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for model, m in self.metrics.items():
            for fam in m.registry.collect():
                out = families.get(fam.name)
                if out is None:
                    out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                for s in fam.samples:
                    labels = {**s.labels, "model": model}
                    out.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        yield from families.values()
