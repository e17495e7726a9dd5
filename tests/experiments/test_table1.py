"""Table 1 on tiny models and synthetic data: structure, invariants, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.experiments.table1 import PARADIGMS, Table1Config, Table1Models, run_table1
from collabinfer.model.zoo import create_model
from collabinfer.plan.profile import profile_model
from collabinfer.report.table1 import render_table1, write_table1

ROW_KEYS = {
    "paradigm",
    "accuracy",
    "latency_p50_ms",
    "latency_p95_ms",
    "bytes_per_input",
    "raw_input_leaves_device",
    "edge_cpu_ms_per_input",
    "measured_on",
}


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    full, local = create_model("tiny-cnn").eval(), create_model("tiny-mlp").eval()
    cfg = Table1Config(
        full_model="tiny-cnn",
        local_model="tiny-mlp",
        num_inputs=40,
        device_factor=200.0,
        real_sockets=False,  # the real-socket row needs trained zoo models: integration test
    )
    test = synthetic_dataset(60, seed=5, split="test")
    models = Table1Models(
        full,
        local,
        profile_model(full, "tiny-cnn", repeats=3),
        profile_model(local, "tiny-mlp", repeats=3),
    )
    return run_table1(cfg, models, test)


def test_rows_and_columns(result) -> None:
    data = result.to_json_dict()
    assert [r["paradigm"] for r in data["rows"]] == list(PARADIGMS)
    for row in data["rows"]:
        assert set(row) >= ROW_KEYS
        assert row["measured_on"] == "virtual-clock"
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    cond = data["conditions"]
    for key in (
        "link_profile",
        "trace_seed",
        "tier_speed_factors",
        "num_inputs",
        "full_model",
        "local_model",
    ):
        assert key in cond
    assert cond["num_inputs"] == 40
    assert cond["tier_speed_factors"]["device"] == 200.0


def test_who_sends_what(result) -> None:
    rows = {r.paradigm: r for r in result.rows}
    assert rows["LC"].bytes_per_input == 0 and not rows["LC"].raw_input_leaves_device
    assert rows["LC"].edge_cpu_ms_per_input == 0
    assert rows["EC"].raw_input_leaves_device and rows["CC"].raw_input_leaves_device
    assert rows["EC"].bytes_per_input > 784  # 8-bit pixels + header
    assert rows["EC"].bytes_per_input == rows["CC"].bytes_per_input
    assert rows["EC"].edge_cpu_ms_per_input > 0
    assert rows["CC"].edge_cpu_ms_per_input == 0  # the edge only relays for CC
    # split rows keep the raw input on the device by default
    assert not rows["static-split"].raw_input_leaves_device
    assert not rows["collabinfer"].raw_input_leaves_device
    # EC and CC run the same model on the same lossless input: same accuracy
    assert rows["EC"].accuracy == rows["CC"].accuracy
    # CC pays the extra WAN round trip
    assert rows["CC"].latency_p50_ms > rows["EC"].latency_p50_ms


def test_files_and_report(result, tmp_path: Path) -> None:
    paths = write_table1(result, tmp_path)
    names = {p.name for p in paths}
    assert {
        "table1.json",
        "table1.md",
        "table1_latency_cdf.png",
        "table1_bytes_vs_p95.png",
    } <= names
    data = json.loads((tmp_path / "table1.json").read_text())
    assert set(data) == {"conditions", "rows"}
    md = (tmp_path / "table1.md").read_text()
    assert "emulated 200x slower" in md and "assumption" in md
    (tmp_path / "table1.md").unlink()
    render_table1(tmp_path)  # from files alone
    assert (tmp_path / "table1.md").read_text() == md


def test_rows_record_what_they_sent(result) -> None:
    rows = {r.paradigm: r for r in result.rows}
    assert rows["EC"].sends == "0:u8" and rows["CC"].sends == "0:u8"
    assert rows["LC"].sends == ""
    for cut, _, codec in (
        s.partition(":") for s in filter(None, rows["static-split"].sends.split(","))
    ):
        assert int(cut) >= 1 and codec  # private splits: features, never the image
    assert all(r.privacy_ssim is None for r in result.rows)  # no attacker data given


def test_the_privacy_bound_limits_what_the_splits_send() -> None:
    torch.manual_seed(0)
    full, local = create_model("tiny-cnn").eval(), create_model("tiny-mlp").eval()
    models = Table1Models(
        full,
        local,
        profile_model(full, "tiny-cnn", repeats=3),
        profile_model(local, "tiny-mlp", repeats=3),
    )
    # a made-up assessment in which only cut 1 at int8 is private enough (unbounded: fp32)
    ssim = tuple(
        (k, c, 0.1 if (k, c) == (1, "int8") else 0.9)
        for k, cut in enumerate(models.full_profile.cuts)
        for c in cut.codecs
    )
    cfg = Table1Config(
        full_model="tiny-cnn",
        local_model="tiny-mlp",
        num_inputs=20,
        device_factor=20_000.0,  # a very slow device: unbounded, both rows send cut 1
        real_sockets=False,
        dynamic=False,
        bottleneck=False,
        paradigms=("static-split", "collabinfer"),
        max_attack_ssim=0.3,
        attack_ssim=ssim,
    )
    res = run_table1(cfg, models, synthetic_dataset(30, seed=5, split="test"))
    for row in res.rows:
        assert set(filter(None, row.sends.split(","))) <= {"1:int8"}, row
    assert res.rows[0].sends == "1:int8"  # the static split offloads, where it may
    assert res.conditions["max_attack_ssim"] == 0.3
