"""``collabinfer models``, ``train`` and ``profile``: the zoo, its training, its profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from collabinfer.cli.console import (
    CacheOpt,
    DataOpt,
    ModelOpt,
    console,
    fail,
    print_table,
    progress_bars,
)
from collabinfer.errors import CollabInferError
from collabinfer.model.package import names_a_package
from collabinfer.model.zoo import create_model, list_models, model_spec
from collabinfer.plan.profile import profile_model
from collabinfer.serve.server import load_served
from collabinfer.train import config_for, train_or_load

__all__ = ["models", "profile", "train"]


def models() -> None:
    """List the model zoo."""
    print_table(
        "", ["name", "description"], [[n, model_spec(n).description] for n in list_models()]
    )


def train(
    model: ModelOpt = "fmnist-resnet",
    data: DataOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option(help="train even if a checkpoint exists")] = False,
) -> None:
    """Train a zoo model on Fashion-MNIST (cached by config + data hash)."""
    try:
        with progress_bars() as progress:
            _, res = train_or_load(config_for(model), cache, data, progress, force=force)
    except CollabInferError as exc:
        raise fail(exc) from exc
    verb = "reused" if res.reused else "trained"
    console.print(f"{verb} checkpoint: {res.path}")
    console.print(json.dumps(res.metrics, indent=2))


def profile(
    model: ModelOpt = "fmnist-resnet",
    repeats: Annotated[int, typer.Option(help="timed batch-1 passes per block")] = 50,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the profile here")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads for timing")] = 1,
) -> None:
    """Per block: FLOPs, params, output shape, bytes per codec at the cut, CPU time."""
    try:
        torch.set_num_threads(threads)
        if names_a_package(model):  # a package: its own blocks (and registered codecs)
            served = load_served(model)
            net, model = served.net, served.name
        else:
            net = create_model(model)  # timing, FLOPs and bytes do not depend on the weights
        prof = profile_model(net, model, repeats=repeats)
    except CollabInferError as exc:
        raise fail(exc) from exc
    columns = ["#", "block", "MFLOPs", "params", "output shape", "fp32 B", "fp16 B", "int8 B"]
    rows = []
    for b in prof.blocks:
        cut = prof.cuts[b.index + 1].codecs
        rows.append(
            [
                str(b.index),
                b.name,
                f"{b.flops / 1e6:.3f}",
                f"{b.params:,}",
                str(b.out_shape),
                *(f"{cut[c].payload_bytes:,}" for c in ("fp32", "fp16", "int8")),
                f"{b.time_ms:.3f}",
            ]
        )
    title = f"{model} on {prof.measured_on}, batch 1, {repeats} repeats"
    print_table(title, [*columns, "ms (median)"], rows)
    console.print(
        f"input: {prof.cuts[0].codecs['u8'].payload_bytes} bytes as 8-bit pixels; "
        f"total {sum(b.flops for b in prof.blocks) / 1e6:.2f} MFLOPs, {prof.total_ms():.3f} ms"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        prof.save(json_out)
        console.print(f"wrote {json_out}")
