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
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.model.blocks import BlockNet
from collabinfer.model.calibration import expected_calibration_error, reliability_table
from collabinfer.model.dynamic import DynamicNet, FlopsTable, flops_table, per_input_flops
from collabinfer.model.exits import ExitBranches
from collabinfer.plan.profile import machine_label, one_thread
from collabinfer.train.exit_rules import (
    ChosenRule,
    ExitRecords,
    calibrated_rule,
    entropy_rule,
    record_exits,
)
from collabinfer.train.exits import ExitConfig, train_or_load_exits
from collabinfer.train.gates import GateConfig, gated_accuracy, train_or_load_gates

ProgressFn = Callable[[str, int, int], None]
TrainProgressFn = Callable[[str, int, int, dict[str, float]], None]


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


@dataclass(frozen=True)
class DynamicResult:
    conditions: dict[str, Any]
    points: list[dict[str, Any]]
    exits: list[dict[str, Any]] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Measured:
    accuracy: float
    mflops: float
    infer: Callable[[torch.Tensor], object]  # what the timing runs (batch 1 and batch 32)
    exit_fractions: tuple[float, ...]
    exit_accuracy: tuple[float | None, ...]
    wasted_mflops: float
    exec_rates: tuple[float, ...]


Infer = Callable[[torch.Tensor], object]


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
            if progress is not None:
                progress("time at batch 1 (side by side)", min(n, start + chunk), n)
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


def _point(method: str, setting: str, m: Measured, names: list[str], **extra: Any) -> dict:
    d: dict[str, Any] = {
        "method": method,
        "setting": setting,
        "accuracy": m.accuracy,
        "mflops_per_input": m.mflops,
    }
    if len(m.exit_fractions) > 1:
        d["exit_fractions"] = list(m.exit_fractions)
        d["exit_accuracy"] = list(m.exit_accuracy)
        d["exit_names"] = names
        d["wasted_mflops_per_input"] = m.wasted_mflops
    if m.exec_rates:
        d["gate_exec_rates"] = list(m.exec_rates)
    return d | extra


def _calibration_rows(
    method: str, backbone: BlockNet, exits: ExitBranches, val_rec: ExitRecords, test: Dataset
) -> list[dict[str, Any]]:
    """Per exit: temperature (fitted on val), head accuracy and ECE on the *test* split."""
    test_rec = record_exits(backbone, exits, test)
    rows = []
    for e, name in enumerate(exits.names):
        raw = test_rec.logits[e]
        t = test_rec.temperatures[e]
        before, after = torch.softmax(raw, 1), torch.softmax(raw / t, 1)
        val_after = torch.softmax(val_rec.logits[e] / t, 1)
        rows.append(
            {
                "method": method,
                "name": name,
                "cut": exits.cuts[e],
                "temperature": t,
                "head_accuracy": float((raw.argmax(1) == test_rec.labels).float().mean()),
                "ece_before": expected_calibration_error(before, test_rec.labels),
                "ece_after": expected_calibration_error(after, test_rec.labels),
                "val_ece_after": expected_calibration_error(val_after, val_rec.labels),
                "reliability_before": [
                    dataclasses.asdict(b) for b in reliability_table(before, test_rec.labels)
                ],
                "reliability_after": [
                    dataclasses.asdict(b) for b in reliability_table(after, test_rec.labels)
                ],
            }
        )
    return rows


