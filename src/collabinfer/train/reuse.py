"""What the semantic cache learns before it serves: a key projection and its hit rules.

Two recipes, both on train/validation data only (cached like every other):

* :func:`train_projection`: the ``projection`` key, a :class:`~collabinfer.cache.keys.ProjectionNet`
  over the cut's pooled features, trained by metric learning on train images:
  two random views of one image (:func:`~collabinfer.data.workloads.sample_params`,
  the workloads' own perturbation model) are pulled together and every other
  image in the batch pushed away (InfoNCE). Instance-level, not class-level, on
  purpose: a cache should answer for *the same object*, and a class-level
  embedding would happily merge a shirt with a pullover the model tells apart.
* :func:`fit_rules`: the H-kNN rule per cut (:func:`~collabinfer.cache.rule.solve_rule`)
  for a target hit precision, on validation streams of every workload: the
  model's own answers are the labels a hit must reproduce.

:func:`edge_reuse` puts them together for a tier: the cache, a key per cut and
the rules, ready for the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from collabinfer.cache.keys import KEYS, FlatKey, Keyer, PooledKey, ProjectionKey, ProjectionNet
from collabinfer.cache.reuse import Reuse
from collabinfer.cache.rule import (
    DEFAULT_CONFIDENCES,
    DEFAULT_KS,
    DEFAULT_PRECISION,
    TAU_LEVELS,
    HitRule,
    RuleFit,
    solve_rule,
)
from collabinfer.cache.semantic import SemanticCache
from collabinfer.data.fashion_mnist import Dataset, load_split
from collabinfer.data.workloads import (
    WORKLOADS,
    Perturbation,
    WorkloadConfig,
    make_stream,
    perturb,
    sample_params,
)
from collabinfer.errors import CheckpointError, CollabInferError, ConfigError, DataError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import Checkpoint, weights_hash
from collabinfer.progress import ProgressFn, report
from collabinfer.train.cache import Trained, cached, derived_slot, detached
from collabinfer.train.loop import Phase, fit, require_tuning_split

__all__ = [
    "ProjectionConfig",
    "RuleConfig",
    "edge_reuse",
    "fit_rules",
    "keyer",
    "stream_keys",
    "tier_reuse",
    "train_projection",
    "validation_streams",
]

LATENT_FLAT_MAX = 512  # a latent with more values is pooled (a 1568-dim key costs ~1 ms)


@dataclass(frozen=True)
class ProjectionConfig:
    cut: int = 1
    grid: int = 4  # pooling before the projection: more in than the plain key keeps
    out_dim: int = 64
    epochs: int = 3
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 0.1
    train_subset: int = 20_000
    seed: int = 0


@dataclass(frozen=True)
class RuleConfig:
    target: float = DEFAULT_PRECISION
    ks: tuple[int, ...] = DEFAULT_KS
    confidences: tuple[float, ...] = DEFAULT_CONFIDENCES
    levels: int = TAU_LEVELS
    stream_length: int = 1000  # per workload
    workloads: tuple[str, ...] = WORKLOADS
    grid: int = 2  # the features key's pooling
    seed: int = 1  # validation streams; the test streams use other seeds
    solver: int = 2  # bumped when solve_rule changes (2: precise on every stream): cache key

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ConfigError(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")


# --- keys ------------------------------------------------------------------------------------


def keyer(
    kind: str, net: BlockNet, cut: int, grid: int = 2, projection: ProjectionNet | None = None
) -> Keyer:
    """The key function of ``kind`` at ``cut`` (``projection`` needs its trained net)."""
    if kind == "features":
        return PooledKey(grid)
    if kind == "latent":
        numel = net.cut_points()[cut].numel
        return FlatKey() if numel <= LATENT_FLAT_MAX else PooledKey(4)
    if kind == "projection":
        if projection is None:
            raise ConfigError("the projection key needs a trained projection (train_projection)")
        return ProjectionKey(projection)
    raise ConfigError(f"unknown cache key {kind!r}; choose one of {KEYS}")


def train_projection(
    net: BlockNet,
    train: Dataset,
    config: ProjectionConfig = ProjectionConfig(),
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    may_train: bool = True,
) -> ProjectionNet:
    """The ``projection`` key for ``net`` at ``config.cut`` (cached by config and weights)."""
    net = net.eval()
    pooled = PooledKey(config.grid)
    with torch.no_grad():
        sample = net.run_until(train.images[:1], config.cut)
    in_dim = int(pooled.pooled(sample).shape[1])

    def build() -> ProjectionNet:
        return ProjectionNet(in_dim, config.out_dim, grid=config.grid)

    def load(ck: Checkpoint, _path: Path) -> ProjectionNet:
        proj = build()
        proj.load_state_dict(ck.state_dict)
        return proj.eval()

    def train_fn() -> Trained[ProjectionNet]:
        torch.manual_seed(config.seed)
        g = torch.Generator().manual_seed(config.seed)
        proj = build()
        data = train
        if config.train_subset and config.train_subset < len(train):
            idx = torch.randperm(len(train), generator=g)[: config.train_subset]
            data = dataclasses.replace(train, images=train.images[idx], labels=train.labels[idx])
        pert = Perturbation()

        def features(x: torch.Tensor) -> torch.Tensor:
            views = perturb(x, sample_params(len(x), pert, generator=g), pert, generator=g)
            with torch.no_grad():
                return pooled.pooled(net.run_until(views, config.cut))

        def loss(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            a, b = proj(features(x)), proj(features(x))
            logits = a @ b.T / config.temperature  # row i's positive is column i
            target = torch.arange(len(x))
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

        opt = torch.optim.Adam(proj.parameters(), lr=config.lr)
        phase = Phase("train cache projection", config.epochs, loss, opt, modes=proj.train)
        fit(phase, data, config.batch_size, g, progress=progress)
        return Trained(proj.eval(), detached(proj))

    slot = derived_slot("cache-projection", config, net, train, cache)
    return cached(
        slot,
        config=dataclasses.asdict(config),
        tuning={"projection training": train},
        load=load,
        train=train_fn,
        may_train=may_train,
        progress=progress,
        task="train cache projection",
    ).value


# --- rules -----------------------------------------------------------------------------------


def stream_keys(
    net: BlockNet, images: torch.Tensor, keys: Mapping[int, Keyer], batch: int = 256
) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Every request's key at each cut, the model's own answer and its softmax confidence."""
    out: dict[int, list[np.ndarray]] = {cut: [] for cut in keys}
    answers, confidence = [], []
    net = net.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            acts = net.activations(images[i : i + batch])
            prob = acts[-1].float().softmax(1)
            answers.append(prob.argmax(1).numpy())
            confidence.append(prob.max(1).values.numpy())
            for cut, key in keys.items():
                z = acts[cut]
                out[cut].extend(key(z[j : j + 1]) for j in range(len(z)))
    keyed = {cut: np.stack(v) for cut, v in out.items()}
    return keyed, np.concatenate(answers), np.concatenate(confidence)


