"""The rate-accuracy experiment on a tiny model and synthetic data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.experiments.rate_accuracy import (
    RateAccuracyConfig,
    RateAccuracyResult,
    run_rate_accuracy,
    summary,
)
from collabinfer.model.zoo import create_model
from collabinfer.report.rate_accuracy import render_rate_accuracy, write_rate_accuracy

SEEN: list[tuple[str, int, int, Mapping[str, float]]] = []


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> RateAccuracyResult:
    torch.manual_seed(0)
    teacher = create_model("tiny-cnn").eval()
    cfg = RateAccuracyConfig(
        num_inputs=24,
        betas=(0.1,),
        target_cut=2,
        channels=2,
        hidden=8,
        distill_epochs=1,
        rate_epochs=1,
        tail_epochs=0,
    )
    train = synthetic_dataset(96, seed=1)
    val = synthetic_dataset(32, seed=2)
    test = synthetic_dataset(40, seed=3, split="test")
    cache = tmp_path_factory.mktemp("bn")

    def progress(task: str, done: int, total: int, stats: Mapping[str, float]) -> None:
        SEEN.append((task, done, total, stats))

    return run_rate_accuracy(cfg, teacher, train, val, test, cache, progress)


def test_every_family_and_exact_byte_counts(result) -> None:
    methods = {p.method for p in result.points}
    assert methods == {"input", "features", "bottleneck-hd", "bottleneck-sc"}
    by = {(p.method, p.cut, p.setting): p for p in result.points}
    assert by[("input", 0, "u8")].bytes_per_input == 784
    # tiny-cnn: cut 1 is 4x14x14
    assert by[("features", 1, "fp32")].bytes_per_input == 4 * 4 * 14 * 14
    assert by[("features", 1, "fp16")].bytes_per_input == 2 * 4 * 14 * 14
    # fp32 features are lossless: the tail sees exactly what it would have
    for p in result.points:
        if p.method == "features" and p.setting == "fp32":
            assert p.accuracy == result.reference_accuracy
    for p in result.points:
        assert p.bytes_per_input > 0 and 0.0 <= p.accuracy <= 1.0
    # the entropy-coded latent (2x7x7 symbols) is far smaller than raw pixels
    bn = [p for p in result.points if p.method.startswith("bottleneck")]
    assert all(p.bytes_per_input < 784 for p in bn)


def test_one_progress_callback_hears_training_and_measuring(result) -> None:
    tasks = [task for task, *_ in SEEN]
    measured = ("input codecs", "feature cuts", "bottlenecks")
    assert set(measured) <= set(tasks)
    assert set(tasks) - set(measured), "the bottleneck recipes report through it too"
    assert tasks.index("input codecs") > max(
        i for i, t in enumerate(tasks) if t not in measured
    )  # training first, then the families
    for task in measured:
        dones = [(d, t) for name, d, t, _ in SEEN if name == task]
        assert [d for d, _ in dones] == list(range(1, dones[0][1] + 1))
    assert all(isinstance(stats, Mapping) for *_, stats in SEEN)


def test_save_then_load_is_the_same_result(result, tmp_path: Path) -> None:
    result.save(tmp_path)
    assert RateAccuracyResult.load(tmp_path) == result
    bn = result.conditions.bottlenecks
    assert [b.method for b in bn] == ["bottleneck-hd", "bottleneck-sc"]
    assert result.conditions.encoder is not None and result.conditions.encoder.encoder_params > 0


def test_summary_and_files(result, tmp_path: Path) -> None:
    s = summary(result)
    assert s.accuracy_floor == pytest.approx(result.reference_accuracy - 0.005)
    paths = write_rate_accuracy(result, tmp_path)
    assert {p.name for p in paths} >= {
        "rate_accuracy.json",
        "rate_accuracy.md",
        "rate_accuracy.png",
    }
    data = json.loads((tmp_path / "rate_accuracy.json").read_text())
    assert set(data) == {"points", "reference_accuracy", "conditions", "summary"}
    assert set(data["points"][0]) >= {"method", "cut", "setting", "bytes_per_input", "accuracy"}
    md = (tmp_path / "rate_accuracy.md").read_text()
    (tmp_path / "rate_accuracy.md").unlink()
    render_rate_accuracy(tmp_path)
    assert (tmp_path / "rate_accuracy.md").read_text() == md
