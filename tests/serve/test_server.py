"""The tier server: plan following, forwarding, fallback, retries, batching, metrics, CLI.

Unit tests run the apps in-process (``httpx.ASGITransport``; an edge reaches
its cloud through one too). One integration test puts two servers on real
loopback sockets under uvicorn and runs device -> edge -> cloud.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager

import httpx
import pytest
import torch
import typer
from fastapi import FastAPI
from torch import nn
from typer.testing import CliRunner

from collabinfer.cli.serve import serve
from collabinfer.codec import get_codec, list_codecs
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.runtime.state import PathEntry, StepKind
from collabinfer.serve.batching import BlockBatcher
from collabinfer.serve.config import parse_blocks
from collabinfer.serve.server import ServerConfig, create_app, load_served_model, serve_in_thread
from collabinfer.serve.wire import (
    RequestHeader,
    ResponseBody,
    WirePlan,
    decode_request,
    decode_response,
    encode_request,
)

from .conftest import synthetic_profile
from .tier_helpers import (
    INFER,
    NAME,
    asgi_client,
    closed_port,
    device_request,
    make_input,
    make_net,
    metric,
    reference,
)

TOKEN = "tok-123"
AUTH = {"authorization": f"Bearer {TOKEN}"}


async def _infer(
    client: httpx.AsyncClient, header: RequestHeader, payload: bytes
) -> tuple[httpx.Response, ResponseBody | None]:
    r = await client.post(INFER, content=encode_request(header, payload))
    return r, decode_response(r.content) if r.status_code == 200 else None


async def _ok(client: httpx.AsyncClient, header: RequestHeader, payload: bytes) -> ResponseBody:
    r, body = await _infer(client, header, payload)
    assert r.status_code == 200, r.text
    assert body is not None
    return body


async def _metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


class Capture(httpx.AsyncBaseTransport):
    """Delegates to another transport and keeps every request body it carried."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        return await self.inner.handle_async_request(request)


@asynccontextmanager
async def edge_and_cloud(
    edge_stop: int | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Capture]]:
    """An edge (tier 1, all blocks) whose next tier is a cloud (tier 2, blocks 2:)."""
    net = make_net()
    cloud = create_app(ServerConfig("cloud", 2, start=2, token=TOKEN), net, NAME)
    hop = Capture(httpx.ASGITransport(app=cloud))
    edge_cfg = ServerConfig("edge", 1, stop=edge_stop, next_url="http://cloud", token=TOKEN)
    edge = create_app(edge_cfg, net, NAME, next_transport=hop)
    async with asgi_client(cloud, TOKEN) as cloud_client, asgi_client(edge, TOKEN) as edge_client:
        yield edge_client, cloud_client, hop


def _edge_with_next(transport: httpx.AsyncBaseTransport | None, **config: object) -> FastAPI:
    cfg = ServerConfig("edge", 1, next_url=f"http://127.0.0.1:{closed_port()}", **config)  # type: ignore[arg-type]
    return create_app(cfg, make_net(), NAME, next_transport=transport)


# --- metadata, health, metrics --------------------------------------------------------------


def test_metadata_describes_blocks_weights_codecs_cuts_and_emulation() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1, start=1, speed_factor=2.5), net, NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            assert (await client.get("/v2/health/live")).json() == {"live": True}
            assert (await client.get("/v2/models")).json() == {"models": [NAME]}
            meta = (await client.get(f"/v2/models/{NAME}")).json()
        assert meta["blocks"] == {"start": 1, "stop": 4} and meta["num_blocks"] == 4
        assert meta["weights"] == weights_hash(net)
        assert meta["codecs"] == list_codecs()
        assert meta["cut_shapes"] == [list(c.shape) for c in net.cut_points()]
        assert meta["tier"]["speed_factor"] == 2.5
        assert "emulated 2.5x slower" in meta["tier"]["emulation"]

    asyncio.run(go())


