"""Bounded work per request, idempotency that cannot answer wrong, checked answers, a breaker.

Each test pins one class of the hostile-client review (issue "A tier server you
can put on a network"): the amplification bomb and the compute budget, load
shedding, the request-id cache keyed by body digest, answers from the next tier
validated like requests, 4xx where a 500 used to be, and a hung next tier that
costs one deadline, not one per request. In-process (ASGI), no sockets; the
connection-level limits are in ``test_server_connections.py``.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
import torch
from fastapi import FastAPI

from collabinfer.codec import get_codec
from collabinfer.serve import ServerConfig, create_app
from collabinfer.serve.wire import (
    RequestHeader,
    ResponseBody,
    WirePlan,
    decode_response,
    encode_request,
    encode_response,
)

from .conftest import synthetic_profile
from .tier_helpers import (
    INFER,
    NAME,
    asgi_client,
    closed_port,
    device_request,
    frame,
    make_input,
    make_net,
    metric,
)


async def _post(client: httpx.AsyncClient, header: RequestHeader, payload: bytes) -> httpx.Response:
    return await client.post(INFER, content=encode_request(header, payload))


def _raw_request(rows: int, codec: str = "int8+zstd") -> tuple[RequestHeader, bytes]:
    """``rows`` images of zeros at cut 0 under ``codec``: tiny on the wire, huge decoded."""
    enc = get_codec(codec).encode(torch.zeros(1, 1, 28, 28))
    shape = (rows, 1, 28, 28)
    header, _ = device_request(make_net(), make_input(), (0, 0, 4), (codec, None), "bomb")
    tensor = type(enc.header)(enc.header.codec, enc.header.dtype, shape, enc.header.params)
    return RequestHeader(**{**header.__dict__, "tensor": tensor}), enc.payload


def _metrics_of(app: FastAPI) -> str:
    return app.state.tier_server.metrics.render().decode()


# --- 1. work bounded before any allocation or compute ------------------------------------------


def test_a_batch_bomb_is_refused_from_the_header_before_decoding() -> None:
    """The review's case: a few-byte int8+zstd payload declaring millions of rows."""
    app = create_app(ServerConfig("edge", 1, max_rows=8), make_net(), NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            for rows in (9, 300_000):  # 300,000 x 784 elements: 940 MB decoded
                header, payload = _raw_request(rows)
                assert len(encode_request(header, payload)) < 2_000
                r = await _post(client, header, payload)
                assert r.status_code == 413 and r.json()["field"] == "tensor.shape", r.text
                assert "at most 8" in r.json()["error"]
            header, payload = device_request(make_net(), make_input(batch=8), request_id="eight")
            assert (await _post(client, header, payload)).status_code == 200
            assert (await client.get("/v2/health/ready")).status_code == 200

    asyncio.run(go())
    assert metric(_metrics_of(app), "collabinfer_server_computations_total") == 1


def test_decoded_size_and_compute_estimate_are_capped() -> None:
    net = make_net()
    small = create_app(ServerConfig("edge", 1, max_decoded_bytes=4 * 784), net, NAME)
    # an emulated tier charged 100 ms per block and row: 4 rows x 4 blocks = 1.6 s > 1 s
    slow_profile = synthetic_profile(net, NAME, [100.0] * 4)
    budget = create_app(
        ServerConfig("edge", 1, max_compute_ms=1000.0, speed_factor=1.0),
        net,
        NAME,
        profile=slow_profile,
    )

    async def go() -> None:
        async with asgi_client(small) as client:
            two = device_request(net, make_input(batch=2), request_id="two")
            r = await _post(client, *two)
            assert r.status_code == 413 and "decodes to 6272 bytes" in r.json()["error"]
            assert (await _post(client, *device_request(net, make_input()))).status_code == 200
        async with asgi_client(budget) as client:
            r = await _post(client, *device_request(net, make_input(batch=4), request_id="four"))
            assert r.status_code == 413 and "compute" in r.json()["error"], r.text
            r = await _post(client, *device_request(net, make_input(batch=2), request_id="two"))
            assert r.status_code == 200  # 800 ms: within the budget

    asyncio.run(go())


def test_a_deadline_the_compute_cannot_meet_is_refused_at_once() -> None:
    """Estimated 400 ms of compute against a 50 ms deadline: 504 without computing."""
    net = make_net()
    profile = synthetic_profile(net, NAME, [100.0] * 4)
    app = create_app(ServerConfig("edge", 1), net, NAME, profile=profile)

    async def go() -> None:
        async with asgi_client(app) as client:
            header, payload = device_request(net, make_input(), deadline_ms=50.0)
            r = await _post(client, header, payload)
            assert r.status_code == 504 and r.json()["field"] == "deadline_ms"

    asyncio.run(go())
    assert metric(_metrics_of(app), "collabinfer_server_computations_total") == 0


def test_requests_beyond_the_in_flight_cap_are_shed_with_retry_after() -> None:
    """One request sleeps its emulated 400 ms; the next one is answered 503 at once."""
    net = make_net()
    profile = synthetic_profile(net, NAME, [50.0] * 4)  # x factor 2: 400 ms, slept
    app = create_app(ServerConfig("edge", 1, max_in_flight=1, speed_factor=2.0), net, NAME,
                     profile=profile)  # fmt: skip

    async def go() -> None:
        async with asgi_client(app) as client:
            first = asyncio.create_task(
                _post(client, *device_request(net, make_input(), request_id="a"))
            )
            while app.state.tier_server._in_flight == 0:
                await asyncio.sleep(0.001)
            shed = await _post(client, *device_request(net, make_input(), request_id="b"))
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
            assert (await first).status_code == 200
            assert (await client.get("/v2/health/ready")).status_code == 200

    asyncio.run(go())
    assert metric(_metrics_of(app), "collabinfer_server_errors_total", reason="overloaded") == 1


# --- 3. idempotency keyed by id and body digest ------------------------------------------------


def test_a_reused_request_id_with_another_body_is_a_409_never_the_first_answer() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1), net, NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            header, payload = device_request(net, make_input(seed=1), request_id="same")
            first = await _post(client, header, payload)
            assert first.status_code == 200
            # a retry may shorten the deadline: still the same request, from the cache
            retry = await _post(client, RequestHeader(**{**header.__dict__, "deadline_ms": 900.0}),
                                payload)  # fmt: skip
            assert retry.status_code == 200 and retry.content == first.content
            other = device_request(net, make_input(seed=2), request_id="same")
            two = device_request(net, make_input(seed=1, batch=2), request_id="same")
            nan = (header, torch.full((1, 1, 28, 28), math.nan).numpy().tobytes())
            for h, p in (other, two, nan):
                r = await _post(client, h, p)
                assert r.status_code == 409 and r.json()["field"] == "request_id", r.text
            fresh = (RequestHeader(**{**header.__dict__, "request_id": "fresh"}), nan[1])
            assert (await _post(client, *fresh)).status_code == 422  # validation still runs

    asyncio.run(go())
    text = _metrics_of(app)
    assert metric(text, "collabinfer_server_computations_total") == 2  # "same" and "fresh"
    assert metric(text, "collabinfer_server_cache_hits_total") == 1


