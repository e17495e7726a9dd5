"""Workloads: seeded request streams with locality (iid, video, multi-client)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from collabinfer.data import workloads as wl
from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.data.workloads import (
    WORKLOADS,
    Perturbation,
    PerturbParams,
    WorkloadConfig,
    make_stream,
    perturb,
    sample_params,
    walk_params,
)
from collabinfer.errors import ConfigError

STILL = Perturbation(
    max_shift_px=0.0,
    max_rotation_deg=0.0,
    brightness=0.0,
    contrast=0.0,
    noise_std=0.0,
    patch_prob=0.0,
)
SMALL = WorkloadConfig(length=300, clients=4, frames_per_run=10, pool=50)


def smooth_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images with object-like spatial structure (upsampled 7x7 noise).

    Pixel-wise noise would make a half-pixel shift look like a new image, which
    real photographs do not; these behave like them under small warps.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 7, 7, generator=g)
    images = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    return images.clamp(0, 1), torch.randint(0, 10, (n,), generator=g)


def views(n: int, **fields: torch.Tensor) -> PerturbParams:
    """``n`` identity views with some fields overridden."""
    base = {
        "shift": torch.zeros(n, 2),
        "rotation": torch.zeros(n),
        "brightness": torch.zeros(n),
        "contrast": torch.zeros(n),
        "patch": torch.zeros(n, dtype=torch.bool),
        "patch_xy": torch.zeros(n, 2),
        "patch_grey": torch.zeros(n),
    }
    return PerturbParams(**{**base, **fields})


def runs_of(stream: wl.Stream, client: int, frames_per_run: int) -> list[torch.Tensor]:
    """One client's requests (stream indices), cut into its runs."""
    idx = torch.nonzero(stream.clients == client).flatten()
    return list(idx.split(frames_per_run))


def test_public_names() -> None:
    assert set(wl.__all__) == {
        "WORKLOADS",
        "PerturbParams",
        "Perturbation",
        "Stream",
        "WorkloadConfig",
        "make_stream",
        "perturb",
        "sample_params",
        "walk_params",
    }
    assert WORKLOADS == ("iid", "video", "multi-client")


@pytest.mark.parametrize("kind", WORKLOADS)
def test_shapes_dtypes_and_range(kind: str) -> None:
    ds = synthetic_dataset(n=400)
    s = make_stream(kind, ds.images, ds.labels, seed=3, config=SMALL)
    assert len(s) == SMALL.length and s.kind == kind and s.seed == 3
    assert s.images.shape == (SMALL.length, 1, 28, 28) and s.images.dtype == torch.float32
    assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    for t in (s.labels, s.sources, s.clients):
        assert t.shape == (SMALL.length,) and t.dtype == torch.int64
    assert torch.equal(s.labels, ds.labels[s.sources])
    assert int(s.clients.min()) >= 0 and int(s.clients.max()) < SMALL.clients
    assert int(s.sources.min()) >= 0 and int(s.sources.max()) < len(ds)


@pytest.mark.parametrize("kind", WORKLOADS)
def test_same_seed_is_identical_and_another_seed_differs(kind: str) -> None:
    ds = synthetic_dataset(n=400)
    a, b, c = (make_stream(kind, ds.images, ds.labels, seed=s, config=SMALL) for s in (7, 7, 8))
    for name in ("images", "labels", "sources", "clients"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.sources, c.sources)
    assert not torch.equal(a.images, c.images)


def test_iid_is_the_plain_images_without_repeats() -> None:
    ds = synthetic_dataset(n=400)
    s = make_stream("iid", ds.images, ds.labels, seed=0, config=SMALL)
    assert s.sources.unique().numel() == SMALL.length
    assert torch.equal(s.images, ds.images[s.sources])
    assert torch.equal(s.clients, torch.arange(SMALL.length) % SMALL.clients)
    assert not torch.equal(s.sources, s.sources.sort().values)  # shuffled, not a prefix


def test_iid_may_use_every_image() -> None:
    ds = synthetic_dataset(n=50)
    s = make_stream("iid", ds.images, ds.labels, seed=0, config=WorkloadConfig(length=50))
    assert torch.equal(s.sources.sort().values, torch.arange(50))


def test_video_runs_hold_one_object_and_move_on() -> None:
    images, labels = smooth_images(500)
    cfg = SMALL
    s = make_stream("video", images, labels, seed=1, config=cfg)
    assert torch.equal(s.clients, torch.arange(cfg.length) % cfg.clients)  # round-robin
    seen = []
    for client in range(cfg.clients):
        runs = runs_of(s, client, cfg.frames_per_run)
        firsts = [int(s.sources[r[0]]) for r in runs]
        for r in runs:
            assert bool((s.sources[r] == s.sources[r[0]]).all())
        assert all(a != b for a, b in itertools.pairwise(firsts))
        seen += firsts
    # 500 images > 32 runs: objects are drawn without replacement across all clients
    assert len(set(seen)) == len(seen)


