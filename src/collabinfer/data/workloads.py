"""Seeded request streams with locality, for the semantic-cache experiment.

Why: a semantic cache (FoggyCache, MobiSys'18; Reservoir, DSN'20) answers a
request from an earlier one whose input was *similar*, so it only pays off when
requests are near in space and time: many cameras see the same object,
consecutive frames of one scene barely differ. An i.i.d. shuffle of a test set
has no such locality and would show no benefit; those papers therefore evaluate
on streams built to have it. This module builds three of them from any
Fashion-MNIST-like set (images ``(N, 1, H, W)`` float in [0, 1], labels ``(N,)``):

* ``"iid"``: the plain images in a seeded random order, no repeats, no
  perturbation. The baseline: a cache should (almost) never hit, and a hit is a
  near-duplicate in the dataset itself.
* ``"video"``: each of ``clients`` cameras watches one object (a source image)
  for ``frames_per_run`` frames, then moves on to a new one; the clients'
  requests are interleaved round-robin, so frames of one run are near in time
  but not adjacent. Frame to frame, the view (shift, rotation, brightness,
  contrast, occluder position) takes a bounded random-walk step, always applied
  to the *original* image so no blur accumulates; sensor noise is fresh each
  frame. Temporal locality: the cache's best case.
* ``"multi-client"``: the clients share a pool of ``pool`` objects whose
  popularity is Zipf(``zipf_s``); each request is a popular-or-not object seen
  afresh ("the same animal from another angle": a new view drawn uniformly
  within the bounds). Spatial locality across clients, no temporal smoothness.

Every observation is the source image warped by ``affine_grid``/``grid_sample``
(rotation about the centre, then a shift in pixels; bilinear, zero padding),
then contrast around the image mean, brightness, an optional square occluding
patch of constant grey, sensor noise, and a clamp to [0, 1] (:func:`perturb`).
The same pieces are public so a key projection can be trained on perturbed
*train* images with exactly the test-time perturbation model
(:func:`sample_params` for fresh views, :func:`walk_params` for video runs).

Not modelled: motion blur, occlusion by other objects in the scene, camera
identity (all clients see through the same optics), and popularity that drifts
over time. Every stream is a pure function of (data, kind, config, seed): one
``torch.Generator`` seeded from ``seed`` draws everything, so a seed gives
bit-identical streams (on CPU) and another seed a different one.

Example::

    >>> from collabinfer.data.synthetic import synthetic_dataset
    >>> ds = synthetic_dataset(n=64)
    >>> cfg = WorkloadConfig(length=100, clients=4, frames_per_run=5)
    >>> s = make_stream("video", ds.images, ds.labels, seed=0, config=cfg)
    >>> len(s), tuple(s.images.shape), s.images.dtype
    (100, (100, 1, 28, 28), torch.float32)
    >>> first_run = s.sources[s.clients == 0][:5]    # client 0's first five frames
    >>> bool((first_run == first_run[0]).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from collabinfer.errors import ConfigError

__all__ = [
    "WORKLOADS",
    "PerturbParams",
    "Perturbation",
    "Stream",
    "WorkloadConfig",
    "make_stream",
    "perturb",
    "sample_params",
    "walk_params",
]

WORKLOADS: tuple[str, ...] = ("iid", "video", "multi-client")

# Continuous parameters, in this order, in the (n, 7) matrices the samplers build:
# shift x, shift y (pixels), rotation (degrees), brightness, contrast, patch x, patch y.
_N_CONTINUOUS = 7


def _check_bound(value: float, name: str, high: float | None = None) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be finite and >= 0, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")


@dataclass(frozen=True)
class Perturbation:
    """Bounds of how far one observation may differ from the original image.

    Each continuous parameter ranges over ``0 ± bound`` (contrast is a factor
    ``1 ± contrast`` around the image mean); the occluding patch's top-left
    corner ranges over the whole image. Zero everywhere (and ``patch_prob=0``)
    is the identity.
    """

    max_shift_px: float = 2.0
    max_rotation_deg: float = 10.0
    brightness: float = 0.03  # additive, +-
    contrast: float = 0.15  # multiplicative around the image mean, 1 +- this
    noise_std: float = 0.01  # sensor noise, fresh for every frame
    patch_prob: float = 0.3  # chance an observation (a video run) carries an occluding patch
    patch_px: int = 6  # side of the square patch (filled with a constant grey level)

    def __post_init__(self) -> None:
        _check_bound(self.max_shift_px, "max_shift_px")
        _check_bound(self.max_rotation_deg, "max_rotation_deg", 180.0)
        _check_bound(self.brightness, "brightness")
        _check_bound(self.contrast, "contrast", 1.0)  # a factor 1 - c below 0 inverts the image
        _check_bound(self.noise_std, "noise_std")
        _check_bound(self.patch_prob, "patch_prob", 1.0)
        if isinstance(self.patch_px, bool) or not isinstance(self.patch_px, int):
            raise ConfigError(f"patch_px must be an int, got {self.patch_px!r}")
        _check_bound(self.patch_px, "patch_px")


@dataclass(frozen=True)
class WorkloadConfig:
    """The shape of a stream; fields not used by a kind are ignored by it."""

    length: int = 2000  # requests in the stream
    clients: int = 8
    frames_per_run: int = 20  # video: frames one client sees of one object before it moves on
    pool: int = 200  # multi-client: objects (source images) the clients share
    zipf_s: float = 1.1  # multi-client: Zipf exponent of object popularity (0 = uniform)
    step: float = 0.25  # video: fraction of each bound a frame may move from the last
    perturbation: Perturbation = Perturbation()

    def __post_init__(self) -> None:
        for name in ("length", "clients", "frames_per_run", "pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        _check_bound(self.zipf_s, "zipf_s")
        _check_bound(self.step, "step", 1.0)  # a fraction of each bound
        if not isinstance(self.perturbation, Perturbation):
            raise ConfigError(f"perturbation must be a Perturbation, got {self.perturbation!r}")


@dataclass(frozen=True)
class Stream:
    """A request stream: request ``t`` is ``images[t]``, sent by ``clients[t]``."""

    kind: str  # one of WORKLOADS
    images: torch.Tensor  # (T, 1, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (T,) int64: the label of the source image
    sources: torch.Tensor  # (T,) int64: index of the source image in the given dataset
    clients: torch.Tensor  # (T,) int64: which client sent request t
    seed: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class PerturbParams:
    """The view parameters of ``n`` observations, as :func:`perturb` applies them.

    Typed fields rather than one opaque matrix, so a caller can read (or set)
    e.g. the rotation of frame ``t`` by name. The samplers return float64, so
    a value clipped to a bound equals the bound as Python sees it (float32 0.1
    is above 0.1); :func:`perturb` takes any float dtype.
    """

    shift: torch.Tensor  # (n, 2) float: content moves by (x, y) pixels (x right, y down)
    rotation: torch.Tensor  # (n,) float: degrees about the centre, > 0 counter-clockwise
    brightness: torch.Tensor  # (n,) float: added to every pixel
    contrast: torch.Tensor  # (n,) float: deviation from the mean scaled by 1 + this
    patch: torch.Tensor  # (n,) bool: whether the observation is occluded
    patch_xy: torch.Tensor  # (n, 2) float: the patch's top-left corner (x, y), pixels
    patch_grey: torch.Tensor  # (n,) float: the patch's grey level in [0, 1]

    def __post_init__(self) -> None:
        if not all(isinstance(getattr(self, f.name), torch.Tensor) for f in fields(self)):
            raise ConfigError("every PerturbParams field must be a tensor")
        n = self.shift.shape[0] if self.shift.dim() == 2 else -1
        want = {"shift": (n, 2), "patch_xy": (n, 2)}
        for f in fields(self):
            value = getattr(self, f.name)
            expected = want.get(f.name, (n,))
            if tuple(value.shape) != expected:
                raise ConfigError(
                    f"PerturbParams.{f.name} has shape {tuple(value.shape)}, expected {expected}"
                )
            if (f.name == "patch") != (value.dtype == torch.bool):
                raise ConfigError(f"PerturbParams.{f.name} has dtype {value.dtype}")

    def __len__(self) -> int:
        return int(self.rotation.shape[0])


def _bounds(p: Perturbation, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and half-width of each continuous parameter: it ranges over centre ± half."""
    h, w = size
    if p.patch_px > min(h, w):
        raise ConfigError(f"patch_px={p.patch_px} does not fit in {h}x{w} images")
    half_x, half_y = (w - p.patch_px) / 2, (h - p.patch_px) / 2
    half = [p.max_shift_px, p.max_shift_px, p.max_rotation_deg, p.brightness, p.contrast]
    centre = torch.tensor([0.0] * 5 + [half_x, half_y], dtype=torch.float64)
    return centre, torch.tensor([*half, half_x, half_y], dtype=torch.float64)


