"""The shaping relay: bandwidth and RTT real at the socket level, bytes intact.

A tiny asyncio *sink* reads a 4-byte length and that many bytes and answers
with their sha256 (32 bytes): one request and one small ack, so the time a
client measures is ``RTT + serialisation(request) + serialisation(ack)``, the
link model's :func:`~collabinfer.plan.cost.hop_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time

import pytest

from collabinfer.errors import ConfigError
from collabinfer.runtime.link import BandwidthTrace
from collabinfer.serve.relay import (
    DelaySampler,
    RelayThread,
    ShapingRelay,
    parse_address,
)
from collabinfer.topology.links import LinkProfile, get_profile, wire_bytes

LTE = LinkProfile("lte-test", 5.85, 50.0)
ACK = 32


def tolerance_s(expected_s: float) -> float:
    return max(0.005, 0.05 * expected_s)


def expected_s(profile: LinkProfile, n: int, rate_mbps: float | None = None) -> float:
    """RTT + both serialisations (the 4-byte length prefix is part of the request)."""
    bps = (rate_mbps or profile.bandwidth_mbps) * 1e6
    mtu = profile.mtu_bytes
    return profile.rtt_ms / 1e3 + 8 * (wire_bytes(4 + n, mtu) + wire_bytes(ACK, mtu)) / bps


class Sink:
    """Reads length-prefixed messages and acks each with its sha256; records EOFs."""

    def __init__(self) -> None:
        self.eofs = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.read(4)
                if not head:
                    self.eofs += 1
                    return
                head += await r.readexactly(4 - len(head))
                n = int.from_bytes(head, "big")
                if n == 0:  # "close on me": the server hangs up
                    return
                body = await r.readexactly(n)
                w.write(hashlib.sha256(body).digest())
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
        finally:
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> float:
    t0 = time.perf_counter()
    w.write(len(body).to_bytes(4, "big") + body)
    await w.drain()
    digest = await asyncio.wait_for(r.readexactly(ACK), 10.0)
    elapsed = time.perf_counter() - t0
    assert digest == hashlib.sha256(body).digest(), "bytes changed or reordered in the relay"
    return elapsed


async def _through_relay(
    profile: LinkProfile,
    sizes: list[int],
    seed: int = 0,
    trace: BandwidthTrace | None = None,
    gap_s: float = 0.0,
) -> list[float]:
    sink = Sink()
    target = await sink.start()
    relay = ShapingRelay(target, profile, trace=trace, seed=seed)
    host, port = await relay.start()
    try:
        r, w = await asyncio.open_connection(host, port)
        await roundtrip(r, w, b"x")  # warm up: the relay's connection to the sink is open
        times = []
        for n in sizes:
            if gap_s:
                await asyncio.sleep(gap_s)
            times.append(await roundtrip(r, w, os.urandom(n)))
        w.close()
        return times
    finally:
        await relay.close()
        await sink.close()


def test_bandwidth_and_rtt_match_the_link_model() -> None:
    sizes = [20_000, 60_000, 200_000]
    measured = asyncio.run(_through_relay(LTE, sizes))
    for n, got in zip(sizes, measured, strict=True):
        want = expected_s(LTE, n)
        assert abs(got - want) <= tolerance_s(want), (
            f"{n} B: {got * 1e3:.1f} vs {want * 1e3:.1f} ms"
        )


def test_many_small_writes_pay_one_message_of_headers() -> None:
    """Data arriving while the wire is busy fills the open packet: chunking is free."""

    async def main() -> float:
        sink = Sink()
        relay = ShapingRelay(await sink.start(), LTE)
        host, port = await relay.start()
        try:
            r, w = await asyncio.open_connection(host, port)
            await roundtrip(r, w, b"x")
            body = os.urandom(40_000)
            t0 = time.perf_counter()
            w.write(len(body).to_bytes(4, "big"))
            for i in range(0, len(body), 1000):
                w.write(body[i : i + 1000])
                await w.drain()
                await asyncio.sleep(0)
            assert await r.readexactly(ACK) == hashlib.sha256(body).digest()
            w.close()
            return time.perf_counter() - t0
        finally:
            await relay.close()
            await sink.close()

    got = asyncio.run(main())
    want = expected_s(LTE, 40_000)
    assert abs(got - want) <= tolerance_s(want)


def test_bandwidth_follows_the_trace_over_wall_time() -> None:
    # 100 Mbit/s for the first 0.3 s after the relay starts, then 2 Mbit/s
    trace = BandwidthTrace((0.0, 0.3), (100.0, 2.0), period_s=1000.0)
    prof = LinkProfile("traced", 100.0, 20.0)
    fast, slow = asyncio.run(_through_relay(prof, [30_000, 30_000], trace=trace, gap_s=0.15))
    # the first message starts ~0.15 s in (fast), the second after ~0.35 s (slow)
    want_fast, want_slow = expected_s(prof, 30_000, 100.0), expected_s(prof, 30_000, 2.0)
    assert abs(fast - want_fast) <= tolerance_s(want_fast)
    assert abs(slow - want_slow) <= tolerance_s(want_slow)


def test_jitter_is_seeded_and_never_negative() -> None:
    a = DelaySampler(50.0, 30.0, seed=3)
    b = DelaySampler(50.0, 30.0, seed=3)
    c = DelaySampler(50.0, 30.0, seed=4)
    da = [a.next_s() for _ in range(500)]
    assert da == [b.next_s() for _ in range(500)]
    assert da != [c.next_s() for _ in range(500)]
    assert min(da) >= 0.0 and min(da) == 0.0  # 30 ms std on 25 ms: truncation happens
    assert DelaySampler(50.0, 0.0).next_s() == 0.025


def test_jitter_never_reorders_bytes() -> None:
    prof = LinkProfile("jittery", 50.0, 10.0, jitter_ms=20.0)

    async def main() -> list[bytes]:
        sink = Sink()
        relay = ShapingRelay(await sink.start(), prof, seed=1)
        host, port = await relay.start()
        try:
            r, w = await asyncio.open_connection(host, port)
            bodies = [os.urandom(n) for n in (1, 5_000, 100_000, 3)]
            for body in bodies:  # pipelined: many chunks in flight with different delays
                w.write(len(body).to_bytes(4, "big") + body)
            await w.drain()
            acks = [await asyncio.wait_for(r.readexactly(ACK), 10.0) for _ in bodies]
            w.close()
            assert acks == [hashlib.sha256(b).digest() for b in bodies]
            return acks
        finally:
            await relay.close()
            await sink.close()

    asyncio.run(main())


def test_stats_count_bytes_each_way() -> None:
    async def main() -> None:
        sink = Sink()
        relay = ShapingRelay(await sink.start(), get_profile("wan"))
        host, port = await relay.start()
        try:
            r, w = await asyncio.open_connection(host, port)
            await roundtrip(r, w, b"y" * 1000)
            w.close()
            st = relay.stats
            assert (st.bytes_up, st.bytes_down, st.connections) == (1004, ACK, 1)
        finally:
            await relay.close()
            await sink.close()

    asyncio.run(main())


def test_closing_one_side_closes_the_other() -> None:
    prof = LinkProfile("fast", 100.0, 10.0)

    async def main() -> None:
        sink = Sink()
        relay = ShapingRelay(await sink.start(), prof)
        host, port = await relay.start()
        try:
            # the server hangs up: the client sees EOF about one one-way delay later
            r, w = await asyncio.open_connection(host, port)
            w.write((0).to_bytes(4, "big"))
            await w.drain()
            assert await asyncio.wait_for(r.read(10), 2.0) == b""
            w.close()
            # the client half-closes: the server sees EOF, then closes, and so does the client
            r, w = await asyncio.open_connection(host, port)
            await roundtrip(r, w, b"z")
            w.write_eof()
            assert await asyncio.wait_for(r.read(10), 2.0) == b""
            w.close()
            # the client resets: the server's read ends too
            r, w = await asyncio.open_connection(host, port)
            await roundtrip(r, w, b"z")
            w.transport.abort()
            for _ in range(100):  # bounded: 1 s
                if sink.eofs >= 2:
                    break
                await asyncio.sleep(0.01)
            assert sink.eofs >= 2
            for _ in range(100):
                if relay.stats.open_connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert relay.stats.open_connections == 0
        finally:
            await relay.close()
            await sink.close()

    asyncio.run(main())


def test_target_down_closes_the_client() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[:2]

    async def main() -> None:
        relay = ShapingRelay(dead, LTE)
        host, port = await relay.start()
        try:
            r, w = await asyncio.open_connection(host, port)
            with contextlib.suppress(ConnectionResetError):  # EOF or RST: both are "closed"
                assert await asyncio.wait_for(r.read(10), 2.0) == b""
            w.close()
        finally:
            await relay.close()

    asyncio.run(main())


def test_relay_thread_serves_blocking_clients() -> None:
    async def start_sink() -> tuple[str, int]:
        return await Sink().start()

    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        target = loop.run_until_complete(start_sink())
        t.start()
        with (
            RelayThread(target, LinkProfile("t", 50.0, 20.0)) as (host, port),
            socket.create_connection((host, port), timeout=5) as s,
        ):
            t0 = time.perf_counter()
            s.sendall((3).to_bytes(4, "big") + b"abc")
            got = b""
            for _ in range(ACK):  # bounded: at most one recv per byte
                if len(got) == ACK:
                    break
                chunk = s.recv(ACK - len(got))
                assert chunk
                got += chunk
            assert got == hashlib.sha256(b"abc").digest()
            assert time.perf_counter() - t0 >= 0.019
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ShapingRelay(("127.0.0.1", 1), LinkProfile("lossy", 5.0, 10.0, loss=0.1))
    with pytest.raises(ConfigError):
        DelaySampler(-1.0)
    assert parse_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("nohost", "h:", ":80", "h:99999", "h:x"):
        with pytest.raises(ConfigError):
            parse_address(bad)


@pytest.mark.integration
def test_bandwidth_and_rtt_at_3g_and_wifi() -> None:
    for name, sizes in (("3g", [20_000, 100_000]), ("wifi", [50_000, 500_000])):
        prof = get_profile(name)
        for n, got in zip(sizes, asyncio.run(_through_relay(prof, sizes)), strict=True):
            want = expected_s(prof, n)
            assert abs(got - want) <= tolerance_s(want), f"{name} {n} B: {got:.4f} vs {want:.4f}"


def test_relay_cli_resolves_profiles_and_refuses_bad_input() -> None:
    import typer
    from typer.testing import CliRunner

    from collabinfer.cli.serve import relay
    from collabinfer.serve.relay import resolve_profile

    lte = resolve_profile("lte", None, 80.0, 5.0)
    assert (lte.bandwidth_mbps, lte.rtt_ms, lte.jitter_ms) == (5.85, 80.0, 5.0)
    custom = resolve_profile(None, 2.0, 30.0, None)
    assert (custom.bandwidth_mbps, custom.rtt_ms, custom.jitter_ms) == (2.0, 30.0, 0.0)
    with pytest.raises(ConfigError):
        resolve_profile(None, 2.0, None, None)
    app = typer.Typer()
    app.command()(relay)
    app.command("noop")(lambda: None)  # two commands: `relay` stays a subcommand
    runner = CliRunner()
    for args in (
        ["--listen", "127.0.0.1:0", "--target", "nope", "--link", "lte"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--link", "5g"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--bandwidth-mbps", "2"],
    ):
        res = runner.invoke(app, ["relay", *args])
        assert res.exit_code == 2 and "error" in res.output, res.output