def test_video_consecutive_frames_are_much_closer_than_other_objects() -> None:
    images, labels = smooth_images(500)
    s = make_stream("video", images, labels, seed=2, config=SMALL)
    c, x = SMALL.clients, s.images
    same_run = (s.sources[c:] == s.sources[:-c]).nonzero().flatten()  # t and t + c
    near = (x[same_run + c] - x[same_run]).abs().mean()
    other = (x[1:] - x[:-1]).abs().mean()  # adjacent requests: different clients, objects
    assert len(same_run) > 200
    assert float(near) < 0.5 * float(other)


def test_video_frames_are_not_all_the_same_view() -> None:
    images, labels = smooth_images(500)
    s = make_stream("video", images, labels, seed=2, config=SMALL)
    first = runs_of(s, 0, SMALL.frames_per_run)[0]
    assert float((s.images[first[1]] - s.images[first[0]]).abs().max()) > 0.0


@pytest.mark.parametrize("kind", ["video", "multi-client"])
def test_zero_bounds_reproduce_the_sources_exactly(kind: str) -> None:
    images, labels = smooth_images(100)
    cfg = dataclasses.replace(SMALL, perturbation=STILL)
    s = make_stream(kind, images, labels, seed=0, config=cfg)
    assert torch.equal(s.images, images[s.sources])


def test_walk_stays_within_bounds_and_moves_by_small_steps() -> None:
    pert = Perturbation(patch_prob=0.5)
    runs, frames, step = 64, 50, 0.5
    g = torch.Generator().manual_seed(0)
    p = walk_params(runs, frames, pert, step=step, generator=g)
    assert len(p) == runs * frames
    assert float(p.shift.abs().max()) <= pert.max_shift_px
    assert float(p.rotation.abs().max()) <= pert.max_rotation_deg
    assert float(p.brightness.abs().max()) <= pert.brightness
    assert float(p.contrast.abs().max()) <= pert.contrast
    assert float(p.patch_xy.min()) >= 0.0 and float(p.patch_xy.max()) <= 28 - pert.patch_px
    # the walk explores its range, not just a corner of it
    assert float(p.shift.abs().max()) > 0.9 * pert.max_shift_px
    tol = 1e-5
    for values, bound in (
        (p.shift.view(runs, frames, 2), pert.max_shift_px),
        (p.rotation.view(runs, frames), pert.max_rotation_deg),
        (p.contrast.view(runs, frames), pert.contrast),
        (p.patch_xy.view(runs, frames, 2), (28 - pert.patch_px) / 2),
    ):
        assert float((values[:, 1:] - values[:, :-1]).abs().max()) <= step * bound + tol
    patch = p.patch.view(runs, frames)
    grey = p.patch_grey.view(runs, frames)
    assert bool((patch == patch[:, :1]).all()) and bool((grey == grey[:, :1]).all())
    assert 0 < int(patch[:, 0].sum()) < runs  # decided per run, with patch_prob


def test_sampled_views_stay_within_bounds() -> None:
    pert = Perturbation(max_shift_px=1.5, max_rotation_deg=20.0, patch_px=10)
    p = sample_params(5000, pert, generator=torch.Generator().manual_seed(0))
    assert float(p.shift.abs().max()) <= 1.5 and float(p.shift.abs().max()) > 1.4
    assert float(p.rotation.abs().max()) <= 20.0 and float(p.rotation.abs().max()) > 19.0
    assert float(p.brightness.abs().max()) <= pert.brightness
    assert float(p.contrast.abs().max()) <= pert.contrast
    assert float(p.patch_xy.min()) >= 0.0 and float(p.patch_xy.max()) <= 18.0
    assert float(p.patch_grey.min()) >= 0.0 and float(p.patch_grey.max()) <= 1.0
    assert abs(float(p.patch.float().mean()) - pert.patch_prob) < 0.03


def test_multi_client_favours_popular_objects_from_its_pool() -> None:
    images, labels = smooth_images(1000)
    cfg = WorkloadConfig(length=4000, clients=8, pool=200, zipf_s=1.1)
    s = make_stream("multi-client", images, labels, seed=0, config=cfg)
    counts = torch.bincount(s.sources, minlength=len(images))
    assert int(counts.max()) > 3 * cfg.length / cfg.pool
    assert int((counts > 0).sum()) <= cfg.pool
    assert s.clients.unique().numel() == cfg.clients  # uniform clients: all of them speak
    # a fresh view each time: repeats of one object are not identical images
    top = torch.nonzero(s.sources == counts.argmax()).flatten()
    assert float((s.images[top[1]] - s.images[top[0]]).abs().max()) > 0.0


def test_zipf_zero_is_about_uniform() -> None:
    images, labels = smooth_images(100)
    cfg = WorkloadConfig(length=5000, pool=10, zipf_s=0.0)
    counts = torch.bincount(make_stream("multi-client", images, labels, seed=0, config=cfg).sources)
    counts = counts[counts > 0]
    assert counts.numel() == 10 and int(counts.max()) < 1.3 * cfg.length / cfg.pool


