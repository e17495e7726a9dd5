"""``collabinfer serve``, ``run`` and ``relay``: tiers, the device and links on real sockets.

Examples (an edge on 8001 forwarding to a cloud on 8002, an LTE uplink in front)::

    collabinfer serve --tier cloud --model fmnist-resnet --port 8002
    collabinfer serve --tier edge --model fmnist-resnet --port 8001 --next http://127.0.0.1:8002
    collabinfer relay --listen 127.0.0.1:9001 --target 127.0.0.1:8001 --link lte
    collabinfer run --edge http://127.0.0.1:9001 --model fmnist-resnet --num-inputs 200

A bad option (range, URL, unknown model, missing checkpoint) prints one line
and exits with code 2, never a traceback. The bearer token comes from
``COLLABINFER_TOKEN`` or ``--token-file`` (``--token`` works but is visible in
the process list, and says so).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.markup import escape

from collabinfer.cli.console import console, fail, print_table
from collabinfer.cli.packaging import resolve_models
from collabinfer.data import load_split
from collabinfer.errors import CollabInferError, ConfigError
from collabinfer.runtime.link import BandwidthTrace
from collabinfer.runtime.state import StepKind
from collabinfer.serve.client import ClientResult, RunSummary
from collabinfer.serve.config import TIER_INDEX, ServerConfig, parse_blocks
from collabinfer.serve.device import adaptive_client
from collabinfer.serve.relay import ShapingRelay, parse_address, resolve_profile
from collabinfer.serve.server import serve_main
from collabinfer.serve.wire import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS
from collabinfer.topology.tiers import describe_tiers
from collabinfer.train.reuse import tier_reuse

__all__ = ["relay", "resolve_token", "run", "serve"]

TOKEN_ENV = "COLLABINFER_TOKEN"
_DEFAULTS = ServerConfig("defaults")


def resolve_token(token: str | None, token_file: Path | None) -> str | None:
    """The bearer token from ``--token-file`` or ``--token``/``$COLLABINFER_TOKEN``."""
    if token_file is not None:
        if token is not None and os.environ.get(TOKEN_ENV) != token:
            raise ConfigError("give --token-file or --token, not both")
        try:
            text = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --token-file {token_file}: {e}") from None
        if not text or any(c.isspace() for c in text):
            raise ConfigError(f"--token-file {token_file} must hold one token, no spaces")
        return text
    if token is not None and os.environ.get(TOKEN_ENV) != token:
        console.print(
            f"[yellow]warning:[/yellow] --token is visible in the process list; "
            f"prefer ${TOKEN_ENV} or --token-file"
        )
    return token


TokenFile = Annotated[
    Path | None, typer.Option("--token-file", help="file holding the bearer token")
]


def serve(
    tier: Annotated[str, typer.Option("--tier", help="tier name: device, edge, cloud, ...")],
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="zoo name or package dir (repeat to host several; the first gets the cache)",
        ),
    ],
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
        typer.Option("--token", envvar=TOKEN_ENV, help="bearer token required (or the env var)"),
    ] = None,
    token_file: TokenFile = None,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="largest request body accepted")
    ] = DEFAULT_MAX_BODY_BYTES,
    max_rows: Annotated[
        int, typer.Option("--max-rows", help="batch rows one request may carry")
    ] = DEFAULT_MAX_ROWS,
    max_compute_ms: Annotated[
        float, typer.Option("--max-compute-ms", help="estimated compute one request may cost")
    ] = _DEFAULTS.max_compute_ms,
    max_in_flight: Annotated[
        int, typer.Option("--max-in-flight", help="requests admitted at once (then 503)")
    ] = _DEFAULTS.max_in_flight,
    max_connections: Annotated[
        int, typer.Option("--max-connections", help="open connections (then refused)")
    ] = _DEFAULTS.max_connections,
    header_timeout_s: Annotated[
        float, typer.Option("--header-timeout-s", help="time a request head may take (408)")
    ] = _DEFAULTS.header_timeout_s,
    body_timeout_s: Annotated[
        float, typer.Option("--body-timeout-s", help="time a request body may take (408)")
    ] = _DEFAULTS.body_timeout_s,
    keep_alive_s: Annotated[
        float, typer.Option("--keep-alive-s", help="idle keep-alive connections closed after")
    ] = _DEFAULTS.keep_alive_s,
    next_timeout_s: Annotated[
        float, typer.Option("--next-timeout-s", help="longest wait for the next tier")
    ] = _DEFAULTS.next_timeout_s,
    breaker_base_s: Annotated[
        float, typer.Option("--breaker-base-s", help="after the next tier fails, wait this long")
    ] = _DEFAULTS.breaker_base_s,
    breaker_max_s: Annotated[
        float, typer.Option("--breaker-max-s", help="... doubling per failed trial up to this")
    ] = _DEFAULTS.breaker_max_s,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="serve HTTPS: certificate chain (PEM)")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="serve HTTPS: private key (PEM)")
    ] = None,
    next_ca: Annotated[
        Path | None, typer.Option("--next-ca", help="CA bundle verifying an https:// --next")
    ] = None,
    batch_window_ms: Annotated[
        float, typer.Option("--batch-window-ms", help="batch requests arriving within W ms")
    ] = 0.0,
    speed_factor: Annotated[
        float, typer.Option("--speed-factor", help="emulate a tier this many times slower")
    ] = 1.0,
    untrained: Annotated[
        bool, typer.Option("--untrained", help="seeded random weights instead of a checkpoint")
    ] = False,
    cache_mb: Annotated[
        float,
        typer.Option("--cache-mb", help="semantic cache size in MiB (0: none; docs/reuse.md)"),
    ] = 0.0,
    cache_precision: Annotated[
        float, typer.Option("--cache-precision", help="hit precision the cache's rule targets")
    ] = _DEFAULTS.reuse_precision,
    cache_ttl_s: Annotated[
        float | None, typer.Option("--cache-ttl-s", help="cache entries older than this expire")
    ] = None,
    cache_key: Annotated[
        str, typer.Option("--cache-key", help="cache key: features, latent or projection")
    ] = _DEFAULTS.reuse_key,
    cache_eviction: Annotated[
        str, typer.Option("--cache-eviction", help="cache eviction: lru, lfu or cost")
    ] = _DEFAULTS.reuse_eviction,
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
            token=resolve_token(token, token_file),
            max_body_bytes=max_body_bytes,
            batch_window_ms=batch_window_ms,
            speed_factor=speed_factor,
            next_timeout_s=next_timeout_s,
            max_rows=max_rows,
            max_compute_ms=max_compute_ms,
            max_in_flight=max_in_flight,
            max_connections=max_connections,
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
            keep_alive_s=keep_alive_s,
            breaker_base_s=breaker_base_s,
            breaker_max_s=breaker_max_s,
            tls_cert=str(tls_cert) if tls_cert is not None else None,
            tls_key=str(tls_key) if tls_key is not None else None,
            next_ca=str(next_ca) if next_ca is not None else None,
            reuse_mb=cache_mb,
            reuse_precision=cache_precision,
            reuse_ttl_s=cache_ttl_s,
            reuse_key=cache_key,
            reuse_eviction=cache_eviction,
        )
        served = resolve_models(model, untrained)
        reuse = None
        if cache_mb > 0:
            reuse = tier_reuse(
                served[0].net, served[0].name, start, stop, cache_mb=cache_mb,
                eviction=cache_eviction, ttl_s=cache_ttl_s, key=cache_key,
                precision=cache_precision,
            )  # fmt: skip
        serve_main(config, served, host=host, port=port, reuse=reuse)
    except CollabInferError as exc:
        raise fail(exc) from exc


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
        raise fail(exc) from exc
    except KeyboardInterrupt:
        pass


async def _run_all(edge: str, model: str, num_inputs: int, link: str, token: str | None,
                   deadline_ms: float, device_factor: float, untrained: bool, cloud: bool,
                   concurrency: int, data: Path | None, ca: str | None,
                   inputs: Path | None) -> tuple[RunSummary, str, str]:  # fmt: skip
    if num_inputs < 1:
        raise ConfigError(f"--num-inputs must be >= 1, got {num_inputs}")
    served = resolve_models([model], untrained)[0]
    if inputs is not None:
        images = load_inputs(inputs, served.net.input_shape)
        labels = torch.full((len(images),), -1, dtype=torch.long)  # unknown: no accuracy
    else:
        test = load_split("test", data).subset(num_inputs)
        images, labels = test.images, test.labels
    console.print(f"profiling {served.name} on this CPU (batch 1, one thread)...")
    client = adaptive_client(
        served.net,
        served.name,
        edge,
        link=link,
        with_cloud=cloud,
        device_factor=device_factor,
        token=token,
        deadline_s=deadline_ms / 1e3,
        ca=ca,
    )
    async with client:
        summary = await client.run_many(images, labels, concurrency=concurrency)
    return summary, f"{describe_tiers(client.tiers)}; weights {client.weights}", served.name


def load_inputs(path: Path, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """A user's inputs: an N x C x H x W float32 ``.npy`` (read without pickle) whose
    input shape matches the model's; anything else is one clear line."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--inputs {path} is not a readable .npy array: {e}") from None
    if arr.dtype != np.float32:
        raise ConfigError(f"--inputs {path} holds {arr.dtype}, expected float32")
    if arr.ndim < 2 or len(arr) == 0:
        raise ConfigError(f"--inputs {path} must be N x (input shape) with N >= 1, got {arr.shape}")
    if input_shape is not None and tuple(arr.shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"--inputs {path} has inputs of shape {tuple(arr.shape[1:])}, the model takes "
            f"{tuple(input_shape)}"
        )
    if not np.isfinite(arr).all():
        raise ConfigError(f"--inputs {path} holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr))


def exited_on_device(result: ClientResult) -> bool:
    """Answered by an exit head on the device: the device's last step fired an exit."""
    if result.fell_back or result.answered_by != 0:
        return False
    mine = [s for s in result.steps if s.tier == 0]
    return bool(mine) and mine[-1].kind == StepKind.EXIT


def results_json(summary: RunSummary) -> dict[str, object]:
    """What ``run --out`` writes: one entry per input, in input order."""
    return {
        "results": [
            {
                "index": i,
                "prediction": int(r.prediction[0]),
                "logits": [float(v) for v in r.output[0].tolist()],
                "exited_on_device": exited_on_device(r),
                "fell_back": r.fell_back,
            }
            for i, r in enumerate(summary.results)
        ]
    }


def run(
    edge: Annotated[str, typer.Option(help="URL of the edge tier (the first remote tier)")],
    cloud: Annotated[
        str | None,
        typer.Option(help="URL of the cloud (informational: the edge forwards to it itself)"),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="zoo name or package dir")
    ] = "fmnist-resnet",
    num_inputs: Annotated[int, typer.Option(help="Fashion-MNIST test images to send")] = 100,
    inputs: Annotated[
        Path | None,
        typer.Option(help="send these inputs instead: an N x C x H x W float32 .npy"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write every input's prediction and logits here (JSON)"),
    ] = None,
    link: Annotated[
        str, typer.Option(help="initial estimate of the uplink: lte, 3g, wifi")
    ] = "lte",
    token: Annotated[
        str | None, typer.Option(envvar=TOKEN_ENV, help="bearer token the servers expect")
    ] = None,
    token_file: TokenFile = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA bundle verifying an https:// edge")
    ] = None,
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
    """Send test images (or your own --inputs) from an emulated device through live tiers."""
    torch.set_num_threads(1)  # batch-1 timing on one core, as the profile assumes
    try:
        summary, labels, name = asyncio.run(
            _run_all(
                edge,
                model,
                num_inputs,
                link,
                resolve_token(token, token_file),
                deadline_ms,
                device_factor,
                untrained,
                cloud is not None,
                concurrency,
                data,
                str(ca) if ca is not None else None,
                inputs,
            )
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results_json(summary)) + "\n")
    except CollabInferError as exc:
        raise fail(exc) from exc
    except OSError as exc:
        raise fail(ConfigError(f"cannot write --out {out}: {exc}")) from exc
    columns = ["inputs", "accuracy", "p50 ms", "p95 ms", "bytes/input"]
    columns += ["device fallbacks", "edge fallbacks", "inputs/s"]
    row = [
        str(len(summary.results)),
        f"{summary.accuracy:.2%}" if inputs is None else "—",
        f"{summary.latency_p50_ms:.1f}",
        f"{summary.latency_p95_ms:.1f}",
        f"{summary.bytes_per_input:,.0f}",
        str(summary.fallbacks),
        str(summary.remote_fallbacks),
        f"{summary.throughput:.1f}",
    ]
    print_table(f"{name} via {edge} (link estimate {link})", columns, [row])
    for plan, count in sorted(summary.plans.items(), key=lambda kv: -kv[1]):
        console.print(f"[dim]{count:>6} x {escape(plan)}[/dim]")
    for error, count in sorted(summary.errors.items(), key=lambda kv: -kv[1]):
        console.print(f"[yellow]{count:>6} x finished on the device: {escape(error)}[/yellow]")
    console.print(f"[dim]{labels}[/dim]")
    if out is not None:
        console.print(f"wrote {out}")
