"""What one tier does with one request: validate, continue the State, forward or answer.

Why apart from :mod:`~collabinfer.serve.server`: the app there is routing and
lifecycle; this is the tier's share of the chain over HTTP. A request is a
:class:`~collabinfer.runtime.state.State` on the wire
(:func:`~collabinfer.serve.wire.state_from_request`); the handler validates
it against the hosted model and continues it with the same
:class:`~collabinfer.runtime.engine.Engine` the in-process chain and the
device client run, under a :class:`~collabinfer.runtime.policy.PlanFollower`
(the device chose the plan). When the engine hands the State off, the handler
forwards it to the next tier (the very bytes it got, if it ran no block: a
relay) and merges the answer, which is checked like a request
(:func:`~collabinfer.serve.wire.check_answer`). When the next tier is
unreachable, times out, refuses or answers something that does not fit, and
this tier hosts the remaining blocks, the engine finishes the request here
(``fell_back: true``); a :class:`~collabinfer.runtime.breaker.CircuitBreaker`
then stops sending to it for a back-off, so a hung tier costs one deadline,
not one per request.

Work per request is bounded before anything is decoded: rows, decoded bytes
and the compute estimate (rows x the batch-1 block times measured at startup,
x the speed factor) against ``max_compute_ms`` and the request's deadline;
at most ``max_in_flight`` requests are admitted (503 with ``Retry-After``
beyond), and one whose deadline passed while it queued is not computed. A
request whose client went away is not computed either. Answers are cached by
``request_id`` *and* the body's digest, so a retry is never computed twice and
a reused id with another body is a 409, never someone else's answer. (That
retry cache is not the *semantic* cache: with ``reuse``, the engine looks a
request up by its features before the first block and flags a hit
``cached: true``; docs/reuse.md.)

Compute (and codec work) runs on a worker thread, never on the event loop;
with a batch window, the workers share block calls (:mod:`~collabinfer.serve.batching`).
An emulated tier (``speed_factor > 1``) is charged its profiled time x factor,
the engine's one rule, and sleeps the difference.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import torch
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from collabinfer.cache.reuse import Reuse
from collabinfer.errors import CodecError, ConfigError, LinkError, LinkTimeout
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.profile import Profile, median_ms, profile_model
from collabinfer.runtime.breaker import CircuitBreaker
from collabinfer.runtime.engine import Charger, Engine, Handoff, RemoteAnswer
from collabinfer.runtime.policy import PlanFollower
from collabinfer.runtime.state import State, StepKind
from collabinfer.serve.batching import BlockBatcher
from collabinfer.serve.config import ServerConfig
from collabinfer.serve.http import client_tls, post_capped
from collabinfer.serve.limits import AuthThrottle
from collabinfer.serve.metrics import ServerMetrics
from collabinfer.serve.wire import (
    HostedModel,
    RequestHeader,
    ResponseBody,
    WireError,
    answer_cap,
    check_answer,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_digest,
    request_header,
    state_from_request,
)
from collabinfer.topology.tiers import TierSpec, describe_tiers

log = logging.getLogger(__name__)

PROFILE_REPEATS = 20
"""Batch-1 repeats when an emulated server profiles its model at startup."""
BUDGET_REPEATS = 3
"""Batch-1 repeats of each hosted block behind the compute estimate of a factor-1 server."""
PROBE_TIMEOUT_S = 0.5
"""How long a breaker trial waits for the next tier's health check before giving up."""
FALLBACK_MARGIN_MS = 5.0
FALLBACK_MARGIN = 0.1
"""Kept back from a forward's timeout, beyond the estimate of finishing here: the
larger of 5 ms and a tenth of the deadline left, for the answer's way back (the
sender's clock started before ours) and the noise of a loaded machine."""


