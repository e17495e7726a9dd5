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
relay) and merges the answer. When the next tier is unreachable, times out or
answers 5xx and this tier hosts the remaining blocks, the engine finishes the
request here (``fell_back: true``). Answers are cached by ``request_id``, so a
retry is never computed twice.

Compute (and codec work) runs on a worker thread, never on the event loop;
with a batch window, the workers share block calls (:mod:`~collabinfer.serve.batching`).
An emulated tier (``speed_factor > 1``) is charged its profiled time x factor,
the engine's one rule, and sleeps the difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from collabinfer.errors import CodecError, ConfigError, LinkError, LinkTimeout
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.profile import Profile, profile_model
from collabinfer.runtime.engine import Charger, Engine, Handoff, RemoteAnswer
from collabinfer.runtime.policy import PlanFollower
from collabinfer.runtime.state import State
from collabinfer.serve.batching import BlockBatcher
from collabinfer.serve.config import ServerConfig
from collabinfer.serve.metrics import ServerMetrics
from collabinfer.serve.wire import (
    HostedModel,
    RequestHeader,
    ResponseBody,
    WireError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_header,
    state_from_request,
)
from collabinfer.topology.tiers import TierSpec, describe_tiers

PROFILE_REPEATS = 20
"""Batch-1 repeats when an emulated server profiles its model at startup."""


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
    ) -> None:
        stop = model.num_blocks if config.stop is None else config.stop
        if stop > model.num_blocks:
            msg = f"blocks {config.start}:{stop} exceed the model's {model.num_blocks} blocks"
            raise ConfigError(msg, model=model_name)
        self.config = config
        self.model = model.eval()
        self.hosted = HostedModel.from_model(
            model_name, model, config.start, stop, config.tier_index
        )
        self.metrics = ServerMetrics(config.tier_name)
        self.profile = profile
        self._next_transport = next_transport
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._client: httpx.AsyncClient | None = None
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> tuple[Engine, ThreadPoolExecutor]:
        """Create the engine, the workers and the keep-alive client (on startup or first use)."""
        c = self.config
        if self._engine is None:
            if c.speed_factor != 1.0 and self.profile is None:
                self.profile = profile_model(self.model, self.hosted.name, PROFILE_REPEATS)
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
            )
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="collabinfer-compute")
        if self._client is None and c.next_url is not None:
            self._client = httpx.AsyncClient(
                transport=self._next_transport, timeout=c.next_timeout_s, trust_env=False
            )
        assert self._executor is not None
        return self._engine, self._executor

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
        token = self.config.token
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
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
        }

    async def infer(self, name: str, request: Request) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            self.authorize(request)
            if name != self.hosted.name:
                raise WireError(f"unknown model {name!r}; hosted: {self.hosted.name}", 404, "model")
            body = await self._read_body(request)
            # server_ms starts once the body is here: the upload is the network's time,
            # and the client subtracts server_ms to estimate exactly that
            t_body = time.perf_counter()
            header, payload = decode_request(body, self.config.max_body_bytes)
            self.hosted.validate(header, payload)
            data = await self._answer(header, payload, t_body)
            status = 200
            return Response(data, media_type="application/json")
        except WireError as e:
            status = e.status
            self.metrics.errors.labels(e.reason).inc()
            return error_response(e)
        except Exception:  # counted, then left to the framework's 500 handler
            self.metrics.errors.labels("internal").inc()
            raise
        finally:
            self.metrics.requests.labels(str(status)).inc()
            self.metrics.latency.observe(time.perf_counter() - t0)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refusing (413) as soon as it is known to exceed the cap."""
        cap = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise WireError(f"body is {declared} bytes, at most {cap}", 413, "body")
        buf = bytearray()
        try:
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > cap:
                    raise WireError(f"body exceeds {cap} bytes", 413, "body")
        except ClientDisconnect:
            raise WireError("client went away before the body was complete", 400, "body") from None
        self.metrics.bytes_in.inc(len(buf))
        return bytes(buf)

    # --- one request -------------------------------------------------------------------------

    async def _answer(self, header: RequestHeader, payload: bytes, t0: float) -> bytes:
        """The cached answer for a retried ``request_id``, else a fresh one (cached)."""
        rid = header.request_id
        if rid in self._done:
            self._done.move_to_end(rid)
            self.metrics.cache_hits.inc()
            return self._done[rid]
        if rid in self._pending:  # a retry while the first attempt is still running
            self.metrics.cache_hits.inc()
            return await asyncio.shield(self._pending[rid])
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.metrics.computations.inc()
        self.metrics.queue_depth.inc()
        try:
            data = await self._process(header, payload, t0)
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
        self._done[rid] = data
        while len(self._done) > self.config.cache_size:
            self._done.popitem(last=False)
        return data

    async def _process(self, header: RequestHeader, payload: bytes, t0: float) -> bytes:
        """Continue the State the request carries; forward it on, or fall back here."""
        engine, _ = self._start()
        state = state_from_request(header, payload)
        handoff = await self._advance(state)
        while handoff is not None:
            try:
                answer, net_s, nbytes = await self._forward(state, handoff, header, t0)
            except LinkError as e:
                if not self._hosts_the_rest(state):
                    status = 504 if isinstance(e, LinkTimeout) else 502
                    raise WireError(e.message, status, "next") from None
                self.metrics.fallbacks.inc()
                engine.fall_back(state, handoff)
                handoff = await self._advance(state)
                continue
            engine.delivered(state, handoff, net_s, nbytes=nbytes)
            engine.answered(state, answer)
            break
        server_ms = (time.perf_counter() - t0) * 1e3
        return encode_response(ResponseBody.from_state(state, server_ms))

    def _hosts_the_rest(self, state: State) -> bool:
        """Whether this tier can finish the State itself (it hosts every block left)."""
        return self.hosted.start <= state.next_block and self.hosted.stop == self.hosted.num_blocks

    async def _advance(self, state: State) -> Handoff | None:
        """The engine's step on a worker (inline for a relay: no block, no codec work);
        then sleep what an emulated tier was charged beyond what it took."""
        engine, executor = self._start()
        since = len(state.trace.steps)
        relay = state.plan is not None and state.next_block >= state.plan.end_of(state.tier)
        try:
            if relay and not state.local_only:
                handoff = engine.advance(state)
            else:
                loop = asyncio.get_running_loop()
                handoff = await loop.run_in_executor(executor, engine.advance, state)
        except CodecError as e:
            raise WireError(f"payload does not decode: {e.message}", 422, "payload") from None
        extra_ms = state.trace.unslept_ms(state.tier, since)
        if self.config.speed_factor > 1.0 and extra_ms > 0:
            await asyncio.sleep(extra_ms / 1e3)
        return handoff

    async def _forward(
        self, state: State, handoff: Handoff, header: RequestHeader, t0: float
    ) -> tuple[RemoteAnswer, float, int]:
        """Post the State to the next tier; returns its answer, the network seconds
        (round trip less the next tier's own time) and the bytes sent. Any failure
        to get a valid answer is a :class:`LinkError` (the caller may fall back)."""
        self._start()
        client = self._client
        timeout = self.config.next_timeout_s
        deadline = header.deadline_ms
        if deadline is not None:
            deadline = deadline - (time.perf_counter() - t0) * 1e3
            if deadline <= 0:
                raise LinkTimeout("deadline passed before forwarding", request_id=state.request_id)
            timeout = min(timeout, deadline / 1e3)
        if client is None or self.config.next_url is None:
            raise LinkError("this tier has no --next to forward to")
        nxt = request_header(state, handoff, header.model, header.weights, deadline)
        body = encode_request(nxt, handoff.encoded.payload)
        url = f"{self.config.next_url.rstrip('/')}/v2/models/{self.hosted.name}/infer"
        headers = {"content-type": "application/octet-stream"}
        if self.config.token is not None:
            headers["authorization"] = f"Bearer {self.config.token}"
        t1 = time.perf_counter()
        try:
            r = await client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as e:
            raise LinkTimeout(f"next tier timed out: {e!r}") from None
        except httpx.HTTPError as e:
            raise LinkError(f"next tier unreachable: {e!r}") from None
        rtt_s = time.perf_counter() - t1
        self.metrics.bytes_out.inc(len(body))
        if r.status_code >= 500:
            raise LinkError(f"next tier answered {r.status_code}: {r.text[:300]}")
        if r.status_code != 200:
            msg = f"next tier refused the request ({r.status_code}): {r.text[:300]}"
            raise WireError(msg, 502, "next")
        try:
            down = decode_response(r.content)
        except WireError as e:
            raise LinkError(e.message) from None
        down = dataclasses.replace(down, request_id=header.request_id)
        return down.to_answer(), max(0.0, rtt_s - down.server_ms / 1e3), len(body)


def error_response(e: WireError) -> JSONResponse:
    """``{"error", "field"}`` with the error's status (and a challenge on 401)."""
    headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)