def test_perturb_shift_and_rotation_move_content_as_documented() -> None:
    x = torch.zeros(1, 1, 29, 29)
    x[0, 0, 14, 20] = 1.0  # right of the centre pixel (14, 14)
    pert = STILL
    shifted = perturb(x, views(1, shift=torch.tensor([[3.0, 1.0]])), pert)
    assert torch.allclose(shifted, torch.roll(x, shifts=(1, 3), dims=(2, 3)), atol=1e-5)
    turned = perturb(x, views(1, rotation=torch.tensor([90.0])), pert)
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)  # counter-clockwise


def test_perturb_patch_contrast_brightness_and_noise() -> None:
    images, _ = smooth_images(4)
    p = views(
        4,
        patch=torch.tensor([True, False, False, False]),
        patch_xy=torch.tensor([[3.0, 5.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        patch_grey=torch.full((4,), 0.5),
        brightness=torch.tensor([0.0, 0.2, 0.0, 0.0]),
        contrast=torch.tensor([0.0, 0.0, -1.0, 0.0]),
    )
    before = images.clone()
    out = perturb(images, p, dataclasses.replace(STILL, patch_px=4))
    assert torch.equal(images, before)  # the input is not modified
    assert bool((out[0, 0, 5:9, 3:7] == 0.5).all())
    untouched = torch.ones(28, 28, dtype=torch.bool)
    untouched[5:9, 3:7] = False
    assert torch.equal(out[0, 0][untouched], images[0, 0][untouched])
    assert torch.allclose(out[1], (images[1] + 0.2).clamp(0, 1))
    assert torch.allclose(out[2], images[2].mean().expand(1, 28, 28))  # contrast -1: flat
    assert torch.equal(out[3], images[3])
    g = torch.Generator().manual_seed(0)
    noisy = perturb(images, views(4), dataclasses.replace(STILL, noise_std=0.05), generator=g)
    assert 0.02 < float((noisy - images).abs().mean()) < 0.05


def test_perturb_handles_non_square_images() -> None:
    x = torch.zeros(1, 1, 21, 41)
    x[0, 0, 10, 25] = 1.0  # 5 px right of the centre (10, 20)
    out = perturb(x, views(1, rotation=torch.tensor([90.0])), STILL)
    assert divmod(int(out.argmax()), 41) == (5, 20)  # 5 px above it: a rotation, no shear


def bad(kind: str = "video", images=None, labels=None, **cfg) -> None:
    if images is None:
        images, labels = smooth_images(20)
    make_stream(kind, images, labels, seed=0, config=WorkloadConfig(**cfg))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bad(kind="zipf"), "iid, video, multi-client"),
        (lambda: bad(length=0), "length"),
        (lambda: bad(clients=0), "clients"),
        (lambda: bad(frames_per_run=0), "frames_per_run"),
        (lambda: bad(pool=0), "pool"),
        (lambda: bad("multi-client", pool=21), "pool of 21"),
        (lambda: bad("iid", length=21), "iid stream of 21"),
        (lambda: bad(zipf_s=-1.0), "zipf_s"),
        (lambda: bad(step=-0.1), "step"),
        (lambda: bad(step=1.5), "step"),
        (lambda: bad(length=2.5), "length"),
        (lambda: bad(images=torch.rand(20, 28, 28), labels=torch.zeros(20)), r"\(N, 1, H, W\)"),
        (lambda: bad(images=torch.rand(20, 3, 28, 28), labels=torch.zeros(20)), r"\(N, 1, H, W\)"),
        (
            lambda: bad(images=torch.ones(20, 1, 8, 8, dtype=torch.uint8), labels=torch.zeros(20)),
            "floating point",
        ),
        (lambda: bad(images=torch.rand(20, 1, 8, 8), labels=torch.zeros(19)), r"shape \(20,\)"),
        (lambda: bad(images=torch.rand(20, 1, 8, 8) * 2, labels=torch.zeros(20)), r"\[0, 1\]"),
        (lambda: bad(images=torch.rand(0, 1, 8, 8), labels=torch.zeros(0)), "empty"),
        (lambda: bad(images=torch.rand(20, 1, 4, 4), labels=torch.zeros(20)), "does not fit"),
        (lambda: Perturbation(max_shift_px=-1.0), "max_shift_px"),
        (lambda: Perturbation(max_rotation_deg=-1.0), "max_rotation_deg"),
        (lambda: Perturbation(brightness=-0.1), "brightness"),
        (lambda: Perturbation(contrast=-0.1), "contrast"),
        (lambda: Perturbation(contrast=1.5), "contrast"),
        (lambda: Perturbation(noise_std=float("nan")), "noise_std"),
        (lambda: Perturbation(patch_prob=-0.1), "patch_prob"),
        (lambda: Perturbation(patch_prob=1.1), "patch_prob"),
        (lambda: Perturbation(patch_px=-1), "patch_px"),
        (lambda: perturb(torch.rand(3, 1, 8, 8), views(2), STILL), "2 views for 3 images"),
        (lambda: views(2, rotation=torch.zeros(3)), "PerturbParams.rotation has shape"),
        (lambda: views(2, patch=torch.zeros(2)), "PerturbParams.patch has dtype"),
        (lambda: walk_params(2, 3, STILL, step=-1.0), "step"),
    ],
)
def test_bad_input_is_a_config_error(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()
