"""The caches ours is compared with, replayed offline on the same streams, and how a
replay is scored.

Two baselines, each given its own rule fitted on the *validation* streams for
the same precision target as ours (the most hits whose hit precision against
the model's own answer reaches it), so the comparison is hit rate at equal
precision:

* **pixel LSH** (Reservoir-style): the image downsampled to ``size x size``
  (2x2 average pooling on Fashion-MNIST: 14 x 14), mean-centred and hashed by
  ``bits`` seeded random hyperplanes (SimHash); a lookup compares the query
  with every entry in its bucket and answers with the most similar one if its
  SSIM reaches the threshold; a miss inserts. Reservoir uses 0.6; we report
  that setting beside the fitted one. It needs the raw image where the cache
  is, so on an edge cache it breaks the split's privacy (the device would send
  the pixels), which is flagged in its rows.
* **decoupled extractor**: a separate small network (``fmnist-small``) run on
  the image only to make the key (its penultimate activations, L2-normalised),
  with the same H-kNN rule as ours fitted by
  :func:`~collabinfer.cache.rule.solve_rule`, replayed through the same
  :class:`~collabinfer.cache.semantic.SemanticCache`. Its key costs a second
  forward pass; that time is reported as ``key_ms``.

SSIM is the one :mod:`collabinfer.privacy.metrics` uses (scikit-image's, Gaussian
window sigma 1.5, mean over the window-valid interior), computed here for one
query against a whole bucket at once: the Gaussian filter of a ``size x size``
image is one linear map, so every local mean and variance is a matrix product
(a test checks it equals scikit-image's to 1e-9).

Not modelled: Reservoir's bounded bucket sizes and its replacement policy (the
replay's cache is unbounded, as :func:`~collabinfer.cache.rule.simulate`'s is),
multiple hash tables, and the extractor's time on the device if it ran there.

    >>> import numpy as np
    >>> hit, answered = np.array([False, True, True]), np.array([3, 3, 1])
    >>> s = hit_stats(hit, answered, np.array([3, 3, 3]), np.array([3, 3, 1]),
    ...               np.array([7, 7, 8]))
    >>> s.hit_rate, s.hit_precision_model, s.hit_precision_label, s.opportunities
    (0.6666666666666666, 0.5, 1.0, 1)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from collabinfer.cache.rule import HitRule, RuleFit, solve_rule
from collabinfer.cache.semantic import Namespace, SemanticCache
from collabinfer.errors import ConfigError
from collabinfer.experiments.reuse_schema import BaselinePoint
from collabinfer.model.blocks import BlockNet
from collabinfer.train.reuse import RuleConfig

__all__ = [
    "BaselineConfig",
    "HitStats",
    "PixelLSH",
    "Replay",
    "SSIMWindow",
    "ScoredStream",
    "ThresholdFit",
    "ValStream",
    "decoupled_baseline",
    "describe_rule",
    "downsample",
    "extractor_keys",
    "fit_ssim_threshold",
    "hit_stats",
    "pixel_lsh_baselines",
    "replay_keys",
    "replay_lsh",
]

RESERVOIR_SSIM = 0.6


@dataclass(frozen=True)
class BaselineConfig:
    lsh_size: int = 14  # downsampled side: 28 -> 14
    lsh_bits: int = 12
    lsh_seed: int = 0
    reservoir_ssim: float = RESERVOIR_SSIM
    # 0.30 to 0.975 by 0.025, then finer where near-copies live
    ssim_grid: tuple[float, ...] = (
        *(round(0.30 + 0.025 * i, 3) for i in range(28)),
        0.985,
        0.99,
        0.995,
    )
    cache_bytes: int = 64 << 20  # the decoupled key's SemanticCache

    def __post_init__(self) -> None:
        if self.lsh_size < 11:
            raise ConfigError(f"SSIM's 11x11 window needs lsh_size >= 11, got {self.lsh_size}")
        if not 1 <= self.lsh_bits <= 30:
            raise ConfigError(f"lsh_bits must be in 1..30, got {self.lsh_bits}")
        if not self.ssim_grid:
            raise ConfigError("ssim_grid is empty")


# ---------------------------------------------------------------- scoring a replay


@dataclass(frozen=True)
class HitStats:
    requests: int
    hits: int
    hit_rate: float
    hit_precision_model: float | None  # None: no hits
    hit_precision_label: float | None
    accuracy: float
    opportunities: int
    opportunities_harnessed: float | None  # None: the stream has no opportunity
    hits_without_opportunity: int


def seen_before(sources: np.ndarray) -> np.ndarray:
    """Whether each request's source object appeared earlier in the stream."""
    sources = np.asarray(sources)
    first = np.zeros(len(sources), dtype=bool)
    first[np.unique(sources, return_index=True)[1]] = True
    return ~first