def _pack(values: torch.Tensor, patch: torch.Tensor, grey: torch.Tensor) -> PerturbParams:
    v = values.to(torch.float64)
    return PerturbParams(
        shift=v[:, 0:2].contiguous(),
        rotation=v[:, 2].contiguous(),
        brightness=v[:, 3].contiguous(),
        contrast=v[:, 4].contiguous(),
        patch=patch,
        patch_xy=v[:, 5:7].contiguous(),
        patch_grey=grey.to(torch.float64),
    )


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform in [-1, 1), float64 so walks clip exactly at their bounds."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1


def _occluders(
    n: int, p: Perturbation, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    on = torch.rand(n, generator=generator, dtype=torch.float64) < p.patch_prob
    grey = torch.rand(n, generator=generator)
    return on & (p.patch_px > 0), grey


def sample_params(
    n: int,
    perturbation: Perturbation,
    *,
    image_size: tuple[int, int] = (28, 28),
    generator: torch.Generator | None = None,
) -> PerturbParams:
    """``n`` independent views, each parameter uniform within its bound.

    The multi-client workload's model of a fresh observation; also the sampler
    to use when training a key projection on perturbed train images::

        params = sample_params(len(x), pert, generator=g)
        views = perturb(x, params, pert, generator=g)
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    centre, half = _bounds(perturbation, image_size)
    values = centre + half * _uniform((n, _N_CONTINUOUS), generator)
    return _pack(values, *_occluders(n, perturbation, generator))


def walk_params(
    runs: int,
    frames: int,
    perturbation: Perturbation,
    *,
    step: float,
    image_size: tuple[int, int] = (28, 28),
    generator: torch.Generator | None = None,
) -> PerturbParams:
    """``runs`` independent video runs of ``frames`` frames each, run-major.

    A run starts at a uniform view within the bounds; every frame each parameter
    moves by at most ``step`` × its bound and is clipped back into the bounds.
    Whether a run is occluded, and the patch's grey level, are decided once per
    run (the same occluder, drifting with the walk). Row ``r * frames + f`` is
    frame ``f`` of run ``r``.
    """
    if runs < 0 or frames < 0:
        raise ConfigError(f"runs and frames must be >= 0, got {runs} and {frames}")
    _check_bound(step, "step", 1.0)
    centre, half = _bounds(perturbation, image_size)
    low, high = centre - half, centre + half
    values = torch.empty(runs, frames, _N_CONTINUOUS, dtype=torch.float64)
    on, grey = _occluders(runs, perturbation, generator)
    if frames > 0:
        # one vectorised step over all runs per frame: 20 small ops, not runs * 20
        x = centre + half * _uniform((runs, _N_CONTINUOUS), generator)
        values[:, 0] = x
        steps = step * half * _uniform((runs, frames - 1, _N_CONTINUOUS), generator)
        for f in range(1, frames):
            x = torch.clamp(x + steps[:, f - 1], low, high)
            values[:, f] = x
    flat = values.reshape(runs * frames, _N_CONTINUOUS)
    return _pack(flat, on.repeat_interleave(frames), grey.repeat_interleave(frames))


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"images must be a (N, 1, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ConfigError(f"images must be floating point in [0, 1], got {images.dtype}")


def _warp(images: torch.Tensor, shift: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate about the centre, then shift by whole or fractional pixels.

    The sampler reads input pixel ``q = R p - R d`` for output pixel ``p``
    (pixel coordinates about the centre), i.e. content rotated by ``R⁻¹`` and
    moved by ``d``; ``S⁻¹ R S`` carries that into ``affine_grid``'s normalised
    coordinates so non-square images rotate without shearing.
    """
    n, _, h, w = images.shape
    a = torch.deg2rad(rotation.to(images.device, torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    d = shift.to(images.device, torch.float32)
    t_x = -(cos * d[:, 0] - sin * d[:, 1])
    t_y = -(sin * d[:, 0] + cos * d[:, 1])
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, t_x * 2 / w], dim=1),
            torch.stack([sin * w / h, cos, t_y * 2 / h], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def perturb(
    images: torch.Tensor,
    params: PerturbParams,
    perturbation: Perturbation,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply one view per image: warp, contrast, brightness, patch, noise, clamp.

    ``params`` come from :func:`sample_params` or :func:`walk_params` (or are
    set by hand); ``perturbation`` supplies only what is not a per-view
    parameter: the patch side and the sensor-noise level, whose noise is drawn
    from ``generator`` here, fresh on every call. Views with zero shift and
    rotation skip the resampler, so the all-zero view returns the input exactly.
    Returns a new float32 tensor in [0, 1]; the input is not modified.
    """
    _check_images(images)
    n, _, h, w = images.shape
    if len(params) != n:
        raise ConfigError(f"{len(params)} views for {n} images")
    _bounds(perturbation, (h, w))  # checks that the patch fits
    dev = images.device
    out = images.to(torch.float32)  # every step below makes a new tensor: the input is safe
    moved = ((params.shift != 0).any(dim=1) | (params.rotation != 0)).to(dev)
    if bool(moved.all()):  # the usual case: no gather/scatter copies
        out = _warp(out, params.shift, params.rotation)
    elif bool(moved.any()):
        out = out.clone()
        out[moved] = _warp(out[moved], params.shift.to(dev)[moved], params.rotation.to(dev)[moved])
    c = params.contrast.to(dev, torch.float32).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = out * (1 + c) - mean * c  # = mean + (x - mean)(1 + c), but exact for c = 0
    out = out + params.brightness.to(dev, torch.float32).view(n, 1, 1, 1)
    side = perturbation.patch_px
    if side > 0 and bool(params.patch.any()):
        corner = params.patch_xy.round().to(torch.int64).to(dev)
        x0 = corner[:, 0].clamp(0, w - side).view(n, 1)
        y0 = corner[:, 1].clamp(0, h - side).view(n, 1)
        cols, rows = torch.arange(w, device=dev).view(1, w), torch.arange(h, device=dev).view(1, h)
        in_x = (cols >= x0) & (cols < x0 + side)  # (n, w)
        in_y = (rows >= y0) & (rows < y0 + side)  # (n, h)
        mask = in_y[:, :, None] & in_x[:, None, :] & params.patch.to(dev).view(n, 1, 1)
        grey = params.patch_grey.to(dev, torch.float32).view(n, 1, 1, 1)
        out = torch.where(mask[:, None], grey, out)
    if perturbation.noise_std > 0:
        noise = torch.randn(out.shape, generator=generator, dtype=torch.float32)
        out = out + perturbation.noise_std * noise.to(dev)
    return out.clamp_(0.0, 1.0)


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    _check_images(images)
    n = images.shape[0]
    if n < 1:
        raise ConfigError("images is empty")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ConfigError(f"labels must have shape ({n},) to match the images, got {shape}")
    low, high = torch.aminmax(images)
    if not (float(low) >= 0.0 and float(high) <= 1.0):
        raise ConfigError(f"images must lie in [0, 1], got [{float(low)}, {float(high)}]")


def _iid(n: int, cfg: WorkloadConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.length > n:
        raise ConfigError(f"an iid stream of {cfg.length} requests needs as many images, got {n}")
    sources = torch.randperm(n, generator=g)[: cfg.length]
    return sources, torch.arange(cfg.length) % cfg.clients


def _video_layout(
    n: int, cfg: WorkloadConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Who sends request t, which source it shows, and its row in the walk.

    Request ``t`` is frame ``k = t // clients`` of client ``c = t % clients``,
    i.e. frame ``k % F`` of that client's run ``k // F``. Runs are numbered in
    time order (``run * clients + c``) and take sources from seeded
    permutations of the dataset, one after another: without replacement until
    the dataset is used up (a client can meet the same object twice in a row
    only at such a seam, and only if there are fewer images than runs).
    """
    t = torch.arange(cfg.length)
    clients = t % cfg.clients
    k = t // cfg.clients
    frames = min(cfg.frames_per_run, int(k[-1]) + 1)  # no walk longer than any client's stream
    runs = cfg.clients * (int(k[-1]) // frames + 1)
    run_id = (k // frames) * cfg.clients + clients
    perms = [torch.randperm(n, generator=g) for _ in range(-(-runs // n))]
    run_sources = torch.cat(perms)[:runs]
    return clients, run_sources[run_id], run_id * frames + k % frames, runs, frames


def make_stream(
    kind: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    config: WorkloadConfig = WorkloadConfig(),
) -> Stream:
    """Build a ``kind`` stream (one of :data:`WORKLOADS`) over ``images``/``labels``.

    Everything random comes from one generator seeded with ``seed``. Built in a
    handful of batched tensor ops: 10,000 video requests take 0.3-0.5 s on one
    (busy) core, two thirds of it in ``affine_grid`` (a 784x3 @ 3x2 bmm per image).
    """
    if kind not in WORKLOADS:
        raise ConfigError(f"unknown workload {kind!r}; choose one of {', '.join(WORKLOADS)}")
    if not isinstance(config, WorkloadConfig):
        raise ConfigError(f"config must be a WorkloadConfig, got {type(config).__name__}")
    cfg = config
    _check_data(images, labels)
    n, _, h, w = images.shape
    pert = cfg.perturbation
    _bounds(pert, (h, w))  # a patch that does not fit fails before any work
    g = torch.Generator().manual_seed(seed)
    src = images.to(torch.float32)
    if kind == "iid":
        sources, clients = _iid(n, cfg, g)
        frames = src[sources.to(src.device)]  # advanced indexing copies
    elif kind == "video":
        clients, sources, rows, runs, per_run = _video_layout(n, cfg, g)
        walk = walk_params(runs, per_run, pert, step=cfg.step, image_size=(h, w), generator=g)
        view = PerturbParams(*(getattr(walk, f.name)[rows] for f in fields(PerturbParams)))
        frames = perturb(src[sources.to(src.device)], view, pert, generator=g)
    else:
        if cfg.pool > n:
            raise ConfigError(f"a pool of {cfg.pool} objects needs as many images, got {n}")
        pool = torch.randperm(n, generator=g)[: cfg.pool]  # random order: pool[r] has rank r + 1
        weights = torch.arange(1, cfg.pool + 1, dtype=torch.float64) ** -cfg.zipf_s
        ranks = torch.multinomial(weights, cfg.length, replacement=True, generator=g)
        sources = pool[ranks]
        clients = torch.randint(0, cfg.clients, (cfg.length,), generator=g)
        fresh = sample_params(cfg.length, pert, image_size=(h, w), generator=g)
        frames = perturb(src[sources.to(src.device)], fresh, pert, generator=g)
    return Stream(
        kind=kind,
        images=frames,
        labels=labels[sources.to(labels.device)].to(torch.int64),
        sources=sources.to(torch.int64),
        clients=clients.to(torch.int64),
        seed=seed,
    )
