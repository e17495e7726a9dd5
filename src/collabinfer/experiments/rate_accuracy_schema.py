"""The rate-accuracy experiment's result: its points, conditions and file, read back with checks.

Why apart from the run (:mod:`~collabinfer.experiments.rate_accuracy`): the
report reads these types and needs none of the code that trains bottlenecks
and encodes images. :meth:`RateAccuracyResult.load` is the only way
``rate_accuracy.json`` is read; a missing, mistyped or misspelt field is a
:class:`~collabinfer.errors.ConfigError` that names it, never a traceback.

The file also carries a ``summary`` (the issue's target, judged by
:func:`summary`). It is derived from the points, so reading the file checks
only that it is an object and computes it again; it is written for people
and scripts that read the JSON without collabinfer.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, ClassVar

from collabinfer.errors import ConfigError
from collabinfer.experiments.records import ResultFile, from_json, to_json

__all__ = [
    "FILE",
    "METHODS",
    "BottleneckRun",
    "EncoderCost",
    "Point",
    "RateAccuracyConditions",
    "RateAccuracyResult",
    "RateAccuracySummary",
    "best_under",
    "summary",
]

FILE = "rate_accuracy.json"
METHODS = ("input", "features", "bottleneck-hd", "bottleneck-sc")


@dataclass(frozen=True)
class Point:
    """One way of crossing the link at one setting, measured on the test inputs."""

    method: str  # one of METHODS
    cut: int  # 0: the input itself
    setting: str  # codec name, or e.g. "beta=0.1"
    bytes_per_input: float  # payload bytes, mean over inputs
    accuracy: float
    header_bytes_per_input: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.cut < 0 or self.bytes_per_input < 0 or self.header_bytes_per_input < 0:
            raise ConfigError("cut and byte counts must be >= 0")
        if not 0.0 <= self.accuracy <= 1.0:
            raise ConfigError(f"accuracy must lie in [0, 1], got {self.accuracy!r}")


@dataclass(frozen=True)
class EncoderCost:
    """The learned bottleneck's two halves at batch 1 on the measuring CPU."""

    encoder_params: int
    encoder_mflops: float
    encoder_ms: float
    decoder_params: int
    decoder_mflops: float
    decoder_ms: float


@dataclass(frozen=True)
class BottleneckRun:
    """Which checkpoint a bottleneck point came from, and how it did on validation."""

    method: str
    beta: float
    val_acc: float | None
    checkpoint: str
    codec: str


@dataclass(frozen=True)
class RateAccuracyConditions:
    config: dict[str, Any]  # the resolved RateAccuracyConfig, as written
    num_inputs: int
    rate: str  # what "rate" means, in words
    bottlenecks: tuple[BottleneckRun, ...] = ()
    encoder: EncoderCost | None = None


@dataclass(frozen=True)
class RateAccuracySummary:
    """The issue's target: a bottleneck within ``tolerance`` of the reference at
    <= 10 % of the bytes of the cheapest input codec that also stays within it."""

    accuracy_floor: float
    best_input: Point | None
    best_bottleneck: Point | None
    bytes_ratio: float | None  # best_bottleneck / best_input bytes; None without both
    median_bytes: float


@dataclass(frozen=True)
class RateAccuracyResult(ResultFile):
    FILE: ClassVar[str] = FILE
    WHAT: ClassVar[str] = "rate-accuracy results"

    points: tuple[Point, ...]
    reference_accuracy: float  # the full model on the uncompressed test inputs
    conditions: RateAccuracyConditions

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("points is empty: a rate-accuracy result needs at least one point")
        if not 0.0 <= self.reference_accuracy <= 1.0:
            raise ConfigError(
                f"reference_accuracy must lie in [0, 1], got {self.reference_accuracy!r}"
            )

    def to_json_dict(self) -> dict[str, Any]:
        """The file's content: the result plus its :func:`summary`."""
        data = super().to_json_dict()
        data["summary"] = to_json(summary(self))
        return data

    @classmethod
    def from_json(cls, data: object) -> RateAccuracyResult:
        """The result from parsed JSON; anything malformed is a :class:`ConfigError`."""
        if isinstance(data, dict) and "summary" in data:
            if not isinstance(data["summary"], dict):
                raise ConfigError(f"{FILE}: summary must be an object")
            data = {k: v for k, v in data.items() if k != "summary"}  # derived: recomputed
        return from_json(cls, data, FILE)


def best_under(points: tuple[Point, ...], min_accuracy: float, method_prefix: str) -> Point | None:
    """The cheapest point of a family that keeps at least ``min_accuracy``."""
    ok = [p for p in points if p.method.startswith(method_prefix) and p.accuracy >= min_accuracy]
    return min(ok, key=lambda p: p.bytes_per_input) if ok else None


def summary(result: RateAccuracyResult, tolerance: float = 0.005) -> RateAccuracySummary:
    """Judge the target on ``result`` (see :class:`RateAccuracySummary`)."""
    floor = result.reference_accuracy - tolerance
    inp = best_under(result.points, floor, "input")
    bn = best_under(result.points, floor, "bottleneck")
    ratio = None
    if inp is not None and bn is not None and inp.bytes_per_input > 0:
        ratio = bn.bytes_per_input / inp.bytes_per_input
    median = statistics.median(p.bytes_per_input for p in result.points)
    return RateAccuracySummary(floor, inp, bn, ratio, float(median))
