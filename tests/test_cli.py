"""The command line: happy paths on tiny models, and errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from collabinfer.cli import app
from collabinfer.plan.profile import Profile

runner = CliRunner()


def test_models_lists_the_zoo() -> None:
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    for name in ("fmnist-resnet", "fmnist-small"):
        assert name in res.output


def test_profile_prints_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    res = runner.invoke(
        app, ["profile", "--model", "tiny-cnn", "--repeats", "3", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "MFLOPs" in res.output
    prof = Profile.load(out)
    assert prof.model == "tiny-cnn" and prof.num_blocks == 4
    assert prof.cuts[0].codecs["u8"].payload_bytes == 784
    assert all(b.flops > 0 for b in prof.blocks if b.name in ("conv", "res"))
    assert json.loads(out.read_text())["repeats"] == 3


def test_unknown_model_is_a_clean_error() -> None:
    res = runner.invoke(app, ["profile", "--model", "nope"])
    assert res.exit_code == 2
    assert "unknown model 'nope'" in res.output
    assert "Traceback" not in res.output


def test_unknown_link_is_a_clean_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["demo", "--link", "5g", "--cache", str(tmp_path)])
    assert res.exit_code == 2
    assert "unknown link profile" in res.output


def test_report_on_missing_results_is_a_clean_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert "no result files in" in res.output and "table1.json" in res.output
    assert "Traceback" not in res.output
