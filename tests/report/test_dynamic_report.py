"""The dynamic-inference report from a synthetic ``dynamic.json`` (no model is run)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from collabinfer.cli import app
from collabinfer.errors import ConfigError
from collabinfer.report.dynamic import markdown, render_dynamic, write_dynamic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("dynamic_flops.png", "dynamic_latency.png", "dynamic_exits.png", "dynamic_reliability.png")


def _bins(shift: float) -> list[dict[str, float]]:
    edges = [i / 5 for i in range(6)]
    return [
        {
            "lo": lo,
            "hi": hi,
            "count": 0 if lo < 0.2 else 100,
            "confidence": (lo + hi) / 2,
            "accuracy": max(0.0, (lo + hi) / 2 - shift),
        }
        for lo, hi in itertools.pairwise(edges)
    ]


def _data() -> dict[str, Any]:
    return {
        "conditions": {
            "num_inputs": 10000,
            "backbone": "fmnist-resnet",
            "threads": 1,
            "measured_on": "Test CPU 3000",
            "quick": False,
            "seed": 7,
        },
        "points": [
            {
                "method": "static backbone",
                "setting": "full",
                "accuracy": 0.9331,
                "mflops_per_input": 48.25,
                "latency_p50_ms": 1.234,
                "latency_p95_ms": 1.5,
                "throughput_b32": 2100.0,
            },
            {
                "method": "calibrated exits",
                "setting": "max_drop=0.5pt",
                "accuracy": 0.9287,
                "mflops_per_input": 30.125,
                "latency_p50_ms": 0.876,
                "latency_p95_ms": 1.42,
                "throughput_b32": 3050.0,
                "val_accuracy": 0.935,
                "exit_fractions": [0.4, 0.2, 0.4],
                "exit_names": ["after_stem", "after_res1b", "final"],
                "speedup_flops": 1.6,
                "speedup_measured": 1.4,
                "wasted_mflops_per_input": 0.3,
            },
            {
                "method": "calibrated exits",
                "setting": "max_drop=1pt",
                "accuracy": 0.9201,
                "mflops_per_input": 22.5,
                "latency_p50_ms": 0.7,
                "latency_p95_ms": 1.3,
                "exit_fractions": [0.6, 0.1, 0.3],
            },
            {
                "method": "gates",
                "setting": "rate=0.6",
                "accuracy": 0.9102,
                "mflops_per_input": 33.0,
                "latency_p50_ms": 1.1,
                "latency_p95_ms": 1.3,
            },
        ],
        "exits": [
            {
                "method": "calibrated exits",
                "name": "after_stem",
                "cut": 1,
                "temperature": 1.4,
                "head_accuracy": 0.81,
                "ece_before": 0.05,
                "ece_after": 0.012,
                "reliability_before": _bins(0.1),
                "reliability_after": _bins(0.01),
            },
            {
                "method": "calibrated exits",
                "name": "after_res1b",
                "cut": 3,
                "temperature": 1.25,
                "head_accuracy": 0.89,
                "ece_before": 0.031,
                "ece_after": 0.008,
                "reliability_before": _bins(0.05),
                "reliability_after": _bins(0.0),
            },
        ],
        "gates": [
            {"method": "gates", "setting": "rate=0.6", "block": "res1a", "exec_rate": 0.55},
            {"method": "gates", "setting": "rate=0.6", "block": "res2a", "exec_rate": 0.7},
        ],
        "summary": {
            "targets": [
                {
                    "name": "calibrated exits within 0.5 pt",
                    "target": ">= 92.81%",
                    "reached": "92.87%",
                    "met": True,
                },
                {"name": "gates 1.5x", "target": ">= 1.5x", "reached": "1.2x", "met": False},
            ]
        },
    }


def _assert_png(path: Path) -> None:
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC, path
    assert len(blob) > 5_000, (path, len(blob))


def test_markdown_shows_every_method_and_formatted_numbers() -> None:
    md = markdown(_data())
    for method in ("static backbone", "calibrated exits", "gates"):
        assert f"| {method} |" in md
    # accuracy %, MFLOPs and ms with two decimals, throughput, speed-ups and their ratio
    assert "| static backbone | full | 93.31% | — | 48.25 | 1.23 | 1.50 | 2,100 |" in md
    row = "| calibrated exits | max_drop=0.5pt | 92.87% | 93.50% | 30.12 | 0.88 | 1.42 | 3,050 |"
    assert row + " 1.40× | 1.60× | 0.87 |" in md  # measured / predicted = 0.875
    assert "Test CPU 3000" in md and "10000 test inputs" in md and "seed=7" in md
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
    md = markdown(_data())
    gates_row = next(line for line in md.splitlines() if line.startswith("| gates | rate=0.6 | 91"))
    assert gates_row.count("—") >= 4  # throughput, two speed-ups, ratio


def test_per_exit_accuracy_is_shown_and_checked() -> None:
    data = _data()
    point = next(p for p in data["points"] if "exit_fractions" in p)
    point["exit_accuracy"] = [0.995, None, 0.81]
    md = markdown(data)
    assert "(99.5%)" in md and "(81.0%)" in md
    point["exit_accuracy"] = [0.9, 0.8]  # one short
    with pytest.raises(ConfigError, match="exit_accuracy"):
        markdown(data)


def test_write_dynamic_writes_json_md_and_valid_pngs(tmp_path: Path) -> None:
    data = _data()
    paths = write_dynamic(data, tmp_path / "run")
    names = [p.name for p in paths]
    assert names == ["dynamic.json", "dynamic.md", *PLOTS]
    assert all(p.exists() for p in paths)
    assert json.loads((tmp_path / "run" / "dynamic.json").read_text()) == data
    for name in PLOTS:
        _assert_png(tmp_path / "run" / name)


def test_render_dynamic_round_trips(tmp_path: Path) -> None:
    write_dynamic(_data(), tmp_path)
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
    data = _data()
    for key in ("exits", "gates", "summary"):
        del data[key]
    required = {"method", "setting", "accuracy", "mflops_per_input"}
    required |= {"latency_p50_ms", "latency_p95_ms"}
    data["points"] = [{k: v for k, v in p.items() if k in required} for p in data["points"]]
    data["conditions"] = {}
    paths = write_dynamic(data, tmp_path)
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
        (("points", 1), "mflops_per_input"),
        (("points", 0), "method"),
        (("exits", 0), "temperature"),
        (("gates", 1), "exec_rate"),
        (("summary", "targets", 0), "met"),
    ],
)
def test_missing_key_is_a_config_error_naming_it(
    tmp_path: Path, where: tuple[str | int, ...], key: str
) -> None:
    data = copy.deepcopy(_data())
    node: Any = data
    for step in where:
        node = node[step]
    del node[key]
    (tmp_path / "dynamic.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=repr(key)):
        render_dynamic(tmp_path)
    with pytest.raises(ConfigError, match=repr(key)):
        write_dynamic(data, tmp_path / "other")
    assert not (tmp_path / "other").exists()  # nothing written for a broken dict


def test_wrong_type_and_unreadable_file_are_config_errors(tmp_path: Path) -> None:
    data = _data()
    data["points"][0]["accuracy"] = "high"
    with pytest.raises(ConfigError, match=r"points\[0\]\.accuracy must be a number"):
        markdown(data)
    with pytest.raises(ConfigError, match="cannot read dynamic results"):
        render_dynamic(tmp_path)  # no file
    (tmp_path / "dynamic.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read dynamic results"):
        render_dynamic(tmp_path)


def test_cli_report_renders_a_dynamic_only_folder(tmp_path: Path) -> None:
    write_dynamic(_data(), tmp_path)
    (tmp_path / "dynamic.md").unlink()
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    printed = res.output.replace("\n", "")  # rich wraps long paths
    assert "dynamic.md" in printed and "dynamic_reliability.png" in printed
    assert (tmp_path / "dynamic.md").exists()
