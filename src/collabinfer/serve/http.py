"""HTTP hygiene on both ends of a hop: what a connection may cost, and capped answers.

Server side. uvicorn (h11) offers a keep-alive timeout, a header-size cap
(``h11_max_incomplete_event_size``), ``limit_concurrency`` and TLS, and we use
them; it has no deadline for a request's *headers* (a client sending one byte
a second keeps its connection forever) and no cap on open connections (idle
sockets exhaust the file descriptors and lock out everyone, the health check
too). :class:`GuardedH11Protocol` adds both: a connection must complete each
request head within ``header_timeout_s`` of its first byte (or of the
connection opening) or it gets a 408 and is closed; at ``max_connections`` a
new connection evicts the oldest one that is waiting for a request head (idle,
or trickling one), so a pile of idle sockets cannot lock anyone out, and only
when every connection is busy with a request is the new one refused (503). The
body's deadline is the handler's (``body_timeout_s``), which reads the body
itself. :class:`StrictHTTP` refuses what h11 lets through but a server on a
network should not: versions other than HTTP/1.0 and 1.1 (505), and a request
with both ``Content-Length`` and ``Transfer-Encoding`` (400, request
smuggling). Why not another server: hypercorn's ``read_timeout`` is per read,
so it would not stop a trickle either; this is ~60 lines on the server the
project already runs. :func:`uvicorn_config` builds the one configuration both
``collabinfer serve`` and the in-thread test servers use.

Client side (the device client and a tier forwarding to the next one):
:func:`post_capped` posts with a *total* deadline (httpx's timeout is per
read) and reads at most ``cap`` bytes of the answer; :func:`client_tls`
builds the ``verify`` argument for an https:// tier from a CA bundle.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import h11
import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from collabinfer.errors import ConfigError, LinkError, LinkTimeout

__all__ = [
    "AnswerTooLarge",
    "GuardedH11Protocol",
    "StrictHTTP",
    "client_tls",
    "post_capped",
    "uvicorn_config",
]

MAX_HEADER_BYTES = 16_384
"""Largest request head h11 buffers (uvicorn's default is 16 kB too; made explicit)."""

_CLOSE = b"content-length: 0\r\nconnection: close\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (module doc).

    The limits are class attributes, set by :func:`uvicorn_config` on a subclass
    made per server, because uvicorn builds protocol instances itself.
    """

    header_timeout_s: float = 10.0
    max_connections: int = 512
    _header_timer: asyncio.TimerHandle | None = None
    _opened_at: float = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.max_connections and not self._evict_one():
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n" + _CLOSE)
            transport.close()
            return
        super().connection_made(transport)
        self._opened_at = self.loop.time()
        self._arm_header_timer()

    def _evict_one(self) -> bool:
        """Close the oldest connection waiting for a request head; False if none is."""
        waiting = [
            c
            for c in self.server_state.connections
            if isinstance(c, GuardedH11Protocol)
            and c.conn.their_state is h11.IDLE
            and (c.cycle is None or c.cycle.response_complete)
            and not c.transport.is_closing()
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._opened_at)
        oldest._cancel_header_timer()
        oldest._unset_keepalive_if_required()
        oldest.transport.write(b"HTTP/1.1 408 Request Timeout\r\n" + _CLOSE)
        oldest.transport.close()
        self.server_state.connections.discard(oldest)  # its slot is free now
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive (idle) timeout
        self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self in self.server_state.connections:  # a refused connection never joined
            super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        """Armed while h11 waits for a request head: from the connection's start, and
        from the first byte of each later request (between requests with nothing
        sent, uvicorn's keep-alive timeout applies instead)."""
        if self.conn.their_state is h11.IDLE:
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(
                    self.header_timeout_s, self._header_timed_out
                )
        else:
            self._cancel_header_timer()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n" + _CLOSE)
        self.transport.close()


class StrictHTTP:
    """ASGI middleware: HTTP/1.0 or 1.1 only; never Content-Length with Transfer-Encoding."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = None
            if scope.get("http_version") not in ("1.0", "1.1"):
                problem = 505, f"HTTP/{scope.get('http_version')} is not supported"
            else:
                names = {k.lower() for k, _ in scope.get("headers", [])}
                if b"content-length" in names and b"transfer-encoding" in names:
                    problem = 400, "Content-Length together with Transfer-Encoding"
            if problem is not None:
                await _refuse(send, *problem)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = f'{{"error": "{message}", "field": "http"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def uvicorn_config(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    header_timeout_s: float = 10.0,
    keep_alive_s: float = 5.0,
    max_connections: int = 512,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "info",
) -> uvicorn.Config:
    """The uvicorn configuration of a tier server (guarded protocol, strict HTTP, TLS)."""
    protocol = type(
        "TierH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )
    for path in (tls_cert, tls_key):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    return uvicorn.Config(
        StrictHTTP(app),
        host=host,
        port=port,
        http=protocol,
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=max(1, round(keep_alive_s)),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        server_header=False,
    )


def client_tls(ca: str | None) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a context trusting ``ca`` (a PEM bundle), else the system CAs."""
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load CA bundle {ca}: {e}") from None


class AnswerTooLarge(LinkError):
    """The next tier's answer exceeded what an answer to this request may take."""


async def post_capped(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    cap: int,
) -> tuple[int, bytes]:
    """POST ``body``; ``(status, answer bytes)`` within ``timeout_s`` in all.

    httpx errors other than timeouts propagate (callers tell "not sent" from
    "lost"); running out of time is a :class:`LinkTimeout`, an answer over
    ``cap`` bytes an :class:`AnswerTooLarge`.
    """
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST", url, content=body, headers=headers, timeout=timeout_s
            ) as resp:
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise AnswerTooLarge(f"answer is {declared} bytes, at most {cap}")
                buf = bytearray()
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    if len(buf) > cap:
                        raise AnswerTooLarge(f"answer exceeds {cap} bytes")
                return resp.status_code, bytes(buf)
    except TimeoutError:
        raise LinkTimeout(f"no complete answer within {timeout_s * 1e3:.0f} ms") from None
    except httpx.TimeoutException as e:
        raise LinkTimeout(f"{type(e).__name__}: {e}") from None
