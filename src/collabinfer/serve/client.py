"""The device client: run the head here, post the rest to the edge, never lose an input.

This is :class:`~collabinfer.runtime.chain.Chain` with real sockets in place of
the simulated links: the same :class:`~collabinfer.runtime.engine.Engine`
steps the State, and only the hand-off differs. Per input the client

1. lets the policy choose the plan (an adaptive policy re-plans from its link
   estimates at the seconds elapsed since the client started);
2. runs the device's share of the chain (blocks, exits, the encode) and
   sleeps what the engine charged beyond what it took, to emulate a slower
   device (reported as ``emulated_ms``, so it is never mistaken for real
   compute; a factor below 1 cannot be emulated by sleeping and only scales
   the reported step times);
3. frames the State (:func:`~collabinfer.serve.wire.request_header`) and posts
   it to ``{url}/v2/models/{name}/infer`` (httpx, keep-alive); the edge
   forwards to the cloud itself;
4. lets the policy learn the uplink: its bandwidth from each answer's timing
   (:meth:`~collabinfer.runtime.engine.Engine.delivered` with the round trip),
   the later links from the transfer steps the edge reports, and its RTT from a
   background ping (:meth:`DeviceClient._maybe_probe_rtt`).

Failure rules: a connection error, a timeout, a 5xx or an answer that does
not fit the request (malformed, not finite, the wrong rows or classes, over
its size cap; checked like a request, :func:`~collabinfer.serve.wire.check_answer`)
is retried ``retries`` times with the *same* request id (the server answers a
repeated id with the same body from its cache, never computing twice) while
the deadline allows; a 4xx is not retried. Then the engine finishes the input
on the device (``fell_back``) and the result says why in one line
(``ClientResult.error``; :class:`RunSummary` counts them). Nothing an edge
answers ends a run: every input gets exactly one :class:`ClientResult`. After
a failure a :class:`~collabinfer.runtime.breaker.CircuitBreaker` keeps the
client from posting for a back-off (its trial first pings the health check),
so a hung edge costs one deadline, not one per input.

Example::

    >>> async with DeviceClient(net, "fmnist-resnet", "http://127.0.0.1:8001",
    ...                         policy, tiers, profile=prof) as client:    # doctest: +SKIP
    ...     result = await client.infer(x)
    ...     summary = await client.run_many(images, labels, concurrency=4)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import httpx
import numpy as np
import torch

from collabinfer.errors import (
    CollabInferError,
    ConfigError,
    LinkError,
    PlanError,
    TierError,
)
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.plan.cost import Plan
from collabinfer.plan.profile import Profile
from collabinfer.runtime.breaker import CircuitBreaker
from collabinfer.runtime.engine import Charger, Engine, Handoff
from collabinfer.runtime.policy import Policy
from collabinfer.runtime.state import PathEntry, State, Step
from collabinfer.serve.http import client_tls, post_capped
from collabinfer.serve.wire import (
    ResponseBody,
    WireError,
    answer_cap,
    check_answer,
    decode_response,
    encode_request,
    request_header,
)
from collabinfer.topology.tiers import TierSpec, check_tiers

__all__ = ["ClientResult", "DeviceClient", "RunSummary", "summarise"]

CONTENT_TYPE = "application/octet-stream"
RTT_WINDOW = 5  # RTT pings whose minimum is one RTT sample (see DeviceClient._maybe_probe_rtt)
PROBE_TIMEOUT_S = 0.5  # a breaker trial's health check


@dataclass(frozen=True)
class ClientResult:
    """What happened to one input, end to end, as the device saw it."""

    request_id: str
    output: torch.Tensor  # logits, (batch, classes)
    prediction: tuple[int, ...]  # argmax per batch row
    latency_ms: float  # wall time of infer(), emulated device slow-down included
    bytes_sent: int  # request bodies (wire header + tensor header + payload) put on the uplink
    raw_input_left_device: bool
    fell_back: bool  # the device finished the input itself
    remote_fell_back: bool  # a server finished it because the tier after it failed
    answered_by: int  # tier whose blocks produced the output
    plan: Plan
    path: tuple[PathEntry, ...]
    steps: tuple[Step, ...]  # the device's steps, then those of the tiers that answered
    server_ms: float | None  # wall time inside the edge (None: no server answered)
    emulated_ms: float  # of latency_ms, the sleep that emulates the slower device
    attempts: int  # posts made (0: the plan kept the input on the device)
    exited_early: bool = False  # an exit head on the device answered (nothing more was sent)
    cached: bool = False  # the edge's semantic cache answered (no tail ran)
    error: str | None = None  # why the device finished the input itself (one line), if it did


@dataclass(frozen=True)
class RunSummary:
    """Many inputs through one client; ``results`` in input order, one per input."""

    results: tuple[ClientResult, ...]
    accuracy: float
    latency_p50_ms: float
    latency_p95_ms: float
    bytes_per_input: float
    fallbacks: int  # inputs the device finished itself
    remote_fallbacks: int  # inputs a server finished because the next tier failed
    wall_s: float
    plans: dict[str, int] = field(default_factory=dict)  # plan description -> inputs
    errors: dict[str, int] = field(default_factory=dict)  # ClientResult.error -> inputs

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(r.request_id for r in self.results)

    @property
    def throughput(self) -> float:
        """Inputs per second of wall time."""
        return len(self.results) / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass(frozen=True)
class _Outcome:
    answer: ResponseBody | None  # None: every attempt failed; the device finishes the input
    attempts: int
    bytes_sent: int
    at_s: float  # client clock when the answered attempt started
    error: str | None = None  # the last failure, when there is no answer


class _NotSent(LinkError):
    """Internal: the connection failed before any byte of the body left the device."""


class DeviceClient:
    """Tier 0 of a chain whose later tiers are HTTP servers (see the module docstring).

    ``policy`` decides per input (an :class:`~collabinfer.runtime.policy.AdaptivePolicy`
    re-plans from its link estimates, which this client feeds from its own
    posts; wrap it in an :class:`~collabinfer.runtime.exit_policy.ExitingPolicy`
    to try exits on the device). ``tiers`` are the tier specs, the device first;
    ``profile`` is the model's profile, required when the device is emulated
    (charged profiled time x factor, slept). Pass ``http`` to share one
    connection pool between clients (it is then not closed by :meth:`aclose`).
    Every ``rtt_probe_s`` seconds the client pings the edge in the background
    for an RTT sample (None: never; see :meth:`_maybe_probe_rtt`). ``ca`` is the
    CA bundle that verifies an https:// edge (None: the system's); ``breaker``
    the circuit breaker towards the edge (default: 1 s back-off, up to 10 s).
    """

    def __init__(
        self,
        model: BlockNet,
        model_name: str,
        url: str,
        policy: Policy,
        tiers: Sequence[TierSpec],
        *,
        profile: Profile | None = None,
        weights: str | None = None,
        token: str | None = None,
        deadline_s: float = 5.0,
        retries: int = 1,
        http: httpx.AsyncClient | None = None,
        rtt_probe_s: float | None = 1.0,
        ca: str | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if len(tiers) < 2:
            raise ConfigError("a device client needs at least one remote tier")
        if not deadline_s > 0:
            raise ConfigError(f"deadline_s must be > 0, got {deadline_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be an int >= 0, got {retries!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {url!r}")
        if rtt_probe_s is not None and not rtt_probe_s > 0:
            raise ConfigError(f"rtt_probe_s must be > 0 or None, got {rtt_probe_s!r}")
        check_tiers(tiers)
        self.tiers = tuple(tiers)
        self.policy = policy
        self.engine = Engine(
            model, policy, Charger.for_tiers(tiers, profile), num_tiers=len(self.tiers)
        )
        self.model = self.engine.model
        self.model_name = model_name
        self.weights = weights if weights is not None else weights_hash(model)
        self.url = url.rstrip("/")
        self.deadline_s = float(deadline_s)
        self.retries = retries
        self._headers = {"content-type": CONTENT_TYPE}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._own_http = http is None
        self._verify = client_tls(ca)
        self._http = http or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            trust_env=False,  # an HTTP(S)_PROXY meant for the internet must not catch the tiers
            verify=self._verify,
        )
        self.breaker = breaker or CircuitBreaker()
        out_shape = self.model.cut_points()[-1].shape
        self._classes = math.prod(out_shape)
        self._t0 = time.perf_counter()
        self.rtt_probe_s = rtt_probe_s
        self._probe_http: httpx.AsyncClient | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._last_probe_s = -math.inf
        self._probe_rtts: deque[float] = deque(maxlen=RTT_WINDOW)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v2/models/{self.model_name}/infer"

    def now_s(self) -> float:
        """Seconds since the client started: the clock of the link estimates."""
        return time.perf_counter() - self._t0

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        if self._probe_http is not None:
            await self._probe_http.aclose()
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> DeviceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _advance(self, state: State) -> tuple[Handoff | None, float]:
        """The engine's step on the device, then the sleep that emulates its slowness
        (returned, in ms: it is reported apart from real compute)."""
        since = len(state.trace.steps)
        handoff = self.engine.advance(state)
        extra_ms = state.trace.unslept_ms(0, since)
        if extra_ms > 0:
            await asyncio.sleep(extra_ms / 1e3)
        return handoff, extra_ms

    async def infer(self, x: torch.Tensor, request_id: str | None = None) -> ClientResult:
        """Run one input across the tiers (see the module docstring).

        ``x`` is ``(batch, *input_shape)``; a single ``(C, H, W)`` image gets a batch dim.
        """
        t_start = time.perf_counter()
        rid = request_id or uuid.uuid4().hex
        if x.dim() == 3:
            x = x.unsqueeze(0)
        self._maybe_probe_rtt()
        engine = self.engine
        state = engine.begin(x, rid, start_s=self.now_s())
        handoff, emulated = await self._advance(state)
        outcome = _Outcome(None, 0, 0, 0.0)
        if handoff is not None:  # an exit that fired before the cut sends nothing
            outcome = await self._post(state, handoff, t_start)
            if outcome.answer is not None:
                engine.answered(state, outcome.answer.to_answer(), at_s=outcome.at_s)
            else:  # finish here, from the exact tensor we still hold: no codec loss
                engine.fall_back(state, handoff, sent=outcome.bytes_sent > 0)
                again, extra = await self._advance(state)
                if again is not None:
                    raise PlanError("the device was asked to offload after falling back")
                emulated += extra
        if state.plan is None:
            raise PlanError("the policy chose no plan", request_id=rid)
        out = state.output.detach().reshape(state.output.shape[0], -1).float()
        answer = outcome.answer
        return ClientResult(
            request_id=rid,
            output=out,
            prediction=tuple(int(p) for p in out.argmax(1).tolist()),
            latency_ms=(time.perf_counter() - t_start) * 1e3,
            bytes_sent=outcome.bytes_sent,
            raw_input_left_device=state.raw_input_left_device,
            fell_back=state.fell_back_on == 0,
            remote_fell_back=state.fell_back_on not in (None, 0),
            answered_by=state.tier,
            plan=state.plan,
            path=tuple(state.path),
            steps=tuple(state.trace.steps),
            server_ms=answer.server_ms if answer is not None else None,
            emulated_ms=emulated,
            attempts=outcome.attempts,
            exited_early=state.exited_early,
            cached=state.cache_hit,
            error=outcome.error if answer is None else None,
        )

    async def _post(self, state: State, handoff: Handoff, t_start: float) -> _Outcome:
        """Post with retries under the deadline; no answer means the device finishes itself.

        Never raises for what the edge does: every failure is the outcome's ``error``.
        """
        sent = 0
        attempts = 0
        error = None
        header = request_header(state, handoff, self.model_name, self.weights)
        rows = handoff.encoded.header.shape[0]
        permit = self.breaker.allow()
        if permit == "refuse":
            wait = self.breaker.retry_in_s()
            return _Outcome(None, 0, 0, 0.0, f"edge failed recently (next trial in {wait:.1f} s)")
        for _ in range(self.retries + 1):
            left_s = self.deadline_s - (time.perf_counter() - t_start)
            if left_s <= 0:
                error = error or "deadline spent before the post"
                break
            attempts += 1
            body = encode_request(
                dataclasses.replace(header, deadline_ms=left_s * 1e3), handoff.encoded.payload
            )
            at_s = self.now_s()
            t0 = time.perf_counter()
            try:
                if permit == "trial":
                    await self._probe_health(min(left_s, PROBE_TIMEOUT_S))
                answer = await self._attempt(body, left_s, header.request_id, rows)
            except _NotSent as e:
                error = e.message
                continue
            except LinkError as e:
                sent += len(body)
                error = e.message
                continue
            except TierError as e:  # refused: a retry would be refused too
                sent += len(body)
                error = e.message
                break
            sent += len(body)
            self.breaker.success()
            network_s = max(0.0, time.perf_counter() - t0 - answer.server_ms / 1e3)
            self.engine.delivered(
                state, handoff, network_s, nbytes=len(body), round_trip=True, at_s=at_s
            )
            return _Outcome(answer, attempts, sent, at_s)
        self.breaker.failure()
        return _Outcome(None, attempts, sent, 0.0, error)

    async def _probe_health(self, timeout_s: float) -> None:
        """A breaker trial pings the edge's health check first: a frozen edge costs this."""
        try:
            r = await self._http.get(f"{self.url}/v2/health/ready", timeout=timeout_s)
        except httpx.HTTPError as e:
            raise _NotSent(f"edge still down: {type(e).__name__}", url=self.url) from None
        if r.status_code != 200:
            raise _NotSent(f"edge not ready: HTTP {r.status_code}", url=self.url)

    async def _attempt(
        self, body: bytes, timeout_s: float, request_id: str, rows: int
    ) -> ResponseBody:
        """One post: an answer that fits the request, a :class:`LinkError` (unreachable,
        timed out, 5xx, an answer that does not fit) or a :class:`TierError` (a 4xx)."""
        try:
            code, content = await post_capped(
                self._http, self.endpoint, body, self._headers, timeout_s, answer_cap(rows)
            )
        except httpx.ConnectError as e:
            raise _NotSent(f"connect: {e}", url=self.url) from None
        except httpx.TransportError as e:
            raise LinkError(f"{type(e).__name__}: {e}", url=self.url) from None
        if code >= 500:
            raise LinkError(f"HTTP {code}: {_error_text(content)}", url=self.url)
        if code != 200:
            raise TierError(f"HTTP {code}: {_error_text(content)}", status=code, url=self.url)
        try:
            answer = decode_response(content)
            check_answer(answer, request_id, rows, self._classes)
        except WireError as e:
            raise LinkError(e.message, url=self.url) from None
        return answer

    def _maybe_probe_rtt(self) -> None:
        """Start a background RTT probe if the last one is ``rtt_probe_s`` old.

        Why: inference bodies are several packets, so each post gives one
        equation in two unknowns (RTT and bandwidth) and the estimator, which
        takes the RTT as known, would fold a wrong RTT guess into the bandwidth
        forever. A ``GET /v2/health/live`` is one small packet each way: its
        round trip *is* an RTT sample. It runs beside the inputs (never adding
        to their latency) on its own keep-alive connection, so after the
        first (discarded: it includes the TCP handshake) no sample pays for a
        connection setup. A ping that shares the uplink with a request waits
        behind its bytes, so the estimator gets the minimum of the last
        :data:`RTT_WINDOW` pings (queueing only ever adds delay).
        """
        if self.rtt_probe_s is None or (self._probe_task and not self._probe_task.done()):
            return
        now = self.now_s()
        if now - self._last_probe_s < self.rtt_probe_s:
            return
        self._last_probe_s = now
        self._probe_task = asyncio.create_task(self._probe_rtt())

    async def _probe_rtt(self) -> None:
        url = f"{self.url}/v2/health/live"
        try:
            if self._probe_http is None:
                self._probe_http = httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=1), trust_env=False
                )
                await self._probe_http.get(url, timeout=self.deadline_s)  # opens the connection
            t0 = time.perf_counter()
            resp = await self._probe_http.get(url, timeout=self.deadline_s)
            if resp.status_code == 200:
                self._probe_rtts.append(time.perf_counter() - t0)
                self.policy.observe_rtt(0, min(self._probe_rtts))
        except httpx.HTTPError:
            pass  # the tier is down: the inputs find out and fall back by themselves

    async def run_many(
        self,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[int],
        concurrency: int = 1,
        id_prefix: str | None = None,
        progress: Callable[[int, ClientResult], None] | None = None,
    ) -> RunSummary:
        """Every input exactly once, ``concurrency`` in flight; ids ``{prefix}-{index}``.

        ``progress(done, result)`` is called on the event loop after each input
        (keep it quick; start a thread for anything slow).
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
        xs = list(inputs)
        ys = [int(y) for y in labels]
        if len(xs) != len(ys):
            raise ConfigError(f"{len(xs)} inputs but {len(ys)} labels")
        prefix = id_prefix or uuid.uuid4().hex[:12]
        results: list[ClientResult | None] = [None] * len(xs)
        next_index = iter(range(len(xs)))
        done_count = 0

        async def worker() -> None:
            nonlocal done_count
            for i in next_index:  # shared iterator: each index is taken by one worker
                results[i] = res = await self.infer(xs[i], f"{prefix}-{i}")
                done_count += 1
                if progress is not None:
                    progress(done_count, res)

        t0 = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(concurrency, max(1, len(xs)))):
                    tg.create_task(worker())
        except* CollabInferError as group:  # one clean error for the CLI, not a group
            raise _first(group) from None
        wall = time.perf_counter() - t0
        done = [r for r in results if r is not None]
        if len(done) != len(xs) or len({r.request_id for r in done}) != len(xs):
            raise TierError("an input was lost or answered twice", inputs=len(xs))
        return summarise(done, ys, wall)


def summarise(results: Sequence[ClientResult], labels: Sequence[int], wall_s: float) -> RunSummary:
    """Accuracy, latency percentiles and byte counts of a run (first prediction per input)."""
    lat = np.array([r.latency_ms for r in results]) if results else np.array([np.nan])
    correct = sum(r.prediction[0] == y for r, y in zip(results, labels, strict=True))
    n = max(1, len(results))
    return RunSummary(
        results=tuple(results),
        accuracy=correct / n,
        latency_p50_ms=float(np.percentile(lat, 50)),
        latency_p95_ms=float(np.percentile(lat, 95)),
        bytes_per_input=sum(r.bytes_sent for r in results) / n,
        fallbacks=sum(r.fell_back for r in results),
        remote_fallbacks=sum(r.remote_fell_back for r in results),
        wall_s=wall_s,
        plans=dict(Counter(r.plan.describe() for r in results)),
        errors=dict(Counter(r.error for r in results if r.error is not None)),
    )


def _first(group: BaseExceptionGroup[CollabInferError]) -> CollabInferError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, CollabInferError)
    return exc


def _error_text(content: bytes) -> str:
    """The ``error`` of a JSON error reply, else an excerpt; one line, ASCII, short."""
    try:
        obj = json.loads(content)
        text = str(obj.get("error")) if isinstance(obj, dict) else content[:200].decode()
    except (ValueError, UnicodeDecodeError):
        text = content[:200].decode("utf-8", "replace")
    text = " ".join(text.split())[:200]
    return text.encode("ascii", "backslashreplace").decode()
