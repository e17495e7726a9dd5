"""Computational reuse: what the edge's semantic cache buys on streams with locality.

The deployment (Table 1's split rows): two tiers, the device (emulated at
``device_factor`` x its profiled time) and the edge (this CPU, charged as
measured), one virtual-clock link (Table 1's default access link, seeded), a
static plan that runs blocks ``[0, cut)`` on the device and ``[cut, n)`` on the
edge. The edge's :class:`~collabinfer.cache.semantic.SemanticCache` is keyed by
what it receives (:mod:`collabinfer.cache.keys`):

* ``features``: fmnist-resnet's cut-1 tensor (sent int8), average-pooled;
* ``projection``: a small metric-learned map of the same tensor
  (:func:`~collabinfer.train.reuse.train_projection`, training split);
* ``latent``: the deployed bottleneck's entropy-coded latent
  (``fmnist-resnet+bn``, sent at its cut 1 as Table 1's bottleneck row does).

Each key's H-kNN rule is fitted on **validation** streams only
(:func:`~collabinfer.train.reuse.fitted_rules`); the test streams are built
from the **test** split with other seeds (``test_seed + i``). For every
workload (:mod:`collabinfer.data.workloads`) the same stream runs through one
chain per key with a fresh cache, and through one chain per model without a
cache, *side by side*: request ``t`` goes through every chain before request
``t + 1``, each chain on its own link with the same seed, so the machine's load
at any moment falls on all of them alike. The model's own answer to a request
is its no-cache chain's prediction.

Beside them, the baselines (:mod:`~collabinfer.experiments.reuse_baselines`,
rules fitted for the same precision target on the same validation streams),
and the miss overhead: a cache filled to 10^3..10^5 realistic keys (features
keys of training images plus small noise), exact and IVF, then many
lookup + insert pairs of fresh (test) keys timed, beside the edge's tail at
batch 1 (what a hit saves).

Not modelled: several edges sharing a cache, a cache warmed before the
stream starts, and eviction pressure (the streams fit in 64 MiB many times
over; eviction is the cache's own tests' business).

    result = run_reuse(ReuseConfig.make(quick=True), teacher, small, train, val, test,
                       cache, progress)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from collabinfer.cache.index import ANN_ABOVE, IVF_POINTS_PER_LIST
from collabinfer.cache.keys import KEYS, Keyer, PooledKey
from collabinfer.cache.reuse import Reuse
from collabinfer.cache.rule import HitRule, Simulation, simulate
from collabinfer.cache.semantic import Namespace, SemanticCache
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.data.workloads import WORKLOADS, Stream, WorkloadConfig, make_stream
from collabinfer.errors import ConfigError
from collabinfer.experiments.records import to_json
from collabinfer.experiments.reuse_baselines import (
    BaselineConfig,
    ScoredStream,
    ValStream,
    decoupled_baseline,
    hit_stats,
    pixel_lsh_baselines,
)
from collabinfer.experiments.reuse_schema import (
    INDEXES,
    BaselinePoint,
    LatencySeries,
    MissOverhead,
    ReuseConditions,
    ReusePoint,
    ReuseResult,
)
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import deploy
from collabinfer.model.checkpoint import weights_hash
from collabinfer.model.zoo import BOTTLENECK_SUFFIX
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.profile import Profile, machine_label, median_ms, one_thread, profile_model
from collabinfer.progress import ProgressFn, report
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.link import SimulatedLink
from collabinfer.runtime.policy import StaticPolicy
from collabinfer.runtime.state import StepKind
from collabinfer.topology.links import get_profile
from collabinfer.topology.tiers import DEVICE_FACTOR, default_tiers, describe_tiers
from collabinfer.train.bottleneck import (
    DEFAULT_BOTTLENECK,
    BottleneckConfig,
    train_or_load_bottleneck,
)
from collabinfer.train.reuse import (
    ProjectionConfig,
    RuleConfig,
    fitted_rules,
    keyer,
    stream_keys,
    train_projection,
    validation_streams,
)

__all__ = ["Deployment", "ReuseConfig", "RunRecord", "miss_overhead", "run_reuse"]

ORDER = ("video", "multi-client", "iid")  # the report's order: most locality first
FULL_OVERHEAD = tuple((index, n) for index in INDEXES for n in (1_000, 10_000, 100_000))


@dataclass(frozen=True)
class ReuseConfig:
    """The full run: three workloads of 2,000 requests, all three keys, miss overhead at
    10^3, 10^4 and 10^5 entries for exact and IVF. ``quick`` (<= 10 minutes with the
    models cached): 600 requests per workload, no exact cache at 10^5 (filling one
    insert at a time costs ~3 minutes here), 200 timed pairs."""

    quick: bool = False
    workloads: tuple[str, ...] = ORDER
    keys: tuple[str, ...] = ("features", "projection", "latent")
    stream: WorkloadConfig = dataclasses.field(default_factory=WorkloadConfig)
    test_seed: int = 1000  # + the workload's index in WORKLOADS (validation: rules.seed + it)
    cut: int = 1  # fmnist-resnet's cut the split rows send
    codec: str = "int8"
    latent_cut: int = 1  # on the deployed bottleneck: its latent (the codec is its own)
    device_factor: float = DEVICE_FACTOR
    link: str = "lte"  # Table 1's default access link
    link_seed: int = 0
    arrival_interval_s: float = 0.1
    cache_bytes: int = 64 << 20
    eviction: str = "lru"
    rules: RuleConfig = dataclasses.field(default_factory=RuleConfig)
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    bottleneck: BottleneckConfig = DEFAULT_BOTTLENECK
    baselines: BaselineConfig = dataclasses.field(default_factory=BaselineConfig)
    overhead: tuple[tuple[str, int], ...] = FULL_OVERHEAD
    overhead_pairs: int = 300
    overhead_noise: float = 0.01  # per coordinate, on the unit fill keys
    overhead_base: int = 20_000  # distinct training images behind the fill keys
    tail_repeats: int = 200
    profile_repeats: int = 30
    latency_workload: str = "video"

    def __post_init__(self) -> None:
        for name, values, known in (
            ("workloads", self.workloads, WORKLOADS),
            ("keys", self.keys, KEYS),
        ):
            unknown = sorted(set(values) - set(known))
            if unknown or not values:
                raise ConfigError(f"{name} must be some of {known}, got {values!r}")
        if self.projection.cut != self.cut:
            raise ConfigError(
                f"the projection is trained at cut {self.projection.cut}, "
                f"the cache keys cut {self.cut}"
            )
        for index, entries in self.overhead:
            if index not in INDEXES:
                raise ConfigError(f"unknown index {index!r}; choose from {INDEXES}")
            if entries <= self.overhead_pairs:
                raise ConfigError(f"{entries} entries cannot take {self.overhead_pairs} pairs")
            if (
                index == "ivf"
                and _fill(entries, self.overhead_pairs) // 2 < 2 * IVF_POINTS_PER_LIST
            ):
                raise ConfigError(f"an IVF cache needs more than {entries} entries here")
        if self.latency_workload not in WORKLOADS:
            raise ConfigError(f"latency_workload must be one of {WORKLOADS}")
        if self.overhead_pairs < 1 or self.tail_repeats < 1:
            raise ConfigError("overhead_pairs and tail_repeats must be >= 1")

    @classmethod
    def make(cls, quick: bool) -> ReuseConfig:
        if not quick:
            return cls()
        return cls(
            quick=True,
            stream=dataclasses.replace(WorkloadConfig(), length=600),
            overhead=tuple(p for p in FULL_OVERHEAD if p != ("exact", 100_000)),
            overhead_pairs=200,
            tail_repeats=100,
        )


# ---------------------------------------------------------------- what runs


@dataclass(frozen=True)
class Deployment:
    """One key as the edge runs it: the model and its split, the key and its rule."""

    key: str
    model: str
    net: BlockNet
    profile: Profile
    cut: int
    codec: str
    keyer: Keyer
    rule: HitRule
    val: Simulation  # the rule replayed on the validation streams it was fitted on
    key_bytes: int  # the float32 key each entry holds

    def reuse(self, cfg: ReuseConfig) -> Reuse:
        cache = SemanticCache(cfg.cache_bytes, cfg.eviction)
        weights = weights_hash(self.net)
        return Reuse(cache, self.model, weights, {self.cut: self.keyer}, {self.cut: self.rule})


@dataclass
class RunRecord:
    """Per request of one chain run, in stream order."""

    pred: list[int] = dataclasses.field(default_factory=list)
    logits: list[np.ndarray] = dataclasses.field(default_factory=list)
    hit: list[bool] = dataclasses.field(default_factory=list)
    latency_ms: list[float] = dataclasses.field(default_factory=list)
    edge_ms: list[float] = dataclasses.field(default_factory=list)
    sent: list[int] = dataclasses.field(default_factory=list)
    lookup_ms: list[float] = dataclasses.field(default_factory=list)
    insert_ms: list[float] = dataclasses.field(default_factory=list)


def _chain(cfg: ReuseConfig, dep: Deployment, reuse: Reuse | None) -> Chain:
    tiers = default_tiers(cfg.device_factor)[:2]
    link = get_profile(cfg.link)
    n = dep.net.num_blocks
    bounds, codecs = (0, dep.cut, n), (dep.codec, None)
    plan = Plan(
        bounds, codecs, "latency", evaluate_plan(dep.profile, tiers, [link], bounds, codecs)
    )
    return Chain(
        dep.net,
        tiers,
        [SimulatedLink(link, None, seed=cfg.link_seed)],
        StaticPolicy(plan),
        profile=dep.profile,
        reuse={1: reuse} if reuse is not None else None,
    )


def _step(chain: Chain, x: torch.Tensor, start_s: float, rec: RunRecord) -> None:
    r = chain.run(x, start_s=start_s)
    trace = r.state.trace
    rec.pred.append(int(r.output.argmax(1).item()))
    rec.logits.append(r.output.detach().reshape(-1).float().numpy())
    rec.hit.append(bool(r.state.cache_hit))
    rec.latency_ms.append(r.latency_ms)
    rec.edge_ms.append(trace.wall_ms(1))
    rec.sent.append(trace.bytes_sent(0))
    cache_steps = [s.wall_ms for s in trace.steps if s.kind == StepKind.CACHE]
    if cache_steps:
        rec.lookup_ms.append(cache_steps[0])
    if len(cache_steps) > 1:
        rec.insert_ms.append(cache_steps[1])


def run_side_by_side(
    cfg: ReuseConfig,
    stream: Stream,
    deployments: Sequence[Deployment],
    progress: ProgressFn | None = None,
) -> tuple[dict[str, RunRecord], dict[str, RunRecord]]:
    """The stream through one cached chain per deployment and one plain chain per model,
    request by request (module docstring). Returns (by key, by model)."""
    models = {d.model: d for d in deployments}
    plain = {m: (_chain(cfg, d, None), RunRecord()) for m, d in models.items()}
    cached = {d.key: (_chain(cfg, d, d.reuse(cfg)), RunRecord()) for d in deployments}
    runs = [*plain.values(), *cached.values()]
    task = f"reuse: {stream.kind} stream"
    for t in range(len(stream)):
        x = stream.images[t : t + 1]
        for chain, rec in runs:
            _step(chain, x, t * cfg.arrival_interval_s, rec)
        report(progress, task, t + 1, len(stream))
    return {k: r for k, (_, r) in cached.items()}, {m: r for m, (_, r) in plain.items()}


def _point(dep: Deployment, stream: Stream, rec: RunRecord, base: RunRecord) -> ReusePoint:
    labels, sources = stream.labels.numpy(), stream.sources.numpy()
    model = np.asarray(base.pred)
    stats = hit_stats(np.asarray(rec.hit), np.asarray(rec.pred), model, labels, sources)
    return ReusePoint(
        workload=stream.kind,
        key=dep.key,
        model=dep.model,
        cut=dep.cut,
        codec=dep.codec,
        requests=stats.requests,
        hits=stats.hits,
        hit_rate=stats.hit_rate,
        hit_precision_model=stats.hit_precision_model,
        hit_precision_label=stats.hit_precision_label,
        accuracy=stats.accuracy,
        accuracy_no_cache=float((model == labels).mean()),
        latency_mean_ms=float(np.mean(rec.latency_ms)),
        latency_mean_ms_no_cache=float(np.mean(base.latency_ms)),
        latency_p95_ms=float(np.percentile(rec.latency_ms, 95)),
        latency_p95_ms_no_cache=float(np.percentile(base.latency_ms, 95)),
        edge_cpu_ms_per_input=float(np.mean(rec.edge_ms)),
        edge_cpu_ms_per_input_no_cache=float(np.mean(base.edge_ms)),
        opportunities=stats.opportunities,
        opportunities_harnessed=stats.opportunities_harnessed,
        hits_without_opportunity=stats.hits_without_opportunity,
        key_bytes=dep.key_bytes,
        lookup_ms=float(np.mean(rec.lookup_ms)) if rec.lookup_ms else 0.0,
        insert_ms=float(np.mean(rec.insert_ms)) if rec.insert_ms else 0.0,
        rule_k=dep.rule.k,
        rule_tau=dep.rule.tau,
        rule_min_confidence=dep.rule.min_confidence,
        val_hit_rate=dep.val.hit_rate,
        val_precision=dep.val.precision,
        bytes_per_input=float(np.mean(rec.sent)),
    )


# ---------------------------------------------------------------- miss overhead


def _fill(entries: int, pairs: int) -> int:
    """Keys filled before the timed pairs, so the mean size over them is ``entries``."""
    return entries - pairs // 2


@torch.inference_mode()
def _features_keys(net: BlockNet, images: torch.Tensor, cut: int, grid: int) -> np.ndarray:
    pooled = PooledKey(grid)
    out = [
        F.normalize(pooled.pooled(net.run_until(images[i : i + 512], cut)).float(), dim=1)
        for i in range(0, len(images), 512)
    ]
    return torch.cat(out).numpy().astype(np.float32)


def miss_overhead(
    cfg: ReuseConfig,
    net: BlockNet,
    train: Dataset,
    test: Dataset,
    rule: HitRule,
    progress: ProgressFn | None = None,
) -> list[MissOverhead]:
    """For each (index, entries) in ``cfg.overhead``: fill a cache with features keys of
    training images (plus ``overhead_noise``, to reach the count), then time
    ``overhead_pairs`` lookup + insert pairs of fresh test keys; beside each, the
    median of the edge's tail blocks at batch 1 (measured once, here).

    ``exact``: the cache never leaves exact search. ``ivf``: it moves to IVF halfway
    through the fill, or at the deployed switch point (ANN_ABOVE keys) if that comes
    first, and keeps filling, as a cache that outgrew exact search does."""
    cut, grid = cfg.cut, cfg.rules.grid
    base = train.subset(cfg.overhead_base, seed=0)
    base_keys = _features_keys(net, base.images, cut, grid)
    fresh = _features_keys(net, test.subset(cfg.overhead_pairs, seed=1).images, cut, grid)
    look = rule if rule.enabled else HitRule(rule.k, 1e-9)  # a rule that searches
    with torch.inference_mode():
        classes = int(net(train.images[:1]).shape[1])
        z = net.run_until(test.images[:1], cut)
        tail_ms = median_ms(lambda: net.run_from(z, cut), cfg.tail_repeats)
    g = np.random.default_rng(0)
    out = []
    for i, (index, entries) in enumerate(cfg.overhead):
        fill = _fill(entries, cfg.overhead_pairs)
        ann_above = min(fill // 2, ANN_ABOVE) if index == "ivf" else 1 << 62
        cache = SemanticCache(1 << 34, "lru", ann_above=ann_above)
        ns = Namespace("overhead", "-", cut, f"pool{grid}")
        rows = np.arange(fill) % len(base_keys)
        keys = base_keys[rows] + cfg.overhead_noise * g.standard_normal(
            (fill, base_keys.shape[1]), dtype=np.float32
        )
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        logits = np.eye(classes, dtype=np.float32)[base.labels.numpy()[rows]]
        t0 = time.perf_counter()
        for j in range(fill):
            cache.insert(ns, keys[j], logits[j], tail_ms)
        fill_s = time.perf_counter() - t0
        kinds = set(cache.stats().index.values())
        if kinds != {index}:
            raise ConfigError(f"the {index} cache at {entries} entries reports {kinds}")
        pair, lookup, insert = [], [], []
        for q in fresh:
            t0 = time.perf_counter()
            cache.lookup(ns, q, look)
            t1 = time.perf_counter()
            cache.insert(ns, q, logits[0], tail_ms)
            t2 = time.perf_counter()
            pair.append(t2 - t0)
            lookup.append(t1 - t0)
            insert.append(t2 - t1)
        out.append(
            MissOverhead(
                index=index,
                entries=entries,
                lookup_insert_ms=1e3 * float(np.median(pair)),
                tail_ms=tail_ms,
                lookup_insert_p95_ms=1e3 * float(np.percentile(pair, 95)),
                lookup_ms=1e3 * float(np.median(lookup)),
                insert_ms=1e3 * float(np.median(insert)),
                pairs=len(pair),
                key_dim=int(keys.shape[1]),
                fill_s=fill_s,
                ann_above=ann_above if index == "ivf" else None,
            )
        )
        del cache
        report(progress, "reuse: miss overhead", i + 1, len(cfg.overhead), {"entries": entries})
    return out


# ---------------------------------------------------------------- the run


def _validated(
    net: BlockNet, cut: int, key: Keyer, val_images: Sequence[torch.Tensor], rule: HitRule
) -> Simulation:
    """``rule`` replayed on the validation streams (the numbers it was fitted to)."""
    streams = []
    for images in val_images:
        keys, answers, confidence = stream_keys(net, images, {cut: key})
        streams.append((keys[cut], answers, confidence))
    return simulate(streams, rule)


def _deployments(
    cfg: ReuseConfig,
    teacher: BlockNet,
    model: str,
    train: Dataset,
    val: Dataset,
    cache: Path | None,
    progress: ProgressFn | None,
) -> list[Deployment]:
    """Every key of ``cfg.keys`` with its model, profile, trained key and fitted rule."""
    val_images = validation_streams(val, cfg.rules)
    with one_thread():
        teacher_prof = profile_model(teacher, model, repeats=cfg.profile_repeats)
    out = []
    for kind in cfg.keys:
        if kind == "latent":
            hd_cfg = dataclasses.replace(cfg.bottleneck, beta=0.0, rate_epochs=0, tail_epochs=0)
            hd = train_or_load_bottleneck(hd_cfg, teacher, train, val, cache, progress)
            tb = train_or_load_bottleneck(
                cfg.bottleneck, teacher, train, val, cache, progress, init=hd
            )
            dep = deploy(tb.net, tb.bottleneck, tb.key[:8])
            name, net, cut, codec = (
                model + BOTTLENECK_SUFFIX,
                dep.net,
                cfg.latent_cut,
                dep.codec_name,
            )
            with one_thread():
                prof = profile_model(
                    net,
                    name,
                    repeats=cfg.profile_repeats,
                    cut_codecs={cut: [codec]},
                    byte_samples=val.images[:200],
                )
        else:
            name, net, cut, codec, prof = model, teacher, cfg.cut, cfg.codec, teacher_prof
        net = net.eval()
        proj = (
            train_projection(net, train, cfg.projection, cache, progress)
            if kind == "projection"
            else None
        )
        key = keyer(kind, net, cut, cfg.rules.grid, proj)
        rule = fitted_rules(net, {cut: key}, val, cfg.rules, cache, progress)[cut]
        sim = _validated(net, cut, key, val_images, rule)
        with torch.inference_mode():
            key_bytes = 4 * int(key(net.run_until(val.images[:1], cut)).shape[0])
        out.append(Deployment(kind, name, net, prof, cut, codec, key, rule, sim, key_bytes))
    return out


def _test_stream(cfg: ReuseConfig, kind: str, i: int, test: Dataset) -> Stream:
    length = min(cfg.stream.length, len(test)) if kind == "iid" else cfg.stream.length
    wl = dataclasses.replace(cfg.stream, length=length)
    return make_stream(kind, test.images, test.labels, seed=cfg.test_seed + i, config=wl)


def run_reuse(
    cfg: ReuseConfig,
    teacher: BlockNet,
    extractor: BlockNet,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    model: str = "fmnist-resnet",
    extractor_name: str = "fmnist-small",
) -> ReuseResult:
    """Train or load the keys and rules, run every workload side by side, replay the
    baselines, time the miss overhead (module docstring)."""
    t_start = time.perf_counter()
    teacher = teacher.eval()
    deps = _deployments(cfg, teacher, model, train, val, cache, progress)
    points: list[ReusePoint] = []
    latencies: list[LatencySeries] = []
    scored: list[ScoredStream] = []
    with one_thread():
        measured_on = machine_label()
        for i, kind in enumerate(cfg.workloads):
            stream = _test_stream(cfg, kind, WORKLOADS.index(kind), test)
            by_key, by_model = run_side_by_side(cfg, stream, deps, progress)
            for d in deps:
                points.append(_point(d, stream, by_key[d.key], by_model[d.model]))
            base = by_model[model] if model in by_model else next(iter(by_model.values()))
            scored.append(
                ScoredStream(
                    kind,
                    stream.images,
                    stream.labels.numpy(),
                    stream.sources.numpy(),
                    np.stack(base.logits),
                )
            )
            if kind == cfg.latency_workload:
                for m, rec in by_model.items():
                    latencies.append(LatencySeries(kind, m, None, _rounded(rec.latency_ms)))
                for d in deps:
                    rec = by_key[d.key]
                    latencies.append(LatencySeries(kind, d.model, d.key, _rounded(rec.latency_ms)))
            report(progress, "reuse: workloads", i + 1, len(cfg.workloads))
        baselines = _baselines(cfg, teacher, extractor, val, scored, progress)
        feats = next((d for d in deps if d.key == "features"), None)
        rule = feats.rule if feats is not None else HitRule(1, 1e-9)
        overhead = miss_overhead(cfg, teacher, train, test, rule, progress)
    link = get_profile(cfg.link)
    conditions = ReuseConditions(
        config=to_json(dataclasses.asdict(cfg)),
        model=model,
        latent_model=model + BOTTLENECK_SUFFIX,
        extractor=f"{extractor_name} (penultimate activations, L2-normalised)",
        tiers=describe_tiers(default_tiers(cfg.device_factor)[:2]),
        link=f"{link.name}: {link.bandwidth_mbps} Mbit/s, RTT {link.rtt_ms} ms ({link.note}); "
        f"simulated, seed {cfg.link_seed}, constant rate",
        precision_target=cfg.rules.target,
        validation=(
            f"hit rules and baseline thresholds fitted on validation streams only "
            f"({cfg.rules.stream_length} requests per workload, seeds "
            f"{cfg.rules.seed}..{cfg.rules.seed + len(cfg.rules.workloads) - 1}, validation split)"
        ),
        test_streams=(
            f"test split, {cfg.stream.length} requests per workload (iid: at most the split), "
            f"seed {cfg.test_seed} + the workload's index in {list(WORKLOADS)}"
        ),
        measured_on=measured_on,
        seconds=time.perf_counter() - t_start,
        quick=cfg.quick,
        notes=NOTES,
    )
    return ReuseResult(
        tuple(points), tuple(overhead), tuple(baselines), conditions, tuple(latencies)
    )


NOTES = (
    "Each stream runs through every chain request by request (each chain on its own "
    "link with the same seed); features and projection share one no-cache run (same "
    "model, cut, codec and stream).",
    "The model's own answer is its no-cache chain's prediction; hit precision (model) "
    "compares a hit's answer with it, hit precision (label) with the true label.",
    "An opportunity is a request whose source object was seen earlier in the stream "
    "(FoggyCache's reuse opportunity); opportunities harnessed is the fraction of "
    "those that hit.",
    "Rules are fitted on fp32 activations of validation streams; in the chain the edge "
    "keys the tensor it decodes (int8 for features and projection, exact for the latent).",
    "Latency is on the virtual clock: the device's compute is its profiled time x the "
    "factor, the edge's is measured on this CPU, the link is simulated.",
    "Our lookup and insert times are measured inside the chain, key included, between "
    "model calls; the baselines' and the miss-overhead table's in a tight loop, where "
    "the same work runs 2-3x faster (warm caches), so compare those with each other.",
)


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def _baselines(
    cfg: ReuseConfig,
    teacher: BlockNet,
    extractor: BlockNet,
    val: Dataset,
    scored: Sequence[ScoredStream],
    progress: ProgressFn | None,
) -> list[BaselinePoint]:
    """Both baselines on the test streams, fitted on the rules' validation streams with
    the model's own (fp32) answers there."""
    val_streams = []
    for images in validation_streams(val, cfg.rules):
        with torch.inference_mode():
            prob = torch.cat(
                [teacher(images[i : i + 512]).softmax(1) for i in range(0, len(images), 512)]
            )
        conf, answers = prob.max(1)
        val_streams.append(ValStream(images, answers.numpy(), conf.numpy()))
    target = cfg.rules.target
    out = pixel_lsh_baselines(val_streams, scored, target, cfg.baselines)
    report(progress, "reuse: baselines", 1, 2)
    decoupled, _ = decoupled_baseline(
        extractor.eval(), val_streams, scored, target, cfg.rules, cfg.baselines
    )
    report(progress, "reuse: baselines", 2, 2)
    return out + decoupled
