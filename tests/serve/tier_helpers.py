"""Shared setup for the tier-server tests: a tiny model, device-side requests, ASGI clients.

The test code plays the device: it runs the plan's head blocks, encodes the cut
with the plan's codec and frames the request exactly as a real client would.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import torch
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from collabinfer.codec import get_codec
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.model.zoo import create_model
from collabinfer.runtime.state import PathEntry
from collabinfer.serve.wire import MAGIC, RequestHeader, WirePlan

NAME = "tiny-cnn"  # 4 blocks; cuts: (1,28,28) (4,14,14) (4,14,14) (4,) (10,)
INFER = f"/v2/models/{NAME}/infer"


def make_net(seed: int = 0) -> BlockNet:
    torch.manual_seed(seed)
    return create_model(NAME).eval()


def make_input(seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def device_request(
    net: BlockNet,
    x: torch.Tensor,
    boundaries: Sequence[int] = (0, 0, 4),
    codecs: Sequence[str | None] = ("fp32", None),
    request_id: str = "r1",
    deadline_ms: float | None = None,
) -> tuple[RequestHeader, bytes]:
    """What the device sends to tier 1: its head run, the cut encoded with ``codecs[0]``."""
    cut = boundaries[1]
    with torch.inference_mode():
        z = net.run_range(x, 0, cut)
    enc = get_codec(codecs[0] or "fp32").encode(z)
    header = RequestHeader(
        model=NAME,
        weights=weights_hash(net),
        request_id=request_id,
        tier=1,
        next_block=cut,
        tensor=enc.header,
        plan=WirePlan(tuple(boundaries), tuple(codecs)),
        path=tuple(PathEntry(k, 0, True) for k in range(cut)),
        deadline_ms=deadline_ms,
    )
    return header, enc.payload


def reference(
    net: BlockNet, x: torch.Tensor, boundaries: Sequence[int], codecs: Sequence[str | None]
) -> torch.Tensor:
    """The plan run in-process: each sender's codec round trip, relays pass bytes on."""
    n, z, codec = net.num_blocks, x, None
    with torch.inference_mode():
        for t in range(len(codecs)):
            a, b = boundaries[t], boundaries[t + 1]
            if t > 0 and a == b:
                continue  # a relay
            if codec is not None:
                c = get_codec(codec)
                z = c.decode(c.encode(z))
            z = net.run_range(z, a, b)
            if b == n:
                return z
            codec = codecs[t]
    raise AssertionError("plan never reached the last block")


def frame(header_json: bytes, payload: bytes = b"", hlen: int | None = None) -> bytes:
    """A body with an arbitrary header (and optionally a lying length field)."""
    n = len(header_json) if hlen is None else hlen
    return MAGIC + struct.pack(">I", n) + header_json + payload


@asynccontextmanager
async def asgi_client(app: FastAPI, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client (no sockets), with the app's startup and shutdown run."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://tier", headers=headers
        ) as client:
            yield client


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