def validation_streams(val: Dataset, config: RuleConfig) -> list[torch.Tensor]:
    require_tuning_split(val, "cache rules")
    wl = WorkloadConfig(length=config.stream_length)
    streams = []
    for i, kind in enumerate(config.workloads):
        length = min(config.stream_length, len(val)) if kind == "iid" else config.stream_length
        cfg = dataclasses.replace(wl, length=length)
        streams.append(make_stream(kind, val.images, val.labels, seed=config.seed + i, config=cfg))
    return [s.images for s in streams]


def fit_rules(
    net: BlockNet,
    keys: Mapping[int, Keyer],
    val: Dataset,
    config: RuleConfig = RuleConfig(),
    progress: ProgressFn | None = None,
) -> dict[int, RuleFit]:
    """The hit rule per cut for ``config.target`` precision, on validation streams."""
    per_stream = [stream_keys(net, images, keys) for images in validation_streams(val, config)]
    fits = {}
    for i, cut in enumerate(sorted(keys)):
        streams = [(k[cut], answers, conf) for k, answers, conf in per_stream]
        fits[cut] = solve_rule(streams, config.target, config.ks, config.levels, config.confidences)
        report(progress, "fit cache rules", i + 1, len(keys), {"cut": cut})
    return fits


def fitted_rules(
    net: BlockNet,
    keys: Mapping[int, Keyer],
    val: Dataset,
    config: RuleConfig = RuleConfig(),
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    may_train: bool = True,
) -> dict[int, HitRule]:
    """:func:`fit_rules`, cached by the model's weights, the keys and the config."""
    cuts = sorted(keys)

    def load(ck: Checkpoint, _path: Path) -> dict[int, HitRule]:
        table = ck.state_dict["rules"]
        return {int(r[0]): HitRule(int(r[1]), float(r[2]), float(r[3])) for r in table.tolist()}

    def train_fn() -> Trained[dict[int, HitRule]]:
        fits = fit_rules(net, keys, val, config, progress)
        table = torch.tensor(
            [
                [c, f.rule.k, f.rule.tau, f.rule.min_confidence, f.hit_rate, f.precision]
                for c, f in fits.items()
            ],
            dtype=torch.float64,
        )
        metrics = {f"cut{c}_hit_rate": f.hit_rate for c, f in fits.items()}
        return Trained({c: f.rule for c, f in fits.items()}, {"rules": table}, metrics)

    versions = {str(c): keys[c].version for c in cuts}
    slot = derived_slot("cache-rules", config, net, val, cache, extra={"keys": versions})
    return cached(
        slot,
        config=dataclasses.asdict(config) | {"keys": versions},
        tuning={"cache rules": val},
        load=load,
        train=train_fn,
        may_train=may_train,
        progress=progress,
        task="fit cache rules",
    ).value


