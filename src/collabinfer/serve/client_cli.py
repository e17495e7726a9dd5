"""``collabinfer run``: Fashion-MNIST test images from an emulated device to live tiers.

Registered on the main typer app by ``cli.py``. The device loads the same
weights the servers do (:func:`~collabinfer.serve.server.load_served_model`:
the trained checkpoint, or with ``--untrained`` the same seeded random init),
profiles the model once on this CPU for the planner, and then runs every input
through a :class:`~collabinfer.serve.client.DeviceClient`.

Example (an edge on 8001 forwarding to a cloud on 8002)::

    collabinfer run --edge http://127.0.0.1:8001 --cloud http://127.0.0.1:8002 \\
        --model fmnist-resnet --num-inputs 200 --link lte
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from collabinfer.errors import CollabInferError, ConfigError

__all__ = ["run"]

console = Console()


async def _run(
    edge: str,
    cloud: str | None,
    model: str,
    num_inputs: int,
    link: str,
    token: str | None,
    deadline_ms: float,
    device_factor: float,
    untrained: bool,
    concurrency: int,
    data: Path | None,
) -> None:
    import torch

    from collabinfer.data import load_split
    from collabinfer.plan.planner import Planner
    from collabinfer.plan.profile import profile_model
    from collabinfer.runtime.estimator import LinkEstimator
    from collabinfer.runtime.policy import AdaptivePolicy
    from collabinfer.serve.client import DeviceClient
    from collabinfer.serve.server import load_served_model
    from collabinfer.topology.links import get_profile
    from collabinfer.topology.tiers import CLOUD_FACTOR, EDGE_FACTOR, TierSpec, describe_tiers

    if num_inputs < 1:
        raise ConfigError(f"--num-inputs must be >= 1, got {num_inputs}")
    access = get_profile(link)
    net = load_served_model(model, untrained=untrained)
    test = load_split("test", data).subset(num_inputs)
    torch.set_num_threads(1)  # batch-1 timing on one core, as the profile assumes
    console.print(f"profiling {model} on this CPU (batch 1, one thread)...")
    prof = profile_model(net, model, repeats=20)
    tiers = [TierSpec("device", device_factor), TierSpec("edge", EDGE_FACTOR)]
    links = [LinkEstimator(access, recovery_s=2.0)]
    if cloud is not None:  # the edge forwards there itself; the planner needs to know it exists
        tiers.append(TierSpec("cloud", CLOUD_FACTOR))
        links.append(LinkEstimator(get_profile("wan"), recovery_s=2.0))
    policy = AdaptivePolicy(Planner(prof, tiers), links)
    async with DeviceClient(
        net, model, edge, policy, tiers, profile=prof, token=token, deadline_s=deadline_ms / 1e3
    ) as client:
        summary = await client.run_many(test.images, test.labels, concurrency=concurrency)
    columns = ["inputs", "accuracy", "p50 ms", "p95 ms", "bytes/input"]
    columns += ["device fallbacks", "edge fallbacks", "inputs/s"]
    table = Table(*columns, title=f"{model} via {edge} (link estimate {link})")
    table.add_row(
        str(len(summary.results)),
        f"{summary.accuracy:.2%}",
        f"{summary.latency_p50_ms:.1f}",
        f"{summary.latency_p95_ms:.1f}",
        f"{summary.bytes_per_input:,.0f}",
        str(summary.fallbacks),
        str(summary.remote_fallbacks),
        f"{summary.throughput:.1f}",
    )
    console.print(table)
    for plan, count in sorted(summary.plans.items(), key=lambda kv: -kv[1]):
        console.print(f"[dim]{count:>6} x {escape(plan)}[/dim]")
    console.print(f"[dim]{describe_tiers(tiers)}; weights {client.weights}[/dim]")


def run(
    edge: Annotated[str, typer.Option(help="URL of the edge tier (the first remote tier)")],
    cloud: Annotated[
        str | None,
        typer.Option(help="URL of the cloud (informational: the edge forwards to it itself)"),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="zoo model name")] = "fmnist-resnet",
    num_inputs: Annotated[int, typer.Option(help="Fashion-MNIST test images to send")] = 100,
    link: Annotated[
        str, typer.Option(help="initial estimate of the uplink: lte, 3g, wifi")
    ] = "lte",
    token: Annotated[str | None, typer.Option(help="bearer token the servers expect")] = None,
    deadline_ms: Annotated[
        float, typer.Option(help="per-input budget before local fallback")
    ] = 5000.0,
    device_factor: Annotated[
        float, typer.Option(help="emulated device slow-down vs this CPU")
    ] = 100.0,
    untrained: Annotated[
        bool, typer.Option(help="seeded random weights (must match the servers')")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="inputs in flight at once")] = 1,
    data: Annotated[
        Path | None, typer.Option("--data", help="folder with the Fashion-MNIST IDX files")
    ] = None,
) -> None:
    """Send test images from an emulated device through live tier servers."""
    try:
        asyncio.run(
            _run(
                edge,
                cloud,
                model,
                num_inputs,
                link,
                token,
                deadline_ms,
                device_factor,
                untrained,
                concurrency,
                data,
            )
        )
    except CollabInferError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