class TierHandler:
    """The state behind one app: hosted model, engine, metrics, workers, forward client, cache.

    ``profile`` is what an emulated tier is charged from; without one, an
    emulated server profiles its model once at startup.
    """

    def __init__(
        self,
        config: ServerConfig,
        model: BlockNet,
        model_name: str,
        next_transport: httpx.AsyncBaseTransport | None = None,
        profile: Profile | None = None,
        reuse: Reuse | None = None,
    ) -> None:
        stop = model.num_blocks if config.stop is None else config.stop
        if stop > model.num_blocks:
            msg = f"blocks {config.start}:{stop} exceed the model's {model.num_blocks} blocks"
            raise ConfigError(msg, model=model_name)
        self.config = config
        self.model = model.eval()
        self.hosted = HostedModel.from_model(
            model_name,
            model,
            config.start,
            stop,
            config.tier_index,
            max_rows=config.max_rows,
            max_decoded_bytes=config.max_decoded_bytes,
        )
        self.metrics = ServerMetrics(config.tier_name)
        self.hosted_names: tuple[str, ...] = (model_name,)  # the app's models (an error lists)
        self.reuse = reuse
        if reuse is not None:
            if config.tier_index is None:
                raise ConfigError("a semantic cache needs a known tier index", model=model_name)
            self.metrics.watch(reuse.cache)
        self.profile = profile
        self.breaker = CircuitBreaker(config.breaker_base_s, config.breaker_max_s)
        self.auth = AuthThrottle(config.auth_failures, config.auth_window_s)
        self._next_transport = next_transport
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._client: httpx.AsyncClient | None = None
        self._block_ms: tuple[float, ...] = ()  # batch-1 ms per block (hosted ones), x factor
        self._in_flight = 0
        self._done: OrderedDict[str, tuple[str, bytes]] = OrderedDict()  # id -> (digest, answer)
        self._pending: dict[str, tuple[str, asyncio.Future[bytes]]] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> tuple[Engine, ThreadPoolExecutor]:
        """Create the engine, the workers and the keep-alive client (on startup or first use)."""
        c = self.config
        if self._engine is None:
            if c.speed_factor != 1.0 and self.profile is None:
                self.profile = profile_model(self.model, self.hosted.name, PROFILE_REPEATS)
            self._block_ms = self._measure_blocks()
            batcher = None
            workers = 1  # one compute at a time: parallel torch calls only fight over cores
            if c.batch_window_ms > 0 and c.max_batch > 1:
                batcher = BlockBatcher(
                    self.model, c.batch_window_ms, c.max_batch, self.metrics.batch_size.observe
                )
                workers = c.max_batch  # requests wait for a shared block call on their worker
            self._engine = Engine(
                self.model,
                PlanFollower(),
                Charger.for_tier(c.speed_factor, self.profile),
                check_finite=True,
                executor=batcher if batcher is not None else self._count_single,
                reuse=None if self.reuse is None else {c.tier_index or 0: self.reuse},
            )
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="collabinfer-compute")
        if self._client is None and c.next_url is not None:
            self._client = httpx.AsyncClient(
                transport=self._next_transport,
                timeout=c.next_timeout_s,
                trust_env=False,
                verify=client_tls(c.next_ca),
            )
        assert self._executor is not None
        return self._engine, self._executor

    @torch.inference_mode()
    def _measure_blocks(self) -> tuple[float, ...]:
        """Batch-1 time of every block (0 for those not hosted) x the speed factor: the
        unit of the compute estimate. From the profile when there is one."""
        if self.profile is not None:
            times = [b.time_ms for b in self.profile.blocks]
        elif self.model.input_shape is None:
            return ()  # no sample to time with: the budget is not enforced
        else:
            z = torch.rand((1, *self.model.input_shape), generator=torch.Generator().manual_seed(0))
            times = []
            for k, block in enumerate(self.model.blocks):
                hosted = self.hosted.start <= k < self.hosted.stop
                times.append(
                    median_ms(lambda b=block, z=z: b(z), BUDGET_REPEATS) if hosted else 0.0
                )
                z = block(z)
        return tuple(t * self.config.speed_factor for t in times)

    def compute_ms(self, start: int, stop: int, rows: int) -> float:
        """Estimated compute of blocks ``start:stop`` for ``rows`` rows on this tier."""
        return rows * sum(self._block_ms[start:stop])

    def _count_single(
        self, k: int, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """The plain block call, counted as a batch of one (``batch_size`` is per block call)."""
        self.metrics.batch_size.observe(1)
        block = self.model.blocks[k]
        t0 = time.perf_counter()
        out = block(z)
        ms = (time.perf_counter() - t0) * 1e3
        return out, getattr(block, "last_ran", None), ms

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._client, self._executor, self._engine = None, None, None

    # --- endpoints ---------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        """The bearer token, compared in constant time; an address that keeps
        failing waits (429) before its token is even looked at."""
        token = self.config.token
        if token is None:
            return
        address = request.client.host if request.client is not None else "?"
        wait_s = self.auth.check(address)
        if wait_s is not None:
            msg = f"too many failed authentications from {address}; retry in {wait_s:.0f} s"
            raise WireError(msg, 429, "authorization", retry_after_s=wait_s)
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            self.auth.failed(address)
            raise WireError("missing or wrong bearer token", 401, "authorization")

    def metadata(self) -> dict[str, Any]:
        c = self.config
        return {
            **self.hosted.metadata(),
            "tier": {
                "name": c.tier_name,
                "index": c.tier_index,
                "speed_factor": c.speed_factor,
                "emulation": describe_tiers([TierSpec(c.tier_name, c.speed_factor)]),
            },
            "next": c.next_url,
            "batching": {"window_ms": c.batch_window_ms, "max_batch": c.max_batch},
            "max_body_bytes": c.max_body_bytes,
            "limits": {
                "max_rows": c.max_rows,
                "max_decoded_bytes": c.max_decoded_bytes,
                "max_compute_ms": c.max_compute_ms,
                "max_in_flight": c.max_in_flight,
            },
        }

    async def infer(self, name: str, request: Request) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            self.authorize(request)
            if name != self.hosted.name:
                hosted = ", ".join(self.hosted_names)
                raise WireError(f"unknown model {name!r}; hosted: {hosted}", 404, "model")
            if self._in_flight >= self.config.max_in_flight:  # shed before the body is read
                msg = f"{self._in_flight} requests in flight, at most {self.config.max_in_flight}"
                raise WireError(msg, 503, "load", retry_after_s=1.0)
            self._in_flight += 1
            try:
                data = await self._admitted(request)
            finally:
                self._in_flight -= 1
            status = 200
            return Response(data, media_type="application/json")
        except WireError as e:
            status = e.status
            self.metrics.errors.labels(e.reason).inc()
            return error_response(e)
        except Exception:  # a bug: logged and counted; the reply still encodes
            log.exception("internal error on an infer request")
            self.metrics.errors.labels("internal").inc()
            return error_response(WireError("internal server error", 500))
        finally:
            self.metrics.requests.labels(str(status)).inc()
            self.metrics.latency.observe(time.perf_counter() - t0)

    async def _admitted(self, request: Request) -> bytes:
        """An admitted request: read, validate, bound, answer."""
        body = await self._read_body(request)
        # server_ms starts once the body is here: the upload is the network's time,
        # and the client subtracts server_ms to estimate exactly that
        t_body = time.perf_counter()
        header, payload = decode_request(body, self.config.max_body_bytes)
        self.hosted.validate(header, payload)
        self._start()
        deadline_at = None
        if header.deadline_ms is not None:
            deadline_at = t_body + header.deadline_ms / 1e3
        self._check_budget(header, deadline_at)
        return await self._answer(header, payload, t_body, deadline_at, request)

    def _check_budget(self, header: RequestHeader, deadline_at: float | None) -> None:
        """Refuse at once what would cost more compute than allowed, or than the deadline
        leaves (the device then finishes the input itself, without waiting for us)."""
        rows = header.tensor.shape[0]
        end = min(self.hosted.end_of(header), self.hosted.stop)
        est = self.compute_ms(header.next_block, end, rows)
        if est > self.config.max_compute_ms:
            msg = (
                f"~{est:.0f} ms of compute for {rows} rows, at most {self.config.max_compute_ms:g}"
            )
            raise WireError(msg, 413, "tensor.shape")
        if deadline_at is not None and est > (deadline_at - time.perf_counter()) * 1e3:
            raise WireError(
                f"~{est:.0f} ms of compute cannot meet the deadline", 504, "deadline_ms"
            )

    async def _read_body(self, request: Request) -> bytes:
        """The body, refusing (413) as soon as it is known to exceed the cap, and (408)
        when it is not complete within ``body_timeout_s``."""
        cap = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise WireError(f"body is {declared} bytes, at most {cap}", 413, "body")
        buf = bytearray()
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                async for chunk in request.stream():
                    buf += chunk
                    if len(buf) > cap:
                        raise WireError(f"body exceeds {cap} bytes", 413, "body")
        except TimeoutError:
            msg = f"body not complete within {self.config.body_timeout_s:g} s"
            raise WireError(msg, 408, "body") from None
        except ClientDisconnect:
            raise WireError("client went away before the body was complete", 400, "body") from None
        self.metrics.bytes_in.inc(len(buf))
        return bytes(buf)

    # --- one request -------------------------------------------------------------------------

    async def _answer(
        self,
        header: RequestHeader,
        payload: bytes,
        t0: float,
        deadline_at: float | None,
        request: Request,
    ) -> bytes:
        """The cached answer for a retried ``request_id`` with the same body, else a
        fresh one (cached); the same id with another body is a 409."""
        rid = header.request_id
        digest = request_digest(header, payload)
        seen = self._done.get(rid)
        pending = self._pending.get(rid)
        first = seen[0] if seen is not None else pending[0] if pending is not None else digest
        if first != digest:
            msg = f"request_id {rid} was already used with another body"
            raise WireError(msg, 409, "request_id")
        if seen is not None:
            self._done.move_to_end(rid)
            self.metrics.cache_hits.inc()
            return seen[1]
        if pending is not None:  # a retry while the first attempt is still running
            self.metrics.cache_hits.inc()
            return await asyncio.shield(pending[1])
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (digest, fut)  # before any await: a concurrent retry waits on it
        self.metrics.queue_depth.inc()
        try:
            if await _gone(request):  # e.g. we were frozen and the sender gave up
                raise WireError("the client went away before compute began", 499, "client")
            self.metrics.computations.inc()
            data = await self._process(header, payload, t0, deadline_at)
            fut.set_result(data)
        except Exception as exc:  # hand the failure to any waiting retry, uncached
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            self.metrics.queue_depth.dec()
            self._pending.pop(rid, None)
            if not fut.done():
                fut.cancel()
        self._done[rid] = (digest, data)
        while len(self._done) > self.config.cache_size:
            self._done.popitem(last=False)
        return data

    async def _process(
        self, header: RequestHeader, payload: bytes, t0: float, deadline_at: float | None
    ) -> bytes:
        """Continue the State the request carries; forward it on, or fall back here."""
        engine, _ = self._start()
        state = state_from_request(header, payload)
        handoff = await self._advance(state, deadline_at)
        while handoff is not None:
            try:
                answer, net_s, nbytes = await self._forward(state, handoff, header, deadline_at)
            except LinkError as e:
                if not self._hosts_the_rest(state):
                    status = 504 if isinstance(e, LinkTimeout) else 502
                    raise WireError(e.message, status, "next") from None
                self.metrics.fallbacks.inc()
                engine.fall_back(state, handoff)
                handoff = await self._advance(state, None)  # answer late rather than never
                continue
            engine.delivered(state, handoff, net_s, nbytes=nbytes)
            engine.answered(state, answer)
            break
        server_ms = (time.perf_counter() - t0) * 1e3
        if self.reuse is not None:
            self._observe_reuse(state)
        return encode_response(ResponseBody.from_state(state, server_ms))

    def _observe_reuse(self, state: State) -> None:
        """The cache's share of this request (its lookup, and the insert after a miss)."""
        mine = [s for s in state.trace.steps if s.kind == StepKind.CACHE and s.tier == state.tier]
        hist = self.metrics.reuse_seconds
        for i, step in enumerate(mine):
            hist.labels("lookup" if i == 0 else "insert").observe(step.wall_ms / 1e3)

    def reuse_stats(self) -> dict[str, Any]:
        """``GET /v2/cache``: the semantic cache's counters and the rule per cut."""
        if self.reuse is None:
            raise WireError("this tier runs no semantic cache (serve --cache-mb)", 404, "cache")
        rules = {str(c): r.to_json() for c, r in sorted(self.reuse.rules.items())}
        keys = {str(c): k.version for c, k in sorted(self.reuse.keys.items())}
        return {**self.reuse.cache.stats().to_json(), "rules": rules, "keys": keys}

    def _hosts_the_rest(self, state: State) -> bool:
        """Whether this tier can finish the State itself (it hosts every block left)."""
        return self.hosted.start <= state.next_block and self.hosted.stop == self.hosted.num_blocks

    async def _advance(self, state: State, deadline_at: float | None) -> Handoff | None:
        """The engine's step on a worker (inline for a relay: no block, no codec work);
        then sleep what an emulated tier was charged beyond what it took. A request
        whose deadline passed while it waited for a worker is not computed (504)."""
        engine, executor = self._start()
        since = len(state.trace.steps)
        relay = state.plan is not None and state.next_block >= state.plan.end_of(state.tier)
        try:
            if relay and not state.local_only:
                handoff = engine.advance(state)
            else:
                loop = asyncio.get_running_loop()
                step = _before_deadline(engine.advance, deadline_at)
                handoff = await loop.run_in_executor(executor, step, state)
        except CodecError as e:
            raise WireError(f"payload does not decode: {e.message}", 422, "payload") from None
        extra_ms = state.trace.unslept_ms(state.tier, since)
        if self.config.speed_factor > 1.0 and extra_ms > 0:
            await asyncio.sleep(extra_ms / 1e3)
        return handoff

    async def _forward(
        self, state: State, handoff: Handoff, header: RequestHeader, deadline_at: float | None
    ) -> tuple[RemoteAnswer, float, int]:
        """Post the State to the next tier; returns its answer, the network seconds
        (round trip less the next tier's own time) and the bytes sent. Any failure
        to get a valid answer in time is a :class:`LinkError` (the caller may fall
        back) and opens the breaker; while it is open nothing is sent."""
        self._start()
        client, url_base = self._client, self.config.next_url
        if client is None or url_base is None:
            raise LinkError("this tier has no --next to forward to")
        timeout = self.config.next_timeout_s
        deadline = None
        if deadline_at is not None:
            deadline = (deadline_at - time.perf_counter()) * 1e3
            reserve = max(FALLBACK_MARGIN_MS, FALLBACK_MARGIN * deadline)
            if self._hosts_the_rest(state):  # leave the time to finish here if it fails
                rows = handoff.encoded.header.shape[0]
                reserve += self.compute_ms(handoff.cut, self.hosted.num_blocks, rows)
            if deadline - reserve <= 0:
                raise LinkTimeout("deadline too close to forward", request_id=state.request_id)
            timeout = min(timeout, (deadline - reserve) / 1e3)
        permit = self.breaker.allow()
        if permit == "refuse":
            wait = self.breaker.retry_in_s()
            raise LinkError(f"next tier failed recently; next trial in {wait:.1f} s")
        try:
            if permit == "trial":
                await self._probe_next(client, url_base, min(timeout, PROBE_TIMEOUT_S))
            result = await self._post_next(
                client, url_base, state, handoff, header, deadline, timeout
            )
        except LinkError:
            self.breaker.failure()
            raise
        except BaseException:  # cancelled mid-trial: let the next sender try
            if permit == "trial":
                self.breaker.failure()
            raise
        self.breaker.success()
        return result

    async def _probe_next(self, client: httpx.AsyncClient, url_base: str, timeout: float) -> None:
        """A breaker trial starts with the next tier's health check: a frozen tier
        costs this much, not a whole deadline."""
        try:
            r = await client.get(f"{url_base.rstrip('/')}/v2/health/ready", timeout=timeout)
        except httpx.HTTPError as e:
            raise LinkError(f"next tier still down: {type(e).__name__}") from None
        if r.status_code != 200:
            raise LinkError(f"next tier not ready: HTTP {r.status_code}")

    async def _post_next(
        self,
        client: httpx.AsyncClient,
        url_base: str,
        state: State,
        handoff: Handoff,
        header: RequestHeader,
        deadline: float | None,
        timeout: float,
    ) -> tuple[RemoteAnswer, float, int]:
        nxt = request_header(state, handoff, header.model, header.weights, deadline)
        body = encode_request(nxt, handoff.encoded.payload)
        url = f"{url_base.rstrip('/')}/v2/models/{self.hosted.name}/infer"
        headers = {"content-type": "application/octet-stream"}
        if self.config.token is not None:
            headers["authorization"] = f"Bearer {self.config.token}"
        rows = handoff.encoded.header.shape[0]
        t1 = time.perf_counter()
        try:
            code, content = await post_capped(client, url, body, headers, timeout, answer_cap(rows))
        except httpx.HTTPError as e:
            raise LinkError(f"next tier unreachable: {type(e).__name__}: {e}") from None
        rtt_s = time.perf_counter() - t1
        self.metrics.bytes_out.inc(len(body))
        if code != 200:
            raise LinkError(f"next tier answered {code}: {_excerpt(content)}")
        try:
            down = decode_response(content)
            check_answer(down, nxt.request_id, rows, self.hosted.num_classes)
        except WireError as e:
            raise LinkError(e.message) from None
        return down.to_answer(), max(0.0, rtt_s - down.server_ms / 1e3), len(body)


async def _gone(request: Request) -> bool:
    """Whether the client has disconnected. uvicorn's request cycle knows without a
    receive (Starlette's ``is_disconnected`` costs ~150 us a request); other
    servers (the in-process test transport) get Starlette's check."""
    cycle = getattr(request.receive, "__self__", None)
    flag = getattr(cycle, "disconnected", None)
    if isinstance(flag, bool):
        return flag
    return await request.is_disconnected()


def _before_deadline(
    step: Callable[[State], Handoff | None], deadline_at: float | None
) -> Callable[[State], Handoff | None]:
    """``step``, refused (504) if it only gets a worker after ``deadline_at``."""

    def run(state: State) -> Handoff | None:
        if deadline_at is not None and time.perf_counter() > deadline_at:
            raise WireError("deadline passed while queued for compute", 504, "deadline_ms")
        return step(state)

    return run


def _excerpt(content: bytes, limit: int = 200) -> str:
    text = content[:limit].decode("utf-8", "replace")
    return text.encode("ascii", "backslashreplace").decode()


def error_response(e: WireError) -> Response:
    """``{"error", "field"}`` with the error's status, a challenge on 401 and
    ``Retry-After`` on 429/503. ASCII JSON: whatever the message echoes encodes."""
    headers = {"www-authenticate": "Bearer"} if e.status == 401 else {}
    if e.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(e.retry_after_s)))
    data = json.dumps(e.to_json(), ensure_ascii=True).encode()
    return Response(data, status_code=e.status, headers=headers, media_type="application/json")
