"""Tiers over real sockets: the wire format, the tier server and its CLI.

See ``docs/serving.md`` for the contract. The wire format is public
(:mod:`~collabinfer.serve.wire`); a tier is a FastAPI app from
:func:`create_app`, run by ``collabinfer serve`` (:func:`serve_main`).
"""

from collabinfer.serve.server import (
    Served,
    ServerConfig,
    create_app,
    load_served,
    load_served_model,
    serve_in_thread,
    serve_main,
)
from collabinfer.serve.wire import (
    PROTOCOL,
    HostedModel,
    RequestHeader,
    ResponseBody,
    WireError,
    WirePlan,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

__all__ = [
    "PROTOCOL",
    "HostedModel",
    "RequestHeader",
    "ResponseBody",
    "Served",
    "ServerConfig",
    "WireError",
    "WirePlan",
    "create_app",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "load_served",
    "load_served_model",
    "serve_in_thread",
    "serve_main",
]
