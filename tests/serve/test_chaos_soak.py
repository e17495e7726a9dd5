"""Soak under chaos: 16 devices keep sending while the cloud is frozen, killed and restarted.

Real processes on real sockets: a cloud and an edge from ``collabinfer serve``
(untrained, seeded ``tiny-cnn``: every tier holds the same weights), the edge
hosting every block so it can finish what the cloud does not, and 16
:class:`~collabinfer.serve.client.DeviceClient` s in this process following
one plan (device: block 0, edge: block 1, cloud: blocks 2-3). A chaos task
freezes the cloud (SIGSTOP), thaws it, kills it (SIGKILL) and starts it again
on the same port. The checks: every input answered exactly once; inputs sent
while the cloud was frozen or dead answered by a fallback; the fallbacks' p95
within the device deadline + 10 % (a hung cloud costs the edge one forward
timeout, then its breaker answers at once); the cloud answering again after
its restart; the edge's memory flat. The summary line is printed (``-s``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from collabinfer.plan.cost import Plan
from collabinfer.runtime.policy import StaticPolicy
from collabinfer.serve.client import ClientResult, DeviceClient
from collabinfer.serve.server import free_port, load_served_model
from collabinfer.topology.tiers import TierSpec

pytestmark = pytest.mark.integration

MODEL = "tiny-cnn"
DEADLINE_S = 1.0
CLIENTS = 16
PACE_S = 0.01  # between one device's inputs: a fallback takes ~1 ms, a device is not a loop
SRC = str(Path(__file__).resolve().parents[2] / "src")
PHASES = (("warm", 6.0), ("frozen", 10.0), ("thawed", 6.0), ("dead", 6.0), ("restarted", 10.0))


def _serve(tier: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "collabinfer.cli", "serve", "--tier", tier, "--model", MODEL,
           "--untrained", "--port", str(port), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        assert proc.poll() is None, f"server on {port} exited with {proc.returncode}"
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1, trust_env=False)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server on {port} not ready in {timeout_s} s")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class Sent:
    phase: str
    t_s: float  # since the soak started
    result: ClientResult


async def _soak(edge_url: str, chaos: Chaos) -> tuple[list[Sent], int]:
    net = load_served_model(MODEL, untrained=True)
    plan = Plan((0, 1, 2, 4), ("fp32", "fp32", None))
    tiers = [TierSpec("device", 1.0), TierSpec("edge", 1.0), TierSpec("cloud", 1.0)]
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    sent: list[Sent] = []
    attempts = [0]
    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=CLIENTS + 4, max_keepalive_connections=CLIENTS + 4)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as http:
        devices = [
            DeviceClient(
                net,
                MODEL,
                edge_url,
                StaticPolicy(plan),
                tiers,
                http=http,
                deadline_s=DEADLINE_S,
                rtt_probe_s=None,
            )
            for _ in range(CLIENTS)
        ]

        async def device(i: int) -> None:
            k = 0
            while not chaos.done:
                phase, t = chaos.phase, time.monotonic() - t0
                attempts[0] += 1
                r = await devices[i].infer(images[(i * 7 + k) % len(images)], f"d{i}-{k}")
                sent.append(Sent(phase, t, r))
                k += 1
                await asyncio.sleep(PACE_S)

        await asyncio.gather(chaos.run(), *(device(i) for i in range(CLIENTS)))
    return sent, attempts[0]


class Chaos:
    """Freeze, thaw, kill and restart the cloud on a schedule; record the edge's memory."""

    def __init__(self, cloud: subprocess.Popen[bytes], port: int, edge_pid: int) -> None:
        self.cloud, self.port, self.edge_pid = cloud, port, edge_pid
        self.phase, self.done = "warm", False
        self.rss_mb: dict[str, float] = {}

    async def run(self) -> None:
        for phase, seconds in PHASES:
            self.phase = phase
            if phase == "frozen":
                self.rss_mb["after warm-up"] = _rss_mb(self.edge_pid)
                self.cloud.send_signal(signal.SIGSTOP)
            elif phase == "thawed":
                self.cloud.send_signal(signal.SIGCONT)
            elif phase == "dead":
                self.cloud.kill()
                self.cloud.wait()
            elif phase == "restarted":
                self.cloud = _serve("cloud", self.port, "--blocks", "2:")
                await asyncio.to_thread(_ready, self.port, self.cloud)
            await asyncio.sleep(seconds)
        self.rss_mb["at the end"] = _rss_mb(self.edge_pid)
        self.done = True


def test_soak_with_the_cloud_frozen_killed_and_restarted() -> None:
    cloud_port, edge_port = free_port(), free_port()
    cloud = _serve("cloud", cloud_port, "--blocks", "2:")
    edge = _serve("edge", edge_port, "--next", f"http://127.0.0.1:{cloud_port}",
                  "--breaker-base-s", "0.5", "--breaker-max-s", "2")  # fmt: skip
    chaos = Chaos(cloud, cloud_port, edge.pid)
    try:
        _ready(cloud_port, cloud)
        _ready(edge_port, edge)
        sent, attempts = asyncio.run(_soak(f"http://127.0.0.1:{edge_port}", chaos))
    finally:
        for proc in (chaos.cloud, edge):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()

    ids = [s.result.request_id for s in sent]
    assert len(sent) == attempts and len(set(ids)) == len(ids)  # each answered exactly once
    fallback = [s for s in sent if s.result.fell_back or s.result.remote_fell_back]
    lat = np.array([s.result.latency_ms for s in fallback])
    p95 = float(np.percentile(lat, 95))
    # sent while the cloud could not answer (after the freeze/kill took hold): fallbacks
    for phase in ("frozen", "dead"):
        start = sum(d for p, d in PHASES[: [p for p, _ in PHASES].index(phase)])
        during = [s for s in sent if s.phase == phase and s.t_s > start + 0.2]
        assert during and all(s.result.answered_by != 2 for s in during), phase
    back = [s for s in sent if s.phase == "restarted" and s.result.answered_by == 2]
    rss = chaos.rss_mb
    print(
        f"\nsoak: {len(sent)} inputs from {CLIENTS} clients, {len(set(ids))} answered once, "
        f"{sum(s.result.remote_fell_back for s in sent)} edge fallbacks, "
        f"{sum(s.result.fell_back for s in sent)} device fallbacks; fallback p95 {p95:.0f} ms "
        f"(deadline {DEADLINE_S * 1e3:.0f} ms), overall p95 "
        f"{np.percentile([s.result.latency_ms for s in sent], 95):.0f} ms; "
        f"cloud answered {len(back)} after its restart; edge RSS {rss['after warm-up']:.0f} -> "
        f"{rss['at the end']:.0f} MB; device errors {Counter(s.result.error for s in sent)}"
    )
    assert p95 <= 1.1 * DEADLINE_S * 1e3
    assert back, "the edge's breaker closed again once the cloud was back"
    assert rss["at the end"] <= rss["after warm-up"] + 30.0  # flat: no growth per request
