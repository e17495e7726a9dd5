"""The one training loop and the one train-or-load cache every recipe shares."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.errors import CheckpointError, ConfigError
from collabinfer.model.zoo import create_model
from collabinfer.train.bottleneck import BottleneckConfig, train_bottleneck
from collabinfer.train.cache import Trained, cached, detached, slot_for
from collabinfer.train.loop import Phase, batches, fit, random_hflip

TRAIN = synthetic_dataset(100, seed=1, split="train")
VAL = synthetic_dataset(40, seed=2, split="val")
TEST = synthetic_dataset(40, seed=3, split="test")


def test_batches_draw_one_permutation_then_one_flip_per_batch() -> None:
    got = list(batches(TRAIN, 32, torch.Generator().manual_seed(5), hflip=True))
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(len(TRAIN), generator=g)
    for i, (x, y) in zip(range(0, len(TRAIN), 32), got, strict=True):
        idx = perm[i : i + 32]
        assert torch.equal(x, random_hflip(TRAIN.images[idx], g))
        assert torch.equal(y, TRAIN.labels[idx])
    assert [len(y) for _, y in got] == [32, 32, 32, 4]


def test_fit_steps_reports_and_validates_each_epoch() -> None:
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[tuple[str, int, int, Mapping[str, float]]] = []
    modes: list[bool] = []

    def after(epoch: int) -> Mapping[str, float]:
        model.eval()
        return {"val_acc": 0.5 + epoch / 10}

    before = detached(model)
    history = fit(
        Phase(
            "train tiny",
            2,
            lambda x, y: torch.nn.functional.cross_entropy(model(x), y),
            opt,
            modes=lambda: modes.append(model.train().training),
            after_epoch=after,
        ),
        TRAIN,
        50,
        torch.Generator().manual_seed(0),
        progress=lambda *a: seen.append(a),
    )
    assert history == [{"val_acc": 0.6}, {"val_acc": 0.7}]
    assert modes == [True, True]  # training mode restored after each validation
    steps = [(d, t) for task, d, t, s in seen if "val_acc" not in s]
    assert steps == [(i, 4) for i in range(1, 5)]
    assert {task for task, *_ in seen} == {"train tiny"}
    epochs = [s for *_, s in seen if "val_acc" in s]
    assert [(s["epoch"], s["val_acc"]) for s in epochs] == [(1, 0.6), (2, 0.7)]
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _recipe(calls: list[str], value: float = 1.0):
    def load(ck, path):
        calls.append("load")
        return float(ck.state_dict["w"])

    def train():
        calls.append("train")
        return Trained(value, {"w": torch.tensor(value)}, {"val_acc": 0.5})

    return load, train


def test_cache_trains_once_then_loads(tmp_path: Path) -> None:
    calls: list[str] = []
    load, train = _recipe(calls, 3.0)
    slot = slot_for("thing", {"a": 1}, TRAIN.digest, tmp_path)
    seen: list[tuple[str, int, int, Mapping[str, float]]] = []
    kw = {"config": {"a": 1}, "tuning": {"training": TRAIN}, "load": load, "train": train}
    first = cached(slot, **kw, progress=lambda *a: seen.append(a))
    assert seen == []  # training reports through the recipe's own loop
    again = cached(slot, **kw, progress=lambda *a: seen.append(a), task="train it")
    assert seen == [("train it", 1, 1, {"reused": 1.0})]  # a log says what was reused
    assert (first.reused, again.reused) == (False, True)
    assert first.value == again.value == 3.0 and again.metrics == {"val_acc": 0.5}
    assert calls == ["train", "load"]
    assert slot.path == tmp_path / "checkpoints" / f"thing-{slot.key}.pt"
    cached(slot, config={"a": 1}, tuning={}, load=load, train=train, force=True)
    assert calls[-1] == "train"


def test_cache_refuses_the_test_split_even_on_a_hit(tmp_path: Path) -> None:
    calls: list[str] = []
    load, train = _recipe(calls)
    slot = slot_for("thing", {}, TRAIN.digest, tmp_path)
    cached(slot, config={}, tuning={"training": TRAIN}, load=load, train=train)
    with pytest.raises(ConfigError, match="calibration must not use the test split"):
        cached(slot, config={}, tuning={"calibration": TEST}, load=load, train=train)
    assert calls == ["train"]


def test_cache_load_only_and_corrupt_files_say_so(tmp_path: Path) -> None:
    calls: list[str] = []
    load, train = _recipe(calls)
    slot = slot_for("thing", {}, TRAIN.digest, tmp_path)
    with pytest.raises(CheckpointError, match="no trained thing in the cache"):
        cached(slot, config={}, tuning={}, load=load, train=train, may_train=False)
    slot.path.parent.mkdir(parents=True)
    slot.path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        cached(slot, config={}, tuning={}, load=load, train=train)
    assert calls == []  # never silently retrained over the user's file
    assert slot.path.read_bytes() == b"not a checkpoint"


def test_bottleneck_training_refuses_the_test_split() -> None:
    teacher = create_model("tiny-cnn").eval()
    cfg = BottleneckConfig(
        target_cut=2, channels=2, hidden=8, distill_epochs=1, rate_epochs=0, tail_epochs=0
    )
    with pytest.raises(ConfigError, match="test split"):
        train_bottleneck(cfg, teacher, TEST, VAL)
    with pytest.raises(ConfigError, match="test split"):
        train_bottleneck(cfg, teacher, TRAIN, TEST)
