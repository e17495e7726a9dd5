"""A userspace TCP relay that makes a link's bandwidth and RTT real at the socket level.

Why: the tiers talk HTTP over loopback, where bandwidth is gigabits and RTT is
microseconds, so every plan would look like cloud offloading. Put a
:class:`ShapingRelay` between two tiers and the bytes between them take what
the :class:`~collabinfer.runtime.link.LinkProfile` says they take, for any
client (httpx, curl, a browser), without root or kernel queueing disciplines.

Model, per direction (client->target and target->client are shaped apart):

* **Serialisation.** Bytes are cut into packets of ``mtu - 40`` payload bytes,
  each charged 40 header bytes (:func:`~collabinfer.runtime.link.wire_bytes`),
  and put on a virtual wire at ``bandwidth_mbps`` (or, with a
  :class:`~collabinfer.runtime.link.BandwidthTrace`, at the rate the trace
  gives at that wall time, t=0 when the relay starts). The wire is a token
  bucket whose depth is one packet and which starts *empty*: a packet leaves
  only once it is paid for in full. A bucket that starts full (like ``tc tbf``)
  lets the first packet through at once, 2 ms optimistic at LTE rates; ours
  delivers the last byte of an ``N``-byte message ``wire_bytes(N) / rate``
  after the first one arrived, the same formula :class:`SimulatedLink` and the
  planner use. Data arriving while the wire is busy fills the open packet
  first, so a message read in many chunks pays the headers of one message.
  The wire is shared by all connections through the relay, as a link is.
* **Delay.** Every chunk read is held a one-way delay of ``rtt_ms / 2`` plus
  seeded gaussian jitter, truncated at 0 (:class:`DelaySampler`). A chunk is
  never released before the one read before it on the same connection, so
  jitter never reorders bytes.
* **Close.** EOF from one side is passed on (half-close) after the bytes
  queued before it; a reset or write error on either side aborts both.

Loss is not modelled (TCP would hide it as delay anyway); a profile with
``loss > 0`` is refused rather than silently ignored. Connection setup is not
delayed either (the relay accepts locally, then connects on), so a new
connection costs no extra RTT here: keep-alive clients see no difference,
cold connections look one RTT cheaper than on a real link.

Example::

    >>> import asyncio
    >>> async def main() -> None:                                   # doctest: +SKIP
    ...     relay = ShapingRelay(("127.0.0.1", 8001), get_profile("lte"))
    ...     host, port = await relay.start()        # clients connect here
    ...     ...
    ...     await relay.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from collabinfer.errors import ConfigError, LinkError
from collabinfer.runtime.link import BandwidthTrace
from collabinfer.topology.links import HEADER_BYTES, LinkProfile, get_profile

__all__ = [
    "DelaySampler",
    "RelayStats",
    "RelayThread",
    "ShapingRelay",
    "parse_address",
    "resolve_profile",
]

READ_BYTES = 65_536  # one read from a socket; a chunk for the delay model
QUEUE_PACKETS = 4_096  # per connection and direction (~6 MB): beyond this, stop reading
UP, DOWN = 0, 1  # client -> target, target -> client
# epoll sleeps whole milliseconds, rounding up, so a timer fires 0..1 ms late. Writing
# what is due within half a millisecond makes that -0.5..+0.5 ms: no bias.
EARLY_S = 0.0005


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` too) as a tuple; anything else is a ConfigError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


class DelaySampler:
    """One-way delays ``max(0, rtt/2 + jitter * N(0, 1))`` in seconds, from a seeded stream.

    Seeded per relay and direction, so the same seed and the same sequence of
    reads give the same delays.

    >>> a, b = DelaySampler(50.0, 5.0, seed=1), DelaySampler(50.0, 5.0, seed=1)
    >>> [a.next_s() for _ in range(3)] == [b.next_s() for _ in range(3)]
    True
    """

    def __init__(self, rtt_ms: float, jitter_ms: float = 0.0, seed: int | list[int] = 0) -> None:
        if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
            raise ConfigError(f"rtt_ms must be finite and >= 0, got {rtt_ms!r}")
        if not (math.isfinite(jitter_ms) and jitter_ms >= 0):
            raise ConfigError(f"jitter_ms must be finite and >= 0, got {jitter_ms!r}")
        self._mean_s = rtt_ms / 2e3
        self._jitter_s = jitter_ms / 1e3
        self._rng = np.random.default_rng(seed)

    def next_s(self) -> float:
        if self._jitter_s == 0.0:
            return self._mean_s
        return max(0.0, self._mean_s + self._jitter_s * float(self._rng.standard_normal()))


@dataclass(frozen=True)
class RelayStats:
    """A snapshot of what crossed the relay (payload bytes, packet headers not included)."""

    bytes_up: int  # client -> target
    bytes_down: int  # target -> client
    connections: int  # accepted so far
    open_connections: int


class _Wire:
    """The serialisation clock of one direction, shared by every connection."""

    def __init__(self, rate_bps: float, trace: BandwidthTrace | None, t0: float) -> None:
        self._rate_bps = rate_bps
        self._trace = trace
        self._t0 = t0
        self.busy_until = t0

    def send(self, arrival: float, wire_bytes: int) -> float:
        """When a packet of ``wire_bytes`` arriving at ``arrival`` is fully on the wire."""
        start = max(arrival, self.busy_until)
        bits = 8.0 * wire_bytes
        if self._trace is None:
            seconds = bits / self._rate_bps
        else:
            seconds = self._trace.transfer_seconds(bits, start - self._t0)
        self.busy_until = start + seconds
        return self.busy_until


class _Pipe:
    """One direction of one connection: read, schedule, write in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        wire: _Wire,
        delays: DelaySampler,
        mtu_bytes: int,
        count: list[int],
        direction: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._wire = wire
        self._delays = delays
        self._per_packet = mtu_bytes - HEADER_BYTES
        self._count = count
        self._direction = direction
        self._room = 0  # payload bytes left in the packet this pipe has open on the wire
        self._last_release = 0.0
        # (release time, bytes) in release order; None marks EOF. A deque, not an
        # asyncio.Queue, because the writer must peek at the head's release time.
        self._items: deque[tuple[float, bytes] | None] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def _schedule(self, chunk: bytes, now: float) -> None:
        wire = self._wire
        if now >= wire.busy_until:
            self._room = 0  # the wire went idle: the next bytes start a new packet
        delay = self._delays.next_s()
        i = 0
        while i < len(chunk):
            if self._room:  # fill the packet still open on the wire: no new header
                piece = chunk[i : i + self._room]
                finish = wire.send(now, len(piece))
                self._room -= len(piece)
            else:
                piece = chunk[i : i + self._per_packet]
                finish = wire.send(now, len(piece) + HEADER_BYTES)
                self._room = self._per_packet - len(piece)
            release = max(finish + delay, self._last_release)
            self._last_release = release
            self._items.append((release, piece))
            i += len(piece)

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await self._reader.read(READ_BYTES)
                if not chunk:
                    break
                self._schedule(chunk, loop.time())
                self._ready.set()
                if len(self._items) >= QUEUE_PACKETS:  # backpressure on a slow link
                    self._space.clear()
                    await self._space.wait()
        finally:
            self._items.append(None)  # EOF: the writer half-closes after the data
            self._ready.set()

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        items = self._items
        while True:
            while not items:
                self._ready.clear()
                await self._ready.wait()
            head = items[0]
            if head is None:
                break
            wait = head[0] - loop.time()
            if wait > EARLY_S:
                await asyncio.sleep(wait - EARLY_S)
                continue
            now = loop.time() + EARLY_S
            due = []
            while items and (nxt := items[0]) is not None and nxt[0] <= now:
                due.append(nxt[1])
                items.popleft()
            data = b"".join(due)  # everything already due goes out in one write
            self._writer.write(data)
            self._count[self._direction] += len(data)
            await self._writer.drain()
            if len(items) < QUEUE_PACKETS // 2:
                self._space.set()
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()


