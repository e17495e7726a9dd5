"""The dynamic experiment on a tiny model and synthetic data: its typed result, the
file's layout, one progress callback."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.experiments.dynamic import DynamicConfig, DynamicResult, run_dynamic
from collabinfer.model.dynamic import ExitRule
from collabinfer.model.zoo import create_model
from collabinfer.train.exits import ExitConfig
from collabinfer.train.gates import GateConfig

EXITS = ExitConfig(cuts=(1, 2), width=8, epochs=1, batch_size=64)
CFG = DynamicConfig(
    backbone="tiny-cnn",
    exits=EXITS,
    joint=dataclasses.replace(EXITS, joint_epochs=1),
    gates=GateConfig(epochs=1, batch_size=64, hidden=4),
    gated_exits=EXITS,
    max_drops=(0.0, 0.05),
    budgets=(0.8,),
    headline_drop=0.05,
    num_inputs=64,
    latency_inputs=8,
    throughput_inputs=16,
    throughput_batch=8,
    levels=8,
)
SEEN: list[tuple[str, int, int, Mapping[str, float]]] = []
METHODS = [
    "static backbone",
    *["entropy exits"] * 2,
    *["calibrated exits"] * 3,
    *["calibrated exits (joint)"] * 2,
    "gates",
    *["gates + exits"] * 2,
    *["gates + path-aware exits"] * 2,
]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> DynamicResult:
    torch.manual_seed(0)
    backbone = create_model("tiny-cnn").eval()

    def progress(task: str, done: int, total: int, stats: Mapping[str, float]) -> None:
        SEEN.append((task, done, total, stats))

    return run_dynamic(
        CFG,
        backbone,
        synthetic_dataset(256, seed=1, split="train"),
        synthetic_dataset(128, seed=2, split="val"),
        synthetic_dataset(128, seed=3, split="test"),
        tmp_path_factory.mktemp("cache"),
        progress,
    )


def test_points_in_the_order_they_are_measured(result: DynamicResult) -> None:
    assert [p.method for p in result.points] == METHODS
    assert len(result.points) == CFG.num_points
    assert [p.setting for p in result.points if p.method == "calibrated exits"] == [
        "max_drop=0pt",
        "max_drop=5pt",
        "budget=80%",
    ]
    static = result.points[0]
    assert static.speedup_flops == 1.0 and static.speedup_measured == 1.0
    for p in result.points:
        has_rule = p.method not in ("static backbone", "gates")
        assert isinstance(p.rule, ExitRule) is has_rule
        assert (p.exit_fractions is not None) is has_rule
        assert (p.gate_exec_rates is not None) is p.method.startswith("gates")
    assert [e.method for e in result.exits] == [
        *["calibrated exits"] * 2,
        *["calibrated exits (joint)"] * 2,
        *["gates + exits"] * 2,
    ]
    assert result.gates and all(g.method == "gates" for g in result.gates)
    assert result.summary.targets and result.summary.path_aware_vs_always is not None


def test_the_file_keeps_its_layout_and_reads_back(result: DynamicResult, tmp_path: Path) -> None:
    result.save(tmp_path)
    data = json.loads((tmp_path / "dynamic.json").read_text())
    assert list(data) == ["conditions", "points", "exits", "gates", "summary"]
    assert list(data["points"][0]) == [
        "method",
        "setting",
        "accuracy",
        "mflops_per_input",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_mean_ms",
        "throughput_b32",
        "speedup_flops",
        "speedup_measured",
        "speedup_p50",
    ]
    assert list(data["points"][-1])[4:12] == [
        "exit_fractions",
        "exit_accuracy",
        "exit_names",
        "wasted_mflops_per_input",
        "gate_exec_rates",
        "val_accuracy",
        "val_mflops_per_input",
        "rule",
    ]
    assert set(data["points"][-1]["rule"]) == {"thresholds", "score", "allowed_paths"}
    assert list(data["summary"]["targets"][0]) == ["name", "target", "reached", "met"]
    assert DynamicResult.load(tmp_path) == result


def test_one_progress_callback_hears_training_measuring_and_timing(
    result: DynamicResult,
) -> None:
    measured = [(d, t) for task, d, t, _ in SEEN if task == "measure (test split)"]
    assert measured == [(i, CFG.num_points) for i in range(1, CFG.num_points + 1)]
    timed = [(d, t) for task, d, t, _ in SEEN if task == "time at batch 1 (side by side)"]
    assert timed[-1] == (CFG.latency_inputs, CFG.latency_inputs)
    training = {task for task, *_ in SEEN} - {
        "measure (test split)",
        "time at batch 1 (side by side)",
    }
    assert training, "the training recipes report through the same callback"
    assert all(isinstance(stats, Mapping) for *_, stats in SEEN)
