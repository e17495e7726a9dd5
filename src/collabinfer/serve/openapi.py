"""The infer endpoint as OpenAPI sees it: a framed binary request, a JSON answer.

Why by hand: the request body is not JSON (``CIW1`` framing, a JSON header,
raw codec bytes; ``docs/serving.md``), so FastAPI cannot infer it from a
signature. These schemas say the same as :mod:`~collabinfer.serve.wire`; a
test checks them against real messages, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_SCHEMA", "HEADER_SCHEMA", "INFER_OPENAPI", "RESPONSE_SCHEMA"]

_INT = {"type": "integer", "minimum": 0}

HEADER_SCHEMA: dict[str, Any] = {
    "title": "RequestHeader",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "protocol",
        "model",
        "weights",
        "request_id",
        "tier",
        "next_block",
        "tensor",
        "plan",
        "path",
        "deadline_ms",
    ],
    "properties": {
        "protocol": {"const": 1},
        "model": {"type": "string", "minLength": 1},
        "weights": {"type": "string", "minLength": 1},
        "request_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "tier": _INT,
        "next_block": _INT,
        "tensor": {
            "type": "object",
            "additionalProperties": False,
            "required": ["codec", "dtype", "shape", "params"],
            "properties": {
                "codec": {"type": "string"},
                "dtype": {"enum": ["bfloat16", "float16", "float32", "float64"]},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "params": {"type": "array", "items": {"type": "number"}},
            },
        },
        "plan": {
            "type": "object",
            "additionalProperties": False,
            "required": ["boundaries", "codecs"],
            "properties": {
                "boundaries": {"type": "array", "items": _INT},
                "codecs": {"type": "array", "items": {"type": ["string", "null"]}},
            },
        },
        "path": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [_INT, _INT, {"type": "boolean"}],
                "minItems": 3,
                "maxItems": 3,
            },
        },
        "deadline_ms": {"type": ["number", "null"], "minimum": 0, "maximum": 86_400_000},
    },
}

_STEP = {
    "type": "object",
    "required": ["kind", "tier", "ms", "block", "nbytes", "wall_ms"],
    "properties": {
        "kind": {"type": "string"},
        "tier": {"type": "integer"},
        "ms": {"type": "number"},
        "block": {"type": ["integer", "null"]},
        "nbytes": {"type": "integer"},
        "wall_ms": {"type": "number"},
    },
}

RESPONSE_SCHEMA: dict[str, Any] = {
    "title": "ResponseBody",
    "type": "object",
    "required": [
        "request_id",
        "tier",
        "output",
        "prediction",
        "path",
        "steps",
        "server_ms",
        "fell_back",
        "cached",
    ],
    "properties": {
        "request_id": {"type": "string"},
        "tier": {"type": "integer", "description": "the tier that finished the request"},
        "output": {
            "type": "array",
            "description": "logits, one row per batch row",
            "items": {"type": "array", "items": {"type": "number"}},
        },
        "prediction": {"type": "array", "items": {"type": "integer"}},
        "path": HEADER_SCHEMA["properties"]["path"],
        "steps": {"type": "array", "items": _STEP},
        "server_ms": {"type": "number", "description": "wall time inside this server"},
        "fell_back": {"type": "boolean"},
        "cached": {
            "type": "boolean",
            "description": "the edge's semantic cache answered (no tail ran)",
        },
    },
}

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "field"],
    "properties": {"error": {"type": "string"}, "field": {"type": ["string", "null"]}},
}

_ERRORS = {
    "400": "malformed framing, header keys or types",
    "401": "missing or wrong bearer token",
    "404": "model not hosted here",
    "408": "body not complete within the body timeout",
    "409": "weights differ from the hosted ones, or request_id reused with another body",
    "413": "body, batch rows, decoded size or compute estimate over this server's limits",
    "422": "header does not fit the hosted model, or the payload does not decode",
    "429": "too many failed authentications from this address (see Retry-After)",
    "502": "the next tier failed and this tier cannot finish the request itself",
    "503": "too many requests in flight (see Retry-After)",
    "504": "the deadline cannot be met",
}

INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            'b"CIW1" | uint32 big-endian header length | header JSON (RequestHeader) | '
            "payload (the codec's bytes). See docs/serving.md."
        ),
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "x-collabinfer-header": HEADER_SCHEMA,
            }
        },
    },
    "responses": {
        "200": {
            "description": "the finished request",
            "content": {"application/json": {"schema": RESPONSE_SCHEMA}},
        },
        **{
            code: {
                "description": text,
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            }
            for code, text in _ERRORS.items()
        },
    },
}
