"""Dynamic networks, measured: early exits and gated blocks against the static backbone.

Methods (all on the same Fashion-MNIST test images, after training and every
choice on the training / validation splits):

* ``static backbone``: the trained ResNet, plain forward;
* ``entropy exits``: BranchyNet baseline, one uncalibrated entropy threshold
  for every exit (:func:`~collabinfer.train.exit_rules.entropy_rule`);
* ``calibrated exits``: temperature-scaled heads, per-exit thresholds from the
  solver (:func:`~collabinfer.train.exit_rules.calibrated_rule`), for a sweep
  of allowed accuracy drops and one compute budget;
* ``calibrated exits (joint)``: the same with heads and backbone trained jointly;
* ``gates``: ConvNet-AIG gated copy of the backbone, no exits;
* ``gates + exits`` and ``gates + path-aware exits``: heads trained on the
  gated backbone, evaluated always or only on paths that pay off (paper 3.1.2).

For every point: test accuracy, mean FLOPs per input (counted from what ran),
batch-1 latency p50/p95 on one thread, throughput at batch 32 on one thread,
the exit distribution, compute spent on heads whose answer was discarded, and
the measured vs FLOP-predicted speed-up over the static backbone.

:func:`run_dynamic` is a short list of builders, each returning its value:
:func:`sweep` (one exit set: its rules, chosen per method on one validation
record, then measured), :func:`measure_static` and :func:`measure_gates`
(one point each), :func:`calibration_rows`, :func:`gate_rates`,
:func:`time_points` (every point timed side by side, at the end) and
:func:`summarise`. The result, :class:`DynamicResult`, is typed in
:mod:`~collabinfer.experiments.dynamic_schema` (and re-exported here)::

    result = run_dynamic(DynamicConfig.make(quick=True), backbone,
                         train, val, test, cache, progress)
    result.save(Path("results/dynamic"))  # dynamic.json
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.experiments.dynamic_schema import (
    DynamicConditions,
    DynamicPoint,
    DynamicResult,
    DynamicSummary,
    ExitCalibration,
    GateRate,
    PathAwareComparison,
    Target,
)
from collabinfer.experiments.records import to_json
from collabinfer.model.blocks import BlockNet
from collabinfer.model.calibration import expected_calibration_error, reliability_table
from collabinfer.model.dynamic import DynamicNet, ExitRule, FlopsTable, flops_table, per_input_flops
from collabinfer.model.exits import ExitBranches
from collabinfer.plan.profile import machine_label, one_thread
from collabinfer.progress import ProgressFn, report
from collabinfer.train.exit_rules import (
    ChosenRule,
    ExitRecords,
    calibrated_rule,
    entropy_rule,
    record_exits,
)
from collabinfer.train.exits import ExitConfig, train_or_load_exits
from collabinfer.train.gates import GateConfig, TrainedGates, gated_accuracy, train_or_load_gates

__all__ = [
    "Bench",
    "DynamicConfig",
    "DynamicResult",
    "Measured",
    "Untimed",
    "calibration_rows",
    "choose_rules",
    "gate_rates",
    "measure",
    "measure_gates",
    "measure_rules",
    "measure_static",
    "run_dynamic",
    "summarise",
    "sweep",
    "time_points",
    "time_side_by_side",
]

MEASURE_TASK = "measure (test split)"
TIME_TASK = "time at batch 1 (side by side)"

# Frozen configs, so one shared default instance is safe.
DEFAULT_EXITS = ExitConfig()
DEFAULT_JOINT = ExitConfig(epochs=2, joint_epochs=2)
DEFAULT_GATES = GateConfig()


@dataclass(frozen=True)
class DynamicConfig:
    backbone: str = "fmnist-resnet"
    exits: ExitConfig = DEFAULT_EXITS
    joint: ExitConfig | None = DEFAULT_JOINT
    gates: GateConfig = DEFAULT_GATES
    gated_exits: ExitConfig = DEFAULT_EXITS
    max_drops: tuple[float, ...] = (0.0, 0.0025, 0.005, 0.01, 0.02)
    budgets: tuple[float, ...] = (0.6,)  # fractions of the backbone's FLOPs
    headline_drop: float = 0.005  # the setting the targets are judged at
    num_inputs: int = 10_000
    latency_inputs: int = 1000
    throughput_inputs: int = 2048
    throughput_batch: int = 32
    levels: int = 24
    subset_seed: int = 0
    quick: bool = False

    @classmethod
    def make(cls, quick: bool) -> DynamicConfig:
        if not quick:
            return cls()
        sub = 16_384
        return cls(
            exits=ExitConfig(epochs=2, train_subset=sub),
            joint=ExitConfig(epochs=1, joint_epochs=1, train_subset=sub),
            gates=GateConfig(epochs=2, train_subset=sub),
            gated_exits=ExitConfig(epochs=2, train_subset=sub),
            max_drops=(0.0, 0.005, 0.01, 0.02),
            num_inputs=2000,
            latency_inputs=300,
            throughput_inputs=512,
            quick=True,
        )

    @property
    def num_points(self) -> int:
        """Points :func:`run_dynamic` measures: static, gates, four sweeps of drops,
        the budgets and (with ``joint``) one more sweep."""
        drops = len(self.max_drops)
        return 2 + 4 * drops + len(self.budgets) + (drops if self.joint is not None else 0)


Infer = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class Measured:
    accuracy: float
    mflops: float
    infer: Infer  # what the timing runs (batch 1 and batch 32)
    exit_fractions: tuple[float, ...]
    exit_accuracy: tuple[float | None, ...]
    wasted_mflops: float
    exec_rates: tuple[float, ...]


@dataclass(frozen=True)
class Untimed:
    """A point measured for accuracy and FLOPs, waiting for :func:`time_points`."""

    method: str
    setting: str
    measured: Measured
    exit_names: tuple[str, ...] = ()
    rule: ExitRule | None = None  # chosen on validation; what it did there:
    val_accuracy: float | None = None
    val_mflops_per_input: float | None = None


@dataclass(frozen=True)
class Bench:
    """What every measuring builder shares: the config, the validation split the
    rules are chosen on, the test inputs every method runs, the static backbone's
    FLOPs (budgets are fractions of it) and the progress callback."""

    cfg: DynamicConfig
    val: Dataset
    data: Dataset
    backbone_flops: float
    progress: ProgressFn | None = None

    def measured(self, done: int) -> None:
        report(self.progress, MEASURE_TASK, done, self.cfg.num_points)


def time_side_by_side(
    fns: list[Infer],
    lat_data: Dataset,
    thr_data: Dataset,
    batch: int,
    progress: ProgressFn | None = None,
    chunk: int = 50,
) -> list[tuple[list[float], float]]:
    """Batch-1 latencies (ms per input) and batch-``batch`` throughput of every method,
    measured side by side: the inputs go in chunks of ``chunk``, each chunk through
    every method in turn (the order rotating), so drifts of this machine hit all
    methods alike. Within a chunk one method runs back to back after one untimed
    warm-up call, as a device serving one model would (switching method on every
    input would measure cold caches instead: 28 models' weights evicting each other).
    """
    m = len(fns)
    lat: list[list[float]] = [[] for _ in fns]
    busy = [0.0] * m
    n = len(lat_data)
    with one_thread(), torch.inference_mode():
        for c, start in enumerate(range(0, n, chunk)):
            xs = [lat_data.images[i : i + 1] for i in range(start, min(n, start + chunk))]
            for r in range(m):
                j = (c + r) % m
                fn = fns[j]
                fn(xs[0])  # warm-up, untimed
                for x in xs:
                    t0 = time.perf_counter()
                    fn(x)
                    lat[j].append((time.perf_counter() - t0) * 1e3)
            report(progress, TIME_TASK, min(n, start + chunk), n)
        batches = [thr_data.images[k : k + batch] for k in range(0, len(thr_data), batch)]
        per = max(1, chunk // batch)
        for c, start in enumerate(range(0, len(batches), per)):
            group = batches[start : start + per]
            for r in range(m):
                j = (c + r) % m
                fns[j](group[0])  # warm-up, untimed
                t0 = time.perf_counter()
                for x in group:
                    fns[j](x)
                busy[j] += time.perf_counter() - t0
    return [(lat[j], len(thr_data) / busy[j]) for j in range(m)]


def measure(
    net: DynamicNet,
    flops: FlopsTable,
    test: Dataset,
    cfg: DynamicConfig,
    plain: BlockNet | None = None,
) -> Measured:
    """Accuracy, FLOPs and where inputs leave, over ``test`` (timing: :func:`time_side_by_side`)."""
    net.eval()
    cuts = net.exits.cuts if net.exits is not None else ()
    correct = 0
    total_flops = 0.0
    num_exits = len(cuts)
    counts = np.zeros(num_exits + 1)
    hits = np.zeros(num_exits + 1)
    wasted = 0.0
    ran_sum = np.zeros(net.num_gates)
    heads = torch.tensor(flops.head, dtype=torch.float64) if flops.head else None
    for i in range(0, len(test), 500):
        x, y = test.images[i : i + 500], test.labels[i : i + 500]
        out = net.infer(x)
        ok = (out.logits.argmax(1) == y).numpy()
        correct += int(ok.sum())
        total_flops += float(per_input_flops(out, flops, cuts).sum())
        idx = out.exit_index.numpy()
        np.add.at(counts, idx, 1)
        np.add.at(hits, idx, ok)
        if heads is not None:
            left_here = torch.nn.functional.one_hot(out.exit_index, num_exits + 1)[:, :num_exits]
            wasted += float(((out.tried & ~left_here.bool()).double() @ heads).sum())
        ran_sum += out.ran.double().sum(0).numpy()
    n = len(test)
    return Measured(
        accuracy=correct / n,
        mflops=total_flops / n / 1e6,
        infer=plain if plain is not None else net.infer,
        exit_fractions=tuple(float(c / n) for c in counts),
        exit_accuracy=tuple(float(h / c) if c else None for h, c in zip(hits, counts, strict=True)),
        wasted_mflops=wasted / n / 1e6,
        exec_rates=tuple(float(r / n) for r in ran_sum),
    )


def measure_static(bench: Bench, backbone: BlockNet, flops: FlopsTable) -> Untimed:
    """The plain backbone: the reference every speed-up is against (timed as ``backbone``)."""
    m = measure(DynamicNet(backbone), flops, bench.data, bench.cfg, plain=backbone)
    return Untimed("static backbone", "-", m)


def choose_rules(
    bench: Bench, method: str, path_aware: bool, rec: ExitRecords, flops: FlopsTable
) -> list[tuple[str, ChosenRule]]:
    """``(setting, rule)`` for every allowed drop (and, for ``calibrated exits``,
    every compute budget), chosen on the validation record ``rec``."""
    cfg = bench.cfg
    chosen: list[tuple[str, ChosenRule]] = []
    for drop in cfg.max_drops:
        setting = f"max_drop={100 * drop:g}pt"
        if method == "entropy exits":
            chosen.append((setting, entropy_rule(rec, flops, max_drop=drop)))
        else:
            rule = calibrated_rule(
                rec, flops, max_drop=drop, path_aware=path_aware, levels=cfg.levels
            )
            chosen.append((setting, rule))
    if method == "calibrated exits":
        for b in cfg.budgets:
            rule = calibrated_rule(rec, flops, budget=b * bench.backbone_flops, levels=cfg.levels)
            chosen.append((f"budget={100 * b:g}%", rule))
    return chosen


def measure_rules(
    bench: Bench,
    method: str,
    net: BlockNet,
    exits: ExitBranches,
    flops: FlopsTable,
    chosen: list[tuple[str, ChosenRule]],
    done: int,
) -> list[Untimed]:
    """Each chosen rule on the test inputs, in order; ``done`` points came before."""
    names = (*exits.names, "final")
    out = []
    for setting, ch in chosen:
        m = measure(DynamicNet(net, exits, ch.rule), flops, bench.data, bench.cfg)
        val = ch.val
        out.append(Untimed(method, setting, m, names, ch.rule, val.accuracy, val.mean_cost / 1e6))
        bench.measured(done + len(out))
    return out


def sweep(
    bench: Bench,
    net: BlockNet,
    exits: ExitBranches,
    methods: tuple[tuple[str, bool], ...],
    done: int,
) -> tuple[list[Untimed], ExitRecords]:
    """Every ``(method, path_aware)`` on one exit set, from one validation record
    (returned too: the calibration rows read it). Each method's rules are chosen,
    then measured, before the next method's."""
    flops = flops_table(net, exits)
    rec = record_exits(net, exits, bench.val)
    out: list[Untimed] = []
    for method, path_aware in methods:
        chosen = choose_rules(bench, method, path_aware, rec, flops)
        out += measure_rules(bench, method, net, exits, flops, chosen, done + len(out))
    return out, rec


def measure_gates(bench: Bench, gates: TrainedGates, flops: FlopsTable) -> Untimed:
    """The gated backbone without exits."""
    m = measure(DynamicNet(gates.net), flops, bench.data, bench.cfg)
    return Untimed("gates", gate_setting(bench.cfg), m, val_accuracy=gates.metrics.get("val_acc"))


def gate_setting(cfg: DynamicConfig) -> str:
    return f"rate={cfg.gates.target_rate:g}"


def gate_rates(bench: Bench, gates: TrainedGates, flops: FlopsTable) -> list[GateRate]:
    """Each gated block's execution rate on the test inputs."""
    _, test_rates = gated_accuracy(gates.net, bench.data)
    setting = gate_setting(bench.cfg)
    return [
        GateRate("gates", setting, gates.net.block_names[i], r)
        for i, r in zip(flops.gate_index, test_rates, strict=True)
    ]


def calibration_rows(
    method: str, backbone: BlockNet, exits: ExitBranches, val_rec: ExitRecords, test: Dataset
) -> list[ExitCalibration]:
    """Per exit: temperature (fitted on val), head accuracy and ECE on the *test* split."""
    test_rec = record_exits(backbone, exits, test)
    rows = []
    for e, name in enumerate(exits.names):
        raw = test_rec.logits[e]
        t = test_rec.temperatures[e]
        before, after = torch.softmax(raw, 1), torch.softmax(raw / t, 1)
        val_after = torch.softmax(val_rec.logits[e] / t, 1)
        rows.append(
            ExitCalibration(
                method=method,
                name=name,
                cut=exits.cuts[e],
                temperature=t,
                head_accuracy=float((raw.argmax(1) == test_rec.labels).float().mean()),
                ece_before=expected_calibration_error(before, test_rec.labels),
                ece_after=expected_calibration_error(after, test_rec.labels),
                val_ece_after=expected_calibration_error(val_after, val_rec.labels),
                reliability_before=tuple(reliability_table(before, test_rec.labels)),
                reliability_after=tuple(reliability_table(after, test_rec.labels)),
            )
        )
    return rows


def time_points(bench: Bench, untimed: list[Untimed]) -> list[DynamicPoint]:
    """Every point timed side by side (:func:`time_side_by_side`); speed-ups against
    the first (the static backbone)."""
    cfg = bench.cfg
    timings = time_side_by_side(
        [u.measured.infer for u in untimed],
        bench.data.subset(cfg.latency_inputs, cfg.subset_seed + 1),
        bench.data.subset(cfg.throughput_inputs, cfg.subset_seed + 2),
        cfg.throughput_batch,
        bench.progress,
    )
    stats = [
        (statistics.median(lat), float(np.percentile(lat, 95)), float(np.mean(lat)), thr)
        for lat, thr in timings
    ]
    base_mflops = untimed[0].measured.mflops
    base_p50, _, base_mean, _ = stats[0]
    points = []
    for u, (p50, p95, mean, thr) in zip(untimed, stats, strict=True):
        m = u.measured
        has_exits = len(m.exit_fractions) > 1
        points.append(
            DynamicPoint(
                method=u.method,
                setting=u.setting,
                accuracy=m.accuracy,
                mflops_per_input=m.mflops,
                exit_fractions=m.exit_fractions if has_exits else None,
                exit_accuracy=m.exit_accuracy if has_exits else None,
                exit_names=u.exit_names if has_exits else None,
                wasted_mflops_per_input=m.wasted_mflops if has_exits else None,
                gate_exec_rates=m.exec_rates or None,
                val_accuracy=u.val_accuracy,
                val_mflops_per_input=u.val_mflops_per_input,
                rule=u.rule,
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                latency_mean_ms=mean,
                throughput_b32=thr,
                speedup_flops=base_mflops / m.mflops,
                # mean batch-1 latency against mean FLOPs: both are per-input averages
                speedup_measured=base_mean / mean,
                speedup_p50=base_p50 / p50,
            )
        )
    return points


def run_dynamic(
    cfg: DynamicConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
) -> DynamicResult:
    """Train (or reuse) exits and gates, choose rules on validation, measure on test.

    ``progress`` hears the training recipes' phases, then ``"measure (test
    split)"`` once per point and ``"time at batch 1 (side by side)"`` per chunk.
    """
    t_start = time.perf_counter()
    data = test.subset(cfg.num_inputs, cfg.subset_seed)
    backbone = backbone.eval()
    with one_thread():
        measured_on = machine_label()
    static_flops = flops_table(backbone)
    bench = Bench(cfg, val, data, static_flops.backbone, progress)

    untimed = [measure_static(bench, backbone, static_flops)]
    bench.measured(len(untimed))
    ex = train_or_load_exits(cfg.exits, backbone, train, val, cache, progress)
    methods: tuple[tuple[str, bool], ...] = (("entropy exits", False), ("calibrated exits", False))
    swept, rec = sweep(bench, ex.backbone, ex.exits, methods, len(untimed))
    untimed += swept
    calib = calibration_rows("calibrated exits", ex.backbone, ex.exits, rec, data)
    if cfg.joint is not None:
        jx = train_or_load_exits(cfg.joint, backbone, train, val, cache, progress)
        methods = (("calibrated exits (joint)", False),)
        swept, rec = sweep(bench, jx.backbone, jx.exits, methods, len(untimed))
        untimed += swept
        calib += calibration_rows("calibrated exits (joint)", jx.backbone, jx.exits, rec, data)
    tg = train_or_load_gates(cfg.gates, backbone, train, val, cache, progress)
    gflops = flops_table(tg.net)
    untimed.append(measure_gates(bench, tg, gflops))
    bench.measured(len(untimed))
    gx = train_or_load_exits(cfg.gated_exits, tg.net, train, val, cache, progress)
    methods = (("gates + exits", False), ("gates + path-aware exits", True))
    swept, rec = sweep(bench, tg.net, gx.exits, methods, len(untimed))
    untimed += swept
    calib += calibration_rows("gates + exits", tg.net, gx.exits, rec, data)
    gates = gate_rates(bench, tg, gflops)
    points = time_points(bench, untimed)
    conditions = DynamicConditions(
        num_inputs=len(data),
        backbone=cfg.backbone,
        backbone_mflops=static_flops.backbone / 1e6,
        threads=1,
        latency=f"batch 1, one thread, {cfg.latency_inputs} test inputs in chunks of 50, "
        f"each chunk through every method in turn; throughput: batch {cfg.throughput_batch}, "
        f"one thread, {cfg.throughput_inputs} inputs, the same way",
        measured_on=measured_on,
        tuned_on="thresholds, temperatures and path conditions on the validation split only",
        quick=cfg.quick,
        seconds=time.perf_counter() - t_start,
        config=to_json(dataclasses.asdict(cfg)),  # as the file has it: lists, not tuples
        train_metrics={"exits": ex.metrics, "gates": tg.metrics, "gated_exits": gx.metrics},
    )
    summary = summarise(points, calib, cfg)
    return DynamicResult(conditions, tuple(points), tuple(calib), tuple(gates), summary)


def _timed(value: float | None) -> float:
    """A timing field of a point :func:`time_points` made (never None there)."""
    if value is None:
        raise ValueError("summarise needs timed points")  # a bug, not a user's input
    return value


def summarise(
    points: list[DynamicPoint], exits: list[ExitCalibration], cfg: DynamicConfig
) -> DynamicSummary:
    """The issue's targets, judged on the test numbers (settings fixed before measuring)."""
    base = points[0]
    setting = f"max_drop={100 * cfg.headline_drop:g}pt"
    targets = []

    def drop_pt(p: DynamicPoint) -> float:
        return 100 * (base.accuracy - p.accuracy)

    def at(method: str) -> DynamicPoint | None:
        return next((p for p in points if (p.method, p.setting) == (method, setting)), None)

    cal = at("calibrated exits")
    if cal is not None:
        cut = 1 - cal.mflops_per_input / base.mflops_per_input
        speedup = _timed(cal.speedup_measured)
        targets.append(
            Target(
                name=f"calibrated exits ({setting})",
                target="drop <= 0.5 pt, compute -40 %, batch-1 latency >= 1.5x (mean)",
                reached=f"drop {drop_pt(cal):.2f} pt, compute {-100 * cut:+.1f} %, "
                f"latency {speedup:.2f}x (p50 {_timed(cal.speedup_p50):.2f}x)",
                met=drop_pt(cal) <= 0.5 and cut >= 0.4 and speedup >= 1.5,
            )
        )
    eces = [r.ece_after for r in exits if r.method == "calibrated exits"]
    if eces:
        targets.append(
            Target(
                name="ECE per exit after calibration (test)",
                target="<= 2 %",
                reached=", ".join(f"{100 * e:.2f} %" for e in eces),
                met=max(eces) <= 0.02,
            )
        )
    g = next((p for p in points if p.method == "gates"), None)
    if g is not None:
        fl = 1 - g.mflops_per_input / base.mflops_per_input
        tm = 1 - _timed(g.latency_mean_ms) / _timed(base.latency_mean_ms)
        targets.append(
            Target(
                name="gates",
                target="FLOPs -30 %, batch-1 time -20 % (mean), drop <= 0.5 pt",
                reached=f"FLOPs {-100 * fl:+.1f} %, time {-100 * tm:+.1f} %, "
                f"drop {drop_pt(g):.2f} pt",
                met=fl >= 0.3 and tm >= 0.2 and drop_pt(g) <= 0.5,
            )
        )
    pa, aw = at("gates + path-aware exits"), at("gates + exits")
    comparison = None
    if pa is not None and aw is not None:
        comparison = PathAwareComparison(
            setting=setting,
            always_wasted_mflops=aw.wasted_mflops_per_input,
            path_aware_wasted_mflops=pa.wasted_mflops_per_input,
            always_accuracy=aw.accuracy,
            path_aware_accuracy=pa.accuracy,
            always_mflops=aw.mflops_per_input,
            path_aware_mflops=pa.mflops_per_input,
        )
    return DynamicSummary(tuple(targets), comparison)
