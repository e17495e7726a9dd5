"""The rate-accuracy report from a synthetic ``rate_accuracy.json`` (no model is run)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from collabinfer.errors import ConfigError
from collabinfer.experiments.rate_accuracy_schema import RateAccuracyResult, summary
from collabinfer.report.rate_accuracy import markdown, render_rate_accuracy, write_rate_accuracy

from .samples import rate_accuracy_data


def _result() -> RateAccuracyResult:
    return RateAccuracyResult.from_json(rate_accuracy_data())


def test_markdown_states_the_headline_the_encoder_and_every_point() -> None:
    md = markdown(_result())
    assert "**93.00%** on 2000 test images" in md
    # the cheapest within 0.5 points of 93.00 %: webp-q90 (394 B) and the hd bottleneck (120 B)
    assert "cheapest input codec **webp-q90** (394 B, 92.70%)" in md
    assert "cheapest bottleneck **bottleneck-hd beta=0** (120 B, 92.80%)" in md
    assert "**30.5%** of the bytes" in md
    assert "Encoder (device): 1,234 params, 0.500 MFLOPs, 0.250 ms" in md
    assert "| features | 1 | fp32 | 50,176.0 | 16 | 93.00% |" in md
    assert md.count("\n| ") == 1 + len(_result().points)  # header + one row per point


def test_no_bottleneck_within_tolerance_says_so() -> None:
    data = rate_accuracy_data()
    for p in data["points"]:
        if p["method"].startswith("bottleneck"):
            p["accuracy"] = 0.9
    res = RateAccuracyResult.from_json(data)
    assert summary(res).bytes_ratio is None
    md = markdown(res)
    assert "No bottleneck point is within 0.5 points" in md
    assert "3.0 points below" in md and "webp-q90, sends 394 B" in md


def test_summary_is_written_as_strict_json(tmp_path: Path) -> None:
    data = rate_accuracy_data()
    data["points"] = [p for p in data["points"] if p["method"] == "features"]
    res = RateAccuracyResult.from_json(data)
    res.save(tmp_path)
    text = (tmp_path / "rate_accuracy.json").read_text()
    assert "NaN" not in text  # no input codec within tolerance: null, not NaN
    saved = json.loads(text)["summary"]
    assert saved["bytes_ratio"] is None and saved["best_input"] is None
    assert saved["median_bytes"] == pytest.approx((50176 + 12544) / 2)


def test_save_load_round_trips(tmp_path: Path) -> None:
    res = _result()
    res.save(tmp_path)
    assert RateAccuracyResult.load(tmp_path) == res
    assert (
        json.loads((tmp_path / "rate_accuracy.json").read_text())["points"]
        == (rate_accuracy_data()["points"])
    )


def test_write_then_render_from_the_file_alone(tmp_path: Path) -> None:
    paths = write_rate_accuracy(_result(), tmp_path)
    assert [p.name for p in paths] == [
        "rate_accuracy.json",
        "rate_accuracy.md",
        "rate_accuracy.png",
    ]
    md = (tmp_path / "rate_accuracy.md").read_text()
    (tmp_path / "rate_accuracy.md").unlink()
    (tmp_path / "rate_accuracy.png").unlink()
    assert [p.name for p in render_rate_accuracy(tmp_path)] == [
        "rate_accuracy.md",
        "rate_accuracy.png",
    ]
    assert (tmp_path / "rate_accuracy.md").read_text() == md
    assert (tmp_path / "rate_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_method_or_an_empty_result_is_refused() -> None:
    data = rate_accuracy_data()
    data["points"][2]["method"] = "inptu"
    with pytest.raises(ConfigError, match=r"points\[2\]: unknown method 'inptu'"):
        RateAccuracyResult.from_json(data)
    res = _result()
    with pytest.raises(ConfigError, match="at least one point"):
        dataclasses.replace(res, points=())


def test_a_nan_reaches_neither_the_disk_nor_the_report(tmp_path: Path) -> None:
    res = _result()
    bad = dataclasses.replace(res.points[0], bytes_per_input=math.nan)
    with pytest.raises(ConfigError, match=r"points\[0\]\.bytes_per_input must be a finite"):
        write_rate_accuracy(dataclasses.replace(res, points=(bad,)), tmp_path)
    assert not (tmp_path / "rate_accuracy.json").exists()