def hit_stats(
    hit: np.ndarray,
    answered: np.ndarray,
    model: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
) -> HitStats:
    """Score one replay: ``answered`` (what was returned) against ``model`` (the model's
    own answer, the no-cache run's) and ``labels``. An opportunity is a request whose
    source was seen before (FoggyCache's "reuse opportunity"); ``opportunities_harnessed``
    is the fraction of those that hit."""
    hit = np.asarray(hit, dtype=bool)
    answered, model, labels = (np.asarray(a) for a in (answered, model, labels))
    n, hits = len(hit), int(hit.sum())
    if n == 0:
        raise ConfigError("an empty stream cannot be scored")
    opp = seen_before(sources)
    n_opp = int(opp.sum())
    return HitStats(
        requests=n,
        hits=hits,
        hit_rate=hits / n,
        hit_precision_model=float((answered == model)[hit].mean()) if hits else None,
        hit_precision_label=float((answered == labels)[hit].mean()) if hits else None,
        accuracy=float((answered == labels).mean()),
        opportunities=n_opp,
        opportunities_harnessed=float((hit & opp).sum() / n_opp) if n_opp else None,
        hits_without_opportunity=int((hit & ~opp).sum()),
    )


class Replay(NamedTuple):
    hit: np.ndarray  # (T,) bool
    answered: np.ndarray  # (T,) the label returned: the cached one on a hit, else the model's
    key_ms: float  # mean per request
    lookup_ms: float  # mean per request


# ---------------------------------------------------------------- SSIM, vectorised


def _reflect(i: int, n: int) -> int:
    """scipy.ndimage's ``reflect`` boundary (d c b a | a b c d | d c b a)."""
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - i - 1
    return i