def run_dynamic(
    cfg: DynamicConfig,
    backbone: BlockNet,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    train_progress: TrainProgressFn | None = None,
) -> DynamicResult:
    """Train (or reuse) exits and gates, choose rules on validation, measure on test."""
    t_start = time.perf_counter()
    data = test.subset(cfg.num_inputs, cfg.subset_seed)
    backbone = backbone.eval()
    points: list[dict[str, Any]] = []
    infers: list[Infer] = []  # what each point runs, timed side by side at the end
    calib: list[dict[str, Any]] = []
    drops = len(cfg.max_drops)
    todo = 2 + 4 * drops + len(cfg.budgets) + (drops if cfg.joint is not None else 0)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("measure (test split)", done, todo)

    with one_thread():
        measured_on = machine_label()
    static_flops = flops_table(backbone)
    base = measure(DynamicNet(backbone), static_flops, data, cfg, plain=backbone)
    points.append(_point("static backbone", "-", base, []))
    infers.append(base.infer)
    tick("static backbone")

    def sweep(net: BlockNet, exits: ExitBranches, *methods: tuple[str, bool]) -> ExitRecords:
        """Every ``(method, path_aware)`` on one exit set, from one validation record."""
        flops = flops_table(net, exits)
        rec = record_exits(net, exits, val)
        for method, path_aware in methods:
            sweep_one(method, net, exits, path_aware, flops, rec)
        return rec

    def sweep_one(
        method: str,
        net: BlockNet,
        exits: ExitBranches,
        path_aware: bool,
        flops: FlopsTable,
        rec: ExitRecords,
    ) -> None:
        names = [*exits.names, "final"]
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
                rule = calibrated_rule(
                    rec, flops, budget=b * static_flops.backbone, levels=cfg.levels
                )
                chosen.append((f"budget={100 * b:g}%", rule))
        for setting, ch in chosen:
            m = measure(DynamicNet(net, exits, ch.rule), flops, data, cfg)
            infers.append(m.infer)
            points.append(
                _point(
                    method,
                    setting,
                    m,
                    names,
                    val_accuracy=ch.val.accuracy,
                    val_mflops_per_input=ch.val.mean_cost / 1e6,
                    rule=ch.rule.to_json(),
                )
            )
            tick(f"{method} {setting}")

    ex = train_or_load_exits(cfg.exits, backbone, train, val, cache, train_progress)
    rec = sweep(ex.backbone, ex.exits, ("entropy exits", False), ("calibrated exits", False))
    calib += _calibration_rows("calibrated exits", ex.backbone, ex.exits, rec, data)
    if cfg.joint is not None:
        jx = train_or_load_exits(cfg.joint, backbone, train, val, cache, train_progress)
        rec = sweep(jx.backbone, jx.exits, ("calibrated exits (joint)", False))
        calib += _calibration_rows("calibrated exits (joint)", jx.backbone, jx.exits, rec, data)
    tg = train_or_load_gates(cfg.gates, backbone, train, val, cache, train_progress)
    gflops = flops_table(tg.net)
    gm = measure(DynamicNet(tg.net), gflops, data, cfg)
    infers.append(gm.infer)
    rate_setting = f"rate={cfg.gates.target_rate:g}"
    points.append(_point("gates", rate_setting, gm, [], val_accuracy=tg.metrics.get("val_acc")))
    tick("gates")
    gx = train_or_load_exits(cfg.gated_exits, tg.net, train, val, cache, train_progress)
    rec = sweep(tg.net, gx.exits, ("gates + exits", False), ("gates + path-aware exits", True))
    calib += _calibration_rows("gates + exits", tg.net, gx.exits, rec, data)
    _, test_rates = gated_accuracy(tg.net, data)
    gate_rows = [
        {"method": "gates", "setting": rate_setting, "block": tg.net.block_names[i], "exec_rate": r}
        for i, r in zip(gflops.gate_index, test_rates, strict=True)
    ]
    timings = time_side_by_side(
        infers,
        data.subset(cfg.latency_inputs, cfg.subset_seed + 1),
        data.subset(cfg.throughput_inputs, cfg.subset_seed + 2),
        cfg.throughput_batch,
        progress,
    )
    for p, (lat, thr) in zip(points, timings, strict=True):
        p["latency_p50_ms"] = statistics.median(lat)
        p["latency_p95_ms"] = float(np.percentile(lat, 95))
        p["latency_mean_ms"] = float(np.mean(lat))
        p["throughput_b32"] = thr
    for p in points:
        p["speedup_flops"] = points[0]["mflops_per_input"] / p["mflops_per_input"]
        # mean batch-1 latency against mean FLOPs: both are per-input averages
        p["speedup_measured"] = points[0]["latency_mean_ms"] / p["latency_mean_ms"]
        p["speedup_p50"] = points[0]["latency_p50_ms"] / p["latency_p50_ms"]
    conditions = {
        "num_inputs": len(data),
        "backbone": cfg.backbone,
        "backbone_mflops": static_flops.backbone / 1e6,
        "threads": 1,
        "latency": f"batch 1, one thread, {cfg.latency_inputs} test inputs in chunks of 50, "
        f"each chunk through every method in turn; throughput: batch {cfg.throughput_batch}, "
        f"one thread, {cfg.throughput_inputs} inputs, the same way",
        "measured_on": measured_on,
        "tuned_on": "thresholds, temperatures and path conditions on the validation split only",
        "quick": cfg.quick,
        "seconds": time.perf_counter() - t_start,
        "config": dataclasses.asdict(cfg),
        "train_metrics": {"exits": ex.metrics, "gates": tg.metrics, "gated_exits": gx.metrics},
    }
    result = DynamicResult(conditions, points, calib, gate_rows)
    return dataclasses.replace(result, summary=summarise(result, cfg))


