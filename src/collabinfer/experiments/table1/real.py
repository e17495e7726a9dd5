"""The ``collabinfer`` row of Table 1 over real sockets.

Edge and cloud are real tier servers (``collabinfer serve``) started as
subprocesses on loopback; between device and edge, and between edge and cloud,
shaping relays (``collabinfer relay``, also subprocesses, so their event loops
do not share the device's GIL) shape bandwidth and delay at the socket level
(the access link replays the same seeded trace as the virtual-clock rows, in
wall time). The device side runs here:
:class:`~collabinfer.serve.client.DeviceClient` re-plans every input from its
own transfer timings and emulates the device's slowness by sleeping.

What is emulated, and labelled: the device's slow-down (a sleep up to its
profiled time x factor), the links
(relays). The cloud runs at this CPU's speed here (a faster cloud cannot be
emulated by sleeping), so the planner is given a cloud factor of 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import TierError
from collabinfer.experiments.table1.rows import (
    Deployed,
    collab_policy,
    describe_plan_mix,
    describe_sends,
    device_send,
)
from collabinfer.experiments.table1.schema import Row, Table1Config
from collabinfer.model.package import names_a_package
from collabinfer.progress import ProgressFn, report
from collabinfer.runtime.link import BandwidthTrace
from collabinfer.runtime.state import WORK_KINDS
from collabinfer.serve.client import DeviceClient, RunSummary
from collabinfer.serve.server import free_port
from collabinfer.topology.links import LinkProfile, get_profile
from collabinfer.topology.tiers import TierSpec
from collabinfer.train.packages import zoo_package


@contextlib.contextmanager
def _process(
    what: str, cmd: list[str], ready: Callable[[], bool], env: dict[str, str], log: Path | None
) -> Iterator[None]:
    """Run ``cmd``; return once ``ready()``; terminate it on exit."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            if proc.poll() is not None:
                where = f"; see {log}" if log else ""
                raise TierError(f"the {what} exited with code {proc.returncode}{where}")
            if time.monotonic() > deadline:
                raise TierError(f"the {what} did not become ready in 120 s")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "collabinfer.cli", *args]


@contextlib.contextmanager
def tier_process(
    tier: str,
    model: str,
    port: int,
    next_url: str | None,
    cache: Path | None,
    log: Path | None,
    options: tuple[str, ...] = (),
) -> Iterator[str]:
    """``collabinfer serve`` in a subprocess (one torch thread); yields its URL once ready.
    A trained zoo model is packaged here first, so the servers start without doing it."""
    if not names_a_package(model) and "--untrained" not in options:
        zoo_package(model, cache)
    cmd = _cli(
        "serve", "--tier", tier, "--model", model, "--host", "127.0.0.1", "--port", str(port)
    )
    cmd += list(options)
    if next_url:
        cmd += ["--next", next_url]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if cache is not None:
        env["COLLABINFER_CACHE"] = str(cache)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=1.0, trust_env=False).is_success
        except httpx.HTTPError:
            return False

    with _process(f"{tier} server", cmd, ready, env, log):
        yield url


@contextlib.contextmanager
def relay_process(
    target: str,
    link: LinkProfile,
    seed: int,
    trace: BandwidthTrace | None,
    log: Path | None,
    workdir: Path,
) -> Iterator[str]:
    """``collabinfer relay`` in its own process (so its event loop does not share the
    device's GIL); yields ``host:port`` once it accepts connections."""
    port = free_port()
    cmd = _cli(
        "relay",
        "--listen",
        f"127.0.0.1:{port}",
        "--target",
        target,
        "--bandwidth-mbps",
        str(link.bandwidth_mbps),
        "--rtt-ms",
        str(link.rtt_ms),
        "--jitter-ms",
        str(link.jitter_ms),
        "--seed",
        str(seed),
    )
    if trace is not None:
        csv = workdir / f"trace-{port}.csv"
        trace.to_csv(csv)
        cmd += ["--trace", str(csv)]

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    with _process(f"relay to {target}", cmd, ready, dict(os.environ), log):
        yield f"127.0.0.1:{port}"