def test_metrics_are_exported_and_move() -> None:
    app = create_app(ServerConfig("cloud", 1), make_net(), NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            before = await _metrics(client)
            header, payload = device_request(make_net(), make_input(), request_id="m1")
            await _ok(client, header, payload)
            await client.post(INFER, content=b"junk")
            after = await _metrics(client)
        for name in (
            "collabinfer_server_requests_total",
            "collabinfer_server_request_seconds",
            "collabinfer_server_bytes_in_total",
            "collabinfer_server_bytes_out_total",
            "collabinfer_server_errors_total",
            "collabinfer_server_queue_depth",
            "collabinfer_server_batch_size",
            "collabinfer_server_computations_total",
            "collabinfer_server_cache_hits_total",
            "collabinfer_server_fallbacks_total",
        ):
            assert f"# TYPE {name.removesuffix('_total')}" in after, name
        assert metric(before, "collabinfer_server_requests_total", code="200") == 0
        assert metric(after, "collabinfer_server_requests_total", code="200") == 1
        assert metric(after, "collabinfer_server_requests_total", code="400") == 1
        assert metric(after, "collabinfer_server_errors_total", reason="bad_request") == 1
        body_len = len(encode_request(header, payload)) + len(b"junk")
        assert metric(after, "collabinfer_server_bytes_in_total") == body_len
        assert metric(after, "collabinfer_server_request_seconds_count") == 2
        # one observation per block call: the good request ran the edge's 4 blocks
        assert metric(after, "collabinfer_server_batch_size_count") == 4
        assert metric(after, "collabinfer_server_queue_depth") == 0

    asyncio.run(go())


# --- following the plan ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boundaries", "codecs"),
    [((0, 0, 4), ("fp32", None)), ((0, 2, 4), ("fp32", None)), ((0, 3, 4), ("int8", None))],
)
def test_one_server_finishes_the_plan(boundaries: tuple[int, ...], codecs: tuple) -> None:
    net, x = make_net(), make_input()
    app = create_app(ServerConfig("edge", 1), net, NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            body = await _ok(client, *device_request(net, x, boundaries, codecs))
        want = reference(net, x, boundaries, codecs)
        assert torch.allclose(body.output_tensor(), want, atol=1e-6, rtol=0)
        if codecs[0] == "fp32":
            with torch.inference_mode():
                assert torch.equal(body.output_tensor(), net(x))
        assert body.path[-1] == PathEntry(3, 1, True) and not body.fell_back
        assert body.prediction == tuple(want.argmax(1).tolist())
        assert [s.block for s in body.steps if s.kind == StepKind.COMPUTE] == list(
            range(boundaries[1], 4)
        )

    asyncio.run(go())


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_edge_forwards_at_the_cut_to_the_cloud(codec: str) -> None:
    net, x = make_net(), make_input(seed=5)
    plan, codecs = (0, 1, 2, 4), (codec, codec, None)

    async def go() -> None:
        async with edge_and_cloud() as (edge, cloud, hop):
            body = await _ok(edge, *device_request(net, x, plan, codecs))
            edge_m, cloud_m = await _metrics(edge), await _metrics(cloud)
        want = reference(net, x, plan, codecs)
        if codec == "fp32":
            with torch.inference_mode():
                assert torch.equal(body.output_tensor(), net(x))
        assert torch.allclose(body.output_tensor(), want, atol=1e-5, rtol=0)
        assert body.tier == 2 and not body.fell_back
        assert [tuple(p) for p in body.path] == [(0, 0, True), (1, 1, True), (2, 2, True),
                                                 (3, 2, True)]  # fmt: skip
        sent, _ = decode_request(hop.bodies[0], 2**20)
        assert (sent.tier, sent.next_block, sent.tensor.codec) == (2, 2, codec)
        transfer = [s for s in body.steps if s.kind == StepKind.TRANSFER]
        assert len(transfer) == 1 and transfer[0].nbytes == len(hop.bodies[0])
        assert {s.tier for s in body.steps} == {1, 2}
        assert metric(edge_m, "collabinfer_server_bytes_out_total") == len(hop.bodies[0])
        assert metric(cloud_m, "collabinfer_server_bytes_in_total") == len(hop.bodies[0])

    asyncio.run(go())


def test_relay_forwards_the_bytes_unchanged() -> None:
    net, x = make_net(), make_input(seed=6)
    plan, codecs = (0, 2, 2, 4), ("int8", "fp32", None)  # tier 1 runs nothing

    async def go() -> None:
        async with edge_and_cloud() as (edge, _, hop):
            header, payload = device_request(net, x, plan, codecs)
            body = await _ok(edge, header, payload)
        sent, sent_payload = decode_request(hop.bodies[0], 2**20)
        assert sent_payload == payload and sent.tensor == header.tensor
        assert not [s for s in body.steps if s.tier == 1 and s.kind != StepKind.TRANSFER]
        want = reference(net, x, plan, codecs)
        assert torch.allclose(body.output_tensor(), want, atol=1e-6, rtol=0)

    asyncio.run(go())


# --- failure of the next tier ---------------------------------------------------------------


def _fell_back(body: ResponseBody, cut: int) -> None:
    assert body.fell_back and body.tier == 1
    assert [s.kind for s in body.steps].count(StepKind.FALLBACK) == 1
    assert [p.block for p in body.path if p.tier == 1] == list(range(cut, 4))


def test_edge_finishes_when_next_is_unreachable() -> None:
    net, x = make_net(), make_input(seed=7)
    app = _edge_with_next(None)  # a real client to a loopback port nobody listens on

    async def go() -> None:
        async with asgi_client(app) as client:
            body = await _ok(client, *device_request(net, x, (0, 1, 2, 4), ("fp32", "int8", None)))
            text = await _metrics(client)
        _fell_back(body, 1)
        with torch.inference_mode():  # the edge kept its exact tensor: no int8 loss
            assert torch.equal(body.output_tensor(), net(x))
        assert metric(text, "collabinfer_server_fallbacks_total") == 1

    asyncio.run(go())


def _raise_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("too slow", request=request)


@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(503, json={"error": "overloaded", "field": None}),
        lambda r: httpx.Response(200, content=b"not a response"),
        _raise_timeout,
    ],
    ids=["5xx", "garbage", "timeout"],
)
def test_edge_falls_back_on_5xx_garbage_and_timeout(handler) -> None:  # type: ignore[no-untyped-def]
    net, x = make_net(), make_input()
    app = _edge_with_next(httpx.MockTransport(handler))

    async def go() -> None:
        async with asgi_client(app) as client:
            body = await _ok(client, *device_request(net, x, (0, 0, 2, 4), ("u8", "fp16", None)))
        _fell_back(body, 0)

    asyncio.run(go())


