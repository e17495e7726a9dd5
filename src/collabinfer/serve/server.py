"""The tier server: a FastAPI app that hosts blocks ``A..B-1`` of one model.

Contract: ``docs/serving.md``. This module is the app (routes, lifecycle) and
how to run it (:func:`serve_main` for the CLI, :func:`serve_in_thread` for
tests and benchmarks); what a tier does with a request lives in
:mod:`~collabinfer.serve.handler`. Compute runs on a worker thread
(:mod:`~collabinfer.serve.batching`), so the health endpoints answer during it.
Metrics live on a per-app registry (:mod:`~collabinfer.serve.metrics`).
Everything but the health checks needs the token when one is set: the model
list, ``/metrics`` and the OpenAPI schema (``/openapi.json``, ``/docs``), which
describes the binary request and the JSON answer (:mod:`~collabinfer.serve.openapi`).
Both ways of running it use one uvicorn configuration
(:func:`~collabinfer.serve.http.uvicorn_config`: header deadline, keep-alive
timeout, connection cap, strict HTTP, TLS).

Example::

    >>> from collabinfer.model.zoo import create_model
    >>> app = create_app(ServerConfig("cloud", tier_index=2), create_model("tiny-cnn"), "tiny-cnn")
    >>> sorted(r.path for r in app.routes if r.path.startswith("/v2/health"))
    ['/v2/health/live', '/v2/health/ready']
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from collabinfer.cache.reuse import Reuse
from collabinfer.errors import ConfigError, TierError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.gates import gate_net
from collabinfer.model.package import (
    ModelPackage,
    names_a_package,
    read_package,
    zoo_package_dir,
)
from collabinfer.model.zoo import GATES_SUFFIX, create_model, model_spec, split_variant
from collabinfer.plan.profile import Profile
from collabinfer.serve.config import TIER_INDEX, ServerConfig
from collabinfer.serve.handler import TierHandler, error_response
from collabinfer.serve.http import uvicorn_config
from collabinfer.serve.metrics import render_models
from collabinfer.serve.openapi import INFER_OPENAPI
from collabinfer.serve.wire import WireError

__all__ = [
    "TIER_INDEX",
    "Served",
    "ServerConfig",
    "create_app",
    "free_port",
    "load_served",
    "load_served_model",
    "serve_in_thread",
    "serve_main",
]


def create_app(
    config: ServerConfig,
    model: BlockNet,
    model_name: str,
    *,
    next_transport: httpx.AsyncBaseTransport | None = None,
    profile: Profile | None = None,
    reuse: Reuse | None = None,
    more: Sequence[tuple[BlockNet, str]] = (),
) -> FastAPI:
    """The FastAPI app of one tier. ``next_transport`` (tests) replaces the network to
    next; ``profile`` charges an emulated tier (else it profiles the model at startup);
    ``reuse``: the tier's semantic cache, for ``model``; ``more``: further models the
    tier hosts beside it under the same config (``/v2/models`` lists them all, each has
    its own infer route, engine and metrics, labelled ``model`` in ``/metrics``)."""
    server = TierHandler(config, model, model_name, next_transport, profile, reuse)
    handlers = {model_name: server}
    for m, name in more:
        if name in handlers:
            raise ConfigError(f"model {name!r} is hosted twice")
        handlers[name] = TierHandler(config, m, name, next_transport)
    for h in handlers.values():
        h.hosted_names = tuple(handlers)

    def handler_for(name: str) -> TierHandler:
        h = handlers.get(name)
        if h is None:
            hosted = ", ".join(handlers)
            raise WireError(f"unknown model {name!r}; hosted: {hosted}", 404, "model")
        return h

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for h in handlers.values():
            h._start()
        try:
            yield
        finally:
            for h in handlers.values():
                await h.shutdown()

    app = FastAPI(
        title=f"collabinfer tier {config.tier_name}",
        lifespan=lifespan,
        docs_url=None,  # served below, behind the token
        redoc_url=None,
        openapi_url=None,
    )
    app.state.tier_server = server
    app.state.tier_servers = handlers

    async def on_wire_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, WireError):  # only registered for WireError
            raise exc
        return error_response(exc)

    app.add_exception_handler(WireError, on_wire_error)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models")
    async def models(request: Request) -> dict[str, list[str]]:
        server.authorize(request)
        return {"models": list(handlers)}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str, request: Request) -> dict[str, Any]:
        server.authorize(request)
        return handler_for(name).metadata()

    @app.post("/v2/models/{name}/infer", openapi_extra=INFER_OPENAPI)
    async def infer(name: str, request: Request) -> Response:
        h = handlers.get(name, server)  # the primary answers an unknown name: 404 + metrics
        return await h.infer(name, request)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server.authorize(request)
        body = render_models({n: h.metrics for n, h in handlers.items()})
        return Response(body, media_type="text/plain; version=0.0.4")

    @app.get("/v2/cache")
    async def cache_stats(request: Request, model: str | None = None) -> dict[str, Any]:
        server.authorize(request)
        return handler_for(model).reuse_stats() if model is not None else server.reuse_stats()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        server.authorize(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        server.authorize(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    return app


@dataclass(frozen=True)
class Served:
    """A model a tier hosts: its name on the wire, its blocks, and the package they
    came from (None for a seeded untrained zoo model)."""

    name: str
    net: BlockNet
    package: ModelPackage | None = None


def load_served(
    spec: str | Path, untrained: bool = False, seed: int = 0, cache: Path | None = None
) -> Served:
    """The model ``spec`` names: a package directory (``collabinfer pack``), a zoo name
    whose package was built from the trained checkpoints (the CLI builds it:
    :func:`collabinfer.train.packages.zoo_package`), or (``untrained``) a seeded random
    init of a zoo architecture.

    Every tier of one deployment must load the same weights (the header carries
    their hash), so untrained models are seeded: the same seed gives the same hash.
    A name ending in ``+gates`` (e.g. ``fmnist-resnet+gates``) is the gated copy of
    its base model; ``+bn``/``+vbn`` (bottlenecks) exist trained only.
    """
    text = str(spec)
    if names_a_package(spec):
        if untrained:
            raise ConfigError("a package holds its weights; drop --untrained")
        package = read_package(text)
        return Served(package.name, package.net, package)
    base, suffix = split_variant(text)
    model_spec(base)  # unknown name: ModelError listing the zoo
    if untrained:
        return Served(text, _untrained(base, suffix, seed))
    path = zoo_package_dir(text, cache)
    if not path.is_dir():
        raise ConfigError(
            f"zoo model {text!r} is not packaged yet ({path} is missing): `collabinfer serve` "
            f"packages trained zoo models itself; or run `collabinfer pack --zoo {text}`"
        )
    package = read_package(path)
    return Served(package.name, package.net, package)


def load_served_model(spec: str | Path, untrained: bool = False, seed: int = 0) -> BlockNet:
    """The blocks of :func:`load_served` (what in-process tests and benchmarks need)."""
    return load_served(spec, untrained, seed).net


def _untrained(base: str, suffix: str, seed: int) -> BlockNet:
    if suffix and suffix != GATES_SUFFIX:
        raise ConfigError("a bottleneck deployment needs trained weights; drop --untrained")
    torch.manual_seed(seed)
    net = create_model(base).eval()
    if suffix == GATES_SUFFIX:
        torch.manual_seed(seed)  # the new gates too: every tier must hold the same weights
        net = gate_net(net).eval()
    return net


def serve_main(
    config: ServerConfig,
    served: Sequence[Served],
    host: str = "127.0.0.1",
    port: int = 8000,
    reuse: Reuse | None = None,
) -> None:
    """Serve ``served`` (the first gets ``reuse``) with uvicorn until interrupted."""
    if not served:
        raise ConfigError("serve needs at least one model")
    first, *rest = served
    more = [(s.net, s.name) for s in rest]
    app = create_app(config, first.net, first.name, reuse=reuse, more=more)
    _raise_fd_limit()
    uvicorn.Server(server_config(app, config, host, port)).run()


def server_config(
    app: FastAPI, config: ServerConfig, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn configuration of a tier: its connection limits and TLS files."""
    return uvicorn_config(
        app,
        host,
        port,
        header_timeout_s=config.header_timeout_s,
        keep_alive_s=config.keep_alive_s,
        max_connections=config.max_connections,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        log_level=log_level,
    )


def _raise_fd_limit() -> None:
    """Let the connection cap, not the soft file-descriptor limit, bound connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the usual small race applies: bind soon)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 10.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn on a real socket in a background thread; yields its URL.

    Port 0 picks a free port. The server is stopped (and the thread joined) on exit.
    The tier's own connection limits and TLS apply (from its handler's config).
    """
    handler = getattr(app.state, "tier_server", None)
    config = handler.config if isinstance(handler, TierHandler) else ServerConfig("test")
    server = uvicorn.Server(server_config(app, config, host, port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="collabinfer-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise TierError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.005)
        bound = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if config.tls_cert is not None else "http"
        yield f"{scheme}://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)
