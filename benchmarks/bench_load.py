"""Load on one edge server: throughput and p95 latency for 1, 4, 16, 64 devices, batching on/off.

Setup (all on loopback, no shaping relay: this measures the server, not a link):

* ONE edge server (``collabinfer.serve.server``, uvicorn) in its own process,
  one torch thread, hosting all blocks of ``--model`` (default
  ``fmnist-resnet``). Weights: the trained checkpoint if one is cached, else
  seeded random ones; throughput does not depend on the weights, and the
  table says which were used.
* N device clients as asyncio tasks in this process, each its own
  :class:`~collabinfer.serve.client.DeviceClient` (own planner state and link
  estimate) but all **sharing one** ``httpx.AsyncClient`` (one connection
  pool, one keep-alive connection per client in flight), as N devices behind
  one NAT would look to the server. Each client sends inputs back to back
  with unique request ids (so the server's retry cache never answers).
* What the devices send (``--cut``): ``raw`` is the EC plan, the 8-bit pixels
  at cut 0 (784 B payload); ``stem`` runs the stem on the device and sends its
  output as int8 (12,544 B). The plan is steered, not measured: the planner
  gets this model's cut shapes with block times set so that exactly that plan
  is optimal, and a device only 2x slower than this CPU, so the emulated
  device sleep is negligible (none for ``raw``: the device runs no block) and
  the numbers are the server's.
* Per N, the server runs once with ``batch_window_ms=0`` (no batching) and
  once with ``--window-ms`` (default 5) and ``max_batch=16``; each
  configuration is measured for ``--seconds`` (default 5) after a short
  warm-up.

The machine this was written on has 2 cores: the server process gets one, the
clients the other, so at N=16 and 64 the clients' own Python work is part of what is
measured. Run::

    PYTHONPATH=src python benchmarks/bench_load.py [--cut raw|stem] [--seconds 5] [--out rows.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from collabinfer.errors import CollabInferError
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import profile_model
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.policy import AdaptivePolicy
from collabinfer.serve.client import DeviceClient
from collabinfer.serve.server import ServerConfig, free_port, load_served_model
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

LOOPBACK = LinkProfile("loopback", 1000.0, 0.2)
MAX_PER_CLIENT = 20_000  # a bound on each client's loop, whatever the clock says


@dataclasses.dataclass(frozen=True)
class Row:
    clients: int
    window_ms: float
    inputs: int
    seconds: float
    throughput: float  # inputs/s
    latency_p50_ms: float
    latency_p95_ms: float
    fallbacks: int
    cut: str
    weights: str


def _serve(config: ServerConfig, model: str, port: int, untrained: bool) -> None:
    """Server process body: one torch thread, quiet uvicorn."""
    import uvicorn

    from collabinfer.serve.server import create_app

    torch.set_num_threads(1)
    app = create_app(config, load_served_model(model, untrained=untrained), model)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_server(
    window_ms: float, model: str, untrained: bool
) -> tuple[mp.process.BaseProcess, str]:
    port = free_port()
    cfg = ServerConfig("edge", tier_index=1, batch_window_ms=window_ms, max_batch=16)
    proc = mp.get_context("spawn").Process(
        target=_serve, args=(cfg, model, port, untrained), daemon=True
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded wait for readiness
        if not proc.is_alive():
            raise SystemExit(f"the server process exited with code {proc.exitcode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready in 120 s")


def steered_planner(net: BlockNet, model: str, cut: str) -> Planner:
    """A planner whose only optimum is the requested plan (see the module docstring)."""
    prof = profile_model(net, model, repeats=1, warmup=0)  # shapes and byte counts
    if cut == "raw":
        times, codecs, min_dev = [100.0] * net.num_blocks, ["u8"], 0
    else:
        times, codecs, min_dev = [0.001] + [100.0] * (net.num_blocks - 1), ["int8"], 1
    blocks = tuple(
        dataclasses.replace(b, time_ms=t) for b, t in zip(prof.blocks, times, strict=True)
    )
    prof = dataclasses.replace(prof, blocks=blocks)
    # a device only 2x slower than the edge: enough to make offloading optimal, and the
    # emulated sleep is 1x the device's real work (nothing for raw, the stem for stem)
    tiers = [TierSpec("device", 2.0), TierSpec("edge", 1.0)]
    planner = Planner(prof, tiers, codecs=codecs, min_device_blocks=min_dev)
    want = (0, 0 if cut == "raw" else 1, net.num_blocks)
    got = planner.plan([LOOPBACK]).boundaries
    if got != want:
        raise SystemExit(f"planner chose {got}, expected {want}")
    return planner


async def drive(
    net: BlockNet,
    model: str,
    url: str,
    planner: Planner,
    clients: int,
    seconds: float,
    images: torch.Tensor,
    tag: str,
) -> tuple[list[float], int, float]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        devices = [
            DeviceClient(
                net,
                model,
                url,
                AdaptivePolicy(planner, [LinkEstimator(LOOPBACK)]),
                planner.tiers,
                profile=planner.profile,
                http=http,
                deadline_s=30.0,
                rtt_probe_s=None,  # only inference requests load the server
            )
            for _ in range(clients)
        ]

        async def loop(i: int, until: float, out: list[float] | None, fb: list[int]) -> None:
            dev = devices[i]
            for k in range(MAX_PER_CLIENT):
                if time.perf_counter() >= until:
                    return
                x = images[(i * 7919 + k) % len(images)]
                r = await dev.infer(x, f"{tag}-{i}-{k}-{'m' if out is not None else 'w'}")
                if out is not None:
                    out.append(r.latency_ms)
                    fb[0] += r.fell_back

        warm_until = time.perf_counter() + 0.5
        await asyncio.gather(*(loop(i, warm_until, None, [0]) for i in range(clients)))
        lat: list[float] = []
        fb = [0]
        t0 = time.perf_counter()
        until = t0 + seconds
        await asyncio.gather(*(loop(i, until, lat, fb) for i in range(clients)))
        return lat, fb[0], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-resnet")
    ap.add_argument("--cut", choices=("raw", "stem"), default="raw")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        net = load_served_model(args.model)
        untrained, weights = False, "trained checkpoint"
    except CollabInferError:
        net = load_served_model(args.model, untrained=True)
        untrained, weights = True, "untrained (seeded random)"
    planner = steered_planner(net, args.model, args.cut)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), generator=g).float() / 255.0
    ns = [int(n) for n in args.clients.split(",")]
    rows: list[Row] = []
    for window in (0.0, args.window_ms):
        proc, url = start_server(window, args.model, untrained)
        try:
            for n in ns:
                tag = f"w{window:g}n{n}"
                lat, fb, wall = asyncio.run(
                    drive(net, args.model, url, planner, n, args.seconds, images, tag)
                )
                row = Row(
                    n,
                    window,
                    len(lat),
                    wall,
                    len(lat) / wall,
                    statistics.median(lat),
                    float(np.percentile(lat, 95)),
                    fb,
                    args.cut,
                    weights,
                )
                rows.append(row)
                print(
                    f"N={n:>2} window={window:g} ms: {row.throughput:7.1f} inputs/s, "
                    f"p50 {row.latency_p50_ms:6.1f} ms, p95 {row.latency_p95_ms:6.1f} ms, "
                    f"{row.inputs} inputs, {fb} fallbacks",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.join(10)
    print(f"\n{args.model}, cut={args.cut}, weights: {weights}, {args.seconds:g} s per row")
    print("| N | batching | inputs/s | p50 ms | p95 ms | throughput ratio | p95 ratio |")
    print("|---|---|---|---|---|---|---|")
    base = {r.clients: r for r in rows if r.window_ms == 0.0}
    for r in sorted(rows, key=lambda r: (r.clients, r.window_ms)):
        b = base[r.clients]
        label = "off" if r.window_ms == 0 else f"{r.window_ms:g} ms, max 16"
        ratio = f"{r.throughput / b.throughput:.2f}x" if r.window_ms else ""
        p95r = f"{r.latency_p95_ms / b.latency_p95_ms:.2f}x" if r.window_ms else ""
        print(
            f"| {r.clients} | {label} | {r.throughput:.1f} | {r.latency_p50_ms:.1f} | "
            f"{r.latency_p95_ms:.1f} | {ratio} | {p95r} |"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = {**vars(args), "out": str(args.out), "torch_threads_server": 1}
        args.out.write_text(
            json.dumps({"config": config, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2)
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
