"""``collabinfer demo``: Table 1, measured (options in, table and files out)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from collabinfer.cli.console import (
    CacheOpt,
    DataOpt,
    ModelOpt,
    console,
    fail,
    print_table,
    progress_bars,
    wrote,
)
from collabinfer.errors import CollabInferError, ConfigError
from collabinfer.experiments.privacy_schema import PrivacyResult, privacy_bounds
from collabinfer.experiments.table1 import Table1Config, Table1Result, run_demo
from collabinfer.report.table1 import COLUMNS, fmt, write_table1

__all__ = ["demo"]


def _attack_ssim(path: Path, model: str) -> tuple[tuple[int, str, float], ...]:
    """The strongest attack's SSIM per undefended (cut, codec) of ``model``'s assessment."""
    folder = path.parent if path.suffix == ".json" else path
    result = PrivacyResult.load(folder)
    if result.conditions.model != model:
        raise ConfigError(
            f"{folder / 'privacy.json'} assesses {result.conditions.model}, not {model}"
        )
    return tuple((cut, codec, ssim) for (cut, codec), ssim in privacy_bounds(result).items())


def demo(
    quick: Annotated[
        bool, typer.Option(help="a seeded 1,000-image subset of the test set")
    ] = False,
    link: Annotated[str, typer.Option(help="access link profile: 3g, lte or wifi")] = "lte",
    out: Annotated[Path | None, typer.Option(help="write table1.json/.md and plots here")] = None,
    num_inputs: Annotated[
        int | None, typer.Option(help="override the number of test inputs")
    ] = None,
    constant: Annotated[
        bool, typer.Option("--constant", help="constant bandwidth instead of a trace")
    ] = False,
    trace_seed: Annotated[int, typer.Option(help="seed of the fluctuating bandwidth trace")] = 7,
    device_factor: Annotated[
        float | None, typer.Option(help="device slow-down vs this CPU")
    ] = None,
    simulate: Annotated[
        bool,
        typer.Option("--simulate", help="collabinfer row on the virtual clock too (no sockets)"),
    ] = False,
    real_inputs: Annotated[
        int, typer.Option(help="inputs the real-socket collabinfer row runs (it takes wall time)")
    ] = 1000,
    model: ModelOpt = "fmnist-resnet",
    local_model: Annotated[
        str, typer.Option("--local-model", help="the model LC runs on the device")
    ] = "fmnist-small",
    dynamic: Annotated[
        bool,
        typer.Option(help="collabinfer row: gated backbone + calibrated exits on the device"),
    ] = True,
    dynamic_max_drop: Annotated[
        float, typer.Option(help="validation accuracy the exit rule may give up")
    ] = 0.005,
    bottleneck: Annotated[
        bool, typer.Option(help="offer the learned bottleneck to the collabinfer row")
    ] = True,
    bottleneck_max_drop: Annotated[
        float, typer.Option(help="validation accuracy the bottleneck may lose to be used")
    ] = 0.01,
    private: Annotated[
        bool, typer.Option(help="split rows keep the raw input on the device")
    ] = True,
    privacy: Annotated[
        bool,
        typer.Option(help="measure each row's attack SSIM (inversion attacks on what it sends)"),
    ] = True,
    max_attack_ssim: Annotated[
        float | None,
        typer.Option(
            help="privacy bound for the split rows: send only what the assessment in "
            "--privacy-file scores at or below this SSIM (needs --no-dynamic --no-bottleneck)"
        ),
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            help="inputs: iid (the test subset), video or multi-client (streams with locality, "
            "the collabinfer rows' edge caching answers; docs/reuse.md)"
        ),
    ] = "iid",
    cache_key: Annotated[
        str, typer.Option(help="the edge cache's key with --workload: features/latent/projection")
    ] = "features",
    privacy_file: Annotated[
        Path,
        typer.Option(help="the privacy assessment the bound reads (privacy.json or its folder)"),
    ] = Path("results/privacy"),
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Table 1, measured: LC, EC, CC, best static split and collabinfer on Fashion-MNIST."""
    t0 = time.perf_counter()
    try:
        cfg = Table1Config(
            link=link,
            fluctuating=not constant,
            trace_seed=trace_seed,
            private_splits=private,
            full_model=model,
            local_model=local_model,
            real_sockets=not simulate,
            dynamic=dynamic,
            dynamic_max_drop=dynamic_max_drop,
            bottleneck=bottleneck and not dynamic,
            bottleneck_max_drop=bottleneck_max_drop,
            real_inputs=real_inputs,
            num_inputs=num_inputs or (1000 if quick else 10_000),
            privacy=privacy,
            workload=workload,
            cache_key=cache_key,
        )
        if max_attack_ssim is not None:
            cfg = dataclasses.replace(
                cfg,
                max_attack_ssim=max_attack_ssim,
                attack_ssim=_attack_ssim(privacy_file, cfg.full_model),
            )
        if device_factor is not None:
            cfg = dataclasses.replace(cfg, device_factor=device_factor)
        with progress_bars() as progress:
            result = run_demo(cfg, data, cache, progress, (out / "logs") if out else None)
    except CollabInferError as exc:
        raise fail(exc) from exc
    show(result, f"Table 1, measured ({cfg.num_inputs} inputs, link {link})")
    if out is not None:
        wrote(write_table1(result, out), t0)


def show(result: Table1Result, title: str) -> None:
    """The rows as a table, then the tiers' labels and every row's plans."""
    rows = [[fmt(k, dataclasses.asdict(r)[k]) for k, _, _ in COLUMNS] for r in result.rows]
    print_table(title, [h for _, h, _ in COLUMNS], rows)
    console.print(f"[dim]{result.conditions['tier_labels']}[/dim]")
    for row in result.rows:
        console.print(f"[dim]{row.paradigm}: {escape(row.plan)}[/dim]")
