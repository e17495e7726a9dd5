"""``collabinfer pack`` and the ``--model DIR`` / ``--inputs`` plumbing of the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import byo_models
from collabinfer.cli import app
from collabinfer.cli.serve import load_inputs
from collabinfer.errors import ConfigError
from collabinfer.model.package import read_package

runner = CliRunner()


def _flat(result) -> str:  # type: ignore[no-untyped-def]
    return " ".join(result.output.split())


def test_pack_a_user_factory_with_safetensors_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    seq = byo_models.colour_seq().eval()
    save_file(dict(seq.state_dict()), str(tmp_path / "w.safetensors"))
    out = tmp_path / "pkg"
    args = [
        "pack",
        "--model",
        "byo_models:colour_seq",
        "--weights",
        str(tmp_path / "w.safetensors"),
    ]
    result = runner.invoke(
        app, [*args, "--input-shape", "3,32,32", "--out", str(out), "--repeats", "2"]
    )
    assert result.exit_code == 0, result.output
    pkg = read_package(out)
    assert pkg.name == "colour_seq" and pkg.profile_json is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pkg.net(x), seq(x))
    assert "packed colour_seq" in _flat(result)


def test_pack_reads_a_torch_state_dict_with_weights_only(tmp_path: Path) -> None:
    seq = byo_models.colour_seq().eval()
    torch.save({"state_dict": seq.state_dict()}, tmp_path / "w.pt")
    out = tmp_path / "pkg"
    result = runner.invoke(
        app,
        ["pack", "-m", "byo_models:colour_seq", "--weights", str(tmp_path / "w.pt"),
         "--input-shape", "3,32,32", "--out", str(out), "--name", "mine", "--repeats", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_package(out).name == "mine"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "give --model"),
        (["-m", "byo_models:colour_seq", "--zoo", "tiny-cnn"], "give --model"),
        (["-m", "no_such_mod:f"], "cannot import"),
        (["-m", "byo_models:colour_seq", "--input-shape", "3,x"], "--input-shape"),
        (["-m", "byo_models:colour_seq", "--weights", "nope.safetensors"], "does not exist"),
    ],
)
def test_pack_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["pack", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in _flat(result) and "Traceback" not in result.output


def test_pack_refuses_weights_that_do_not_fit_or_are_not_weights(tmp_path: Path) -> None:
    save_file({"nope": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    base = ["pack", "-m", "byo_models:colour_seq", "--input-shape", "3,32,32"]
    for weights, needle in (("w.safetensors", "do not fit"), ("junk.pt", "weights_only")):
        result = runner.invoke(
            app, [*base, "--weights", str(tmp_path / weights), "--out", str(tmp_path / "o")]
        )
        assert result.exit_code == 2 and needle in _flat(result), result.output


def test_profile_accepts_a_package(tmp_path: Path) -> None:
    seq = byo_models.colour_seq().eval()
    save_file(dict(seq.state_dict()), str(tmp_path / "w.safetensors"))
    out = tmp_path / "pkg"
    pack = ["pack", "-m", "byo_models:colour_seq", "--weights", str(tmp_path / "w.safetensors")]
    runner.invoke(app, [*pack, "--input-shape", "3,32,32", "--out", str(out), "--repeats", "2"])
    result = runner.invoke(app, ["profile", "--model", str(out), "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "colour_seq" in result.output


def test_inputs_must_be_float32_of_the_models_shape(tmp_path: Path) -> None:
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((4, 3, 32, 32), np.float32))
    assert load_inputs(good, (3, 32, 32)).shape == (4, 3, 32, 32)
    cases = {
        "f64.npy": (np.zeros((4, 3, 32, 32)), "float64"),
        "shape.npy": (np.zeros((4, 1, 28, 28), np.float32), "the model takes"),
        "nan.npy": (np.full((1, 3, 32, 32), np.nan, np.float32), "NaN"),
    }
    for name, (arr, needle) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(ConfigError, match=needle):
            load_inputs(tmp_path / name, (3, 32, 32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="not a readable"):
        load_inputs(tmp_path / "obj.npy", (3, 32, 32))
