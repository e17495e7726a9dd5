"""End to end on the real Fashion-MNIST: data, training cache, the demo.

Marked ``integration``: they need the dataset (``make data``) and train the
reference models once (about 8 minutes on 2 cores). ``make test`` and CI run
them after the unit tests.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from collabinfer.cli import app
from collabinfer.data import load_split
from collabinfer.errors import CheckpointError
from collabinfer.experiments.privacy import PrivacyConfig, run_privacy
from collabinfer.experiments.privacy_schema import strongest
from collabinfer.privacy.attacks import AttackConfig
from collabinfer.report.privacy import write_privacy
from collabinfer.train import DEFAULT_CONFIGS, train_or_load

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


def test_real_splits_have_the_documented_sizes() -> None:
    sizes = {s: len(load_split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 55000, "val": 5000, "test": 10000}
    test = load_split("test")
    assert test.labels.bincount().tolist() == [1000] * 10


def test_train_caches_and_reuses(cache: Path) -> None:
    first = runner.invoke(app, ["train", "--model", "fmnist-small", "--cache", str(cache)])
    assert first.exit_code == 0, first.output
    ckpts = list((cache / "checkpoints").glob("fmnist-small-*.pt"))
    assert len(ckpts) == 1
    _, res = train_or_load(DEFAULT_CONFIGS["fmnist-small"], cache=cache)
    assert res.reused
    assert res.metrics["test_acc"] > 0.85  # the local model: clearly useful, clearly smaller


def test_corrupt_checkpoint_is_reported_not_replaced(cache: Path, tmp_path: Path) -> None:
    (ckpt,) = list((cache / "checkpoints").glob("fmnist-small-*.pt"))
    bad_cache = tmp_path / "bad"
    (bad_cache / "checkpoints").mkdir(parents=True)
    bad = bad_cache / "checkpoints" / ckpt.name
    bad.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt"):
        train_or_load(DEFAULT_CONFIGS["fmnist-small"], cache=bad_cache)
    res = runner.invoke(app, ["train", "--model", "fmnist-small", "--cache", str(bad_cache)])
    assert res.exit_code == 2 and "corrupt" in res.output
    assert bad.stat().st_size == 5000  # not silently overwritten


def test_demo_quick_end_to_end(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--num-inputs", "300", "--out", str(out), "--cache", str(cache)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "table1.json").read_text())
    rows = {r["paradigm"]: r for r in data["rows"]}
    assert set(rows) == {"LC", "EC", "CC", "static-split", "collabinfer", "collabinfer-virtual"}
    assert rows["collabinfer"]["measured_on"] == "real-sockets"
    assert rows["collabinfer-virtual"]["measured_on"] == "virtual-clock"
    assert data["conditions"]["num_inputs"] == 300
    # the premise of the paper, measured: the local model is less accurate than the full one
    assert rows["LC"]["accuracy"] < rows["EC"]["accuracy"]
    assert rows["EC"]["accuracy"] > 0.88
    # ... and cheaper: on the device it beats running the full model there. (Not "LC
    # beats EC": both are ~60 ms here, and a batch-1 profile of a 24k-parameter model
    # varies by 2x between identical runs, so that comparison is a coin toss on a
    # loaded machine.)
    assert rows["LC"]["latency_p50_ms"] < data["conditions"]["full_model_device_ms"]
    assert not rows["collabinfer"]["raw_input_leaves_device"]
    # the privacy column, measured on what each row sent: the image is the image,
    # nothing sent leaves the attacker its prior, a split lies in between or below
    assert rows["EC"]["sends"] == "0:u8" and rows["EC"]["privacy_ssim"] > 0.99
    assert rows["LC"]["sends"] == "" and rows["LC"]["privacy_ssim"] < 0.3
    assert rows["static-split"]["privacy_ssim"] < rows["EC"]["privacy_ssim"]
    assert rows["collabinfer"]["privacy_ssim"] is not None
    # the collabinfer rows run the gated backbone; confident inputs leave on the device
    assert data["conditions"]["collabinfer_dynamic"]["model"] == "fmnist-resnet+gates"
    assert 0 < rows["collabinfer-virtual"]["exited_on_device"] < 1
    assert 0 < rows["collabinfer"]["exited_on_device"] < 1
    for name in ("table1.md", "table1_latency_cdf.png", "table1_bytes_vs_p95.png", "config.json"):
        assert (out / name).is_file(), name
    # second run reuses both checkpoints
    again_args = [
        "demo",
        "--num-inputs",
        "50",
        "--no-privacy",
        "--out",
        str(tmp_path / "again"),
        "--cache",
        str(cache),
    ]
    again = runner.invoke(app, again_args)
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") >= 2


def test_dynamic_experiment_quick(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "dynamic"
    res = runner.invoke(
        app, ["experiment", "dynamic", "--quick", "--out", str(out), "--cache", str(cache)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "dynamic.json").read_text())
    methods = {p["method"] for p in data["points"]}
    assert methods == {
        "static backbone",
        "entropy exits",
        "calibrated exits",
        "calibrated exits (joint)",
        "gates",
        "gates + exits",
        "gates + path-aware exits",
    }
    static = data["points"][0]
    assert static["method"] == "static backbone" and static["accuracy"] > 0.88
    for p in data["points"]:
        for key in ("accuracy", "mflops_per_input", "latency_p50_ms", "latency_p95_ms"):
            assert p[key] > 0, (p["method"], key)
        if "exit_fractions" in p:
            assert abs(sum(p["exit_fractions"]) - 1) < 1e-9
    # exits that fire save compute that the FLOP count sees
    loose = next(
        p
        for p in data["points"]
        if p["method"] == "calibrated exits" and p["setting"] == "max_drop=2pt"
    )
    assert loose["mflops_per_input"] < static["mflops_per_input"]
    assert loose["exit_fractions"][-1] < 1.0
    # calibration on validation lowers the test ECE of the heads on average
    cal = [e for e in data["exits"] if e["method"] == "calibrated exits"]
    assert sum(e["ece_after"] for e in cal) < sum(e["ece_before"] for e in cal)
    assert data["summary"]["targets"] and data["summary"]["path_aware_vs_always"]
    for name in ("dynamic.md", "dynamic_flops.png", "dynamic_latency.png", "dynamic_exits.png"):
        assert (out / name).is_file(), name


def test_privacy_assessment_on_the_real_model(cache: Path, tmp_path: Path) -> None:
    """A cut-down assessment (one cut, few images, small budgets) on fmnist-resnet:
    every attack runs on real features, and the ends order as they must."""
    cfg = dataclasses.replace(
        PrivacyConfig.make(quick=True),
        cuts=(1, 7),
        scored_images=16,
        accuracy_images=500,
        aux_images=800,
        kl_weights=(0.01,),
        attack=AttackConfig(rmle_steps=40, tune_images=2, inverse_epochs=2, shadow_epochs=1),
    )
    teacher, _ = train_or_load(DEFAULT_CONFIGS["fmnist-resnet"], cache)
    classifier, _ = train_or_load(DEFAULT_CONFIGS["fmnist-small"], cache)
    train, val, test = (load_split(s) for s in ("train", "val", "test"))
    result, pictures = run_privacy(cfg, teacher, classifier, train, val, test, cache)
    out = tmp_path / "privacy"
    write_privacy(result, pictures, out)
    image, nothing = strongest(result, 0, "u8"), strongest(result, teacher.num_blocks, "none")
    early, late = strongest(result, 1, "int8"), strongest(result, 7, "int8")
    assert image is not None and nothing is not None and early is not None and late is not None
    assert image.ssim > 0.99 > early.ssim > late.ssim
    assert early.ssim > 0.6 > nothing.ssim  # the first cut is invertible (He et al.: ~0.99)
    # (a deep cut under this small budget may fall below the mean-image guess: not asserted)
    assert {r.defence for r in result.assessment} == {"none", "noise", "dropout", "variational"}
    assert result.conditions.classifier_accuracy > 0.8
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("privacy.md", "privacy_tradeoff.png", "privacy_grid.png", "privacy_images.npz"):
        assert (out / name).is_file(), name


def test_demo_on_a_video_stream_runs_the_edge_cache(cache: Path, tmp_path: Path) -> None:
    """``--workload video``: the collabinfer rows' edge (in-process and the real
    `collabinfer serve --cache-mb` subprocess) answers repeats from its cache; the
    paradigm rows have none."""
    out = tmp_path / "video"
    args = ["demo", "--workload", "video", "--num-inputs", "240", "--real-inputs", "240"]
    args += ["--no-privacy", "--out", str(out), "--cache", str(cache)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "table1.json").read_text())
    rows = {r["paradigm"]: r for r in data["rows"]}
    assert data["conditions"]["workload"] == "video"
    assert data["conditions"]["cache"]["rules"]  # fitted on validation streams
    assert rows["collabinfer-virtual"]["cache_hits"] > 0
    assert rows["collabinfer"]["cache_hits"] > 0  # over real sockets, flagged by the edge
    for name in ("LC", "EC", "CC", "static-split"):
        assert rows[name]["cache_hits"] is None
    assert "cache hits" in (out / "table1.md").read_text()
