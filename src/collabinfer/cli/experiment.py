"""``collabinfer experiment ...``: one experiment, its JSON, markdown and plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from collabinfer.cli.console import CacheOpt, DataOpt, console, fail, progress_bars, wrote
from collabinfer.data import load_split
from collabinfer.errors import CollabInferError
from collabinfer.experiments.dynamic import DynamicConfig, run_dynamic
from collabinfer.experiments.rate_accuracy import RateAccuracyConfig, run_rate_accuracy
from collabinfer.report.dynamic import write_dynamic
from collabinfer.report.rate_accuracy import write_rate_accuracy
from collabinfer.train import config_for, train_or_load

__all__ = ["experiment_app"]

experiment_app = typer.Typer(
    no_args_is_help=True, help="Run one experiment; write JSON, markdown, plots."
)


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
    t0 = time.perf_counter()
    try:
        cfg = RateAccuracyConfig.make(quick)
        with progress_bars() as progress:
            teacher, _ = train_or_load(config_for("fmnist-resnet"), cache, data, progress)
            train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
            result = run_rate_accuracy(cfg, teacher, train, val, test, cache, progress)
        paths = write_rate_accuracy(result, out)
    except CollabInferError as exc:
        raise fail(exc) from exc
    console.print((out / "rate_accuracy.md").read_text())
    wrote(paths, t0)


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
    t0 = time.perf_counter()
    try:
        cfg = DynamicConfig.make(quick)
        with progress_bars() as progress:
            backbone, _ = train_or_load(config_for(cfg.backbone), cache, data, progress)
            train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
            result = run_dynamic(cfg, backbone, train, val, test, cache, progress)
        paths = write_dynamic(result, out)
    except CollabInferError as exc:
        raise fail(exc) from exc
    console.print((out / "dynamic.md").read_text())
    wrote(paths, t0)