# --- 4. answers from the next tier are checked like requests -----------------------------------


def _answer(rows: int, classes: int = 10, request_id: str = "r1", value: float = 0.5) -> bytes:
    logits = tuple(tuple(value for _ in range(classes)) for _ in range(rows))
    body = ResponseBody(request_id, 2, logits, (0,) * rows, (), (), 1.0, False)
    return encode_response(body)


HOSTILE_ANSWERS = {
    "not json": b"<html>oops</html>",
    "1e400 in the logits": _answer(1).replace(b"0.5", b"1e400", 1),
    "no rows": _answer(0),
    "200,000 rows": _answer(200_000, 1),
    "wrong classes": _answer(1, classes=3),
    "another request's answer": _answer(1, request_id="someone-else"),
    "missing keys": json.dumps({"request_id": "r1"}).encode(),
}


@pytest.mark.parametrize("body", list(HOSTILE_ANSWERS.values()), ids=list(HOSTILE_ANSWERS))
def test_a_bad_answer_from_the_next_tier_is_a_fallback_or_a_502(body: bytes) -> None:
    net = make_net()
    bad = httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    url = f"http://127.0.0.1:{closed_port()}"
    hosts_all = create_app(ServerConfig("edge", 1, next_url=url), net, NAME, next_transport=bad)
    relay_only = create_app(
        ServerConfig("edge", 1, stop=2, next_url=url), net, NAME, next_transport=bad
    )
    plan = (0, 1, 2, 4), ("fp32", "fp32", None)

    async def go() -> None:
        async with asgi_client(hosts_all) as client:
            r = await _post(client, *device_request(net, make_input(), *plan))
            assert r.status_code == 200
            answer = decode_response(r.content)
            assert answer.fell_back and answer.tier == 1 and len(answer.output) == 1
        async with asgi_client(relay_only) as client:
            r = await _post(client, *device_request(net, make_input(), *plan))
            assert r.status_code == 502 and r.json()["field"] == "next", r.text

    asyncio.run(go())


