"""The reuse experiment end to end on tiny models and synthetic data, its baselines,
and (integration) the quick run on the real data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from collabinfer.cache.index import IVF_POINTS_PER_LIST
from collabinfer.cache.rule import HitRule
from collabinfer.cli import app
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.data.workloads import WorkloadConfig
from collabinfer.errors import ConfigError
from collabinfer.experiments.reuse import ReuseConfig, run_reuse
from collabinfer.experiments.reuse_baselines import (
    BaselineConfig,
    SSIMWindow,
    ValStream,
    downsample,
    fit_ssim_threshold,
    hit_stats,
    replay_keys,
    replay_lsh,
)
from collabinfer.experiments.reuse_schema import ReuseResult
from collabinfer.model.zoo import create_model
from collabinfer.train.bottleneck import BottleneckConfig
from collabinfer.train.reuse import ProjectionConfig, RuleConfig

TINY = ReuseConfig(
    stream=WorkloadConfig(length=60, clients=3, frames_per_run=8, pool=12),
    rules=RuleConfig(stream_length=60, levels=6, ks=(1, 2), confidences=(0.0, 0.5)),
    projection=ProjectionConfig(cut=1, epochs=1, train_subset=64, batch_size=32, out_dim=16),
    bottleneck=BottleneckConfig(
        target_cut=1, channels=2, hidden=8, distill_epochs=1, rate_epochs=1, tail_epochs=0, beta=0.1
    ),
    baselines=BaselineConfig(ssim_grid=(0.5, 0.8, 0.95)),
    overhead=(("exact", 300), ("ivf", 400)),
    overhead_pairs=20,
    overhead_base=100,
    tail_repeats=5,
    profile_repeats=2,
)


def _splits(test_seed: int = 3) -> tuple[Dataset, Dataset, Dataset]:
    # validation streams use the default workload shape: a pool of 200 objects
    return (
        synthetic_dataset(128, seed=1, split="train"),
        synthetic_dataset(200, seed=2, split="val"),
        synthetic_dataset(80, seed=test_seed, split="test"),
    )


def _run(cache: Path, test_seed: int = 3) -> ReuseResult:
    torch.manual_seed(0)
    teacher, small = create_model("tiny-cnn").eval(), create_model("tiny-mlp").eval()
    train, val, test = _splits(test_seed)
    return run_reuse(
        TINY, teacher, small, train, val, test, cache, model="tiny-cnn", extractor_name="tiny-mlp"
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reuse-cache")


@pytest.fixture(scope="module")
def result(checkpoints: Path) -> ReuseResult:
    return _run(checkpoints)


def test_every_workload_and_key_is_measured_with_and_without_the_cache(result) -> None:
    got = {(p.workload, p.key) for p in result.points}
    assert got == {(w, k) for w in TINY.workloads for k in TINY.keys}
    for p in result.points:
        assert p.requests == 60 and 0 <= p.hits <= p.requests
        # only a hit can change an answer, so accuracy moves by at most the hit rate
        assert abs(p.accuracy - p.accuracy_no_cache) <= p.hit_rate + 1e-12
        assert (p.hit_precision_model is None) == (p.hits == 0)
        assert p.edge_cpu_ms_per_input > 0 and p.edge_cpu_ms_per_input_no_cache > 0
        assert p.bytes_per_input > 0 and p.key_bytes > 0
    latent = [p for p in result.points if p.key == "latent"]
    assert all(p.model == "tiny-cnn+bn" and p.codec.startswith("ent-") for p in latent)


def test_keys_on_one_model_share_the_same_no_cache_run(result) -> None:
    for w in TINY.workloads:
        f, p = result.point(w, "features"), result.point(w, "projection")
        assert f is not None and p is not None
        assert f.accuracy_no_cache == p.accuracy_no_cache
        assert f.latency_mean_ms_no_cache == p.latency_mean_ms_no_cache


def test_opportunities_follow_the_workload(result) -> None:
    iid = result.point("iid", "features")
    video = result.point("video", "features")
    assert iid is not None and video is not None
    assert iid.opportunities == 0 and iid.opportunities_harnessed is None  # no repeats
    # 3 clients x 8 frames per run: all but each run's first frame is a repeat
    assert video.opportunities >= 60 - 3 * -(-60 // (3 * 8))
    assert (
        video.hits_without_opportunity
        + round((video.opportunities_harnessed or 0) * video.opportunities)
        == video.hits
    )


def test_baselines_miss_overhead_and_latencies_are_there(result) -> None:
    for w in TINY.workloads:
        rows = [b for b in result.baselines if b.workload == w]
        assert {(b.method, b.fitted) for b in rows} == {
            ("pixel-lsh", True),
            ("pixel-lsh", False),
            ("decoupled", True),
        }
        assert all(b.raw_pixels_at_cache == (b.method == "pixel-lsh") for b in rows)
    assert [(m.index, m.entries) for m in result.miss_overhead] == list(TINY.overhead)
    assert all(m.pairs == 20 and m.tail_ms > 0 for m in result.miss_overhead)
    assert [m.ann_above is None for m in result.miss_overhead] == [True, False]
    series = [(s.model, s.key) for s in result.latencies]
    assert {s.workload for s in result.latencies} == {"video"}
    assert sorted(series, key=str) == sorted(
        [("tiny-cnn", None), ("tiny-cnn+bn", None)]
        + [(p.model, p.key) for p in result.points if p.workload == "video"],
        key=str,
    )


def test_the_result_round_trips_and_saves_its_config(result, tmp_path: Path) -> None:
    data = result.to_json_dict()
    assert ReuseResult.from_json(data) == result
    assert data["conditions"]["config"]["stream"]["length"] == 60
    assert data["conditions"]["config"]["rules"]["stream_length"] == 60
    result.save(tmp_path)
    assert ReuseResult.load(tmp_path) == result


def test_other_test_data_changes_no_rule_or_threshold(result, tmp_path: Path) -> None:
    """Everything tuned is tuned on validation streams: new test images change no rule
    (a fresh checkpoint folder, so the rules are fitted again, not loaded)."""
    other = _run(tmp_path, test_seed=99)
    rules = {(p.workload, p.key): (p.rule_k, p.rule_tau, p.val_hit_rate) for p in result.points}
    assert rules == {
        (p.workload, p.key): (p.rule_k, p.rule_tau, p.val_hit_rate) for p in other.points
    }
    settings = [(b.method, b.setting, b.val_hit_rate) for b in result.baselines]
    assert settings == [(b.method, b.setting, b.val_hit_rate) for b in other.baselines]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workloads": ("video", "tv")}, "workloads must be some of"),
        ({"keys": ()}, "keys must be some of"),
        ({"projection": ProjectionConfig(cut=2)}, "projection is trained at cut 2"),
        ({"overhead": (("hnsw", 1000),)}, "unknown index"),
        ({"overhead": (("ivf", 2 * IVF_POINTS_PER_LIST + 10),), "overhead_pairs": 20}, "IVF cache"),
        ({"overhead": (("exact", 100),), "overhead_pairs": 100}, "cannot take 100 pairs"),
    ],
)
def test_a_bad_config_is_a_config_error(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(ReuseConfig(), **change)  # type: ignore[arg-type]


def test_quick_is_the_full_protocol_cut_down() -> None:
    full, quick = ReuseConfig.make(False), ReuseConfig.make(True)
    assert quick.quick and quick.stream.length < full.stream.length
    assert quick.keys == full.keys and quick.rules == full.rules  # same rules: cached once
    assert ("exact", 100_000) in full.overhead and ("exact", 100_000) not in quick.overhead


def test_the_cli_has_the_command() -> None:
    out = CliRunner().invoke(app, ["experiment", "reuse", "--help"])
    assert out.exit_code == 0 and "--quick" in out.output


# ---------------------------------------------------------------- baselines


def test_ssim_matches_scikit_image() -> None:
    rng = np.random.default_rng(0)
    window = SSIMWindow(14)
    a = rng.random((5, 14, 14))
    b = np.clip(a + 0.2 * rng.standard_normal((5, 14, 14)), 0, 1)
    ux, uxx = window.moments(b.reshape(5, -1))
    for i in range(5):
        ours = window.against(a[i].reshape(-1), b.reshape(5, -1), ux, uxx)
        want = [
            structural_similarity(
                a[i],
                b[j],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for j in range(5)
        ]
        np.testing.assert_allclose(ours, want, atol=1e-9)


def test_downsample_averages_blocks() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert downsample(x, 2).tolist() == [[2.5, 4.5, 10.5, 12.5]]
    with pytest.raises(ConfigError, match="pool evenly"):
        downsample(torch.zeros(1, 1, 28, 28), 11)


def test_pixel_lsh_hits_an_identical_image_and_misses_a_different_one() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 1, 28, 28, generator=g), torch.rand(1, 1, 28, 28, generator=g)
    images = torch.cat([a, a.clone(), b, a.clone()])
    r = replay_lsh(images, np.array([3, 3, 5, 4]), 0.6, BaselineConfig())
    assert r.hit.tolist() == [False, True, False, True]
    assert r.answered.tolist() == [3, 3, 5, 3]  # a hit answers with the cached label
    never = replay_lsh(images, np.array([3, 3, 5, 4]), 2.0, BaselineConfig())
    assert not never.hit.any()


def test_the_fitted_ssim_threshold_is_the_best_on_the_grid() -> None:
    """Brute-force twin: every grid threshold replayed, the most hits at the target wins."""
    ds = synthetic_dataset(40, seed=5, noise=0.3)
    idx = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4, 2, 1] * 3)
    images = ds.images[idx] + 0.02 * torch.randn(len(idx), 1, 28, 28)
    answers = ds.labels[idx].numpy().copy()
    answers[::7] = (answers[::7] + 1) % 10  # some answers a hit would get wrong
    val = [ValStream(images.clamp(0, 1), answers, np.ones(len(idx)))]
    cfg = BaselineConfig(ssim_grid=(0.2, 0.5, 0.7, 0.9, 0.99))
    for target in (0.5, 0.8, 1.0):
        fit = fit_ssim_threshold(val, target, cfg)
        scored = []
        for thr in cfg.ssim_grid:
            r = replay_lsh(val[0].images, answers, thr, cfg)
            hits = int(r.hit.sum())
            ok = hits and (r.answered == answers)[r.hit].mean() >= target
            scored.append((hits, thr) if ok else (0, -1.0))
        best = max(scored)
        assert fit.threshold == (best[1] if best[0] else None)
        if fit.threshold is None:  # how far off it was, in words
            assert fit.describe().startswith("no threshold reached the target (best: ")
    never = fit_ssim_threshold(val, 1.0, BaselineConfig(ssim_grid=(1.5,)))
    assert never.threshold is None and never.describe() == "no threshold hit on validation"


def test_the_decoupled_replay_hits_a_repeat_and_keeps_the_confidence_floor() -> None:
    keys = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0.1, 0, 0]], dtype=np.float32)
    r = replay_keys(keys, logits, HitRule(1, 0.01), 1 << 20)
    assert r.hit.tolist() == [False, True, False, False]
    assert r.answered.tolist() == [0, 0, 1, 0]  # the repeat gets the first answer back
    sure = replay_keys(keys, logits, HitRule(1, 0.01, 0.999), 1 << 20)
    assert not sure.hit.any()  # softmax(5, 0, 0) is 0.987: under the floor


def test_hit_stats_counts_opportunities_and_precision() -> None:
    s = hit_stats(
        hit=np.array([False, True, True, False]),
        answered=np.array([1, 1, 2, 3]),
        model=np.array([1, 1, 1, 3]),
        labels=np.array([1, 0, 2, 3]),
        sources=np.array([7, 7, 8, 7]),
    )
    assert (s.hits, s.opportunities, s.hits_without_opportunity) == (2, 2, 1)
    assert s.hit_precision_model == 0.5 and s.hit_precision_label == 0.5
    assert s.opportunities_harnessed == 0.5 and s.accuracy == 0.75


# ---------------------------------------------------------------- real data


@pytest.mark.integration
def test_the_quick_run_on_fashion_mnist(tmp_path: Path) -> None:
    """``collabinfer experiment reuse --quick`` (~2 min here with the models, key
    projection and rules cached; ~4 min training the projection and fitting the rules)."""
    out = tmp_path / "reuse"
    run = CliRunner().invoke(app, ["experiment", "reuse", "--quick", "--out", str(out)])
    assert run.exit_code == 0, run.output
    res = ReuseResult.load(out)
    # the projection is trained to find the same object again: locality is what it feeds on
    # (the plain features key also hits look-alikes of one class, so it need not show this)
    video, iid = res.point("video", "projection"), res.point("iid", "projection")
    assert video is not None and iid is not None
    assert video.hit_rate > iid.hit_rate
    assert iid.opportunities == 0 and video.opportunities > 0.9 * video.requests
    for p in res.points:
        if p.hits >= 50:
            assert p.hit_precision_model is not None and p.hit_precision_model >= 0.9
    assert {p.name for p in out.iterdir()} >= {
        "reuse.json",
        "reuse.md",
        "reuse_precision.png",
        "reuse_latency_cdf.png",
        "reuse_miss_overhead.png",
    }