class SSIMWindow:
    """SSIM of ``size x size`` images as scikit-image computes it (Gaussian sigma 1.5,
    truncate 3.5, reflect boundary, population covariance, data range 1, the mean
    over the interior the 11x11 window fits in), one query against many at once."""

    C1, C2 = 0.01**2, 0.03**2

    def __init__(self, size: int, sigma: float = 1.5, truncate: float = 3.5) -> None:
        r = int(truncate * sigma + 0.5)
        if size < 2 * r + 1:
            raise ConfigError(f"SSIM's {2 * r + 1}-pixel window needs images >= that, got {size}")
        x = np.arange(-r, r + 1)
        w = np.exp(-0.5 * (x / sigma) ** 2)
        w /= w.sum()
        a = np.zeros((size, size))
        for i in range(size):
            for off, wi in zip(x, w, strict=True):
                a[i, _reflect(i + int(off), size)] += wi
        inner = a[r : size - r]
        self.size = size
        self.g = np.kron(inner, inner)  # (interior pixels, size^2): filter, then crop

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local means and second moments of flattened images ``(M, size^2)``."""
        x = np.asarray(x, dtype=np.float64)
        return x @ self.g.T, (x * x) @ self.g.T

    def against(self, y: np.ndarray, xs: np.ndarray, ux: np.ndarray, uxx: np.ndarray) -> np.ndarray:
        """SSIM of query ``y`` (size^2,) with each row of ``xs`` (their :meth:`moments`)."""
        y = np.asarray(y, dtype=np.float64)
        uy, uyy = self.g @ y, self.g @ (y * y)
        uxy = (xs * y) @ self.g.T
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        num = (2 * ux * uy + self.C1) * (2 * vxy + self.C2)
        den = (ux * ux + uy * uy + self.C1) * (vx + vy + self.C2)
        out: np.ndarray = (num / den).mean(axis=1)
        return out


# ---------------------------------------------------------------- pixel LSH


def downsample(images: torch.Tensor, size: int) -> np.ndarray:
    """``(N, C, H, W)`` images averaged over channels and over ``H/size x W/size``
    blocks, flattened: ``(N, size^2)`` float64."""
    n, _, h, w = images.shape
    if h % size or w % size:
        raise ConfigError(f"{h}x{w} images do not pool evenly to {size}x{size}")
    x = images.detach().to(torch.float64).mean(1).numpy()
    out: np.ndarray = x.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4))
    return out.reshape(n, size * size)


class PixelLSH:
    """The Reservoir-style cache (module docstring): SimHash buckets, SSIM within one."""

    def __init__(self, config: BaselineConfig, threshold: float) -> None:
        d = config.lsh_size**2
        rng = np.random.default_rng(config.lsh_seed)
        self.planes = rng.standard_normal((config.lsh_bits, d))
        self.weights = 1 << np.arange(config.lsh_bits, dtype=np.int64)
        self.window = SSIMWindow(config.lsh_size)
        self.threshold = threshold
        self._buckets: dict[int, list[int]] = {}
        self._x: list[np.ndarray] = []
        self._ux: list[np.ndarray] = []
        self._uxx: list[np.ndarray] = []
        self._label: list[int] = []

    def code(self, x: np.ndarray) -> int:
        """The bucket of one downsampled image (``(size^2,)``)."""
        bits = (self.planes @ (x - x.mean())) > 0
        return int(bits @ self.weights)

    def lookup(self, code: int, x: np.ndarray) -> int | None:
        """The most similar entry's label if its SSIM reaches the threshold, else None."""
        rows = self._buckets.get(code)
        if not rows:
            return None
        xs = np.stack([self._x[i] for i in rows])
        ux = np.stack([self._ux[i] for i in rows])
        uxx = np.stack([self._uxx[i] for i in rows])
        s = self.window.against(x, xs, ux, uxx)
        best = int(np.argmax(s))
        return self._label[rows[best]] if s[best] >= self.threshold else None

    def insert(self, code: int, x: np.ndarray, label: int) -> None:
        ux, uxx = self.window.moments(x[None])
        self._buckets.setdefault(code, []).append(len(self._x))
        self._x.append(x)
        self._ux.append(ux[0])
        self._uxx.append(uxx[0])
        self._label.append(int(label))


def replay_lsh(
    images: torch.Tensor, answers: np.ndarray, threshold: float, config: BaselineConfig
) -> Replay:
    """One stream through an empty :class:`PixelLSH`, one request at a time, timed."""
    lsh = PixelLSH(config, threshold)
    n = len(answers)
    hit = np.zeros(n, dtype=bool)
    answered = np.asarray(answers, dtype=np.int64).copy()
    key_s = look_s = 0.0
    perf = time.perf_counter
    for t in range(n):
        t0 = perf()
        x = downsample(images[t : t + 1], config.lsh_size)[0]
        code = lsh.code(x)
        t1 = perf()
        got = lsh.lookup(code, x)
        t2 = perf()
        key_s, look_s = key_s + t1 - t0, look_s + t2 - t1
        if got is None:
            lsh.insert(code, x, int(answered[t]))
        else:
            hit[t], answered[t] = True, got
    return Replay(hit, answered, 1e3 * key_s / n, 1e3 * look_s / n)