# --- 5. 4xx where a 500 was ---------------------------------------------------------------------


def _header_json(**changes: object) -> bytes:
    header, _ = device_request(make_net(), make_input(), (0, 1, 4), ("fp32", None), "x")
    obj = {**json.loads(header.to_json_bytes()), **changes}
    return json.dumps(obj).encode()


def test_what_used_to_be_a_500_is_a_4xx_that_encodes() -> None:
    net = make_net()
    header, payload = device_request(net, make_input(), (0, 1, 4), ("fp32", None), "x")
    base = json.loads(header.to_json_bytes())
    png_at_a_feature_cut = {**base, "tensor": {**base["tensor"], "codec": "png"}}
    png_in_the_plan = {
        **base,
        "plan": {"boundaries": [0, 1, 2, 4], "codecs": ["fp32", "png", None]},
    }
    cases = {
        "image codec at a feature cut": (png_at_a_feature_cut, 422, "tensor.codec"),
        "image codec planned at a feature cut": (png_in_the_plan, 422, "plan"),
        "400-digit params": ({**base, "tensor": {**base["tensor"], "params": [10**400]}}, 400,
                             "tensor"),
        "400-digit deadline": ({**base, "deadline_ms": 10**400}, 400, "deadline_ms"),
        "lone surrogate in weights": ({**base, "weights": "\ud800"}, 400, "header"),
        "lone surrogate in a key": ({**base, "\udfff": 1}, 400, "header"),
    }  # fmt: skip
    app = create_app(ServerConfig("edge", 1, start=1), net, NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            for name, (obj, status, field) in cases.items():
                r = await client.post(INFER, content=frame(json.dumps(obj).encode(), payload))
                assert (r.status_code, r.json()["field"]) == (status, field), (name, r.text)
                r.content.decode("ascii")  # the reply is ASCII JSON, whatever it echoes
            assert (await _post(client, header, payload)).status_code == 200

    asyncio.run(go())
    text = _metrics_of(app)
    assert metric(text, "collabinfer_server_computations_total") == 1  # refused before blocks
    assert metric(text, "collabinfer_server_requests_total", code="500") == 0
    assert metric(text, "collabinfer_server_requests_total", code="400") == 4
    assert metric(text, "collabinfer_server_requests_total", code="422") == 2


# --- 6. a hung next tier costs one deadline ----------------------------------------------------


def test_a_hung_next_tier_costs_one_timeout_then_the_breaker_answers_at_once() -> None:
    """The cloud never answers: the first request waits out the forward timeout and
    falls back; the next ones fall back without a post while the breaker is open."""
    posts: list[float] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        posts.append(1.0)
        await asyncio.sleep(30)
        return httpx.Response(500)

    net = make_net()
    cfg = ServerConfig("edge", 1, next_url=f"http://127.0.0.1:{closed_port()}",
                       next_timeout_s=0.3, breaker_base_s=60.0, breaker_max_s=60.0)  # fmt: skip
    app = create_app(cfg, net, NAME, next_transport=httpx.MockTransport(hang))
    plan = (0, 1, 2, 4), ("fp32", "fp32", None)

    async def go() -> None:
        async with asgi_client(app) as client:
            for i in range(5):
                r = await _post(client, *device_request(net, make_input(), *plan, f"r{i}"))
                assert r.status_code == 200 and decode_response(r.content).fell_back

    asyncio.run(go())
    assert len(posts) == 1
    assert app.state.tier_server.breaker.state == "open"
    assert metric(_metrics_of(app), "collabinfer_server_fallbacks_total") == 5


def test_the_breaker_trial_probes_health_and_closes_when_the_tier_is_back() -> None:
    """After the back-off one request is the trial: health first, then the post."""
    up = [False]
    seen: list[str] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if not up[0]:
            raise httpx.ConnectError("down", request=request)
        if request.url.path.endswith("/ready"):
            return httpx.Response(200, json={"ready": True})
        return httpx.Response(200, content=_answer(1, request_id=_rid(request)))

    net = make_net()
    cfg = ServerConfig("edge", 1, next_url=f"http://127.0.0.1:{closed_port()}",
                       breaker_base_s=0.05, breaker_max_s=0.05)  # fmt: skip
    app = create_app(cfg, net, NAME, next_transport=httpx.MockTransport(cloud))
    plan = (0, 1, 2, 4), ("fp32", "fp32", None)

    async def go() -> None:
        async with asgi_client(app) as client:
            r = await _post(client, *device_request(net, make_input(), *plan, "down"))
            assert decode_response(r.content).fell_back
            up[0] = True
            await asyncio.sleep(0.1)  # the back-off passes
            r = await _post(client, *device_request(net, make_input(), *plan, "back"))
            assert not decode_response(r.content).fell_back

    asyncio.run(go())
    assert seen[-2:] == ["/v2/health/ready", f"/v2/models/{NAME}/infer"]
    assert app.state.tier_server.breaker.state == "closed"


def _rid(request: httpx.Request) -> str:
    body = request.content
    hlen = int.from_bytes(body[4:8], "big")
    return str(json.loads(body[8 : 8 + hlen])["request_id"])


# --- 7. failed authentication is throttled -----------------------------------------------------


def test_repeated_wrong_tokens_are_throttled_with_retry_after() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1, token="right", auth_failures=3), net, NAME)
    body = encode_request(*device_request(net, make_input()))

    async def go() -> None:
        async with asgi_client(app) as client:
            wrong = {"authorization": "Bearer wrong"}
            codes = [(await client.post(INFER, content=body, headers=wrong)).status_code
                     for _ in range(4)]  # fmt: skip
            assert codes == [401, 401, 401, 429]
            r = await client.post(INFER, content=body, headers={"authorization": "Bearer right"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # the address waits
            assert (await client.get("/v2/health/ready")).status_code == 200

    asyncio.run(go())


def test_the_openapi_schema_describes_the_binary_request_and_the_answer() -> None:
    app = create_app(ServerConfig("edge", 1), make_net(), NAME)

    async def go() -> dict:
        async with asgi_client(app) as client:
            return (await client.get("/openapi.json")).json()  # type: ignore[no-any-return]

    spec = asyncio.run(go())
    op = spec["paths"]["/v2/models/{name}/infer"]["post"]
    content = op["requestBody"]["content"]["application/octet-stream"]
    header, _ = device_request(make_net(), make_input())
    keys = set(json.loads(header.to_json_bytes()))
    assert set(content["x-collabinfer-header"]["required"]) == keys
    answer = json.loads(_answer(1))
    assert set(op["responses"]["200"]["content"]["application/json"]["schema"]["required"]) == set(
        answer
    )
    assert {"413", "409", "503", "429"} <= set(op["responses"])


def test_plan_codecs_unknown_to_an_image_cut_do_not_reach_the_blocks() -> None:
    """A 3-tier plan whose second hop would carry a feature cut as jpeg: 422 up front."""
    net = make_net()
    header, payload = device_request(net, make_input(), (0, 1, 2, 4), ("fp32", "jpeg", None))
    assert header.plan == WirePlan((0, 1, 2, 4), ("fp32", "jpeg", None))
    app = create_app(ServerConfig("edge", 1), net, NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            r = await _post(client, header, payload)
            assert r.status_code == 422 and r.json()["field"] == "plan", r.text

    asyncio.run(go())
    assert metric(_metrics_of(app), "collabinfer_server_computations_total") == 0
