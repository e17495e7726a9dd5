"""The reuse experiment's result: one point per workload x key, read back with checks.

Apart from the run (:mod:`~collabinfer.experiments.reuse`) so the report reads
it without the models. ``reuse.json`` is read only by :meth:`ReuseResult.load`
(:class:`~collabinfer.experiments.records.ResultFile`): a malformed field is a
one-line :class:`~collabinfer.errors.ConfigError` naming it.

What each block holds:

* ``points``: our keys in the chain (device -> edge, the edge's semantic cache),
  each beside the same stream run without the cache;
* ``baselines``: the pixel-LSH (Reservoir-style) and decoupled-extractor caches,
  replayed offline on the same test streams (:mod:`~collabinfer.experiments.reuse_baselines`);
* ``miss_overhead``: what a miss costs the edge (lookup + insert) against the
  cache's size, exact and IVF, beside the tail a hit saves;
* ``latencies``: per-request latencies for the latency CDF (the video workload).

Rates and accuracies are fractions; a precision is ``None`` when there were no
hits to judge (never a made-up 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collabinfer.cache.keys import KEYS
from collabinfer.data.workloads import WORKLOADS
from collabinfer.errors import ConfigError
from collabinfer.experiments.records import ResultFile

__all__ = [
    "BASELINE_METHODS",
    "FILE",
    "INDEXES",
    "BaselinePoint",
    "LatencySeries",
    "MissOverhead",
    "ReuseConditions",
    "ReusePoint",
    "ReuseResult",
]

FILE = "reuse.json"
INDEXES = ("exact", "ivf")
BASELINE_METHODS = ("pixel-lsh", "decoupled")


def _fractions(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} is a fraction in [0, 1], got {value!r}")


def _counts(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(obj, name)!r}")


def _workload(name: str) -> None:
    if name not in WORKLOADS:
        raise ConfigError(f"unknown workload {name!r}; choose from {WORKLOADS}")


@dataclass(frozen=True)
class ReusePoint:
    """One key on one workload's test stream, with the cache and without it."""

    workload: str
    key: str  # features | projection | latent
    model: str  # what the chain runs: fmnist-resnet, or fmnist-resnet+bn for the latent
    cut: int
    codec: str  # what the device sends at the cut
    requests: int
    hits: int
    hit_rate: float
    hit_precision_model: float | None  # hits answering what the model itself answers
    hit_precision_label: float | None  # hits answering the true label
    accuracy: float
    accuracy_no_cache: float
    latency_mean_ms: float
    latency_mean_ms_no_cache: float
    latency_p95_ms: float
    latency_p95_ms_no_cache: float
    edge_cpu_ms_per_input: float  # the edge's real CPU time, cache work included
    edge_cpu_ms_per_input_no_cache: float
    opportunities: int = 0  # requests whose source object was seen earlier in the stream
    opportunities_harnessed: float | None = None  # of those, the fraction that hit
    hits_without_opportunity: int = 0  # hits on an object not seen before (a look-alike)
    key_bytes: int = 0  # float32 key held per entry
    lookup_ms: float = 0.0  # key + lookup, mean wall ms per request
    insert_ms: float = 0.0  # mean wall ms per insert (misses only)
    rule_k: int = 1
    rule_tau: float = 0.0  # 0: no rule reached the precision target (never hits)
    rule_min_confidence: float = 0.0  # every entry agreeing must have answered this sure
    val_hit_rate: float = 0.0  # the rule on the validation streams it was fitted on
    val_precision: float = 1.0
    bytes_per_input: float = 0.0  # what the device sent, mean (header + payload)

    def __post_init__(self) -> None:
        _workload(self.workload)
        if self.key not in KEYS:
            raise ConfigError(f"unknown key {self.key!r}; choose from {KEYS}")
        _fractions(
            self,
            "hit_rate",
            "hit_precision_model",
            "hit_precision_label",
            "accuracy",
            "accuracy_no_cache",
            "opportunities_harnessed",
            "val_hit_rate",
            "val_precision",
        )
        _counts(self, "hits", "opportunities", "hits_without_opportunity", "key_bytes")
        if self.requests < 1 or self.hits > self.requests:
            raise ConfigError(
                f"requests >= 1 and hits <= requests, got {self.hits}/{self.requests}"
            )


