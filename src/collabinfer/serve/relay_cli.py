"""``collabinfer relay``: put a shaped link between two tiers from the command line.

Registered on the main typer app by ``cli.py``; kept apart so ``cli.py`` stays
one screen per command and the relay's options document themselves here.

Example (an LTE uplink in front of an edge server on port 8001)::

    collabinfer relay --listen 127.0.0.1:9001 --target 127.0.0.1:8001 --link lte
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from collabinfer.errors import CollabInferError, ConfigError
from collabinfer.runtime.link import BandwidthTrace
from collabinfer.serve.relay import ShapingRelay, parse_address
from collabinfer.topology.links import LinkProfile, get_profile

__all__ = ["relay", "resolve_profile"]

console = Console()


def resolve_profile(
    link: str | None,
    bandwidth_mbps: float | None,
    rtt_ms: float | None,
    jitter_ms: float | None,
) -> LinkProfile:
    """A named profile with any explicit value overriding it, or a custom one.

    Without ``link`` both ``bandwidth_mbps`` and ``rtt_ms`` are required: a
    silent default would make a run look shaped when it is not.
    """
    if link is not None:
        base = get_profile(link)
    elif bandwidth_mbps is None or rtt_ms is None:
        raise ConfigError("give --link NAME, or both --bandwidth-mbps and --rtt-ms")
    else:
        base = LinkProfile("custom", bandwidth_mbps, rtt_ms)
    return LinkProfile(
        base.name,
        bandwidth_mbps if bandwidth_mbps is not None else base.bandwidth_mbps,
        rtt_ms if rtt_ms is not None else base.rtt_ms,
        jitter_ms if jitter_ms is not None else base.jitter_ms,
        base.loss,
        base.mtu_bytes,
        base.note,
    )


async def _serve(relay_: ShapingRelay) -> None:
    host, port = await relay_.start()
    p = relay_.profile
    rate = "trace" if relay_.trace is not None else f"{p.bandwidth_mbps:g} Mbit/s"
    console.print(
        f"relaying {host}:{port} -> {relay_.target[0]}:{relay_.target[1]} "
        f"({p.name}: {rate}, RTT {p.rtt_ms:g} ms, jitter {p.jitter_ms:g} ms, seed {relay_.seed})"
    )
    try:
        await asyncio.Event().wait()  # until Ctrl-C cancels us
    finally:
        await relay_.close()
        st = relay_.stats
        console.print(
            f"relayed {st.connections} connections, {st.bytes_up:,} B up, {st.bytes_down:,} B down"
        )


def relay(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (port 0: any free port)")],
    target: Annotated[str, typer.Option(help="HOST:PORT of the tier behind the relay")],
    link: Annotated[
        str | None, typer.Option(help="link profile: lte, 3g, wifi or wan (values below override)")
    ] = None,
    bandwidth_mbps: Annotated[
        float | None, typer.Option(help="rate of each direction, Mbit/s")
    ] = None,
    rtt_ms: Annotated[float | None, typer.Option(help="round-trip delay, ms")] = None,
    jitter_ms: Annotated[float | None, typer.Option(help="std-dev of one-way delay, ms")] = None,
    seed: Annotated[int, typer.Option(help="seed of the jitter")] = 0,
    trace: Annotated[
        Path | None, typer.Option(help="time_s,mbps CSV: bandwidth follows it (t=0 at start)")
    ] = None,
) -> None:
    """A userspace TCP relay shaping bandwidth and RTT per direction (runs until Ctrl-C)."""
    try:
        profile = resolve_profile(link, bandwidth_mbps, rtt_ms, jitter_ms)
        bw_trace = BandwidthTrace.from_csv(trace) if trace is not None else None
        shaped = ShapingRelay(
            parse_address(target), profile, listen=parse_address(listen), trace=bw_trace, seed=seed
        )
        asyncio.run(_serve(shaped))
    except CollabInferError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        pass
