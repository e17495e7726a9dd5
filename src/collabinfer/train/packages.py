"""The zoo as model packages: each trained zoo model (and its deployed variants,
``+gates``, ``+bn``, ``+vbn``) packaged from the recipes' cached checkpoints.

Why: a tier server loads packages only (:mod:`collabinfer.model.package`); it
does not know the recipes. Whoever has the recipes (the CLI, the demo) turns a
zoo name into a package here, once: the package is rebuilt only when the
checkpoint's weights changed (its manifest records their hash).

Example::

    >>> path = zoo_package("fmnist-resnet+gates")  # doctest: +SKIP
    >>> read_package(path).name                     # doctest: +SKIP
    'fmnist-resnet+gates'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collabinfer.codec.entropy import FactorizedTables
from collabinfer.errors import CheckpointError, CollabInferError, DataError, PackageError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import prior_tables
from collabinfer.model.checkpoint import weights_hash
from collabinfer.model.package import (
    MANIFEST,
    bottleneck,
    gated,
    read_package,
    write_package,
    zoo,
    zoo_package_dir,
)
from collabinfer.model.zoo import (
    BOTTLENECK_SUFFIX,
    GATES_SUFFIX,
    VARIATIONAL_SUFFIX,
    model_spec,
    split_variant,
)
from collabinfer.plan.profile import one_thread, profile_model
from collabinfer.progress import ProgressFn
from collabinfer.train.bottleneck import default_bottleneck, default_variational_bottleneck
from collabinfer.train.classifier import config_for, train_or_load
from collabinfer.train.gates import default_gates

__all__ = ["zoo_package"]

PROFILE_REPEATS = 10


def zoo_package(
    name: str,
    cache: Path | None = None,
    data_root: str | Path | None = None,
    *,
    may_train: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """The package of trained zoo model ``name``, written from its checkpoints if it is
    missing or stale. ``may_train=False`` (a server's start) never trains: a missing
    checkpoint says which ``collabinfer train`` makes it."""
    base, suffix = split_variant(name)
    model_spec(base)  # unknown name: ModelError listing the zoo
    try:
        net, arch, codecs, source = _trained(base, suffix, cache, data_root, may_train, progress)
    except (CheckpointError, DataError) as e:
        hint = f"run `collabinfer train --model {base}` first"
        raise CollabInferError(f"no trained checkpoint for {name!r} ({e}): {hint}") from None
    out = zoo_package_dir(name, cache)
    if _current(out, weights_hash(net)):
        return out
    with one_thread():
        prof = profile_model(net, name, repeats=PROFILE_REPEATS)
    return write_package(
        out,
        net,
        name,
        arch,
        codec_tables=codecs,
        profile_json=prof.to_json(),
        description=model_spec(base).description + (f" ({suffix[1:]})" if suffix else ""),
        source=source,
    )


def _current(out: Path, weights: str) -> bool:
    """Whether ``out`` already packages these weights (and still reads back)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("weights_hash") != weights:
            return False
        read_package(out)
    except (OSError, ValueError, PackageError):
        return False
    return True


def _trained(
    base: str,
    suffix: str,
    cache: Path | None,
    data_root: str | Path | None,
    may_train: bool,
    progress: ProgressFn | None,
) -> tuple[BlockNet, dict[str, Any], dict[int, tuple[FactorizedTables, str]], dict[str, Any]]:
    config = config_for(base)
    teacher = train_or_load(config, cache, data_root, progress, may_train=may_train)[0]
    if suffix == "":
        return teacher, zoo(base), {}, {"recipe": "classifier"}
    if suffix == GATES_SUFFIX:
        tg = default_gates(teacher, cache, data_root, progress, train=may_train)
        arch = gated(zoo(base), tg.config.hidden, tg.config.tau)
        return tg.net.eval(), arch, {}, {"recipe": "gates"}
    if suffix in (BOTTLENECK_SUFFIX, VARIATIONAL_SUFFIX):
        load = (
            default_variational_bottleneck if suffix == VARIATIONAL_SUFFIX else default_bottleneck
        )
        tb = load(teacher, cache, data_root, progress, train=may_train)
        c = tb.config
        arch = bottleneck(zoo(base), c.target_cut, c.channels, c.hidden, c.variational)
        tables = {1: (prior_tables(tb.bottleneck), tb.key[:8])}
        return tb.net.eval(), arch, tables, {"recipe": "bottleneck", "key": tb.key}
    raise CollabInferError(f"unknown model variant {suffix!r}")  # split_variant's suffixes only
