"""The dynamic-inference report from a synthetic ``dynamic.json`` (no model is run)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from collabinfer.cli import app
from collabinfer.errors import ConfigError
from collabinfer.experiments.dynamic_schema import DynamicResult
from collabinfer.report.dynamic import markdown, render_dynamic, write_dynamic

from .samples import dynamic_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("dynamic_flops.png", "dynamic_latency.png", "dynamic_exits.png", "dynamic_reliability.png")


def _result(data: dict[str, Any] | None = None) -> DynamicResult:
    return DynamicResult.from_json(dynamic_data() if data is None else data)


def _assert_png(path: Path) -> None:
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC, path
    assert len(blob) > 5_000, (path, len(blob))


def test_markdown_shows_every_method_and_formatted_numbers() -> None:
    md = markdown(_result())
    for method in ("static backbone", "calibrated exits", "gates"):
        assert f"| {method} |" in md
    # accuracy %, MFLOPs and ms with two decimals, throughput, speed-ups and their ratio
    assert "| static backbone | full | 93.31% | — | 48.25 | 1.23 | 1.50 | 2,100 |" in md
    row = "| calibrated exits | max_drop=0.5pt | 92.87% | 93.50% | 30.12 | 0.88 | 1.42 | 3,050 |"
    assert row + " 1.40× | 1.60× | 0.87 |" in md  # measured / predicted = 0.875
    assert "Test CPU 3000" in md and "10000 test inputs" in md and "48.25 MFLOPs" in md
    # targets with marks
    assert "| calibrated exits within 0.5 pt | >= 92.81% | 92.87% | ✔ |" in md
    assert "| gates 1.5x | >= 1.5x | 1.2x | ✘ |" in md
    # calibration: temperature, head accuracy, ECE before/after in %
    assert "| calibrated exits | after_res1b | 3 | 1.25 | 89.00% | 3.10% | 0.80% |" in md
    # exit distribution, named and invented names, wasted compute
    assert "after_stem 40.0% · after_res1b 20.0% · final 40.0%" in md
    assert "exit 1 60.0% · exit 2 10.0% · final 30.0%" in md
    assert "| 0.30 |" in md
    # gates pivoted per block
    assert "| method | setting | res1a | res2a |" in md
    assert "| gates | rate=0.6 | 55.00% | 70.00% |" in md


def test_missing_speedups_show_a_dash_not_zero() -> None:
    md = markdown(_result())
    gates_row = next(line for line in md.splitlines() if line.startswith("| gates | rate=0.6 | 91"))
    assert gates_row.count("—") >= 4  # throughput, two speed-ups, ratio


def test_a_pipe_in_a_name_does_not_break_the_table() -> None:
    data = dynamic_data()
    data["points"][3]["setting"] = "rate=0.6|hard"
    line = next(ln for ln in markdown(_result(data)).splitlines() if "hard" in ln)
    assert "rate=0.6\\|hard" in line


def test_per_exit_accuracy_is_shown_and_checked() -> None:
    data = dynamic_data()
    point = next(p for p in data["points"] if "exit_fractions" in p)
    point["exit_accuracy"] = [0.995, None, 0.81]
    md = markdown(_result(data))
    assert "(99.5%)" in md and "(81.0%)" in md
    point["exit_accuracy"] = [0.9, 0.8]  # one short
    with pytest.raises(ConfigError, match=r"points\[1\]: exit_accuracy has 2 entries"):
        _result(data)


def test_write_dynamic_writes_json_md_and_valid_pngs(tmp_path: Path) -> None:
    paths = write_dynamic(_result(), tmp_path / "run")
    assert [p.name for p in paths] == ["dynamic.json", "dynamic.md", *PLOTS]
    assert all(p.exists() for p in paths)
    # the file keeps the layout it was read from: same keys, same values
    assert json.loads((tmp_path / "run" / "dynamic.json").read_text()) == dynamic_data()
    for name in PLOTS:
        _assert_png(tmp_path / "run" / name)


def test_save_load_round_trips_exactly(tmp_path: Path) -> None:
    result = _result()
    result.save(tmp_path)
    again = DynamicResult.load(tmp_path)
    assert again == result
    assert again.points[1].rule == result.points[1].rule  # the exit rule, typed
    again.save(tmp_path / "again")
    assert (tmp_path / "again" / "dynamic.json").read_bytes() == (
        tmp_path / "dynamic.json"
    ).read_bytes()


def test_render_dynamic_round_trips(tmp_path: Path) -> None:
    write_dynamic(_result(), tmp_path)
    md = (tmp_path / "dynamic.md").read_text()
    json_before = (tmp_path / "dynamic.json").read_bytes()
    for name in ("dynamic.md", *PLOTS):
        (tmp_path / name).unlink()
    paths = render_dynamic(tmp_path)
    assert [p.name for p in paths] == ["dynamic.md", *PLOTS]
    assert (tmp_path / "dynamic.md").read_text() == md
    assert (tmp_path / "dynamic.json").read_bytes() == json_before
    for name in PLOTS:
        _assert_png(tmp_path / name)


def test_only_required_keys_still_renders(tmp_path: Path) -> None:
    data = dynamic_data()
    for key in ("exits", "gates", "summary"):
        del data[key]
    required = {"method", "setting", "accuracy", "mflops_per_input"}
    required |= {"latency_p50_ms", "latency_p95_ms"}
    data["points"] = [{k: v for k, v in p.items() if k in required} for p in data["points"]]
    paths = write_dynamic(_result(data), tmp_path)
    assert [p.name for p in paths] == [
        "dynamic.json",
        "dynamic.md",
        "dynamic_flops.png",
        "dynamic_latency.png",
    ]
    md = (tmp_path / "dynamic.md").read_text()
    assert "93.31%" in md and "## Targets" not in md and "## Exit calibration" not in md
    assert "## Where inputs leave" not in md and "## Gate execution" not in md
    _assert_png(tmp_path / "dynamic_flops.png")


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ((), "points"),
        ((), "conditions"),
        (("conditions",), "measured_on"),
        (("points", 1), "mflops_per_input"),
        (("points", 0), "method"),
        (("exits", 0), "temperature"),
        (("exits", 1, "reliability_after", 2), "count"),
        (("gates", 1), "exec_rate"),
        (("summary", "targets", 0), "met"),
    ],
)
def test_missing_key_is_a_config_error_naming_it(
    tmp_path: Path, where: tuple[str | int, ...], key: str
) -> None:
    data = copy.deepcopy(dynamic_data())
    node: Any = data
    for step in where:
        node = node[step]
    del node[key]
    (tmp_path / "dynamic.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"^dynamic.json: .*{key} is missing$"):
        render_dynamic(tmp_path)
    assert not (tmp_path / "dynamic.md").exists()  # nothing rendered from a broken file


def test_wrong_type_and_unreadable_file_are_config_errors(tmp_path: Path) -> None:
    data = dynamic_data()
    data["points"][0]["accuracy"] = "high"
    with pytest.raises(ConfigError, match=r"points\[0\]\.accuracy must be a number"):
        _result(data)
    with pytest.raises(ConfigError, match="cannot read dynamic results"):
        render_dynamic(tmp_path)  # no file
    (tmp_path / "dynamic.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read dynamic results"):
        render_dynamic(tmp_path)


def test_a_result_that_could_not_be_read_back_is_never_written(tmp_path: Path) -> None:
    result = _result()
    bad = dataclasses.replace(result.points[0], mflops_per_input=float("nan"))
    broken = dataclasses.replace(result, points=(bad, *result.points[1:]))
    with pytest.raises(ConfigError, match=r"points\[0\]\.mflops_per_input must be a finite"):
        write_dynamic(broken, tmp_path / "out")
    assert not (tmp_path / "out" / "dynamic.json").exists()


def test_cli_report_renders_a_dynamic_only_folder(tmp_path: Path) -> None:
    write_dynamic(_result(), tmp_path)
    (tmp_path / "dynamic.md").unlink()
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    printed = res.output.replace("\n", "")  # rich wraps long paths
    assert "dynamic.md" in printed and "dynamic_reliability.png" in printed
    assert (tmp_path / "dynamic.md").exists()
