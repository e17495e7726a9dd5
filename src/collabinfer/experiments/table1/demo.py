"""``collabinfer demo``'s work: train (or load) what Table 1 needs, profile it, run it.

The CLI only parses options into a :class:`~collabinfer.experiments.table1.schema.Table1Config`
and renders what :func:`run_demo` returns; everything that touches a model is here.
"""

from __future__ import annotations

from pathlib import Path

from collabinfer.data.fashion_mnist import load_split
from collabinfer.errors import ConfigError
from collabinfer.experiments.table1.candidates import (
    make_bottleneck_candidate,
    make_dynamic_candidate,
)
from collabinfer.experiments.table1.run import Table1Models, run_table1
from collabinfer.experiments.table1.schema import Table1Config, Table1Result
from collabinfer.model.blocks import BlockNet
from collabinfer.model.package import names_a_package, read_package
from collabinfer.plan.profile import one_thread, profile_model
from collabinfer.progress import ProgressFn
from collabinfer.train import config_for, train_or_load

SHAPE = (1, 28, 28)  # what every demo input is

__all__ = ["prepare_models", "run_demo"]


def prepare_models(
    cfg: Table1Config,
    data_root: Path | None = None,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
) -> Table1Models:
    """Both classifiers and the collabinfer row's candidates, trained once (cached),
    then profiled at batch 1 on one thread."""
    local, _ = train_or_load(config_for(cfg.local_model), cache, data_root, progress)
    if names_a_package(cfg.full_model):
        return _package_models(cfg, local)
    full, full_res = train_or_load(config_for(cfg.full_model), cache, data_root, progress)
    val_acc = full_res.metrics["val_acc"]
    bottleneck = dynamic = None
    if cfg.bottleneck:
        bottleneck = make_bottleneck_candidate(
            full, cfg.full_model, val_acc, data_root, cache, progress
        )
    if cfg.dynamic:
        train, val = load_split("train", data_root), load_split("val", data_root)
        dynamic = make_dynamic_candidate(
            full, cfg.full_model, val_acc, train, val, cfg.dynamic_max_drop, cache, progress
        )
    with one_thread():  # batch-1 timing on one core: stable, and fair to a device
        full_prof = profile_model(full, cfg.full_model, repeats=50)
        local_prof = profile_model(local, cfg.local_model, repeats=50)
    return Table1Models(full, local, full_prof, local_prof, dynamic, bottleneck)


def _package_models(cfg: Table1Config, local: BlockNet) -> Table1Models:
    """A user's package as the full model: EC, CC, the splits and the collabinfer rows
    run it as it is (the gates, exits and bottleneck recipes are the zoo's)."""
    if cfg.dynamic or cfg.bottleneck:
        raise ConfigError("a package runs as packed: pass --no-dynamic (and --no-bottleneck)")
    package = read_package(cfg.full_model)
    if package.input_shape != SHAPE:
        raise ConfigError(
            f"the demo runs Fashion-MNIST ({'x'.join(map(str, SHAPE))}); package "
            f"{package.name} takes {'x'.join(map(str, package.input_shape))}"
        )
    with one_thread():
        full_prof = profile_model(package.net, package.name, repeats=50)
        local_prof = profile_model(local, cfg.local_model, repeats=50)
    return Table1Models(
        package.net, local, full_prof, local_prof,
        full_name=package.name, full_spec=str(package.path.resolve()),
    )  # fmt: skip


def run_demo(
    cfg: Table1Config,
    data_root: Path | None = None,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    log_dir: Path | None = None,
) -> Table1Result:
    """Table 1 on the Fashion-MNIST test split (or a workload stream over it), every
    row on one thread; the privacy column's attacker trains on the training split,
    the semantic cache's rules are fitted on the validation split."""
    models = prepare_models(cfg, data_root, cache, progress)
    test = load_split("test", data_root)
    needs_train = cfg.privacy or (cfg.workload != "iid" and cfg.cache_key == "projection")
    aux = load_split("train", data_root) if needs_train else None
    val = load_split("val", data_root) if cfg.workload != "iid" else None
    with one_thread():
        return run_table1(cfg, models, test, progress, cache, log_dir, aux, val)
