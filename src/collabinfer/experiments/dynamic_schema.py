"""The dynamic experiment's result: points, exits, gates, targets and its file, read with checks.

Why apart from the run (:mod:`~collabinfer.experiments.dynamic`): the report
reads these types and needs none of the code that trains heads and gates.
:meth:`DynamicResult.load` is the only way ``dynamic.json`` is read; a
missing, mistyped or misspelt field is a :class:`~collabinfer.errors.ConfigError`
that names it (``dynamic.json: points[3].accuracy must be a number, got 'high'``),
never a traceback.

The file's layout is the one the experiment has always written (the README
and the integration test read ``points[i]["accuracy"]`` and friends): a point
without exits has no ``exit_*`` keys rather than ``null`` ones, an exit rule
is :meth:`ExitRule.to_json <collabinfer.model.dynamic.ExitRule.to_json>`'s
object, and the reliability bins are
:class:`~collabinfer.model.calibration.ReliabilityBin` field for field.

    >>> result = DynamicResult.load(Path("results/dynamic"))  # doctest: +SKIP
    >>> result.points[0].method, result.summary.targets[0].met  # doctest: +SKIP
    ('static backbone', False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from collabinfer.errors import ConfigError
from collabinfer.experiments.records import (
    ResultFile,
    from_json,
    json_codec,
)
from collabinfer.model.calibration import ReliabilityBin
from collabinfer.model.dynamic import NEVER, ExitRule

__all__ = [
    "FILE",
    "DynamicConditions",
    "DynamicPoint",
    "DynamicResult",
    "DynamicSummary",
    "ExitCalibration",
    "GateRate",
    "PathAwareComparison",
    "Target",
]

FILE = "dynamic.json"


def _unit(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")


def _non_negative(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class _RuleFile:
    """:meth:`ExitRule.to_json`'s layout: ``null`` for an exit that never fires."""

    thresholds: tuple[float | None, ...]
    score: str = "maxprob"
    allowed_paths: tuple[tuple[int, ...] | None, ...] | None = None


