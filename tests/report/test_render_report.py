"""``render_report(DIR)``: whatever result files a folder has, re-rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collabinfer.errors import ConfigError
from collabinfer.report import RENDERERS, render_report

from .samples import dynamic_data, rate_accuracy_data, table1_data, table1_latencies


def _write(out: Path, *names: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if "table1" in names:
        (out / "table1.json").write_text(json.dumps(table1_data()))
        (out / "table1_latencies.json").write_text(json.dumps(table1_latencies()))
    if "rate_accuracy" in names:
        (out / "rate_accuracy.json").write_text(json.dumps(rate_accuracy_data()))
    if "dynamic" in names:
        (out / "dynamic.json").write_text(json.dumps(dynamic_data()))


def test_every_result_file_in_the_folder_is_rendered(tmp_path: Path) -> None:
    _write(tmp_path, "table1", "rate_accuracy", "dynamic")
    names = [p.name for p in render_report(tmp_path)]
    assert [n for n in names if n.endswith(".md")] == [
        "table1.md",
        "rate_accuracy.md",
        "dynamic.md",
    ]
    assert all((tmp_path / n).is_file() for n in names)
    assert "rate_accuracy.png" in names and "dynamic_flops.png" in names


@pytest.mark.parametrize("name", ["table1", "rate_accuracy", "dynamic"])
def test_one_result_file_renders_only_its_report(tmp_path: Path, name: str) -> None:
    _write(tmp_path, name)
    mds = [p.name for p in render_report(tmp_path) if p.suffix == ".md"]
    assert mds == [f"{name}.md"]


def test_a_folder_without_results_says_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError) as err:
        render_report(tmp_path)
    message = str(err.value)
    assert "no result files" in message and "\n" not in message
    assert all(name in message for name in RENDERERS)


def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no results folder"):
        render_report(tmp_path / "nope")


def test_a_broken_file_stops_with_its_schema_error(tmp_path: Path) -> None:
    _write(tmp_path, "table1", "dynamic")
    (tmp_path / "dynamic.json").write_text('{"points": []}')
    with pytest.raises(ConfigError, match=r"^dynamic\.json"):
        render_report(tmp_path)
