"""What one tier does with one request: validate, compute, forward or answer, cache.

Why apart from :mod:`~collabinfer.serve.server`: the app there is routing and
lifecycle; this is the per-tier work of :class:`~collabinfer.runtime.chain.Chain`
done over HTTP. For a request at cut ``k`` for tier ``t`` the handler runs
blocks ``k .. plan.boundaries[t+1]-1``, then answers (last block done) or
forwards the State to the next tier, re-encoded with the plan's codec for this
tier, or as the very bytes it got if it ran no block (a relay). When the next
tier is unreachable, times out or answers 5xx and this tier hosts the
remaining blocks, it finishes the request itself (``fell_back: true``).
Answers are cached by ``request_id``, so a retry is never computed twice.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from collabinfer.codec import Encoded, get_codec
from collabinfer.errors import CodecError, ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.runtime.state import PathEntry, Step, StepKind
from collabinfer.runtime.tier import TierSpec, describe_tiers
from collabinfer.serve.batching import BlockRunner
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
)

if TYPE_CHECKING:
    from collabinfer.serve.server import ServerConfig

T = TypeVar("T")
INLINE_CODEC_BYTES = 256 * 1024
"""Codec work on tensors up to this size (fp32 bytes) runs on the event loop: it takes
well under a millisecond, less than the hand-off to the worker thread would add."""


class _NextTierFailed(WireError):
    """The next tier is unreachable, timed out or failed (5xx): this tier may fall back."""


class TierHandler:
    """The state behind one app: hosted model, metrics, worker, forward client, cache."""

    def __init__(
        self,
        config: ServerConfig,
        model: BlockNet,
        model_name: str,
        next_transport: httpx.AsyncBaseTransport | None = None,
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
        self._next_transport = next_transport
        self._executor: ThreadPoolExecutor | None = None
        self._runner: BlockRunner | None = None
        self._client: httpx.AsyncClient | None = None
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> tuple[BlockRunner, httpx.AsyncClient | None]:
        """Create the worker and the keep-alive client (on startup, or on first use)."""
        if self._runner is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="collabinfer-compute")
            self._runner = BlockRunner(
                self.model,
                self._executor,
                self.config.batch_window_ms,
                self.config.max_batch,
                self.metrics.batch_size.observe,
            )
        if self._client is None and self.config.next_url is not None:
            self._client = httpx.AsyncClient(
                transport=self._next_transport, timeout=self.config.next_timeout_s, trust_env=False
            )
        return self._runner, self._client

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._client, self._executor, self._runner = None, None, None

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
        tier, cut, n = header.tier, header.next_block, self.hosted.num_blocks
        end = self.hosted.end_of(header)
        steps: list[Step] = []
        path = list(header.path)
        z: torch.Tensor | None = None
        if cut < end:
            z = await self._decode(header, payload, steps)
            z = await self._compute(z, cut, end, tier, steps, path)
            cut = end
        if z is not None and cut >= n:
            return self._finish(header, z, path, steps, t0, fell_back=False)
        try:
            return await self._forward(header, z, payload, cut, path, steps, t0)
        except _NextTierFailed:
            if not (self.hosted.start <= cut and self.hosted.stop == n):
                raise
        steps.append(Step(StepKind.FALLBACK, tier, 0.0))
        self.metrics.fallbacks.inc()
        if z is None:
            z = await self._decode(header, payload, steps)
        z = await self._compute(z, cut, n, tier, steps, path)
        return self._finish(header, z, path, steps, t0, fell_back=True)

    def _finish(
        self,
        header: RequestHeader,
        z: torch.Tensor,
        path: list[PathEntry],
        steps: list[Step],
        t0: float,
        fell_back: bool,
    ) -> bytes:
        server_ms = (time.perf_counter() - t0) * 1e3
        body = ResponseBody.from_output(
            header.request_id, header.tier, z, path, steps, server_ms, fell_back
        )
        return encode_response(body)

    async def _timed(
        self, done: tuple[T, float], tier: int, kind: StepKind, steps: list[Step]
    ) -> T:
        """Record a timed codec step and emulate the tier's slowness for it."""
        result, ms = done
        steps.append(Step(kind, tier, ms * self.config.speed_factor, wall_ms=ms))
        await self._emulate(ms)
        return result

    async def _emulate(self, ms: float) -> None:
        if self.config.speed_factor > 1.0:
            await asyncio.sleep((self.config.speed_factor - 1.0) * ms / 1e3)

    async def _decode(
        self, header: RequestHeader, payload: bytes, steps: list[Step]
    ) -> torch.Tensor:
        runner, _ = self._start()
        if math.prod(header.tensor.shape) * 4 <= INLINE_CODEC_BYTES:
            done = _decode_job(header, payload)
        else:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(runner.executor, _decode_job, header, payload)
        z: torch.Tensor = await self._timed(done, header.tier, StepKind.DECODE, steps)
        return z

    async def _compute(
        self,
        z: torch.Tensor,
        start: int,
        stop: int,
        tier: int,
        steps: list[Step],
        path: list[PathEntry],
    ) -> torch.Tensor:
        runner, _ = self._start()
        result = await runner.run(z, start, stop)
        f = self.config.speed_factor
        ran = result.ran.any(dim=0).tolist()  # a gated block ran if it did for any row
        for k, ms, r in zip(range(start, stop), result.block_ms, ran, strict=True):
            steps.append(Step(StepKind.COMPUTE, tier, ms * f, k, 0, ms))
            path.append(PathEntry(k, tier, bool(r)))
        await self._emulate(sum(result.block_ms))
        return result.output

    async def _forward(
        self,
        header: RequestHeader,
        z: torch.Tensor | None,
        payload: bytes,
        cut: int,
        path: list[PathEntry],
        steps: list[Step],
        t0: float,
    ) -> bytes:
        """Send the State at ``cut`` to the next tier and relay its answer back."""
        runner, client = self._start()
        tier = header.tier
        tensor, data = header.tensor, payload  # a relay forwards the bytes unchanged
        if z is not None:
            codec = header.plan.codecs[tier]
            if codec is None:  # validate() already refuses such plans; keeps types honest
                raise WireError(f"the plan gives tier {tier} no codec", 422, "plan")
            if z.numel() * 4 <= INLINE_CODEC_BYTES:
                done = _encode_job(z, codec)
            else:
                loop = asyncio.get_running_loop()
                done = await loop.run_in_executor(runner.executor, _encode_job, z, codec)
            enc: Encoded = await self._timed(done, tier, StepKind.ENCODE, steps)
            tensor, data = enc.header, enc.payload
        timeout = self.config.next_timeout_s
        deadline = header.deadline_ms
        if deadline is not None:
            deadline = deadline - (time.perf_counter() - t0) * 1e3
            if deadline <= 0:
                raise _NextTierFailed("deadline passed before forwarding", 504, "deadline_ms")
            timeout = min(timeout, deadline / 1e3)
        if client is None or self.config.next_url is None:
            raise _NextTierFailed("this tier has no --next to forward to", 502, "next")
        nxt = replace(
            header,
            tier=tier + 1,
            next_block=cut,
            tensor=tensor,
            path=tuple(path),
            deadline_ms=deadline,
        )
        body = encode_request(nxt, data)
        url = f"{self.config.next_url.rstrip('/')}/v2/models/{self.hosted.name}/infer"
        headers = {"content-type": "application/octet-stream"}
        if self.config.token is not None:
            headers["authorization"] = f"Bearer {self.config.token}"
        t1 = time.perf_counter()
        try:
            r = await client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as e:
            raise _NextTierFailed(f"next tier timed out: {e!r}", 504, "next") from None
        except httpx.HTTPError as e:
            raise _NextTierFailed(f"next tier unreachable: {e!r}", 502, "next") from None
        rtt_ms = (time.perf_counter() - t1) * 1e3
        self.metrics.bytes_out.inc(len(body))
        if r.status_code >= 500:
            raise _NextTierFailed(
                f"next tier answered {r.status_code}: {r.text[:300]}", 502, "next"
            )
        if r.status_code != 200:
            msg = f"next tier refused the request ({r.status_code}): {r.text[:300]}"
            raise WireError(msg, 502, "next")
        try:
            down = decode_response(r.content)
        except WireError as e:
            raise _NextTierFailed(e.message, 502, "next") from None
        net_ms = max(0.0, rtt_ms - down.server_ms)
        steps.append(Step(StepKind.TRANSFER, tier, net_ms, None, len(body), net_ms))
        merged = replace(
            down,
            request_id=header.request_id,
            steps=(*steps, *down.steps),
            server_ms=(time.perf_counter() - t0) * 1e3,
        )
        return encode_response(merged)


def _decode_job(header: RequestHeader, payload: bytes) -> tuple[torch.Tensor, float]:
    """Decode on the worker; a payload that does not decode or is not finite is a 422."""
    t0 = time.perf_counter()
    try:
        z = get_codec(header.tensor.codec).decode(Encoded(header.tensor, payload))
    except CodecError as e:
        raise WireError(f"payload does not decode: {e.message}", 422, "payload") from None
    if not bool(torch.isfinite(z).all()):
        raise WireError("payload holds non-finite values", 422, "payload")
    return z, (time.perf_counter() - t0) * 1e3


def _encode_job(z: torch.Tensor, codec: str) -> tuple[Encoded, float]:
    t0 = time.perf_counter()
    try:
        enc = get_codec(codec).encode(z)
    except CodecError as e:
        raise WireError(f"cannot encode the State: {e.message}", 422, "payload") from None
    return enc, (time.perf_counter() - t0) * 1e3


def error_response(e: WireError) -> JSONResponse:
    """``{"error", "field"}`` with the error's status (and a challenge on 401)."""
    headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)