class ShapingRelay:
    """Listens on ``listen`` and relays every connection to ``target``, shaped (module doc).

    ``profile`` gives ``bandwidth_mbps``, ``rtt_ms``, ``jitter_ms`` and the MTU;
    with ``trace`` the bandwidth follows the trace instead (both directions).
    Start and stop it from one event loop: ``await start()``, ``await close()``.
    """

    def __init__(
        self,
        target: tuple[str, int],
        profile: LinkProfile,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        trace: BandwidthTrace | None = None,
        seed: int = 0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if profile.loss > 0:
            raise ConfigError(
                "the relay does not emulate loss; use a profile with loss=0", link=profile.name
            )
        self.target = target
        self.profile = profile
        self.listen = listen
        self.trace = trace
        self.seed = seed
        self.connect_timeout_s = connect_timeout_s
        self._server: asyncio.Server | None = None
        self._wires: tuple[_Wire, _Wire] | None = None
        self._delays: tuple[DelaySampler, DelaySampler] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._count = [0, 0]
        self._connections = 0
        self._open = 0
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind (port 0 picks a free one) and return the address clients should use."""
        if self._server is not None:
            raise ConfigError("relay already started")
        t0 = asyncio.get_running_loop().time()
        rate = self.profile.bandwidth_mbps * 1e6
        self._wires = (_Wire(rate, self.trace, t0), _Wire(rate, self.trace, t0))
        p = self.profile
        self._delays = (
            DelaySampler(p.rtt_ms, p.jitter_ms, [self.seed, UP]),
            DelaySampler(p.rtt_ms, p.jitter_ms, [self.seed, DOWN]),
        )
        try:
            self._server = await asyncio.start_server(self._handle, *self.listen)
        except OSError as e:
            raise LinkError(f"relay cannot listen on {self.listen}: {e}") from None
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        return host, port

    @property
    def stats(self) -> RelayStats:
        return RelayStats(self._count[UP], self._count[DOWN], self._connections, self._open)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._connections += 1
        self._open += 1
        self._writers.add(c_writer)
        writers = [c_writer]
        try:
            try:
                t_reader, t_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), self.connect_timeout_s
                )
            except (OSError, TimeoutError):
                return  # target down: the client sees its connection closed
            writers.append(t_writer)
            self._writers.add(t_writer)
            await self._run_pipes(c_reader, c_writer, t_reader, t_writer)
        except asyncio.CancelledError:
            pass
        finally:
            self._open -= 1
            for w in writers:
                self._writers.discard(w)
                _close(w)
            if task is not None:
                self._tasks.discard(task)

    async def _run_pipes(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        t_reader: asyncio.StreamReader,
        t_writer: asyncio.StreamWriter,
    ) -> None:
        assert self._wires is not None and self._delays is not None  # set by start()
        mtu = self.profile.mtu_bytes
        up = _Pipe(c_reader, t_writer, self._wires[UP], self._delays[UP], mtu, self._count, UP)
        down = _Pipe(
            t_reader, c_writer, self._wires[DOWN], self._delays[DOWN], mtu, self._count, DOWN
        )
        parts: list[Awaitable[None]] = [
            up.read_loop(),
            up.write_loop(),
            down.read_loop(),
            down.write_loop(),
        ]
        tasks = [asyncio.ensure_future(p) for p in parts]
        try:
            # Any error (reset, broken pipe) ends the connection both ways at once;
            # a clean EOF in both directions ends it after the last byte.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                for w in (c_writer, t_writer):
                    w.transport.abort()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop listening and drop every open connection (abortively)."""
        if self._server is None:
            return
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None


def _close(w: asyncio.StreamWriter) -> None:
    if not w.is_closing():
        w.close()


class RelayThread:
    """A :class:`ShapingRelay` on its own event loop in a daemon thread (tests, demos).

    The rest of the program can stay synchronous (or run another loop)::

        with RelayThread(("127.0.0.1", 8001), get_profile("lte")) as (host, port):
            httpx.get(f"http://{host}:{port}/v2/health/live")
    """

    def __init__(
        self,
        target: tuple[str, int],
        profile: LinkProfile,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        trace: BandwidthTrace | None = None,
        seed: int = 0,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.relay = ShapingRelay(target, profile, listen=listen, trace=trace, seed=seed)
        self._start_timeout_s = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="shaping-relay", daemon=True)
        self._thread.start()
        started.wait(self._start_timeout_s)
        fut = asyncio.run_coroutine_threadsafe(self.relay.start(), loop)
        try:
            return fut.result(self._start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self.relay.close(), loop)
            with contextlib.suppress(Exception):
                fut.result(5.0)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        self._loop = self._thread = None

    @property
    def stats(self) -> RelayStats:
        return self.relay.stats

    def __enter__(self) -> tuple[str, int]:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def resolve_profile(
    link: str | None,
    bandwidth_mbps: float | None,
    rtt_ms: float | None,
    jitter_ms: float | None,
) -> LinkProfile:
    """A named profile with any explicit value overriding it, or a custom one.

    Without ``link`` both ``bandwidth_mbps`` and ``rtt_ms`` are required: a
    silent default would make a run look shaped when it is not.
    """
    if link is not None:
        base = get_profile(link)
    elif bandwidth_mbps is None or rtt_ms is None:
        raise ConfigError("give --link NAME, or both --bandwidth-mbps and --rtt-ms")
    else:
        base = LinkProfile("custom", bandwidth_mbps, rtt_ms)
    return LinkProfile(
        base.name,
        bandwidth_mbps if bandwidth_mbps is not None else base.bandwidth_mbps,
        rtt_ms if rtt_ms is not None else base.rtt_ms,
        jitter_ms if jitter_ms is not None else base.jitter_ms,
        base.loss,
        base.mtu_bytes,
        base.note,
    )