def _at(points: list[dict[str, Any]], method: str, setting: str) -> dict[str, Any] | None:
    return next((p for p in points if p["method"] == method and p["setting"] == setting), None)


def summarise(result: DynamicResult, cfg: DynamicConfig) -> dict[str, Any]:
    """The issue's targets, judged on the test numbers (settings fixed before measuring)."""
    pts = result.points
    base = pts[0]
    setting = f"max_drop={100 * cfg.headline_drop:g}pt"
    targets = []

    def drop_pt(p: dict[str, Any]) -> float:
        return 100 * (base["accuracy"] - p["accuracy"])

    cal = _at(pts, "calibrated exits", setting)
    if cal is not None:
        cut = 1 - cal["mflops_per_input"] / base["mflops_per_input"]
        targets.append(
            {
                "name": f"calibrated exits ({setting})",
                "target": "drop <= 0.5 pt, compute -40 %, batch-1 latency >= 1.5x (mean)",
                "reached": f"drop {drop_pt(cal):.2f} pt, compute {-100 * cut:+.1f} %, "
                f"latency {cal['speedup_measured']:.2f}x (p50 {cal['speedup_p50']:.2f}x)",
                "met": drop_pt(cal) <= 0.5 and cut >= 0.4 and cal["speedup_measured"] >= 1.5,
            }
        )
    eces = [r["ece_after"] for r in result.exits if r["method"] == "calibrated exits"]
    if eces:
        targets.append(
            {
                "name": "ECE per exit after calibration (test)",
                "target": "<= 2 %",
                "reached": ", ".join(f"{100 * e:.2f} %" for e in eces),
                "met": max(eces) <= 0.02,
            }
        )
    g = next((p for p in pts if p["method"] == "gates"), None)
    if g is not None:
        fl = 1 - g["mflops_per_input"] / base["mflops_per_input"]
        tm = 1 - g["latency_mean_ms"] / base["latency_mean_ms"]
        targets.append(
            {
                "name": "gates",
                "target": "FLOPs -30 %, batch-1 time -20 % (mean), drop <= 0.5 pt",
                "reached": f"FLOPs {-100 * fl:+.1f} %, time {-100 * tm:+.1f} %, "
                f"drop {drop_pt(g):.2f} pt",
                "met": fl >= 0.3 and tm >= 0.2 and drop_pt(g) <= 0.5,
            }
        )
    pa = _at(pts, "gates + path-aware exits", setting)
    aw = _at(pts, "gates + exits", setting)
    comparison = None
    if pa is not None and aw is not None:
        comparison = {
            "setting": setting,
            "always_wasted_mflops": aw.get("wasted_mflops_per_input"),
            "path_aware_wasted_mflops": pa.get("wasted_mflops_per_input"),
            "always_accuracy": aw["accuracy"],
            "path_aware_accuracy": pa["accuracy"],
            "always_mflops": aw["mflops_per_input"],
            "path_aware_mflops": pa["mflops_per_input"],
        }
    return {"targets": targets, "path_aware_vs_always": comparison}