@dataclass(frozen=True)
class ThresholdFit:
    threshold: float | None  # None: no threshold on the grid reached the target
    hit_rate: float
    precision: float
    closest: tuple[float, float] | None = None  # without a fit: (threshold, precision) of
    # the most precise grid point that hit at all, to say how far off the target it was

    def describe(self) -> str:
        if self.threshold is not None:
            return f"SSIM >= {self.threshold:g}"
        if self.closest is None:
            return "no threshold hit on validation"
        thr, prec = self.closest
        return f"no threshold reached the target (best: {prec:.1%} at SSIM >= {thr:g})"


def fit_ssim_threshold(
    streams: Sequence[ValStream], target: float, config: BaselineConfig
) -> ThresholdFit:
    """The SSIM threshold with the most validation hits whose precision against the
    model's answers reaches ``target`` (ties: the higher threshold)."""
    best: tuple[int, float, float] | None = None  # (hits, threshold, precision)
    closest: tuple[float, float] | None = None  # (precision, threshold), any hits
    requests = sum(len(s.answers) for s in streams)
    for thr in sorted(config.ssim_grid):
        hits = correct = 0
        for images, answers, _ in streams:
            r = replay_lsh(images, answers, thr, config)
            hits += int(r.hit.sum())
            correct += int((r.hit & (r.answered == answers)).sum())
        if hits and (closest is None or correct / hits >= closest[0]):
            closest = (correct / hits, thr)
        if hits and correct / hits >= target and (best is None or hits >= best[0]):
            best = (hits, thr, correct / hits)
    if best is None:
        return ThresholdFit(None, 0.0, 1.0, None if closest is None else closest[::-1])
    return ThresholdFit(best[1], best[0] / requests, best[2])


# ---------------------------------------------------------------- decoupled extractor


