"""``collabinfer experiment ...``: one experiment, its JSON, markdown and plots."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from collabinfer.cli.console import CacheOpt, DataOpt, console, fail, progress_bars, wrote
from collabinfer.data import Dataset, load_split
from collabinfer.errors import CollabInferError
from collabinfer.experiments.dynamic import DynamicConfig, DynamicResult, run_dynamic
from collabinfer.experiments.privacy import PrivacyConfig, run_privacy
from collabinfer.experiments.rate_accuracy import (
    RateAccuracyConfig,
    RateAccuracyResult,
    run_rate_accuracy,
)
from collabinfer.experiments.reuse import ReuseConfig, run_reuse
from collabinfer.model.blocks import BlockNet
from collabinfer.progress import ProgressFn
from collabinfer.report.dynamic import write_dynamic
from collabinfer.report.privacy import write_privacy
from collabinfer.report.rate_accuracy import write_rate_accuracy
from collabinfer.report.reuse import write_reuse
from collabinfer.train import config_for, train_or_load

__all__ = ["experiment_app"]

R = TypeVar("R")

experiment_app = typer.Typer(
    no_args_is_help=True, help="Run one experiment; write JSON, markdown, plots."
)


def _run(
    backbone: str,
    run: Callable[[BlockNet, Dataset, Dataset, Dataset, ProgressFn], R],
    write: Callable[[R, Path], list[Path]],
    out: Path,
    markdown: str,
    data: Path | None,
    cache: Path | None,
) -> None:
    """Train (or load) the backbone, run on the three splits, write and print the report."""
    t0 = time.perf_counter()
    try:
        with progress_bars() as progress:
            net, _ = train_or_load(config_for(backbone), cache, data, progress)
            train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
            result = run(net, train, val, test, progress)
        paths = write(result, out)
    except CollabInferError as exc:
        raise fail(exc) from exc
    console.print((out / markdown).read_text())
    wrote(paths, t0)


@experiment_app.command("rate-accuracy")
def rate_accuracy_cmd(
    out: Annotated[Path, typer.Option(help="write rate_accuracy.json/.md/.png here")] = Path(
        "results/rate-accuracy"
    ),
    quick: Annotated[
        bool, typer.Option(help="2,000 test images, smaller training, 2 betas")
    ] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Accuracy vs bytes per input: image codecs, features at every cut, learned bottlenecks."""
    cfg = RateAccuracyConfig.make(quick)

    def run(
        teacher: BlockNet, train: Dataset, val: Dataset, test: Dataset, progress: ProgressFn
    ) -> RateAccuracyResult:
        return run_rate_accuracy(cfg, teacher, train, val, test, cache, progress)

    _run("fmnist-resnet", run, write_rate_accuracy, out, "rate_accuracy.md", data, cache)


@experiment_app.command("dynamic")
def dynamic_cmd(
    out: Annotated[Path, typer.Option(help="write dynamic.json/.md and plots here")] = Path(
        "results/dynamic"
    ),
    quick: Annotated[
        bool, typer.Option(help="2,000 test images, training on a 16k subset, fewer settings")
    ] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Early exits (entropy vs calibrated), gates, path-aware exits vs the static backbone."""
    cfg = DynamicConfig.make(quick)

    def run(
        backbone: BlockNet, train: Dataset, val: Dataset, test: Dataset, progress: ProgressFn
    ) -> DynamicResult:
        return run_dynamic(cfg, backbone, train, val, test, cache, progress)

    _run(cfg.backbone, run, write_dynamic, out, "dynamic.md", data, cache)


@experiment_app.command("privacy")
def privacy_cmd(
    out: Annotated[
        Path, typer.Option(help="write privacy.json/.md, plots and the grid here")
    ] = Path("results/privacy"),
    quick: Annotated[
        bool,
        typer.Option(help="cuts 1, 4, 7 at int8, 48 images, one setting per defence (<= 10 min)"),
    ] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Inversion attacks (rMLE, inverse network, shadow head; adaptive) on every cut, codec
    and defence, the variational bottleneck's KL sweep, and the picture grid."""
    cfg = PrivacyConfig.make(quick)
    t0 = time.perf_counter()
    try:
        with progress_bars() as progress:
            teacher, _ = train_or_load(config_for("fmnist-resnet"), cache, data, progress)
            classifier, _ = train_or_load(config_for("fmnist-small"), cache, data, progress)
            train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
            result, pictures = run_privacy(
                cfg, teacher, classifier, train, val, test, cache, progress
            )
        paths = write_privacy(result, pictures, out)
    except CollabInferError as exc:
        raise fail(exc) from exc
    console.print((out / "privacy.md").read_text())
    wrote(paths, t0)


@experiment_app.command("reuse")
def reuse_cmd(
    out: Annotated[Path, typer.Option(help="write reuse.json/.md and plots here")] = Path(
        "results/reuse"
    ),
    quick: Annotated[
        bool,
        typer.Option(help="600 requests per workload, no exact cache at 10^5 (<= 10 min)"),
    ] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """The edge's semantic cache: hit rate, precision, latency and edge CPU per workload
    and key, beside pixel-LSH and decoupled-extractor baselines, and the miss overhead."""
    cfg = ReuseConfig.make(quick)
    t0 = time.perf_counter()
    try:
        with progress_bars() as progress:
            teacher, _ = train_or_load(config_for("fmnist-resnet"), cache, data, progress)
            extractor, _ = train_or_load(config_for("fmnist-small"), cache, data, progress)
            train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
            result = run_reuse(cfg, teacher, extractor, train, val, test, cache, progress)
        paths = write_reuse(result, out)
    except CollabInferError as exc:
        raise fail(exc) from exc
    console.print((out / "reuse.md").read_text())
    wrote(paths, t0)