def test_deadline_too_close_to_forward_falls_back_and_a_spent_one_is_refused() -> None:
    """3 ms cover this tier's block but not the forward's margin: the edge finishes
    the request itself without posting. 0 ms cover nothing: refused (504) at once."""
    net, x = make_net(), make_input()
    posted: list[int] = []
    app = _edge_with_next(httpx.MockTransport(lambda r: posted.append(1) or httpx.Response(500)))

    async def go() -> None:
        async with asgi_client(app) as client:
            header, payload = device_request(net, x, (0, 1, 2, 4), ("fp32", "fp32", None), "d1", 3)
            _fell_back(await _ok(client, header, payload), 1)
            header, payload = device_request(net, x, (0, 1, 2, 4), ("fp32", "fp32", None), "d2", 0)
            r, _ = await _infer(client, header, payload)
            assert r.status_code == 504 and r.json()["field"] == "deadline_ms"

    asyncio.run(go())
    assert posted == []


@pytest.mark.parametrize(
    ("transport", "status"),
    [(None, 502), (httpx.MockTransport(_raise_timeout), 504)],
    ids=["unreachable", "timeout"],
)
def test_no_fallback_without_the_remaining_blocks(
    transport: httpx.AsyncBaseTransport | None, status: int
) -> None:
    net, x = make_net(), make_input()
    app = _edge_with_next(transport, stop=2)

    async def go() -> None:
        async with asgi_client(app) as client:
            r, _ = await _infer(client, *device_request(net, x, (0, 1, 2, 4), ("fp32",) * 3))
            assert r.status_code == status and r.json()["field"] == "next"
            assert (await client.get("/v2/health/ready")).status_code == 200

    asyncio.run(go())


