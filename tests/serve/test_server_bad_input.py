"""The malformed-request suite: every bad input gets the right 4xx, the server keeps serving.

Each case is posted to a fresh tier server (in-process, no sockets); the answer
must be the documented status with a JSON ``{"error", "field"}`` naming the
problem, ``/v2/health/ready`` must stay 200, and a valid request must still
succeed afterwards. One more test runs all cases against one server in a row.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from dataclasses import dataclass

import httpx
import pytest
import torch

from collabinfer.serve.server import ServerConfig, create_app
from collabinfer.serve.wire import MAX_HEADER_BYTES, RequestHeader, decode_response, encode_request

from .tier_helpers import INFER, NAME, asgi_client, device_request, frame, make_input, make_net
from .tier_helpers import metric as metric_value

TOKEN = "s3cret"
CAP = 16_384  # max body bytes of the server under test
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _app():  # type: ignore[no-untyped-def]
    config = ServerConfig("edge", tier_index=1, start=1, token=TOKEN, max_body_bytes=CAP)
    return create_app(config, make_net(), NAME)


def _valid(request_id: str = "ok") -> tuple[RequestHeader, bytes]:
    """Device ran block 0; this tier (hosting 1:4) runs the rest. fp32 at cut 1: 3136 B."""
    return device_request(make_net(), make_input(), (0, 1, 4), ("fp32", None), request_id)


def _header_obj() -> tuple[dict, bytes]:
    header, payload = _valid("bad")
    return json.loads(header.to_json_bytes()), payload


def _changed(**changes: object) -> bytes:
    obj, payload = _header_obj()
    return frame(json.dumps({**obj, **changes}).encode(), payload)


def _tensor(**changes: object) -> bytes:
    obj, payload = _header_obj()
    return frame(json.dumps({**obj, "tensor": {**obj["tensor"], **changes}}).encode(), payload)


def _without(key: str) -> bytes:
    obj, payload = _header_obj()
    del obj[key]
    return frame(json.dumps(obj).encode(), payload)


def _payload(payload: bytes) -> bytes:
    obj, _ = _header_obj()
    return frame(json.dumps(obj).encode(), payload)


def _random(size: int) -> bytes:
    g = torch.Generator().manual_seed(1000 + size)
    return bytes(torch.randint(0, 256, (size,), generator=g).to(torch.uint8).tolist())


@dataclass(frozen=True)
class Case:
    body: bytes
    status: int
    field: str | None
    path: str = INFER
    headers: tuple[tuple[str, str], ...] = tuple(AUTH.items())


VALID_BODY = encode_request(*_valid("bad"))
NAN_PAYLOAD = struct.pack("<f", math.nan) * 784

CASES: dict[str, Case] = {
    "no token": Case(VALID_BODY, 401, "authorization", headers=()),
    "wrong token": Case(VALID_BODY, 401, "authorization", headers=(("authorization", "Bearer x"),)),
    "not bearer": Case(VALID_BODY, 401, "authorization", headers=(("authorization", TOKEN),)),
    "unknown model in url": Case(VALID_BODY, 404, "model", path="/v2/models/vgg/infer"),
    "unknown model in header": Case(_changed(model="vgg"), 404, "model"),
    "wrong weights hash": Case(_changed(weights="deadbeefdeadbeef"), 409, "weights"),
    "block out of range": Case(
        _changed(next_block=0, plan={"boundaries": [0, 0, 4], "codecs": ["fp32", None]}),
        422,
        "next_block",
    ),
    "cut not the plan's": Case(_changed(next_block=2), 422, "next_block"),
    "tier mismatch": Case(
        _changed(tier=2, plan={"boundaries": [0, 1, 1, 4], "codecs": ["fp32", None, None]}),
        422,
        "tier",
    ),
    "plan inconsistent": Case(
        _changed(plan={"boundaries": [0, 1, 3], "codecs": ["fp32", None]}), 422, "plan"
    ),
    "plan unknown codec": Case(
        _changed(plan={"boundaries": [0, 1, 4], "codecs": ["gzip", None]}), 422, "plan"
    ),
    "dtype mismatch": Case(_tensor(dtype="float64"), 422, "tensor.dtype"),
    "shape mismatch": Case(_tensor(shape=[1, 4, 14, 13]), 422, "tensor.shape"),
    "unknown codec": Case(_tensor(codec="gzip"), 422, "tensor.codec"),
    "payload truncated": Case(_payload(bytes(3135)), 422, "payload"),
    "payload too long": Case(_payload(bytes(3137)), 422, "payload"),
    "payload not finite": Case(_payload(NAN_PAYLOAD), 422, "payload"),
    "body truncated in header": Case(VALID_BODY[:40], 400, "body"),
    "body truncated in prefix": Case(VALID_BODY[:6], 400, "body"),
    "empty body": Case(b"", 400, "body"),
    "oversized body": Case(VALID_BODY + bytes(CAP), 413, "body"),
    "huge header": Case(frame(b"{}", hlen=MAX_HEADER_BYTES + 1), 413, "header"),
    "garbage": Case(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "magic"),
    "wrong protocol": Case(_changed(protocol=2), 400, "protocol"),
    "bad json": Case(frame(b'{"model": "tiny-cnn",,}'), 400, "header"),
    "json not an object": Case(frame(b'"hello"'), 400, None),
    "missing key": Case(_without("weights"), 400, "weights"),
    "extra key": Case(_changed(zzz=1), 400, "zzz"),
    "ill-typed key": Case(_changed(next_block="1"), 400, "next_block"),
    "bad request id": Case(_changed(request_id="../etc/passwd"), 400, "request_id"),
    "tensor ill-typed": Case(_tensor(shape="big"), 400, "tensor"),
    **{
        f"random bytes {n}": Case(_random(n), 400 if n <= CAP else 413, None)
        for n in (1, 9, 300, 4096, 20_000)
    },
}


async def _post(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    return await client.post(case.path, content=case.body, headers=dict(case.headers))


def _check(r: httpx.Response, case: Case) -> None:
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()
    assert set(err) == {"error", "field"}
    assert isinstance(err["error"], str) and len(err["error"]) > 5
    if case.field is not None:
        assert err["field"] == case.field, err


async def _still_serves(client: httpx.AsyncClient) -> None:
    ready = await client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    header, payload = _valid()
    r = await client.post(INFER, content=encode_request(header, payload), headers=AUTH)
    assert r.status_code == 200, r.text
    assert decode_response(r.content).path[-1] == (3, 1, True)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_gets_its_status_and_server_keeps_serving(name: str) -> None:
    case = CASES[name]

    async def go() -> None:
        async with asgi_client(_app()) as client:
            _check(await _post(client, case), case)
            await _still_serves(client)

    asyncio.run(go())


def test_all_bad_requests_in_a_row_then_a_valid_one() -> None:
    async def go() -> None:
        async with asgi_client(_app()) as client:
            for name, case in CASES.items():
                _check(await _post(client, case), case)
                ready = await client.get("/v2/health/ready")
                assert ready.status_code == 200, name
            await _still_serves(client)
            text = (await client.get("/metrics", headers=AUTH)).text
        errors = sum(
            metric_value(text, "collabinfer_server_errors_total", reason=r)
            for r in ("bad_request", "unauthorized", "unknown_model", "conflict",
                      "too_large", "unprocessable")
        )  # fmt: skip
        assert errors == len(CASES)
        assert metric_value(text, "collabinfer_server_requests_total", code="200") == 1
        assert metric_value(text, "collabinfer_server_requests_total", code="401") == 3
        assert metric_value(text, "collabinfer_server_computations_total") == 2  # valid + NaN

    asyncio.run(go())


def test_401_carries_a_challenge_and_metadata_metrics_docs_need_the_token() -> None:
    async def go() -> None:
        async with asgi_client(_app()) as client:
            r = await client.post(INFER, content=VALID_BODY)
            assert r.headers["www-authenticate"] == "Bearer"
            assert (await client.get(f"/v2/models/{NAME}")).status_code == 401
            assert (await client.get("/v2/models")).status_code == 401
            assert (await client.get(f"/v2/models/{NAME}", headers=AUTH)).status_code == 200
            missing = await client.get("/v2/models/vgg", headers=AUTH)
            assert missing.status_code == 404 and missing.json()["field"] == "model"
            for path in ("/metrics", "/openapi.json", "/docs"):  # behind the token too
                assert (await client.get(path)).status_code == 401, path
                assert (await client.get(path, headers=AUTH)).status_code == 200, path
            assert (await client.get("/v2/health/live")).status_code == 200

    asyncio.run(go())
