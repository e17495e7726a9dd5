"""Checkpoints: round trip, and every kind of damage is a clear CheckpointError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collabinfer.errors import CheckpointError
from collabinfer.model.checkpoint import (
    Checkpoint,
    config_key,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    weights_hash,
)
from collabinfer.model.zoo import create_model


def _save(tmp_path: Path, name: str = "tiny-cnn") -> tuple[Path, Checkpoint]:
    model = create_model(name)
    ck = Checkpoint(name, "k1", {"a": 1}, {"acc": 0.5}, model.state_dict())
    path = tmp_path / "m.pt"
    save_checkpoint(path, ck)
    return path, ck


def test_round_trip(tmp_path: Path) -> None:
    path, ck = _save(tmp_path)
    got = load_checkpoint(path, model_name="tiny-cnn", key="k1")
    assert got.metrics == {"acc": 0.5} and got.config == {"a": 1}
    fresh = create_model("tiny-cnn")
    load_weights(fresh, got)
    x = torch.rand(2, 1, 28, 28)
    src = create_model("tiny-cnn")
    src.load_state_dict(ck.state_dict)
    assert torch.equal(fresh.eval()(x), src.eval()(x))
    assert weights_hash(fresh) == weights_hash(src)


def test_truncated_file(tmp_path: Path) -> None:
    path, _ = _save(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "g.pt"
    path.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_other_model_and_other_key(tmp_path: Path) -> None:
    path, _ = _save(tmp_path)
    with pytest.raises(CheckpointError, match="holds model 'tiny-cnn'"):
        load_checkpoint(path, model_name="fmnist-resnet")
    with pytest.raises(CheckpointError, match="config key"):
        load_checkpoint(path, key="other")


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path, _ = _save(tmp_path, "tiny-mlp")
    ck = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(create_model("tiny-cnn"), ck, path)


def test_config_key_depends_on_config_and_data() -> None:
    k = config_key({"lr": 0.1}, "d1")
    assert k == config_key({"lr": 0.1}, "d1")
    assert k != config_key({"lr": 0.2}, "d1")
    assert k != config_key({"lr": 0.1}, "d2")