def _read_rule(value: object, where: str) -> ExitRule:
    r = from_json(_RuleFile, value, where)
    paths = r.allowed_paths
    try:
        return ExitRule(
            tuple(NEVER if t is None else t for t in r.thresholds),
            r.score,
            None if paths is None else tuple(None if a is None else frozenset(a) for a in paths),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


@dataclass(frozen=True, kw_only=True)
class DynamicPoint:
    """One (method, setting), measured on the test inputs.

    Fields are in the file's key order. ``exit_*`` are there for methods with
    exits (one entry per exit, the final classifier last), ``gate_exec_rates``
    for gated backbones (one per gated block), ``val_*`` and ``rule`` for a
    rule chosen on validation; the timing fields come from the side-by-side
    timing, the speed-ups are against the first point (the static backbone).
    """

    json_omit_none: ClassVar[bool] = True

    method: str
    setting: str
    accuracy: float
    mflops_per_input: float  # mean FLOPs of the path each input really took
    exit_fractions: tuple[float, ...] | None = None
    exit_accuracy: tuple[float | None, ...] | None = None  # of those leaving there
    exit_names: tuple[str, ...] | None = None
    wasted_mflops_per_input: float | None = None  # heads run whose answer was discarded
    gate_exec_rates: tuple[float, ...] | None = None
    val_accuracy: float | None = None
    val_mflops_per_input: float | None = None
    rule: ExitRule | None = field(default=None, metadata=json_codec(_read_rule, ExitRule.to_json))
    latency_p50_ms: float  # batch 1, one thread
    latency_p95_ms: float
    latency_mean_ms: float | None = None
    throughput_b32: float | None = None  # inputs per second at the experiment's batch
    speedup_flops: float | None = None
    speedup_measured: float | None = None  # mean batch-1 latency against the static backbone
    speedup_p50: float | None = None

    def __post_init__(self) -> None:
        _unit("accuracy", self.accuracy)
        _unit("val_accuracy", self.val_accuracy)
        for name in ("mflops_per_input", "latency_p50_ms", "latency_p95_ms", "latency_mean_ms"):
            _non_negative(name, getattr(self, name))
        n = len(self.exit_fractions or ())
        for name in ("exit_accuracy", "exit_names"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ConfigError(f"{name} has {len(value)} entries, exit_fractions {n}")
        for i, f in enumerate(self.exit_fractions or ()):
            _unit(f"exit_fractions[{i}]", f)
        for i, a in enumerate(self.exit_accuracy or ()):
            _unit(f"exit_accuracy[{i}]", a)
        for i, r in enumerate(self.gate_exec_rates or ()):
            _unit(f"gate_exec_rates[{i}]", r)

    @property
    def label(self) -> str:
        return f"{self.method} {self.setting}".strip()

    def exit_labels(self) -> tuple[str, ...]:
        """Exit names, ``exit 1 .. exit n-1, final`` when the file has none."""
        if self.exit_names is not None:
            return self.exit_names
        n = len(self.exit_fractions or ())
        return (*(f"exit {i + 1}" for i in range(n - 1)), "final") if n else ()


@dataclass(frozen=True)
class ExitCalibration:
    """One exit head: temperature fitted on validation, accuracy and ECE on test."""

    json_omit_none: ClassVar[bool] = True

    method: str
    name: str
    cut: int
    temperature: float
    head_accuracy: float
    ece_before: float
    ece_after: float
    val_ece_after: float | None = None
    reliability_before: tuple[ReliabilityBin, ...] = ()
    reliability_after: tuple[ReliabilityBin, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("head_accuracy", "ece_before", "ece_after", "val_ece_after"):
            _unit(name, getattr(self, name))


@dataclass(frozen=True)
class GateRate:
    """How often one gated block ran its branch on the test inputs."""

    method: str
    setting: str
    block: str
    exec_rate: float

    def __post_init__(self) -> None:
        _unit("exec_rate", self.exec_rate)


@dataclass(frozen=True, kw_only=True)
class Target:
    """One of the issue's targets, judged on the test numbers (fields in the file's order)."""

    name: str
    target: str = ""
    reached: str = ""
    met: bool


@dataclass(frozen=True)
class PathAwareComparison:
    """Gated exits evaluated always vs only on paths that pay off, at one setting."""

    setting: str
    always_wasted_mflops: float | None
    path_aware_wasted_mflops: float | None
    always_accuracy: float
    path_aware_accuracy: float
    always_mflops: float
    path_aware_mflops: float


@dataclass(frozen=True)
class DynamicSummary:
    targets: tuple[Target, ...] = ()
    path_aware_vs_always: PathAwareComparison | None = None


@dataclass(frozen=True)
class DynamicConditions:
    """How the points were measured. ``config`` and ``train_metrics`` stay plain
    JSON: they record another module's types (the training recipes' configs),
    and a result file must stay readable when those grow a field."""

    num_inputs: int
    backbone: str
    backbone_mflops: float
    threads: int
    latency: str  # how latency and throughput were timed, in words
    measured_on: str
    tuned_on: str  # what was chosen on which split, in words
    quick: bool
    seconds: float
    config: dict[str, Any]
    train_metrics: dict[str, Any]


@dataclass(frozen=True)
class DynamicResult(ResultFile):
    FILE: ClassVar[str] = FILE
    WHAT: ClassVar[str] = "dynamic results"

    conditions: DynamicConditions
    points: tuple[DynamicPoint, ...]  # the static backbone first
    exits: tuple[ExitCalibration, ...] = ()
    gates: tuple[GateRate, ...] = ()
    summary: DynamicSummary = DynamicSummary()

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("points is empty: a dynamic result needs at least one point")

    def point(self, method: str, setting: str) -> DynamicPoint | None:
        return next((p for p in self.points if (p.method, p.setting) == (method, setting)), None)
