"""Exit heads and gates train on tiny models and synthetic data; every tuning step
refuses the test split, and the rules chosen do not depend on the test data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from collabinfer.data import fashion_mnist
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.errors import ConfigError
from collabinfer.experiments.dynamic import DynamicConfig, run_dynamic
from collabinfer.model.blocks import BlockNet
from collabinfer.model.dynamic import ExitRule, flops_table
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import gated_blocks, is_gated
from collabinfer.model.zoo import create_model
from collabinfer.train import gates as gates_recipe
from collabinfer.train.exit_rules import (
    calibrated_rule,
    entropy_rule,
    path_conditions,
    record_exits,
)
from collabinfer.train.exits import (
    ExitConfig,
    calibrate_exits,
    train_exits,
    train_or_load_exits,
)
from collabinfer.train.gates import GateConfig, default_gates, train_gates, train_or_load_gates

EXITS = ExitConfig(cuts=(1, 2), width=8, epochs=1, batch_size=64)
GATES = GateConfig(epochs=1, batch_size=64, hidden=4)


@pytest.fixture(scope="module")
def splits() -> dict[str, Dataset]:
    return {
        "train": synthetic_dataset(256, seed=1, split="train"),
        "val": synthetic_dataset(128, seed=2, split="val"),
        "test": synthetic_dataset(128, seed=3, split="test"),
    }


@pytest.fixture(scope="module")
def backbone() -> BlockNet:
    torch.manual_seed(0)
    return create_model("tiny-cnn").eval()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained(backbone: BlockNet, splits: dict[str, Dataset]):
    before = _state(backbone)
    net, exits, stats = train_exits(EXITS, backbone, splits["train"], splits["val"])
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen backbone moved"
    return net, exits, stats


@pytest.fixture(scope="module")
def gated(backbone: BlockNet, splits: dict[str, Dataset]):
    return train_gates(GATES, backbone, splits["train"], splits["val"])


def test_train_exits_sets_positive_temperatures_and_reports(trained) -> None:
    net, exits, stats = trained
    assert exits.cuts == (1, 2)
    assert exits.names == ("after_conv", "after_res")
    temps = exits.temperature.tolist()
    assert all(t > 0 for t in temps)
    for e, name in enumerate(exits.names):
        assert stats[f"temperature_{name}"] == pytest.approx(temps[e])
        assert 0.0 <= stats[f"val_head_acc_{name}"] <= 1.0
        assert 0.0 <= stats[f"val_ece_before_{name}"] <= 1.0
        assert 0.0 <= stats[f"val_ece_after_{name}"] <= 1.0
    assert stats["train_seconds"] >= 0
    assert not exits.training and not net.training


def test_progress_reports_every_step(backbone, splits) -> None:
    seen: list[tuple[str, int, int]] = []
    losses: list[float] = []

    def progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        seen.append((phase, step, total))
        losses.append(stats["loss"])

    cfg = dataclasses.replace(EXITS, epochs=1, joint_epochs=1)
    before = _state(backbone)
    net, _, _ = train_exits(cfg, backbone, splits["train"], splits["val"], progress)
    assert net is not backbone  # joint training fine-tunes a copy ...
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert not _same_state(net, backbone)  # ... and the copy moved
    # one bar per phase, 256 / 64 = 4 steps per epoch each
    assert seen == [("train exits (frozen backbone)", s, 4) for s in range(1, 5)] + [
        ("train exits (joint)", s, 4) for s in range(1, 5)
    ]
    assert all(loss > 0 for loss in losses)


def test_joint_training_is_refused_for_a_gated_backbone(gated, splits) -> None:
    cfg = dataclasses.replace(EXITS, joint_epochs=1)
    with pytest.raises(ConfigError):
        train_exits(cfg, gated[0], splits["train"], splits["val"])


def test_calibrate_exits_sets_what_it_reports(trained, splits) -> None:
    net, exits, _ = trained
    fresh = ExitBranches.for_model(net, exits.cuts, width=8)
    fresh.load_state_dict(exits.state_dict())
    fresh.set_temperatures([1.0, 1.0])
    cals = calibrate_exits(net, fresh, splits["val"])
    assert [c.cut for c in cals] == [1, 2]
    assert [c.temperature for c in cals] == pytest.approx(fresh.temperature.tolist())
    assert [c.temperature for c in cals] == pytest.approx(exits.temperature.tolist())


def test_train_or_load_exits_caches(backbone, splits, tmp_path: Path) -> None:
    first = train_or_load_exits(EXITS, backbone, splits["train"], splits["val"], tmp_path)
    assert not first.reused and first.path is not None and first.path.exists()
    assert first.path.is_relative_to(tmp_path)
    second = train_or_load_exits(EXITS, backbone, splits["train"], splits["val"], tmp_path)
    assert second.reused and second.path == first.path
    assert _same_state(first.exits, second.exits)
    assert torch.equal(second.exits.temperature, first.exits.temperature)
    assert second.metrics == first.metrics
    # another config is another checkpoint
    other = dataclasses.replace(EXITS, width=4)
    third = train_or_load_exits(other, backbone, splits["train"], splits["val"], tmp_path)
    assert not third.reused and third.path != first.path


def test_train_gates_returns_a_gated_net(gated, backbone) -> None:
    net, stats = gated
    assert is_gated(net) and not is_gated(backbone)
    assert 0.0 <= stats["val_exec_rate"] <= 1.0
    assert 0.0 <= stats["val_acc"] <= 1.0
    assert [f"val_exec_rate_{net.block_names[i]}" in stats for i, _ in gated_blocks(net)] == [True]
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_train_or_load_gates_caches(backbone, splits, tmp_path: Path) -> None:
    first = train_or_load_gates(GATES, backbone, splits["train"], splits["val"], tmp_path)
    second = train_or_load_gates(GATES, backbone, splits["train"], splits["val"], tmp_path)
    assert not first.reused and second.reused
    assert _same_state(first.net, second.net)


# -- the test split is never used for tuning ---------------------------------------------


def test_exit_training_refuses_the_test_split(backbone, splits) -> None:
    tr, va, te = splits["train"], splits["val"], splits["test"]
    with pytest.raises(ConfigError, match="test split"):
        train_exits(EXITS, backbone, te, va)
    with pytest.raises(ConfigError, match="test split"):
        train_exits(EXITS, backbone, tr, te)


def test_calibration_refuses_the_test_split(trained, splits) -> None:
    net, exits, _ = trained
    before = exits.temperature.clone()
    with pytest.raises(ConfigError, match="test split"):
        calibrate_exits(net, exits, splits["test"])
    assert torch.equal(exits.temperature, before)


def test_gate_training_refuses_the_test_split(backbone, splits) -> None:
    tr, va, te = splits["train"], splits["val"], splits["test"]
    with pytest.raises(ConfigError, match="test split"):
        train_gates(GATES, backbone, te, va)
    with pytest.raises(ConfigError, match="test split"):
        train_gates(GATES, backbone, tr, te)


def test_cached_training_refuses_the_test_split_before_training(backbone, splits, tmp_path) -> None:
    tr, va, te = splits["train"], splits["val"], splits["test"]
    with pytest.raises(ConfigError, match="test split"):
        train_or_load_exits(EXITS, backbone, tr, te, tmp_path)
    with pytest.raises(ConfigError, match="test split"):
        train_or_load_gates(GATES, backbone, te, va, tmp_path)
    assert not list(tmp_path.rglob("*.pt"))  # nothing was trained, nothing cached


def test_a_cache_hit_still_refuses_the_test_split(backbone, splits, tmp_path) -> None:
    tr, va, te = splits["train"], splits["val"], splits["test"]
    train_or_load_exits(EXITS, backbone, tr, va, tmp_path)
    train_or_load_gates(GATES, backbone, tr, va, tmp_path)
    with pytest.raises(ConfigError, match="test split"):
        train_or_load_exits(EXITS, backbone, tr, te, tmp_path)
    with pytest.raises(ConfigError, match="test split"):
        train_or_load_gates(GATES, backbone, tr, te, tmp_path)


def test_rule_choice_refuses_records_of_the_test_split(trained, splits) -> None:
    net, exits, _ = trained
    flops = flops_table(net, exits)
    rec = record_exits(net, exits, splits["test"])
    assert rec.split == "test"
    with pytest.raises(ConfigError):
        calibrated_rule(rec, flops, max_drop=0.01)
    with pytest.raises(ConfigError):
        calibrated_rule(rec, flops, budget=0.5 * flops.backbone)
    with pytest.raises(ConfigError):
        entropy_rule(rec, flops, max_drop=0.01)
    with pytest.raises(ConfigError):
        path_conditions(rec, flops, [0.5, 0.5])


def _choose(
    backbone: BlockNet, gated_net: BlockNet, train: Dataset, val: Dataset
) -> list[tuple[ExitRule, list[float]]]:
    """The whole choice pipeline: train and calibrate heads, record val, pick rules."""
    out = []
    for net in (backbone, gated_net):
        _, exits, _ = train_exits(EXITS, net, train, val)
        flops = flops_table(net, exits)
        rec = record_exits(net, exits, val)
        temps = exits.temperature.tolist()
        for chosen in (
            calibrated_rule(rec, flops, max_drop=0.02, levels=8),
            calibrated_rule(rec, flops, budget=0.8 * flops.backbone, levels=8),
            calibrated_rule(rec, flops, max_drop=0.02, path_aware=True, levels=8),
            entropy_rule(rec, flops, max_drop=0.02, levels=16),
        ):
            out.append((chosen.rule, temps))
    return out


def test_the_choice_pipeline_never_loads_the_test_split(
    backbone, gated, splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []

    def load_split(split: str, root: object = None, download: bool = False) -> Dataset:
        loaded.append(split)
        if split == "test":
            raise AssertionError("the test split was loaded while tuning")
        return splits[split]

    monkeypatch.setattr(fashion_mnist, "load_split", load_split)
    rules = _choose(backbone, gated[0], splits["train"], splits["val"])
    assert len(rules) == 8
    assert all(isinstance(r, ExitRule) and len(r.thresholds) == 2 for r, _ in rules)
    assert "test" not in loaded


def test_default_gates_loads_only_train_and_val(
    backbone, splits, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded: list[str] = []

    def load_split(split: str, root: object = None, download: bool = False) -> Dataset:
        loaded.append(split)
        if split == "test":
            raise AssertionError("the test split was loaded while tuning")
        return splits[split]

    monkeypatch.setattr(gates_recipe, "load_split", load_split)
    tg = default_gates(backbone, cache=tmp_path, config=GATES)
    assert is_gated(tg.net)
    assert sorted(set(loaded)) == ["train", "val"]


def test_chosen_rules_do_not_depend_on_the_test_data(backbone, splits, tmp_path: Path) -> None:
    """The same pipeline, run twice, with the test split's data scrambled in between:
    the rules, temperatures and validation numbers must not move."""
    cfg = DynamicConfig(
        backbone="tiny-cnn",
        exits=EXITS,
        joint=None,
        gates=GATES,
        gated_exits=EXITS,
        max_drops=(0.0, 0.05),
        budgets=(0.8,),
        headline_drop=0.05,
        num_inputs=64,
        latency_inputs=4,
        throughput_inputs=16,
        throughput_batch=8,
        levels=8,
    )
    te = splits["test"]
    g = torch.Generator().manual_seed(7)
    scrambled = Dataset(
        torch.rand(te.images.shape, generator=g),
        torch.randint(0, 10, te.labels.shape, generator=g),
        "test",
        "scrambled",
        "scrambled",
    )
    results = []
    for i, test in enumerate((te, scrambled)):
        torch.manual_seed(0)
        cache = tmp_path / f"run{i}"  # a fresh cache: both runs train from scratch
        results.append(run_dynamic(cfg, backbone, splits["train"], splits["val"], test, cache))
    a, b = results

    def chosen(r) -> list[tuple]:
        return [(p.method, p.setting, repr(p.rule), p.val_accuracy) for p in r.points]

    assert chosen(a) == chosen(b)
    assert sum(p.rule is not None for p in a.points) >= 8
    assert [(r.method, r.temperature) for r in a.exits] == [
        (r.method, r.temperature) for r in b.exits
    ]
    assert _without_seconds(a.conditions.train_metrics) == _without_seconds(
        b.conditions.train_metrics
    )
    # ... and the test data did reach the measurements: the accuracies differ
    assert [p.accuracy for p in a.points] != [p.accuracy for p in b.points]


def _without_seconds(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {m: v for m, v in d.items() if m != "train_seconds"} for k, d in metrics.items()}