def test_a_4xx_from_next_is_a_fallback_and_opens_the_breaker() -> None:
    """A refusal from the next tier is no answer: this tier (hosting the rest)
    finishes the request, and the next one is not asked again during the back-off."""
    posts: list[str] = []

    def refuse(r: httpx.Request) -> httpx.Response:
        posts.append(r.url.path)
        return httpx.Response(409, json={"error": "weights"})

    app = _edge_with_next(httpx.MockTransport(refuse))

    async def go() -> None:
        async with asgi_client(app) as client:
            for rid in ("a", "b"):
                header, payload = device_request(
                    make_net(), make_input(), (0, 1, 2, 4), ("fp32",) * 3, rid
                )
                _fell_back(await _ok(client, header, payload), 1)

    asyncio.run(go())
    assert len(posts) == 1  # the second request fell back without a post


# --- retries --------------------------------------------------------------------------------


def test_retried_request_id_is_answered_from_the_cache() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1, cache_size=2), net, NAME)

    async def go() -> None:
        async with asgi_client(app) as client:
            header, payload = device_request(net, make_input(), request_id="same")
            first = await client.post(INFER, content=encode_request(header, payload))
            again = await client.post(INFER, content=encode_request(header, payload))
            assert first.status_code == again.status_code == 200
            assert first.content == again.content
            text = await _metrics(client)
            assert metric(text, "collabinfer_server_computations_total") == 1
            assert metric(text, "collabinfer_server_cache_hits_total") == 1
            # concurrent duplicates: the second waits for the first, never computes
            h2, p2 = device_request(net, make_input(seed=2), request_id="twin")
            a, b = await asyncio.gather(_ok(client, h2, p2), _ok(client, h2, p2))
            assert a == b
            text = await _metrics(client)
            assert metric(text, "collabinfer_server_computations_total") == 2
            # LRU: with room for 2 answers, the oldest id is forgotten and computed again
            for rid in ("c", "d", "same"):
                await _ok(client, *device_request(net, make_input(), request_id=rid))
            text = await _metrics(client)
            assert metric(text, "collabinfer_server_computations_total") == 5

    asyncio.run(go())


# --- batching and concurrency ---------------------------------------------------------------


def test_a_lone_request_does_not_wait_for_the_batch_window() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1, batch_window_ms=2000, max_batch=8), net, NAME)

    async def go() -> float:
        async with asgi_client(app) as client:
            t0 = time.perf_counter()
            await _ok(client, *device_request(net, make_input(seed=3), (0, 0, 4), ("fp32", None)))
            return time.perf_counter() - t0

    assert asyncio.run(go()) < 2.0  # it did not wait out the 2 s window


def test_batching_equals_running_alone_and_batches_form(monkeypatch: pytest.MonkeyPatch) -> None:
    real = BlockBatcher._compute

    def slow(self, k, group):  # 30 ms per block call: later requests arrive while one runs
        time.sleep(0.03)
        return real(self, k, group)

    monkeypatch.setattr(BlockBatcher, "_compute", slow)
    net = make_net()
    app = create_app(ServerConfig("edge", 1, batch_window_ms=100, max_batch=4), net, NAME)
    xs = [make_input(seed=10 + i) for i in range(6)]
    cuts = [0, 0, 0, 0, 2, 2]  # two cut groups: only the same block and shape share a call

    async def go() -> list[ResponseBody]:
        async with asgi_client(app) as client:
            jobs = [
                _ok(client, *device_request(net, x, (0, c, 4), ("fp32", None), f"b{i}"))
                for i, (x, c) in enumerate(zip(xs, cuts, strict=True))
            ]
            bodies = await asyncio.gather(*jobs)
            text = await _metrics(client)
        # every request's every block was run once: 4 x 4 blocks + 2 x 2 blocks
        assert metric(text, "collabinfer_server_batch_size_sum") == 20
        # ... in fewer calls than that: concurrent requests shared block calls
        assert metric(text, "collabinfer_server_batch_size_count") < 20
        return list(bodies)

    bodies = asyncio.run(go())
    with torch.inference_mode():
        for x, body in zip(xs, bodies, strict=True):
            assert torch.allclose(body.output_tensor(), net(x), atol=1e-5, rtol=0)


