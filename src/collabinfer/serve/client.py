"""The device client: run the head here, post the rest to the edge, never lose an input.

This is :class:`~collabinfer.runtime.chain.Chain` with real sockets in place of
the simulated links. Per input the client

1. re-plans from its link estimates (:meth:`LinkEstimator.estimate` at the
   seconds elapsed since the client started);
2. runs the device's blocks, timing each, and sleeps ``(speed_factor - 1) x``
   that time to emulate a slower device (reported as ``emulated_ms``, so it is
   never mistaken for real compute; a factor below 1 cannot be emulated by
   sleeping and only scales the reported step times);
3. encodes the cut with the plan's codec, frames it with
   :func:`~collabinfer.serve.wire.encode_request` and posts it to
   ``{url}/v2/models/{name}/infer`` (httpx, keep-alive); the edge forwards to
   the cloud itself;
4. learns the uplink: its bandwidth from each answer's timing
   (:meth:`DeviceClient._observe`), its RTT from a background ping
   (:meth:`DeviceClient._maybe_probe_rtt`).

Failure rules: a connection error, a timeout or a 5xx is retried ``retries``
times with the *same* request id (the server answers a repeated id from its
cache, never computing twice) while the deadline allows, and then the device
finishes the input itself with the rest of the full model (``fell_back``). A
4xx means this client built a request the server refuses: that is a bug here,
so it raises :class:`~collabinfer.errors.TierError` with the server's message.
Every input gets exactly one :class:`ClientResult`.

Example::

    >>> async with DeviceClient(net, "fmnist-resnet", "http://127.0.0.1:8001",
    ...                         planner, estimators) as client:    # doctest: +SKIP
    ...     result = await client.infer(x)
    ...     summary = await client.run_many(images, labels, concurrency=4)
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

import httpx
import numpy as np
import torch

from collabinfer.codec import get_codec
from collabinfer.errors import ConfigError, PlanError, TierError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.plan.cost import Plan
from collabinfer.plan.exit_policy import DeviceExits
from collabinfer.plan.planner import Planner
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.state import PathEntry, Step, StepKind
from collabinfer.serve.wire import (
    RequestHeader,
    ResponseBody,
    WirePlan,
    decode_response,
    encode_request,
)

__all__ = ["ClientResult", "DeviceClient", "RunSummary", "summarise"]

CONTENT_TYPE = "application/octet-stream"
RTT_WINDOW = 5  # RTT pings whose minimum is one RTT sample (see DeviceClient._maybe_probe_rtt)


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

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(r.request_id for r in self.results)

    @property
    def throughput(self) -> float:
        """Inputs per second of wall time."""
        return len(self.results) / self.wall_s if self.wall_s > 0 else float("nan")


class _LocalRun(NamedTuple):
    """What :meth:`DeviceClient._run_local` did."""

    z: torch.Tensor  # the tensor at the last cut reached, or the exit's logits
    emulated_ms: float  # the sleep that emulated the slower device
    exited: bool  # an exit fired: ``z`` is the answer


@dataclass(frozen=True)
class _Outcome:
    answer: ResponseBody | None  # None: every attempt failed; the device finishes the input
    attempts: int
    bytes_sent: int


class _Unreachable(Exception):
    """Internal: this attempt failed in a way the device recovers from by itself."""

    def __init__(self, why: str, sent: bool) -> None:
        super().__init__(why)
        self.sent = sent  # whether the body may have left the device


class DeviceClient:
    """Tier 0 of a chain whose later tiers are HTTP servers (see the module docstring).

    ``planner.tiers`` are the tier specs (the device is ``tiers[0]``; its
    ``speed_factor`` sets the emulated slow-down), ``estimators[i]`` tracks
    link ``i`` (the client feeds link 0, the uplink, from its own posts).
    Pass ``http`` to share one connection pool between clients (it is then
    not closed by :meth:`aclose`). Every ``rtt_probe_s`` seconds the client
    pings the edge in the background for an RTT sample (None: never; see
    :meth:`_maybe_probe_rtt`). With ``exits`` the device tries the exit at every
    cut it reaches after running a block (:meth:`DeviceExits.attempt`); one that
    fires answers the input there, and nothing is sent.
    """

    def __init__(
        self,
        model: BlockNet,
        model_name: str,
        url: str,
        planner: Planner,
        estimators: Sequence[LinkEstimator],
        *,
        weights: str | None = None,
        token: str | None = None,
        deadline_s: float = 5.0,
        retries: int = 1,
        http: httpx.AsyncClient | None = None,
        rtt_probe_s: float | None = 1.0,
        emulation: str = "profile",
        exits: DeviceExits | None = None,
    ) -> None:
        if len(planner.tiers) < 2:
            raise ConfigError("a device client needs at least one remote tier in the planner")
        if len(estimators) != len(planner.tiers) - 1:
            raise ConfigError(
                f"{len(planner.tiers)} tiers need {len(planner.tiers) - 1} link estimators, "
                f"got {len(estimators)}"
            )
        if planner.n != model.num_blocks:
            raise ConfigError(f"planner has {planner.n} blocks, the model {model.num_blocks}")
        if not deadline_s > 0:
            raise ConfigError(f"deadline_s must be > 0, got {deadline_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be an int >= 0, got {retries!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {url!r}")
        if emulation not in ("profile", "measured"):
            raise ConfigError(f"emulation must be 'profile' or 'measured', not {emulation!r}")
        # What the emulated device is charged: "profile" = the planner's profiled (warm,
        # median) time x factor; "measured" = this run's wall time x factor. A single run
        # after an idle sleep is cold (caches, clocks), and x100 turns that into tens of
        # milliseconds the device model never meant; the profile is what the plan assumed.
        self.emulation = emulation
        if rtt_probe_s is not None and not rtt_probe_s > 0:
            raise ConfigError(f"rtt_probe_s must be > 0 or None, got {rtt_probe_s!r}")
        self.model = model.eval()
        self.exits = exits
        self.model_name = model_name
        self.weights = weights if weights is not None else weights_hash(model)
        self.url = url.rstrip("/")
        self.planner = planner
        self.estimators = list(estimators)
        self.deadline_s = float(deadline_s)
        self.retries = retries
        self.factor = planner.tiers[0].speed_factor
        self._headers = {"content-type": CONTENT_TYPE}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            trust_env=False,  # an HTTP(S)_PROXY meant for the internet must not catch the tiers
        )
        self._t0 = time.perf_counter()
        self._blocks = tuple(self.model.blocks)
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

    async def _run_local(
        self, z: torch.Tensor, start: int, stop: int, steps: list[Step], path: list[PathEntry]
    ) -> _LocalRun:
        """Blocks ``start..stop-1`` here, trying the exit after each; stops when one fires."""
        wall = charged = 0.0
        n = self.model.num_blocks
        profile = self.planner.profile.blocks
        exited = False
        with torch.inference_mode():
            for k in range(start, stop):
                block = self._blocks[k]
                t0 = time.perf_counter()
                z = block(z)
                ms = (time.perf_counter() - t0) * 1e3
                gate = getattr(block, "last_ran", None)  # a gated block: did its branch run?
                ran = True if gate is None else bool(gate.any())
                prof = profile[k]
                gated_ms = prof.open_ms if ran else prof.skip_ms
                device_ms = self._device_ms(ms, gated_ms if gated_ms is not None else prof.time_ms)
                wall += ms
                charged += device_ms
                steps.append(Step(StepKind.COMPUTE, 0, device_ms, k, 0, ms))
                path.append(PathEntry(k, 0, ran))
                if self.exits is None or k + 1 >= n:
                    continue
                attempt = self.exits.attempt(k + 1, z, path)
                if attempt is None:
                    continue
                head_ms = attempt.profiled_ms
                device_ms = self._device_ms(
                    attempt.wall_ms, head_ms if head_ms is not None else attempt.wall_ms
                )
                wall += attempt.wall_ms
                charged += device_ms
                steps.append(Step(StepKind.EXIT, 0, device_ms, k + 1, 0, attempt.wall_ms))
                if attempt.fired:
                    z, exited = attempt.logits, True
                    break
        return _LocalRun(z, await self._emulate(charged, wall), exited)

    def _device_ms(self, wall_ms: float, profiled_ms: float) -> float:
        base = profiled_ms if self.emulation == "profile" else wall_ms
        return base * self.factor

    async def _emulate(self, device_ms: float, wall_ms: float) -> float:
        """Sleep so that this work took ``device_ms`` in all; returns the sleep (ms)."""
        extra = max(0.0, device_ms - wall_ms)
        if extra > 0:
            await asyncio.sleep(extra / 1e3)
        return extra

    async def infer(self, x: torch.Tensor, request_id: str | None = None) -> ClientResult:
        """Run one input across the tiers (see the module docstring).

        ``x`` is ``(batch, *input_shape)``; a single ``(C, H, W)`` image gets a batch dim.
        """
        t_start = time.perf_counter()
        rid = request_id or uuid.uuid4().hex
        if x.dim() == 3:
            x = x.unsqueeze(0)
        self._maybe_probe_rtt()
        plan = self.planner.plan([e.estimate(self.now_s()) for e in self.estimators])
        n = self.model.num_blocks
        cut = plan.boundaries[1]
        steps: list[Step] = []
        path: list[PathEntry] = []
        z, emulated, exited = await self._run_local(x, 0, cut, steps, path)
        outcome = _Outcome(None, 0, 0)
        output = z
        posted = cut < n and not exited  # an exit that fired before the cut sends nothing
        if posted:
            codec = plan.codecs[0]
            if codec is None:
                raise PlanError(f"plan {plan.describe()} offloads cut {cut} without a codec")
            t0 = time.perf_counter()
            enc = get_codec(codec).encode(z)
            ms = (time.perf_counter() - t0) * 1e3
            cost = self.planner.profile.cuts[cut].codecs.get(codec)
            device_ms = self._device_ms(ms, cost.encode_ms if cost is not None else ms)
            steps.append(Step(StepKind.ENCODE, 0, device_ms, wall_ms=ms))
            emulated += await self._emulate(device_ms, ms)
            header = RequestHeader(
                model=self.model_name,
                weights=self.weights,
                request_id=rid,
                tier=1,
                next_block=cut,
                tensor=enc.header,
                plan=WirePlan(plan.boundaries, plan.codecs),
                path=tuple(path),
                deadline_ms=None,  # set per attempt to the budget left
            )
            outcome = await self._post(header, enc.payload, t_start, steps)
            answer = outcome.answer
            if answer is not None:
                output = answer.output_tensor()
                steps.extend(answer.steps)
                # the server's path continues ours (it got ours in the header)
                mine = tuple(path)
                path = list(answer.path if answer.path[: len(mine)] == mine else mine + answer.path)
            else:  # finish here from the exact tensor we still hold: no codec loss
                steps.append(Step(StepKind.FALLBACK, 0, 0.0))
                output, extra, exited = await self._run_local(z, cut, n, steps, path)
                emulated += extra
        out = output.detach().reshape(output.shape[0], -1).float()
        answer = outcome.answer
        return ClientResult(
            request_id=rid,
            output=out,
            prediction=tuple(int(p) for p in out.argmax(1).tolist()),
            latency_ms=(time.perf_counter() - t_start) * 1e3,
            bytes_sent=outcome.bytes_sent,
            raw_input_left_device=cut == 0 and outcome.bytes_sent > 0,
            fell_back=posted and answer is None,
            remote_fell_back=answer is not None and answer.fell_back,
            answered_by=answer.tier if answer is not None else 0,
            plan=plan,
            path=tuple(path),
            steps=tuple(steps),
            server_ms=answer.server_ms if answer is not None else None,
            emulated_ms=emulated,
            attempts=outcome.attempts,
            exited_early=exited,
        )

    async def _post(
        self, header: RequestHeader, payload: bytes, t_start: float, steps: list[Step]
    ) -> _Outcome:
        """Post with retries under the deadline; no answer means the device finishes itself."""
        sent = 0
        attempts = 0
        for _ in range(self.retries + 1):
            left_s = self.deadline_s - (time.perf_counter() - t_start)
            if left_s <= 0:
                break
            attempts += 1
            body = encode_request(dataclasses.replace(header, deadline_ms=left_s * 1e3), payload)
            at_s = self.now_s()
            t0 = time.perf_counter()
            try:
                answer = await self._attempt(body, left_s, header.request_id)
            except _Unreachable as e:
                sent += len(body) if e.sent else 0
                continue
            sent += len(body)
            network_s = max(0.0, time.perf_counter() - t0 - answer.server_ms / 1e3)
            one_way_ms = self._observe(0, len(body), network_s, at_s)
            steps.append(Step(StepKind.TRANSFER, 0, one_way_ms, nbytes=len(body)))
            for step in answer.steps:  # later links, as the tier that used them measured them
                if step.kind == StepKind.TRANSFER and 0 < step.tier < len(self.estimators):
                    self._observe(step.tier, step.nbytes, step.ms / 1e3, at_s)
            return _Outcome(answer, attempts, sent)
        return _Outcome(None, attempts, sent)

    async def _attempt(self, body: bytes, timeout_s: float, request_id: str) -> ResponseBody:
        try:
            resp = await self._http.post(
                self.endpoint, content=body, headers=self._headers, timeout=timeout_s
            )
        except httpx.ConnectError as e:
            raise _Unreachable(f"connect: {e}", sent=False) from None
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise _Unreachable(f"{type(e).__name__}: {e}", sent=True) from None
        if resp.status_code >= 500:
            raise _Unreachable(f"HTTP {resp.status_code}", sent=True)
        if resp.status_code != 200:
            raise TierError(
                _error_message(resp), status=resp.status_code, request_id=request_id, url=self.url
            )
        answer = decode_response(resp.content)
        if answer.request_id != request_id:
            raise TierError(
                f"answer is for request {answer.request_id!r}", request_id=request_id, url=self.url
            )
        return answer

    def _observe(self, link: int, nbytes: int, network_s: float, at_s: float) -> float:
        """Feed link ``link``'s estimator one round trip; returns the one-way time used (ms).

        A sender sees only the round trip, ``request + rtt/2 + server + reply + rtt/2``;
        the answer says how long the receiver spent (``server_ms``: its compute
        and any forwarding), so ``network_s = total - server_ms``. The reply is
        small, so the one-way request time (serialisation + rtt/2, what
        :meth:`LinkEstimator.observe` wants) is ``network_s - rtt_est/2``. If
        that is not positive the round trip took less than half the RTT we
        believed: the RTT estimate is what is wrong, so ``network_s`` becomes
        an RTT sample instead. Later links are fed the same way from the
        ``transfer`` steps the edge reports (its ``ms`` is already
        ``round trip - downstream server_ms``).
        """
        est = self.estimators[link]
        one_way_s = network_s - est.rtt_ms / 2e3
        if one_way_s > 0:
            est.observe(nbytes, one_way_s, at_s)
        else:
            est.observe_rtt(network_s)
        return max(0.0, one_way_s) * 1e3

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
                self.estimators[0].observe_rtt(min(self._probe_rtts))
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
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, max(1, len(xs)))):
                tg.create_task(worker())
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
    )


def _error_message(resp: httpx.Response) -> str:
    try:
        obj = resp.json()
        msg = f"HTTP {resp.status_code}: {obj.get('error')}"
        if obj.get("field"):
            msg += f" (field {obj['field']})"
        return msg
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
