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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from collabinfer.cache.reuse import Reuse
from collabinfer.cache.semantic import SemanticCache
from collabinfer.data.fashion_mnist import load_split
from collabinfer.errors import CheckpointError, CollabInferError, ConfigError, DataError, TierError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import deploy
from collabinfer.model.gates import gate_net
from collabinfer.model.zoo import create_model, model_spec
from collabinfer.plan.profile import Profile
from collabinfer.progress import ProgressFn
from collabinfer.serve.config import TIER_INDEX, ServerConfig
from collabinfer.serve.handler import TierHandler, error_response
from collabinfer.serve.http import uvicorn_config
from collabinfer.serve.openapi import INFER_OPENAPI
from collabinfer.serve.wire import WireError
from collabinfer.train import DEFAULT_CONFIGS, load_trained
from collabinfer.train.bottleneck import (
    BOTTLENECK_SUFFIX,
    VARIATIONAL_SUFFIX,
    default_bottleneck,
    default_variational_bottleneck,
)
from collabinfer.train.gates import GATES_SUFFIX, default_gates
from collabinfer.train.reuse import ProjectionConfig, RuleConfig, edge_reuse, train_projection

__all__ = [
    "TIER_INDEX",
    "ServerConfig",
    "build_reuse",
    "create_app",
    "free_port",
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
) -> FastAPI:
    """The FastAPI app of one tier. ``next_transport`` (tests) replaces the network to
    next; ``profile`` charges an emulated tier (else it profiles the model at startup);
    ``reuse``: the tier's semantic cache (:func:`build_reuse`)."""
    server = TierHandler(config, model, model_name, next_transport, profile, reuse)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server._start()
        try:
            yield
        finally:
            await server.shutdown()

    app = FastAPI(
        title=f"collabinfer tier {config.tier_name}",
        lifespan=lifespan,
        docs_url=None,  # served below, behind the token
        redoc_url=None,
        openapi_url=None,
    )
    app.state.tier_server = server

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
        return {"models": [server.hosted.name]}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str, request: Request) -> dict[str, Any]:
        server.authorize(request)
        if name != server.hosted.name:
            raise WireError(f"unknown model {name!r}; hosted: {server.hosted.name}", 404, "model")
        return server.metadata()

    @app.post("/v2/models/{name}/infer", openapi_extra=INFER_OPENAPI)
    async def infer(name: str, request: Request) -> Response:
        return await server.infer(name, request)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server.authorize(request)
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v2/cache")
    async def cache_stats(request: Request) -> dict[str, Any]:
        server.authorize(request)
        return server.reuse_stats()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        server.authorize(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        server.authorize(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    return app


def load_served_model(name: str, untrained: bool = False, seed: int = 0) -> BlockNet:
    """The trained checkpoint of zoo model ``name``, or (``untrained``) a seeded random init.

    Every tier of one deployment must load the same weights (the header carries
    their hash), so untrained models are seeded: the same seed gives the same hash.
    A name ending in ``+gates`` (e.g. ``fmnist-resnet+gates``) is the deployed gated
    copy of its base model (:func:`~collabinfer.train.gates.default_gates`).
    """
    if name.endswith(GATES_SUFFIX):  # e.g. fmnist-resnet+gates: the deployed gated backbone
        return _load_gated(name.removesuffix(GATES_SUFFIX), untrained, seed)
    if name.endswith(BOTTLENECK_SUFFIX):  # e.g. fmnist-resnet+bn: the deployed bottleneck
        return _load_bottleneck(name.removesuffix(BOTTLENECK_SUFFIX), untrained, seed)
    if name.endswith(VARIATIONAL_SUFFIX):  # fmnist-resnet+vbn: the privacy defence
        return _load_bottleneck(name.removesuffix(VARIATIONAL_SUFFIX), untrained, seed, True)
    model_spec(name)  # unknown name: ModelError listing the zoo
    if untrained:
        torch.manual_seed(seed)
        return create_model(name).eval()
    hint = f"run `collabinfer train --model {name}` first, or pass --untrained"
    if name not in DEFAULT_CONFIGS:
        raise ConfigError(f"model {name!r} has no training recipe; pass --untrained")
    try:
        model = load_trained(DEFAULT_CONFIGS[name])
    except (CheckpointError, DataError) as e:
        raise CollabInferError(f"no trained checkpoint for {name!r} ({e}): {hint}") from None
    return model


def build_reuse(
    config: ServerConfig, model: BlockNet, model_name: str, progress: ProgressFn | None = None
) -> Reuse:
    """The tier's semantic cache: ``config.reuse_mb`` MiB, a key and a hit rule for every
    cut a request may arrive at (the hosted blocks', from cut 1: the cache keys on
    features, never on a raw image), the rules fitted on validation streams for
    ``config.reuse_precision`` (cached after the first start). The projection key is
    trained for one cut, the first hosted one, and must be trained already."""
    stop = model.num_blocks if config.stop is None else config.stop
    first = max(config.start, 1)
    cuts = range(first, first + 1) if config.reuse_key == "projection" else range(first, stop)
    cache = SemanticCache(int(config.reuse_mb * 2**20), config.reuse_eviction, config.reuse_ttl_s)
    try:
        val = load_split("val")
        projection = None
        if config.reuse_key == "projection":
            projection = train_projection(
                model, load_split("train"), ProjectionConfig(cut=first), may_train=False
            )
        return edge_reuse(
            model,
            model_name,
            cuts,
            cache,
            val,
            key=config.reuse_key,
            config=RuleConfig(target=config.reuse_precision),
            projection=projection,
            progress=progress,
        )
    except (CheckpointError, DataError) as e:
        raise CollabInferError(f"the semantic cache cannot start: {e}") from None


def _load_bottleneck(base: str, untrained: bool, seed: int, variational: bool = False) -> BlockNet:
    """The teacher's tail behind the default learned bottleneck, its codec registered;
    ``variational``: the variational one, whose encoder samples afresh on every call
    (on the device; this tier only decodes)."""
    if untrained:
        raise ConfigError("a bottleneck deployment needs trained weights; drop --untrained")
    teacher = load_served_model(base)
    load = default_variational_bottleneck if variational else default_bottleneck
    try:
        tb = load(teacher, train=False)
    except (CheckpointError, DataError) as e:
        raise CollabInferError(str(e)) from None
    return deploy(tb.net, tb.bottleneck, tb.key[:8]).net


def _load_gated(base: str, untrained: bool, seed: int) -> BlockNet:
    """The base model with its residual blocks gated: trained gates, or seeded new ones."""
    backbone = load_served_model(base, untrained, seed)  # unknown base: the usual errors
    if untrained:
        torch.manual_seed(seed)  # the new gates too: every tier must hold the same weights
        return gate_net(backbone).eval()
    try:
        return default_gates(backbone, train=False).net.eval()
    except (CheckpointError, DataError) as e:
        raise CollabInferError(str(e)) from None


def serve_main(
    config: ServerConfig,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    untrained: bool = False,
    seed: int = 0,
) -> None:
    """Load the model and serve it with uvicorn until interrupted (the CLI's body)."""
    model = load_served_model(model_name, untrained, seed)
    reuse = build_reuse(config, model, model_name) if config.reuse_mb > 0 else None
    app = create_app(config, model, model_name, reuse=reuse)
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