@dataclass(frozen=True)
class BaselinePoint:
    """A cache that is not ours, replayed offline on the same test stream."""

    method: str  # pixel-lsh | decoupled
    setting: str  # its rule, in words ("SSIM >= 0.80", "k=2, tau=0.01")
    fitted: bool  # the rule was fitted on validation streams for the precision target
    workload: str
    requests: int
    hits: int
    hit_rate: float
    hit_precision_model: float | None
    hit_precision_label: float | None
    accuracy: float
    opportunities: int = 0
    opportunities_harnessed: float | None = None
    hits_without_opportunity: int = 0
    key_bytes: int = 0
    key_ms: float = 0.0  # computing the key, mean wall ms per request
    lookup_ms: float = 0.0  # the lookup alone, mean wall ms per request
    val_hit_rate: float | None = None
    val_precision: float | None = None
    raw_pixels_at_cache: bool = False  # the cache needs the image itself (not the split's bytes)

    def __post_init__(self) -> None:
        _workload(self.workload)
        if self.method not in BASELINE_METHODS:
            raise ConfigError(f"unknown baseline {self.method!r}; choose from {BASELINE_METHODS}")
        _fractions(
            self,
            "hit_rate",
            "hit_precision_model",
            "hit_precision_label",
            "accuracy",
            "opportunities_harnessed",
            "val_hit_rate",
            "val_precision",
        )
        _counts(self, "hits", "opportunities", "hits_without_opportunity", "key_bytes")
        if self.requests < 1 or self.hits > self.requests:
            raise ConfigError(
                f"requests >= 1 and hits <= requests, got {self.hits}/{self.requests}"
            )


@dataclass(frozen=True)
class MissOverhead:
    """A miss's cost (lookup + insert of a fresh key) in a cache of ``entries`` keys."""

    index: str  # exact | ivf, as the cache reported it
    entries: int
    lookup_insert_ms: float  # median over the pairs
    tail_ms: float  # median time of the edge's tail blocks at batch 1: what a hit saves
    lookup_insert_p95_ms: float = 0.0
    lookup_ms: float = 0.0  # median
    insert_ms: float = 0.0  # median
    pairs: int = 0
    key_dim: int = 0
    fill_s: float = 0.0  # wall time to fill the cache to ``entries`` (one insert at a time)
    ann_above: int | None = None  # ivf: the keys at which the cache moved to IVF

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise ConfigError(f"unknown index {self.index!r}; choose from {INDEXES}")
        if self.entries < 1:
            raise ConfigError(f"entries must be >= 1, got {self.entries}")
        _counts(self, "lookup_insert_ms", "tail_ms", "pairs")


@dataclass(frozen=True)
class LatencySeries:
    """Per-request latency of one run, in stream order (for the CDF)."""

    workload: str
    model: str
    key: str | None  # None: the run without the cache
    latency_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        _workload(self.workload)
        if not self.latency_ms:
            raise ConfigError("a latency series needs at least one request")


@dataclass(frozen=True)
class ReuseConditions:
    config: dict[str, Any]  # the resolved ReuseConfig, as written
    model: str
    latent_model: str
    extractor: str  # the decoupled baseline's feature extractor
    tiers: str  # in words, emulation labelled
    link: str  # profile name and its note
    precision_target: float
    validation: str  # what the rules were fitted on, in words
    test_streams: str  # which images and seeds the test streams use
    measured_on: str
    seconds: float = 0.0
    quick: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReuseResult(ResultFile):
    FILE: ClassVar[str] = FILE
    WHAT: ClassVar[str] = "reuse experiment"

    points: tuple[ReusePoint, ...]
    miss_overhead: tuple[MissOverhead, ...]
    baselines: tuple[BaselinePoint, ...]
    conditions: ReuseConditions
    latencies: tuple[LatencySeries, ...] = ()

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("points is empty: a reuse result needs at least one point")
        seen = [(p.workload, p.key) for p in self.points]
        if len(set(seen)) != len(seen):
            raise ConfigError("points has a workload x key twice")

    def point(self, workload: str, key: str) -> ReusePoint | None:
        return next((p for p in self.points if (p.workload, p.key) == (workload, key)), None)
