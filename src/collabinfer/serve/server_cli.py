"""``collabinfer serve``: run one tier server from the command line.

Registered on the main typer app by ``cli.py``; kept apart so the server's
options document themselves here. A bad option (range, URL, unknown model,
missing checkpoint) prints one line and exits with code 2, never a traceback.

Example (an edge hosting every block, forwarding to a cloud on port 8002)::

    collabinfer serve --tier edge --model fmnist-resnet --port 8001 \\
        --next http://127.0.0.1:8002
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from collabinfer.errors import CollabInferError, ConfigError
from collabinfer.serve.server import TIER_INDEX, ServerConfig, serve_main
from collabinfer.serve.wire import DEFAULT_MAX_BODY_BYTES

__all__ = ["parse_blocks", "serve"]

console = Console(stderr=True)


def parse_blocks(spec: str | None) -> tuple[int, int | None]:
    """``"A:B"`` like a Python slice with non-negative ends: ``"3:"``, ``":5"``, ``"2:7"``.

    Returns ``(start, stop)``, ``stop=None`` meaning "to the last block"; the
    model's block count is checked when the server is built.
    """
    if spec is None or spec.strip() in ("", ":"):
        return 0, None
    parts = spec.split(":")
    if len(parts) != 2:
        raise ConfigError(f"--blocks {spec!r} must look like A:B, A: or :B")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else None
    except ValueError:
        raise ConfigError(f"--blocks {spec!r}: A and B must be integers") from None
    if start < 0 or (stop is not None and stop <= start):
        raise ConfigError(f"--blocks {spec!r} is not a non-empty range of block indices")
    return start, stop


def serve(
    tier: Annotated[str, typer.Option("--tier", help="tier name: device, edge, cloud, ...")],
    model: Annotated[str, typer.Option("--model", "-m", help="zoo model name")],
    blocks: Annotated[
        str | None, typer.Option("--blocks", help="blocks hosted, A:B as a slice (default: all)")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to bind")] = 8000,
    next_url: Annotated[
        str | None, typer.Option("--next", help="base URL of the next tier, e.g. http://h:8002")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="COLLABINFER_TOKEN", help="bearer token required"),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="largest request body accepted")
    ] = DEFAULT_MAX_BODY_BYTES,
    batch_window_ms: Annotated[
        float, typer.Option("--batch-window-ms", help="batch requests arriving within W ms")
    ] = 0.0,
    speed_factor: Annotated[
        float, typer.Option("--speed-factor", help="emulate a tier this many times slower")
    ] = 1.0,
    untrained: Annotated[
        bool, typer.Option("--untrained", help="seeded random weights instead of a checkpoint")
    ] = False,
) -> None:
    """Host blocks A..B-1 of a model as one tier (see docs/serving.md)."""
    try:
        start, stop = parse_blocks(blocks)
        config = ServerConfig(
            tier_name=tier,
            tier_index=TIER_INDEX.get(tier),
            start=start,
            stop=stop,
            next_url=next_url,
            token=token,
            max_body_bytes=max_body_bytes,
            batch_window_ms=batch_window_ms,
            speed_factor=speed_factor,
        )
        serve_main(config, model, host=host, port=port, untrained=untrained)
    except CollabInferError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
