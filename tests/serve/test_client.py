"""The device client against real tier servers on loopback sockets.

Plans are steered with synthetic profiles and frozen link estimates (see
``conftest.py``), so each test knows which tiers run which blocks.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time

import httpx
import pytest
import torch
from typer.testing import CliRunner

from collabinfer.codec import get_codec
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.planner import Planner
from collabinfer.runtime.breaker import CircuitBreaker
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.state import StepKind
from collabinfer.serve import ServerConfig, create_app, decode_request
from collabinfer.serve.client import ClientResult, DeviceClient, RunSummary
from collabinfer.topology.links import LinkProfile, wire_bytes
from collabinfer.topology.tiers import TierSpec

from .conftest import (
    LOOPBACK,
    ServerThread,
    device_client,
    estimators,
    free_port,
    grid_images,
    synthetic_profile,
)

WAN_SLOW = LinkProfile("wan-slow", 1.0, 1.0)  # makes the edge run blocks before the WAN


def three_tier_planner(net: BlockNet, codecs: list[str]) -> Planner:
    """Device runs block 0, edge blocks 1-2, cloud the expensive fc (see the assert below)."""
    tiers = [TierSpec("device", 10.0), TierSpec("edge", 1.0), TierSpec("cloud", 0.1)]
    prof = synthetic_profile(net, "tiny-cnn", [1.0, 0.5, 0.5, 50.0])
    return Planner(prof, tiers, codecs=codecs, min_device_blocks=1)


def two_tier_planner(net: BlockNet) -> Planner:
    """Everything offloaded at cut 0 as u8 pixels (the device is 10x slower)."""
    tiers = [TierSpec("device", 10.0), TierSpec("edge", 1.0)]
    return Planner(synthetic_profile(net, "tiny-cnn", [5.0] * 4), tiers)


def edge_config(next_url: str | None = None, **kw: object) -> ServerConfig:
    return ServerConfig("edge", tier_index=1, next_url=next_url, **kw)  # type: ignore[arg-type]


def run_all(client: DeviceClient, xs: torch.Tensor) -> list[ClientResult]:
    async def main() -> list[ClientResult]:
        async with client:
            return [await client.infer(x) for x in xs]

    return asyncio.run(main())


def _quantised_forward(net: BlockNet, x: torch.Tensor, cuts: list[int], codec: str) -> torch.Tensor:
    """The in-process twin of a split run: the codec applied at each cut."""
    z, start = x, 0
    with torch.inference_mode():
        for cut in [*cuts, net.num_blocks]:
            z = net.run_range(z, start, cut)
            if cut < net.num_blocks:
                c = get_codec(codec)
                z = c.decode(c.encode(z))
            start = cut
    return z


def test_three_tiers_over_sockets_match_the_in_process_forward(
    tiny_net: BlockNet, start_server
) -> None:
    cloud = start_server(ServerConfig("cloud", tier_index=2), tiny_net)
    edge = start_server(edge_config(cloud.url), tiny_net)
    planner = three_tier_planner(tiny_net, ["fp32"])
    assert planner.plan([LOOPBACK, WAN_SLOW]).boundaries == (0, 1, 3, 4)
    client = device_client(tiny_net, "tiny-cnn", edge.url, planner, estimators(LOOPBACK, WAN_SLOW))
    xs = grid_images(4)
    results = run_all(client, xs)
    with torch.inference_mode():  # batch 1, as each input ran (batched convs round differently)
        want = [tiny_net(x[None])[0] for x in xs]
    for r, w in zip(results, want, strict=True):
        assert torch.equal(r.output[0], w), "fp32 all the way: the output is bit-exact"
        assert r.prediction == (int(w.argmax()),)
        assert not r.fell_back and not r.remote_fell_back
        assert r.answered_by == 2 and r.attempts == 1
        assert [(p.block, p.tier) for p in r.path] == [(0, 0), (1, 1), (2, 1), (3, 2)]
        kinds = {(s.kind, s.tier) for s in r.steps}
        assert (StepKind.TRANSFER, 0) in kinds and (StepKind.TRANSFER, 1) in kinds
        assert not r.raw_input_left_device
        assert r.server_ms is not None and 0 < r.server_ms < r.latency_ms
    # bytes_sent is the HTTP body: 8-byte prefix + JSON header + the fp32 payload at cut 1
    assert results[0].bytes_sent > get_codec("fp32").payload_size((1, 4, 14, 14))
    assert results[0].bytes_sent < get_codec("fp32").payload_size((1, 4, 14, 14)) + 1000


def test_three_tiers_int8_within_codec_tolerance(tiny_net: BlockNet, start_server) -> None:
    cloud = start_server(ServerConfig("cloud", tier_index=2), tiny_net)
    edge = start_server(edge_config(cloud.url), tiny_net)
    planner = three_tier_planner(tiny_net, ["u8", "int8"])
    client = device_client(tiny_net, "tiny-cnn", edge.url, planner, estimators(LOOPBACK, WAN_SLOW))
    xs = grid_images(3, seed=1)
    results = run_all(client, xs)
    for r, x in zip(results, xs, strict=True):
        assert r.plan.boundaries == (0, 1, 3, 4) and r.plan.codecs[:2] == ("int8", "int8")
        twin = _quantised_forward(tiny_net, x[None], [1, 3], "int8")
        torch.testing.assert_close(r.output, twin, rtol=0, atol=1e-5)
        with torch.inference_mode():
            exact = tiny_net(x[None])
        assert (r.output - exact).abs().max() < 0.05  # what two int8 cuts cost here


def test_server_down_every_input_finishes_on_the_device(tiny_net: BlockNet) -> None:
    """The first input tries twice (one retry, the same id); then the breaker is open
    (a minute's back-off here) and the others finish at once, without a post."""
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    client = device_client(
        tiny_net,
        "tiny-cnn",
        url,
        two_tier_planner(tiny_net),
        estimators(LOOPBACK),
        breaker=CircuitBreaker(60.0, 60.0),
    )
    xs = grid_images(5)
    results = run_all(client, xs)
    with torch.inference_mode():
        want = [tiny_net(x[None])[0] for x in xs]
    for r, w in zip(results, want, strict=True):
        assert r.fell_back and r.answered_by == 0
        assert torch.equal(r.output[0], w), "finished from the exact tensor: no codec loss"
        assert r.bytes_sent == 0 and not r.raw_input_left_device  # refused: nothing left
        assert [s.kind for s in r.steps].count(StepKind.FALLBACK) == 1
        assert r.emulated_ms > 0  # the device's 10x slowness was slept, and labelled
    assert results[0].attempts == 2, "one retry (the default) with the same id, then local"
    assert "connect" in (results[0].error or "")
    for r in results[1:]:
        assert r.attempts == 0 and "failed recently" in (r.error or "")
    assert client.breaker.state == "open"


def test_deadline_overrun_falls_back(tiny_net: BlockNet, start_server, start_relay) -> None:
    edge = start_server(edge_config(), tiny_net)
    stuck = LinkProfile("stuck", 100.0, 4000.0)  # 2 s each way
    slow = start_relay(edge.url, stuck)
    planner = two_tier_planner(tiny_net)
    deadline_s = 0.3
    client = device_client(
        tiny_net, "tiny-cnn", slow, planner, estimators(LOOPBACK), deadline_s=deadline_s
    )
    (r,) = run_all(client, grid_images(1))
    assert r.fell_back and r.raw_input_left_device  # the pixels did leave before the timeout
    assert r.attempts == 1  # no budget left for a retry
    # it gave up at the deadline, not before, and did not wait for the 4 s round trip
    assert deadline_s * 1e3 <= r.latency_ms < stuck.rtt_ms


def test_a_refused_request_finishes_on_the_device_with_the_reason(
    tiny_net: BlockNet, start_server
) -> None:
    """A 4xx is not retried and does not end the run: the device answers, and says why."""
    edge = start_server(edge_config(token="s3cret"), tiny_net)
    planner = two_tier_planner(tiny_net)
    x = grid_images(1)
    ok = device_client(
        tiny_net, "tiny-cnn", edge.url, planner, estimators(LOOPBACK), token="s3cret"
    )
    (r,) = run_all(ok, x)
    assert not r.fell_back and r.answered_by == 1 and r.raw_input_left_device and r.error is None
    (r,) = run_all(device_client(tiny_net, "tiny-cnn", edge.url, planner, estimators(LOOPBACK)), x)
    assert r.fell_back and r.attempts == 1 and "401" in (r.error or "")
    wrong = device_client(
        tiny_net,
        "tiny-cnn",
        edge.url,
        planner,
        estimators(LOOPBACK),
        token="s3cret",
        weights="0" * 16,
    )
    (r,) = run_all(wrong, x)
    assert r.fell_back and r.answered_by == 0 and re.search(r"409.*weights", r.error or "")


def test_retry_reuses_the_request_id(tiny_net: BlockNet) -> None:
    """A 503 then success: two posts with one id, answered once (ASGI in-process, no sockets)."""
    app = create_app(edge_config(), tiny_net, "tiny-cnn")
    asgi = httpx.ASGITransport(app=app)
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        seen.append(decode_request(body, 2**20)[0].request_id)
        if len(seen) == 1:
            return httpx.Response(503, json={"error": "busy", "field": None})
        return await asgi.handle_async_request(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = device_client(
        tiny_net,
        "tiny-cnn",
        "http://edge",
        two_tier_planner(tiny_net),
        estimators(LOOPBACK),
        http=http,
        rtt_probe_s=None,  # the mock would see the pings
    )

    async def main() -> ClientResult:
        try:
            return await client.infer(grid_images(1)[0], request_id="input-7")
        finally:
            await http.aclose()

    r = asyncio.run(main())
    assert seen == ["input-7", "input-7"]
    assert r.attempts == 2 and not r.fell_back and r.request_id == "input-7"
    assert r.bytes_sent > 2 * 784  # both bodies left the device


def test_run_many_answers_every_input_once_and_learns_the_link(
    tiny_net: BlockNet, start_server
) -> None:
    edge = start_server(edge_config(batch_window_ms=2.0, max_batch=8), tiny_net)
    est = estimators(LinkProfile("guess", 5.0, 50.0), alpha=0.3)
    client = device_client(tiny_net, "tiny-cnn", edge.url, two_tier_planner(tiny_net), est)
    xs = grid_images(24, seed=2)
    with torch.inference_mode():
        labels = tiny_net(xs).argmax(1)
    seen: list[int] = []

    async def main():
        async with client:
            return await client.run_many(
                xs, labels, concurrency=4, progress=lambda done, _: seen.append(done)
            )

    summary = asyncio.run(main())
    assert len(summary.results) == 24 and len(set(summary.request_ids)) == 24
    assert [r.request_id.rsplit("-", 1)[1] for r in summary.results] == [str(i) for i in range(24)]
    assert seen == list(range(1, 25))
    assert summary.accuracy == 1.0  # labels are the model's own predictions
    assert summary.fallbacks == 0 and summary.bytes_per_input > 784
    assert summary.latency_p50_ms <= summary.latency_p95_ms
    assert summary.throughput > 0
    assert est[0].samples >= 24  # one per input, plus the RTT pings
    # the RTT estimate moved from the 50 ms first guess toward the loopback RTT,
    # measured here by the same kind of ping, over a kept-alive connection as the
    # client's are (a relation, not a wall-clock bound)
    pings = []
    with httpx.Client(trust_env=False) as ping:
        for _ in range(10):
            t0 = time.perf_counter()
            ping.get(f"{edge.url}/v2/health/live")
            pings.append((time.perf_counter() - t0) * 1e3)
    truth = statistics.median(pings)
    assert abs(est[0].rtt_ms - truth) < abs(50.0 - truth), (est[0].rtt_ms, truth)


def test_bad_construction_is_a_config_error(tiny_net: BlockNet) -> None:
    planner = two_tier_planner(tiny_net)
    with pytest.raises(ConfigError):
        device_client(tiny_net, "tiny-cnn", "http://x", planner, estimators(LOOPBACK, LOOPBACK))
    with pytest.raises(ConfigError):
        device_client(tiny_net, "tiny-cnn", "ftp://x", planner, estimators(LOOPBACK))
    with pytest.raises(ConfigError):
        device_client(tiny_net, "tiny-cnn", "http://x", planner, estimators(LOOPBACK), retries=-1)


def _learn_link(
    net: BlockNet, start_server, start_relay, link: LinkProfile
) -> tuple[list[ClientResult], LinkEstimator]:
    """20 inputs of fp32 pixels (3,136 B + header) through a relay, from a Wi-Fi first guess."""
    edge = start_server(edge_config(), net)
    shaped = start_relay(edge.url, link)
    tiers = [TierSpec("device", 10.0), TierSpec("edge", 1.0)]
    planner = Planner(synthetic_profile(net, "tiny-cnn", [50.0] * 4), tiers, codecs=["fp32"])
    (est,) = estimators(LinkProfile("wifi-guess", 18.88, 10.0), alpha=0.3)
    client = device_client(net, "tiny-cnn", shaped, planner, [est], rtt_probe_s=0.1)
    results = run_all(client, grid_images(20))
    print(f"\n{link.name}: estimated {est.rtt_ms:.1f} ms, {est.bandwidth_mbps:.2f} Mbit/s")
    assert not any(r.fell_back for r in results)
    serialise_ms = 8 * wire_bytes(results[-1].bytes_sent, 1500) / (link.bandwidth_mbps * 1e3)
    floor_ms = link.rtt_ms + serialise_ms
    assert all(r.latency_ms >= floor_ms - 2.0 for r in results), "the relay cannot be beaten"
    return results, est


@pytest.mark.integration
def test_client_learns_the_rtt_of_a_shaped_uplink(
    tiny_net: BlockNet, start_server, start_relay
) -> None:
    lte = LinkProfile("lte", 5.85, 50.0)
    _, est = _learn_link(tiny_net, start_server, start_relay, lte)
    # from the 10 ms first guess, by pings, to the shaped RTT: closer to it than the
    # guess was, and not below it by more than the estimator's smoothing (a relation,
    # not a wall-clock window)
    guess_ms = 10.0
    assert abs(est.rtt_ms - lte.rtt_ms) < abs(guess_ms - lte.rtt_ms) / 2
    assert est.rtt_ms > 0.9 * lte.rtt_ms


@pytest.mark.integration
def test_client_learns_the_bandwidth_of_a_slow_uplink(
    tiny_net: BlockNet, start_server, start_relay
) -> None:
    # 1 Mbit/s: ~28 ms of serialisation per input, large next to the RTT's noise
    _, est = _learn_link(tiny_net, start_server, start_relay, LinkProfile("slow", 1.0, 50.0))
    assert 0.67 < est.bandwidth_mbps < 1.5


@pytest.mark.integration
def test_edge_killed_mid_run_then_restarted(tiny_net: BlockNet, start_server) -> None:
    """500 inputs; the edge dies after 150 answers and comes back after 300.

    Every input is answered exactly once; the ones the edge could not take are
    finished on the device and counted; once the edge is back, offloading resumes.
    """
    n, kill_at, restart_at = 500, 150, 300
    edge: ServerThread = start_server(edge_config(), tiny_net)
    client = device_client(
        tiny_net,
        "tiny-cnn",
        edge.url,
        two_tier_planner(tiny_net),
        estimators(LOOPBACK),
        breaker=CircuitBreaker(0.05, 0.2),  # back-offs short next to the run (see below)
    )
    xs = grid_images(n, seed=3)
    with torch.inference_mode():
        labels = tiny_net(xs).argmax(1)
    events: dict[str, int] = {}
    threads: list[threading.Thread] = []
    restarted = threading.Event()

    def restart() -> None:
        edge.start()
        restarted.set()

    def on_progress(done: int, _: ClientResult) -> None:
        # stop/start block (uvicorn shutdown, startup): never on the client's event loop
        if done == kill_at:
            events["killed_after"] = done
            threads.append(threading.Thread(target=edge.stop))
            threads[-1].start()
        elif done == restart_at:
            threads[0].join(10)
            events["restart_after"] = done
            threads.append(threading.Thread(target=restart))
            threads[-1].start()
        elif done > restart_at and restarted.is_set() and "back_at" not in events:
            events["back_at"] = done

    async def main():
        async with client:
            return await client.run_many(xs, labels, concurrency=1, progress=on_progress)

    summary = asyncio.run(main())
    for t in threads:
        t.join(10)
    results = summary.results
    assert len(results) == n and len(set(summary.request_ids)) == n  # none lost, none twice
    assert summary.accuracy == 1.0
    fell = [i for i, r in enumerate(results) if r.fell_back]
    assert summary.fallbacks == len(fell) > 0
    assert all(i >= kill_at - 1 for i in fell), "nothing fell back before the kill"
    assert "back_at" in events
    # the breaker's next trial (at most 0.2 s after the restart) finds the edge back;
    # from the first input it answers on, offloading resumes for good
    resumed = next(i for i, r in enumerate(results) if i > events["back_at"] and r.answered_by == 1)
    after = results[resumed:]
    assert after and not any(r.fell_back for r in after), "offloading resumed after the restart"
    print(
        f"\nfault test: {n} answered, {len(fell)} finished on the device "
        f"(inputs {fell[0]}..{fell[-1]}), {n - len(fell)} by the edge; "
        f"edge back from input {events['back_at']}"
    )


def test_run_cli_against_a_live_edge(tiny_net: BlockNet, start_server) -> None:
    from collabinfer.cli.serve import run
    from collabinfer.data import locate
    from collabinfer.errors import DataError
    from collabinfer.serve.server import load_served_model

    try:
        locate()
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    import typer

    app = typer.Typer()
    app.command()(run)
    app.command("noop")(lambda: None)  # two commands: `run` stays a subcommand
    net = load_served_model("tiny-cnn", untrained=True)
    edge = start_server(edge_config(), net)
    args = ["run", "--edge", edge.url, "--model", "tiny-cnn", "--untrained", "--num-inputs", "8"]
    # a 1000x slower device: offloading the pixels to the edge is the plan
    res = CliRunner().invoke(app, [*args, "--link", "wifi", "--device-factor", "1000"])
    assert res.exit_code == 0, res.output
    assert re.search(r"8 x -\w+-> t1\[0:4\]", res.output), res.output
    bad = CliRunner().invoke(app, ["run", "--edge", edge.url, "--model", "nope", "--untrained"])
    assert bad.exit_code == 2 and "error" in bad.output


HOSTILE_EDGE = {
    "not json": b"\x00garbage",
    "1e400": b'{"request_id": "x", "tier": 1, "output": [[1e400]], "prediction": [0], "path": [],'
    b' "steps": [], "server_ms": 1.0, "fell_back": false}',
    "no rows": None,  # filled per request below: a well-formed answer with 0 rows
    "wrong id": None,
    "huge": b"[" + b"0," * 3_000_000 + b"0]",
}


def test_no_answer_from_the_edge_ends_a_run(tiny_net: BlockNet) -> None:
    """The review's case: one malformed 200 ended `collabinfer run` with a traceback.
    Now every input is answered on the device, with its reason counted."""

    def hostile(kind: str) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            if kind in ("no rows", "wrong id"):
                header, _ = decode_request(request.content, 2**20)
                rid = "someone-else" if kind == "wrong id" else header.request_id
                rows = [] if kind == "no rows" else [[0.0] * 10]
                body = {"request_id": rid, "tier": 1, "output": rows, "prediction": [0] * len(rows),
                        "path": [], "steps": [], "server_ms": 1.0, "fell_back": False}  # fmt: skip
                return httpx.Response(200, json=body)
            return httpx.Response(200, content=HOSTILE_EDGE[kind])

        return httpx.MockTransport(answer)

    planner = two_tier_planner(tiny_net)
    xs, ys = grid_images(3), [0, 1, 2]
    for kind in HOSTILE_EDGE:

        async def go(kind: str) -> RunSummary:
            async with httpx.AsyncClient(transport=hostile(kind)) as http:
                client = device_client(tiny_net, "tiny-cnn", "http://edge", planner,
                                       estimators(LOOPBACK), http=http, retries=0)  # fmt: skip
                return await client.run_many(xs, ys, concurrency=2)

        summary = asyncio.run(go(kind))
        assert len(summary.results) == 3 and summary.fallbacks == 3, kind
        assert sum(summary.errors.values()) == 3, kind
        assert all(r.answered_by == 0 and r.error for r in summary.results), kind
