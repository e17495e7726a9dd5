"""Table 1 of the paper, measured: LC, EC, CC, the best static split, and collabinfer.

Every row runs the real model on the real Fashion-MNIST test images, one input
at a time (batch 1), through the same engine (rows: :mod:`~collabinfer.experiments.table1.rows`).
Links are :class:`~collabinfer.runtime.link.SimulatedLink` s on a virtual clock
that replay the same seeded fluctuating bandwidth trace for every row; with
``real_sockets`` the collabinfer row also runs over real servers, relays and
sockets (:mod:`~collabinfer.experiments.table1.real`) beside its
virtual-clock twin, ``collabinfer-virtual``.

What the collabinfer row deploys (:func:`choose_deployment`): the gated
backbone with device exits (``dynamic``), else the learned bottleneck if it
wins on validation and in the planner's prediction, else the plain backbone.

Both split rows keep the raw input on the device by default
(``private_splits``): that is the privacy half of the paper's promise, and it
makes them choose among feature cuts instead of trivially sending the image.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from collabinfer.cache.reuse import Reuse
from collabinfer.cache.semantic import SemanticCache
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.data.workloads import WorkloadConfig, make_stream
from collabinfer.errors import ConfigError
from collabinfer.experiments.table1.candidates import BottleneckCandidate, DynamicCandidate
from collabinfer.experiments.table1.privacy import privacy_column
from collabinfer.experiments.table1.real import run_real_row
from collabinfer.experiments.table1.rows import (
    ROW_BUILDERS,
    Deployed,
    Setting,
    build_trace,
    run_virtual_row,
)
from collabinfer.experiments.table1.schema import Row, Table1Config, Table1Result
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.profile import Profile
from collabinfer.progress import ProgressFn
from collabinfer.topology.tiers import describe_tiers
from collabinfer.train.reuse import ProjectionConfig, edge_reuse, train_projection

__all__ = ["Table1Models", "choose_deployment", "run_table1"]


@dataclass(frozen=True)
class Table1Models:
    """The trained models a run needs, profiled; candidates for the collabinfer row."""

    full: BlockNet
    local: BlockNet
    full_profile: Profile
    local_profile: Profile
    dynamic: DynamicCandidate | None = None
    bottleneck: BottleneckCandidate | None = None
    full_name: str | None = None  # the full model's name on the wire (a package's); None: cfg's
    full_spec: str | None = None  # what its tier servers load (the package dir)


def _plain(cfg: Table1Config, models: Table1Models) -> Deployed:
    """The full model as the collabinfer rows would deploy it unchanged."""
    name = models.full_name or cfg.full_model
    return Deployed(name, models.full, models.full_profile, spec=models.full_spec)


def choose_deployment(
    cfg: Table1Config, models: Table1Models, s: Setting
) -> tuple[Deployed, dict[str, Any]]:
    """What the collabinfer rows run, and the conditions that say why."""
    plain = _plain(cfg, models)
    dyn, bn = models.dynamic, models.bottleneck
    if dyn is not None:
        why: dict[str, Any] = {
            "collabinfer_dynamic": {
                "model": dyn.name,
                "rule": dyn.exits.rule.to_json(),
                "val_accuracy": dyn.val_accuracy,
                "backbone_val_accuracy": dyn.backbone_val_accuracy,
                "how": dyn.describe,
            }
        }
        if bn is not None:
            why["collabinfer_bottleneck"] = {
                "used": False,
                "why": "the row runs the gated backbone with exits (dynamic); "
                "pass --no-dynamic to consider the bottleneck",
                "model": bn.name,
            }
        return Deployed(dyn.name, dyn.net, dyn.profile, dyn.exits), why
    if bn is not None:
        use, reason = bn.wins(
            cfg.bottleneck_max_drop,
            models.full_profile,
            cfg.tiers(),
            [s.mean_access, s.wan],
            cfg.min_device_blocks,
        )
        why = {"collabinfer_bottleneck": {"used": use, "why": reason, "model": bn.name}}
        return (Deployed(bn.name, bn.net, bn.profile) if use else plain), why
    return plain, {}


def run_table1(
    cfg: Table1Config,
    models: Table1Models,
    test: Dataset,
    progress: ProgressFn | None = None,
    cache: Path | None = None,
    log_dir: Path | None = None,
    aux: Dataset | None = None,
    val: Dataset | None = None,
) -> Table1Result:
    """Run every row on the same inputs, trace and tiers; return rows + latency samples.

    With a workload other than ``iid`` the inputs are that request stream over
    the test images, and the collabinfer rows' edge runs the semantic cache,
    its rules fitted on ``val`` (and, for the projection key, its projection
    trained on ``aux``, the training split).

    With ``cfg.privacy`` and the attacker's data ``aux`` (the training split),
    each row's ``privacy_ssim`` is measured on the first ``cfg.privacy_images``
    of the row's inputs (:mod:`~collabinfer.experiments.table1.privacy`).
    """
    torch.manual_seed(0)
    data = workload_inputs(cfg, test)
    trace = build_trace(cfg, len(data) * cfg.arrival_interval_s + 10.0)
    plain = _plain(cfg, models)
    setting = Setting(
        cfg,
        data,
        trace,
        models.full,
        models.local,
        models.full_profile,
        models.local_profile,
        plain,
    )
    deployed, extra = choose_deployment(cfg, models, setting)
    if cfg.max_attack_ssim is not None and deployed.name != cfg.full_model:
        raise ConfigError(
            f"the privacy bound reads an assessment of {cfg.full_model}, but the collabinfer "
            f"row deploys {deployed.name}: pass --no-dynamic --no-bottleneck with it"
        )
    reuse = None
    if cfg.workload != "iid":
        if val is None:
            raise ConfigError(f"the {cfg.workload} workload's cache needs the validation split")
        reuse = _edge_cache(cfg, deployed, val, aux, cache, progress)
        extra["cache"] = {
            "key": cfg.cache_key,
            "mb": cfg.cache_mb,
            "rules": {str(c): r.to_json() for c, r in sorted(reuse.rules.items())},
        }
    setting = dataclasses.replace(setting, collab=deployed, reuse=reuse)
    rows: list[Row] = []
    samples: dict[str, list[float]] = {}
    for paradigm in cfg.paradigms:
        setup = ROW_BUILDERS[paradigm](setting)
        virtual = paradigm == "collabinfer" and cfg.real_sockets
        name = "collabinfer-virtual" if virtual else paradigm
        row, lat = run_virtual_row(name, setup, setting, progress)
        rows.append(row)
        samples[name] = lat
        if virtual:  # the same policy over real sockets, on a subset, in wall time
            real_data = (
                _head(data, cfg.real_inputs)
                if reuse
                else data.subset(min(cfg.real_inputs, len(data)), cfg.subset_seed)
            )
            row, lat, info = run_real_row(cfg, deployed, real_data, trace, cache, progress, log_dir)
            extra.update(info)
            rows.append(row)
            samples[paradigm] = lat
    if cfg.privacy and aux is not None:
        sender = {"LC": models.local, "collabinfer": deployed.net}
        sender |= {"collabinfer-virtual": deployed.net}
        sender |= {p: models.full for p in ("EC", "CC", "static-split")}
        scored = data.subset(cfg.privacy_images, cfg.subset_seed)
        aux = aux.subset(cfg.privacy_aux, cfg.subset_seed + 1)
        rows = list(privacy_column(rows, sender, aux, scored, progress))
    return Table1Result(_conditions(cfg, setting, extra), tuple(rows), samples)


def workload_inputs(cfg: Table1Config, test: Dataset) -> Dataset:
    """The rows' inputs: the seeded test subset (``iid``), or a stream with locality of
    ``num_inputs`` requests over the test images, in arrival order."""
    if cfg.workload == "iid":
        return test.subset(cfg.num_inputs, cfg.subset_seed)
    wl = WorkloadConfig(length=cfg.num_inputs)
    stream = make_stream(cfg.workload, test.images, test.labels, seed=cfg.workload_seed, config=wl)
    tag = f"{test.digest}:{cfg.workload}:{cfg.workload_seed}:{len(stream)}"
    digest = hashlib.sha256(tag.encode()).hexdigest()
    return Dataset(stream.images, stream.labels, test.split, test.source, digest)


def _head(data: Dataset, n: int) -> Dataset:
    """The first ``n`` requests of a stream (a random subset would break its locality)."""
    if n >= len(data):
        return data
    digest = hashlib.sha256(f"{data.digest}:head{n}".encode()).hexdigest()
    return Dataset(data.images[:n], data.labels[:n], data.split, data.source, digest)


def _edge_cache(
    cfg: Table1Config,
    deployed: Deployed,
    val: Dataset,
    train: Dataset | None,
    checkpoints: Path | None,
    progress: ProgressFn | None,
) -> Reuse:
    """The semantic cache of the collabinfer rows' edge: a key at every cut the device
    may send (only cut 1 for the projection key, which is trained for one cut). Its
    rules (and projection) go to ``checkpoints``, the cache the real-socket edge reads."""
    net = deployed.net
    projection = None
    cuts: range = range(1, net.num_blocks)  # what a tier server caches too (build_reuse)
    if cfg.cache_key == "projection":
        if train is None:
            raise ConfigError("the projection key needs the training split")
        projection = train_projection(
            net, train, ProjectionConfig(cut=1), checkpoints, progress=progress
        )
        cuts = range(1, 2)
    cache = SemanticCache(int(cfg.cache_mb * 2**20))
    return edge_reuse(
        net,
        deployed.name,
        cuts,
        cache,
        val,
        key=cfg.cache_key,
        projection=projection,
        checkpoints=checkpoints,
        progress=progress,
    )


def _conditions(cfg: Table1Config, s: Setting, extra: dict[str, Any]) -> dict[str, Any]:
    tiers = cfg.tiers()
    access, trace = s.access, s.trace
    return {
        "link_profile": dataclasses.asdict(access),
        "wan_profile": dataclasses.asdict(s.wan),
        "fluctuating_trace": cfg.fluctuating,
        "trace_seed": cfg.trace_seed,
        "trace_mean_mbps": trace.mean_mbps() if trace else access.bandwidth_mbps,
        "trace_volatility": cfg.volatility if trace else 0.0,
        "link_seed": cfg.link_seed,
        "arrival_interval_s": cfg.arrival_interval_s,
        "tiers": [dataclasses.asdict(t) for t in tiers],
        "tier_speed_factors": {t.name: t.speed_factor for t in tiers},
        "tier_labels": describe_tiers(tiers),
        "num_inputs": len(s.data),
        "subset_seed": cfg.subset_seed,
        "full_model": cfg.full_model,
        "local_model": cfg.local_model,
        "workload": cfg.workload,
        "private_splits": cfg.private_splits,
        "max_attack_ssim": cfg.max_attack_ssim,
        "ewma_alpha": cfg.ewma_alpha,
        "full_model_device_ms": s.full_profile.total_ms() * cfg.device_factor,
        "compute": "run on this CPU at batch 1; emulated tiers (factor != 1) are charged the "
        "profiled median time x factor, tiers at factor 1 their measured time",
        "links": "SimulatedLink on a virtual clock (RTTs are assumptions, see link_profile.note)",
        "profile_measured_on": s.full_profile.measured_on,
        "config": dataclasses.asdict(cfg),
        **extra,
    }