class Sleepy(nn.Module):
    """A block that blocks its thread for ``delay`` seconds (set after the app is built)."""

    delay = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return x


def test_health_answers_while_a_request_computes() -> None:
    sleepy = Sleepy()
    net = BlockNet([("sleep", sleepy), ("flat", nn.Flatten())], input_shape=(2,))
    app = create_app(ServerConfig("edge", 1), net, "sleepy")
    enc = get_codec("fp32").encode(torch.ones(1, 2))
    header = RequestHeader("sleepy", weights_hash(net), "s1", 1, 0, enc.header,
                           WirePlan((0, 0, 2), ("fp32", None)))  # fmt: skip
    sleepy.delay = 0.4

    async def go() -> None:
        async with asgi_client(app) as client:
            job = asyncio.create_task(
                client.post("/v2/models/sleepy/infer", content=encode_request(header, enc.payload))
            )
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            assert (await client.get("/v2/health/ready")).status_code == 200
            assert time.perf_counter() - t0 < sleepy.delay and not job.done()
            depth = metric(await _metrics(client), "collabinfer_server_queue_depth")
            assert depth == 1
            assert (await job).status_code == 200

    asyncio.run(go())


def test_an_emulated_server_is_charged_its_profile_times_its_factor_and_sleeps() -> None:
    net = make_net()
    prof = synthetic_profile(net, NAME, [3.0, 1.0, 1.0, 0.5])
    app = create_app(ServerConfig("edge", 1, speed_factor=4.0), net, NAME, profile=prof)

    async def go() -> ResponseBody:
        async with asgi_client(app) as client:
            return await _ok(client, *device_request(net, make_input()))

    body = asyncio.run(go())
    compute = [s for s in body.steps if s.kind is StepKind.COMPUTE]
    assert [s.ms for s in compute] == pytest.approx([4.0 * t for t in (3.0, 1.0, 1.0, 0.5)])
    (decode,) = [s for s in body.steps if s.kind is StepKind.DECODE]
    assert decode.ms == pytest.approx(4.0 * prof.cuts[0].codecs["fp32"].decode_ms)
    charged = sum(s.ms for s in compute) + decode.ms
    assert body.server_ms >= charged * 0.9  # what was charged beyond the work was slept


def test_an_emulated_server_without_a_profile_profiles_itself_at_startup() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1, speed_factor=3.0), net, NAME)

    async def go() -> ResponseBody:
        async with asgi_client(app) as client:
            return await _ok(client, *device_request(net, make_input()))

    body = asyncio.run(go())
    prof = app.state.tier_server.profile
    assert prof is not None and prof.num_blocks == net.num_blocks
    compute = [s for s in body.steps if s.kind is StepKind.COMPUTE]
    assert [s.ms for s in compute] == pytest.approx([3.0 * b.time_ms for b in prof.blocks])


# --- CLI and model loading ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "want"),
    [(None, (0, None)), ("", (0, None)), (":", (0, None)), ("3:", (3, None)), (":5", (0, 5)),
     ("2:7", (2, 7)), (" 1 : 3 ", (1, 3))],
)  # fmt: skip
def test_parse_blocks_like_a_slice(spec: str | None, want: tuple[int, int | None]) -> None:
    assert parse_blocks(spec) == want


