"""Connection hygiene on a real socket: slow and idle clients, strict HTTP, a connection cap, TLS.

The review's cases: a client that sends its head one byte at a time, idle
connections that pile up until the file descriptors run out, a half-sent body,
``HTTP/9.9``, ``Content-Length`` with ``Transfer-Encoding``. Each test opens raw
sockets against a tier in a thread (uvicorn with the tier's own configuration,
:func:`~collabinfer.serve.http.uvicorn_config`) and checks what the server
answers and that it closes the connection; the socket timeouts only stop a
broken server from hanging the test. The TLS test makes a CA and a server
certificate with the ``openssl`` command line.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from collabinfer.serve import ServerConfig, create_app, serve_in_thread
from collabinfer.serve.client import ClientResult, DeviceClient
from collabinfer.topology.links import LinkProfile

from .conftest import device_client, estimators
from .test_client import two_tier_planner
from .tier_helpers import INFER, NAME, make_net

LOOPBACK = LinkProfile("loopback", 1000.0, 0.2)
WAIT_S = 10.0  # a socket read gives up after this: only a broken server gets near it


@contextmanager
def tier(**config: object) -> Iterator[tuple[str, int]]:
    cfg = ServerConfig("edge", 1, **config)  # type: ignore[arg-type]
    with serve_in_thread(create_app(cfg, make_net(), NAME)) as url:
        host, port = url.split("//")[1].split(":")
        yield host, int(port)


def _connect(addr: tuple[str, int]) -> socket.socket:
    return socket.create_connection(addr, timeout=WAIT_S)


def _read_all(s: socket.socket) -> bytes:
    """Everything until the server closes (or WAIT_S passes: then the test fails)."""
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_an_idle_connection_and_a_trickled_head_get_408_and_are_closed() -> None:
    with tier(header_timeout_s=0.3) as addr:
        idle = _connect(addr)
        trickle = _connect(addr)
        head = f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n".encode()
        t0 = time.monotonic()
        for i in range(len(head)):  # one byte every 20 ms: still trickling at the cut
            try:
                trickle.send(head[i : i + 1])
            except OSError:
                break
            time.sleep(0.02)
        assert _status(_read_all(idle)) == 408
        reply = _read_all(trickle)
        assert _status(reply) == 408
        assert time.monotonic() - t0 < WAIT_S
        with httpx.Client(trust_env=False) as client:  # and everyone else is still served
            assert client.get(f"http://{addr[0]}:{addr[1]}/v2/health/ready").status_code == 200


def test_a_half_sent_body_gets_408() -> None:
    with tier(body_timeout_s=0.3) as addr:
        s = _connect(addr)
        s.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n".encode())
        s.sendall(b"CIW1" + bytes(6))
        reply = _read_all(s)
        assert _status(reply) == 408 and b"body not complete" in reply


def test_at_the_connection_cap_idle_connections_make_room_busy_ones_do_not() -> None:
    """The review's lock-out: idle sockets up to the cap. A new client evicts the
    oldest idle one (408); only when every connection is mid-request is it refused."""
    with tier(max_connections=3, header_timeout_s=60.0, body_timeout_s=60.0) as addr:
        held = [_connect(addr) for _ in range(3)]
        time.sleep(0.1)  # the server has accepted them
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"http://{addr[0]}:{addr[1]}/v2/health/ready").status_code == 200
        assert _status(_read_all(held[0])) == 408  # the oldest idle one made room
        busy = [*held[1:], _connect(addr)]
        for s in busy:  # each in the middle of a request body
            s.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n".encode())
        time.sleep(0.1)
        extra = _connect(addr)
        assert _status(_read_all(extra)) == 503
        for s in busy:
            s.close()
        time.sleep(0.1)
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"http://{addr[0]}:{addr[1]}/v2/health/ready").status_code == 200


def test_an_idle_keep_alive_connection_is_closed() -> None:
    with tier(keep_alive_s=1.0) as addr:
        s = _connect(addr)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        reply = _read_all(s)  # the answer, then the close after the idle second
        assert _status(reply) == 200 and reply.endswith(b'{"live":true}')


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /v2/health/live HTTP/9.9\r\nhost: x\r\n\r\n", {400, 505}),
        (
            f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
            "transfer-encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
            {400},
        ),
    ],
    ids=["HTTP/9.9", "content-length with chunked"],
)
def test_strict_http(head: bytes, status: set[int]) -> None:
    with tier() as addr:
        s = _connect(addr)
        s.sendall(head)
        assert _status(_read_all(s)) in status


# --- TLS ---------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, and a certificate for 127.0.0.1 it signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=collabinfer test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "tier.key", "-out", "tier.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "tier.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "tier.pem",
             cwd=d)  # fmt: skip
    return {k: str(d / f) for k, f in
            {"ca": "ca.pem", "cert": "tier.pem", "key": "tier.key"}.items()}  # fmt: skip


def test_the_device_reaches_a_tls_edge_only_when_it_verifies(certs: dict[str, str]) -> None:
    net = make_net()
    cfg = ServerConfig("edge", 1, tls_cert=certs["cert"], tls_key=certs["key"])
    planner = two_tier_planner(net)

    def client(url: str, ca: str | None) -> DeviceClient:
        return device_client(net, NAME, url, planner, estimators(LOOPBACK), ca=ca)

    async def one(c: DeviceClient) -> ClientResult:
        async with c:
            return await c.infer(torch.rand(1, 1, 28, 28))

    with serve_in_thread(create_app(cfg, net, NAME)) as url:
        assert url.startswith("https://")
        ok = asyncio.run(one(client(url, certs["ca"])))
        assert not ok.fell_back and ok.answered_by == 1
        refused = asyncio.run(one(client(url, None)))  # the system CAs do not know ours
        assert refused.fell_back and "CERTIFICATE" in (refused.error or "").upper()