def run_real_row(
    cfg: Table1Config,
    deployed: Deployed,
    data: Dataset,
    trace: BandwidthTrace | None,
    cache: Path | None,
    progress: ProgressFn | None = None,
    log_dir: Path | None = None,
) -> tuple[Row, list[float], dict[str, Any]]:
    """Run ``data`` through device client -> relay -> edge -> relay -> cloud."""
    model_name = deployed.name
    access, wan = get_profile(cfg.link), get_profile(cfg.wan)
    tiers = [
        TierSpec("device", cfg.device_factor, "IoT-class camera board (emulated by sleeping)"),
        TierSpec("edge", 1.0, "this CPU, separate process"),
        TierSpec("cloud", 1.0, "this CPU, separate process, behind a WAN relay"),
    ]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    log = (lambda name: log_dir / f"{name}.log") if log_dir else (lambda name: None)
    cloud_port, edge_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        spec = deployed.spec or model_name
        cloud = stack.enter_context(
            tier_process("cloud", spec, cloud_port, None, cache, log("cloud"))
        )
        wan_at = stack.enter_context(
            relay_process(
                cloud.removeprefix("http://"),
                wan,
                cfg.link_seed + 1,
                None,
                log("relay-wan"),
                workdir,
            )
        )
        reuse: tuple[str, ...] = ()
        if cfg.workload != "iid":  # the edge's semantic cache, as in the virtual row
            reuse = ("--cache-mb", str(cfg.cache_mb), "--cache-key", cfg.cache_key)
        edge = stack.enter_context(
            tier_process("edge", spec, edge_port, f"http://{wan_at}", cache, log("edge"), reuse)
        )
        access_at = stack.enter_context(
            relay_process(
                edge.removeprefix("http://"),
                access,
                cfg.link_seed,
                trace,
                log("relay-access"),
                workdir,
            )
        )
        policy = collab_policy(cfg, deployed.profile, tiers, deployed.exits)
        task = "collabinfer (real sockets)"

        async def go() -> RunSummary:
            async with DeviceClient(
                deployed.net,
                model_name,
                f"http://{access_at}",
                policy,
                tiers,
                profile=deployed.profile,
                deadline_s=5.0,
            ) as client:
                return await client.run_many(
                    [data.images[i : i + 1] for i in range(len(data))],
                    data.labels,
                    progress=lambda done, _res: report(progress, task, done, len(data)),
                )

        summary = asyncio.run(go())
    results = summary.results
    edge_ms = [
        sum(s.wall_ms for s in r.steps if s.tier == 1 and s.kind in WORK_KINDS) for r in results
    ]
    plans = Counter(r.plan.describe(deployed.net.block_names) for r in results)
    sends = Counter(
        send
        for r in results
        if (send := device_send(r.plan, 0 if r.exited_early else r.bytes_sent)) is not None
    )
    row = Row(
        paradigm="collabinfer",
        accuracy=summary.accuracy,
        latency_p50_ms=summary.latency_p50_ms,
        latency_p95_ms=summary.latency_p95_ms,
        bytes_per_input=summary.bytes_per_input,
        raw_input_leaves_device=any(r.raw_input_left_device for r in results),
        edge_cpu_ms_per_input=float(np.mean(edge_ms)) if edge_ms else 0.0,
        measured_on="real-sockets",
        plan=describe_plan_mix(plans),
        fallbacks=summary.fallbacks,
        num_inputs=len(results),
        exited_on_device=float(np.mean([r.exited_early for r in results])) if results else 0.0,
        sends=describe_sends(sends),
        cache_hits=float(np.mean([r.cached for r in results])) if reuse and results else None,
    )
    info = {
        "real_sockets": {
            "tiers": [dataclasses.asdict(t) for t in tiers],
            "wall_s": summary.wall_s,
            "remote_fallbacks": summary.remote_fallbacks,
            "note": "device slow-down emulated by sleeping; links shaped by userspace relays; "
            "edge and cloud are `collabinfer serve` subprocesses on loopback",
        }
    }
    return row, [r.latency_ms for r in results], info