@pytest.mark.parametrize("spec", ["5:2", "3:3", "-1:", "a:b", "1:2:3", "4"])
def test_parse_blocks_refuses_bad_ranges(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_blocks(spec)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve)
    return app


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--blocks", "5:2"], "--blocks"),
        (["--blocks", "0:9", "--untrained"], "exceed"),
        (["--next", "ftp://x", "--untrained"], "--next"),
        (["--speed-factor", "0.5", "--untrained"], "speed_factor"),
        (["--model", "vgg-99", "--untrained"], "unknown model"),  # the second model
    ],
)
def test_serve_cli_exits_2_with_a_message(args: list[str], needle: str) -> None:
    base = ["--tier", "edge", "--model", NAME]
    result = CliRunner().invoke(_cli(), base + args)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


def test_serve_cli_without_checkpoint_says_to_train(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLLABINFER_DATA", str(tmp_path))  # no dataset: fails fast
    monkeypatch.setenv("COLLABINFER_CACHE", str(tmp_path))
    result = CliRunner().invoke(_cli(), ["--tier", "edge", "--model", "fmnist-small"])
    assert result.exit_code == 2
    assert "collabinfer train --model fmnist-small" in " ".join(result.output.split())


def test_untrained_models_are_seeded_so_tiers_agree() -> None:
    a, b = load_served_model(NAME, untrained=True), load_served_model(NAME, untrained=True)
    assert weights_hash(a) == weights_hash(b)
    assert weights_hash(load_served_model(NAME, untrained=True, seed=1)) != weights_hash(a)


# --- real sockets ---------------------------------------------------------------------------


def test_device_edge_cloud_over_real_sockets() -> None:
    """Two uvicorn servers on loopback: the edge hosts all blocks and forwards at the
    plan's cut to the cloud; then the cloud goes away and the same edge finishes alone."""
    net, x = make_net(), make_input(seed=3)
    with ExitStack() as stack:
        cloud_stack = stack.enter_context(ExitStack())
        cloud = create_app(ServerConfig("cloud", 2, start=2, token=TOKEN), make_net(), NAME)
        cloud_url = cloud_stack.enter_context(serve_in_thread(cloud))
        edge_cfg = ServerConfig("edge", 1, next_url=cloud_url, token=TOKEN, next_timeout_s=5)
        edge_url = stack.enter_context(serve_in_thread(create_app(edge_cfg, make_net(), NAME)))
        client = stack.enter_context(httpx.Client(base_url=edge_url, headers=AUTH, trust_env=False))

        def post(plan: tuple[int, ...], codecs: tuple, rid: str) -> ResponseBody:
            r = client.post(
                INFER, content=encode_request(*device_request(net, x, plan, codecs, rid))
            )
            assert r.status_code == 200, r.text
            return decode_response(r.content)

        fp32 = post((0, 1, 2, 4), ("fp32", "fp32", None), "fp32")
        int8 = post((0, 1, 3, 4), ("int8", "int8", None), "int8")
        edge_out = metric(client.get("/metrics").text, "collabinfer_server_bytes_out_total")
        cloud_in = metric(
            httpx.get(f"{cloud_url}/metrics", headers=AUTH, trust_env=False).text,
            "collabinfer_server_bytes_in_total",
        )
        cloud_stack.close()  # the cloud goes away; the edge's keep-alive pool must cope
        late = post((0, 1, 2, 4), ("fp32", "fp32", None), "late")
    with torch.inference_mode():
        full = net(x)
    assert torch.equal(fp32.output_tensor(), full)
    want = reference(net, x, (0, 1, 3, 4), ("int8", "int8", None))
    assert torch.allclose(int8.output_tensor(), want, atol=1e-5, rtol=0)
    assert fp32.tier == int8.tier == 2 and not fp32.fell_back and not int8.fell_back
    assert [p.tier for p in fp32.path] == [0, 1, 2, 2]
    assert edge_out == cloud_in > 0
    assert late.fell_back and late.tier == 1 and torch.equal(late.output_tensor(), full)