@torch.inference_mode()
def extractor_keys(net: BlockNet, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Unit keys from ``net``'s penultimate activations (the input to its last block)."""
    net = net.eval()
    cut = net.num_blocks - 1
    out = []
    for i in range(0, len(images), batch):
        z = net.run_until(images[i : i + batch], cut).reshape(len(images[i : i + batch]), -1)
        out.append(torch.nn.functional.normalize(z.float(), dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


@torch.inference_mode()
def _timed_keys(net: BlockNet, images: torch.Tensor) -> tuple[np.ndarray, float]:
    """The keys one request at a time (as a cache would make them) and their mean ms."""
    keys, total = [], 0.0
    for t in range(len(images)):
        t0 = time.perf_counter()
        keys.append(extractor_keys(net, images[t : t + 1])[0])
        total += time.perf_counter() - t0
    return np.stack(keys), 1e3 * total / max(1, len(images))


def replay_keys(keys: np.ndarray, logits: np.ndarray, rule: HitRule, cache_bytes: int) -> Replay:
    """One stream of precomputed keys through an empty :class:`SemanticCache` under
    ``rule``; a miss inserts the model's logits for that request (so the rule's
    confidence floor reads what it would in the chain). Lookup time only."""
    cache = SemanticCache(cache_bytes)
    ns = Namespace("baseline", "-", 0, "decoupled")
    n = len(logits)
    hit = np.zeros(n, dtype=bool)
    answered = np.asarray(logits).argmax(1).astype(np.int64)
    look_s = 0.0
    for t in range(n):
        t0 = time.perf_counter()
        got = cache.lookup(ns, keys[t], rule)
        look_s += time.perf_counter() - t0
        if got is None:
            cache.insert(ns, keys[t], logits[t], 0.0)
        else:
            hit[t], answered[t] = True, got.label
    return Replay(hit, answered, 0.0, 1e3 * look_s / max(1, n))


# ---------------------------------------------------------------- the baselines' rows


def describe_rule(rule: HitRule) -> str:
    """``k=2, tau=0.0123, conf>=0.9`` (``off`` for a rule that never hits)."""
    if not rule.enabled:
        return "off"
    floor = f", conf>={rule.min_confidence:g}" if rule.min_confidence > 0 else ""
    return f"k={rule.k}, tau={rule.tau:.4g}{floor}"


class ScoredStream(NamedTuple):
    """One test stream as the baselines need it: the model's own answers (``logits``,
    ``model`` their argmax) are the chain's without a cache."""

    workload: str
    images: torch.Tensor
    labels: np.ndarray
    sources: np.ndarray
    logits: np.ndarray  # (T, classes)

    @property
    def model(self) -> np.ndarray:
        out: np.ndarray = self.logits.argmax(1)
        return out


class ValStream(NamedTuple):
    """One validation stream with the model's own answers and their softmax confidence."""

    images: torch.Tensor
    answers: np.ndarray
    confidence: np.ndarray


def _point(
    method: str, setting: str, fitted: bool, s: ScoredStream, r: Replay, **extra: object
) -> BaselinePoint:
    stats = hit_stats(r.hit, r.answered, s.model, s.labels, s.sources)
    return BaselinePoint(
        method=method,
        setting=setting,
        fitted=fitted,
        workload=s.workload,
        key_ms=r.key_ms,
        lookup_ms=r.lookup_ms,
        **dataclasses.asdict(stats),
        **extra,  # type: ignore[arg-type]
    )


def pixel_lsh_baselines(
    val: Sequence[ValStream],
    tests: Sequence[ScoredStream],
    target: float,
    config: BaselineConfig,
) -> list[BaselinePoint]:
    """Pixel LSH at the threshold fitted on ``val`` (images, the model's answers) and at
    Reservoir's 0.6, on every test stream."""
    fit = fit_ssim_threshold(val, target, config)
    key_bytes = config.lsh_size**2 * 4  # float32 pixels; the hash is not counted
    settings: list[tuple[float | None, bool]] = [(fit.threshold, True)]
    settings.append((config.reservoir_ssim, False))
    out = []
    for thr, fitted in settings:
        vfit = fit if fitted else None
        for s in tests:
            threshold = 2.0 if thr is None else thr  # SSIM <= 1: 2 never hits
            r = replay_lsh(s.images, s.model, threshold, config)
            setting = fit.describe() if fitted else f"SSIM >= {thr:g}"
            out.append(
                _point(
                    "pixel-lsh",
                    setting,
                    fitted,
                    s,
                    r,
                    key_bytes=key_bytes,
                    val_hit_rate=vfit.hit_rate if vfit else None,
                    val_precision=vfit.precision if vfit else None,
                    raw_pixels_at_cache=True,
                )
            )
    return out


def decoupled_baseline(
    extractor: BlockNet,
    val: Sequence[ValStream],
    tests: Sequence[ScoredStream],
    target: float,
    rules: RuleConfig,
    config: BaselineConfig,
) -> tuple[list[BaselinePoint], RuleFit]:
    """The extractor's keys with the H-kNN rule (``rules``' grid: k, tau, confidence
    floor) fitted on ``val``, on every test stream."""
    streams = [(extractor_keys(extractor, v.images), v.answers, v.confidence) for v in val]
    fit = solve_rule(streams, target, rules.ks, rules.levels, rules.confidences)
    out = []
    for s in tests:
        keys, key_ms = _timed_keys(extractor, s.images)
        r = replay_keys(keys, s.logits, fit.rule, config.cache_bytes)._replace(key_ms=key_ms)
        setting = describe_rule(fit.rule)
        out.append(
            _point(
                "decoupled",
                setting,
                True,
                s,
                r,
                key_bytes=int(keys.shape[1]) * 4,
                val_hit_rate=fit.hit_rate,
                val_precision=fit.precision,
            )
        )
    return out, fit