def edge_reuse(
    net: BlockNet,
    model_name: str,
    cuts: Sequence[int],
    cache: SemanticCache,
    val: Dataset,
    *,
    key: str = "features",
    config: RuleConfig = RuleConfig(),
    projection: ProjectionNet | None = None,
    checkpoints: Path | None = None,
    progress: ProgressFn | None = None,
    may_train: bool = True,
) -> Reuse:
    """A tier's :class:`~collabinfer.cache.reuse.Reuse` for ``net`` at ``cuts``."""
    keys = {c: keyer(key, net, c, config.grid, projection) for c in cuts}
    rules = fitted_rules(net, keys, val, config, checkpoints, progress, may_train)
    return Reuse(cache, model_name, weights_hash(net), keys, rules)


def tier_reuse(
    net: BlockNet,
    model_name: str,
    start: int,
    stop: int | None,
    *,
    cache_mb: float,
    eviction: str = "lru",
    ttl_s: float | None = None,
    key: str = "features",
    precision: float = DEFAULT_PRECISION,
    checkpoints: Path | None = None,
    data_root: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> Reuse:
    """A tier server's semantic cache hosting blocks ``start..stop-1``: ``cache_mb`` MiB,
    a key and a hit rule for every cut a request may arrive at (the hosted blocks',
    from cut 1: the cache keys on features, never on a raw image), the rules fitted on
    validation streams for ``precision`` (cached after the first start). The
    projection key is trained for one cut, the first hosted one, and must be trained
    already. Built by whoever starts the server (the CLI), which has the recipes."""
    stop = net.num_blocks if stop is None else stop
    first = max(start, 1)
    cuts = range(first, first + 1) if key == "projection" else range(first, stop)
    cache = SemanticCache(int(cache_mb * 2**20), eviction, ttl_s)
    try:
        val = load_split("val", data_root)
        projection = None
        if key == "projection":
            projection = train_projection(
                net, load_split("train", data_root), ProjectionConfig(cut=first), checkpoints,
                may_train=False,
            )  # fmt: skip
        return edge_reuse(
            net,
            model_name,
            cuts,
            cache,
            val,
            key=key,
            config=RuleConfig(target=precision),
            projection=projection,
            checkpoints=checkpoints,
            progress=progress,
        )
    except (CheckpointError, DataError) as e:
        raise CollabInferError(f"the semantic cache cannot start: {e}") from None
