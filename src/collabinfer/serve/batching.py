"""Running blocks off the event loop, optionally batching concurrent requests.

Why: torch compute on the event loop would stall ``/v2/health/ready`` and every
other request, so blocks run on a one-worker executor (one worker: the CPU is
the bottleneck, and parallel torch calls only fight over cores). With a batch
window, requests that arrive within ``window_ms`` of each other and sit at the
same cut, running the same block range, are concatenated along the batch
dimension, run once and split back: the result per request equals running it
alone (blocks are per-sample in eval mode), while per-call overhead is shared.

Example::

    >>> import asyncio, concurrent.futures, torch
    >>> from collabinfer.model.zoo import create_model
    >>> net = create_model("tiny-cnn").eval()
    >>> pool = concurrent.futures.ThreadPoolExecutor(1)
    >>> runner = BlockRunner(net, pool, window_ms=5.0, max_batch=8)
    >>> async def two():
    ...     xs = [torch.rand(1, 1, 28, 28) for _ in range(2)]
    ...     return await asyncio.gather(*(runner.run(x, 0, 4) for x in xs))
    >>> [r.batch_size for r in asyncio.run(two())]
    [2, 2]
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

from collabinfer.model.blocks import BlockNet


@dataclass(frozen=True)
class RunResult:
    """One request's share of a compute call."""

    output: torch.Tensor  # the tensor at cut ``stop`` for this request's rows
    block_ms: tuple[float, ...]  # wall ms of each block, for the whole call
    batch_size: int  # requests that ran together in the call
    ran: torch.Tensor  # (rows, blocks) bool: the block's branch ran (a gate may skip it)


def run_blocks(model: BlockNet, z: torch.Tensor, start: int, stop: int) -> RunResult:
    """Blocks ``start .. stop-1`` under inference mode, timing each one (runs on a worker).

    A gated block's decisions (``last_ran``) are read here, right after it runs:
    once the worker moves on to another call they are overwritten.
    """
    blocks = model.blocks
    times: list[float] = []
    ran = torch.ones((z.shape[0], stop - start), dtype=torch.bool)
    with torch.inference_mode():
        for j, k in enumerate(range(start, stop)):
            t0 = time.perf_counter()
            z = blocks[k](z)
            times.append((time.perf_counter() - t0) * 1e3)
            gate = getattr(blocks[k], "last_ran", None)
            if gate is not None:
                ran[:, j] = gate
    return RunResult(z, tuple(times), 1, ran)


@dataclass
class _Group:
    """Requests waiting for the same (cut, stop, shape) batch."""

    items: list[tuple[torch.Tensor, asyncio.Future[RunResult]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BlockRunner:
    """Runs block ranges on ``executor``; batches when ``window_ms > 0``."""

    def __init__(
        self,
        model: BlockNet,
        executor: Executor,
        window_ms: float = 0.0,
        max_batch: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.executor = executor
        self.window_s = window_ms / 1e3
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._groups: dict[tuple[int, int, tuple[int, ...]], _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0  # batches in the executor now

    async def run(self, z: torch.Tensor, start: int, stop: int) -> RunResult:
        """The tensor at cut ``stop`` for ``z`` at cut ``start``, plus timings."""
        loop = asyncio.get_running_loop()
        if self.window_s <= 0 or self.max_batch <= 1:
            if self.on_batch is not None:
                self.on_batch(1)
            job = functools.partial(run_blocks, self.model, z, start, stop)
            return await loop.run_in_executor(self.executor, job)
        key = (start, stop, tuple(z.shape[1:]))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            group.timer = loop.call_later(self.window_s, self._flush, key)
        fut: asyncio.Future[RunResult] = loop.create_future()
        group.items.append((z, fut))
        # Work-conserving: an idle runner does not make a lone request wait out the
        # window; requests that arrive while a batch runs gather and go when it ends.
        if len(group.items) >= self.max_batch or self._running == 0:
            self._flush(key)
        return await fut

    def _flush(self, key: tuple[int, int, tuple[int, ...]]) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        self._running += 1  # counted from now, not from when the task starts
        task = asyncio.get_running_loop().create_task(self._run_group(key, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_group(self, key: tuple[int, int, tuple[int, ...]], group: _Group) -> None:
        start, stop, _ = key
        items = group.items
        if self.on_batch is not None:
            self.on_batch(len(items))
        sizes = [z.shape[0] for z, _ in items]
        z = items[0][0] if len(items) == 1 else torch.cat([z for z, _ in items])
        job = functools.partial(run_blocks, self.model, z, start, stop)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, job)
        except Exception as exc:  # hand any compute failure to every waiting request
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._running -= 1
            if self._running == 0:  # the executor is free: what gathered meanwhile goes now
                for pending in list(self._groups):
                    self._flush(pending)
        parts = result.output.split(sizes)
        rans = result.ran.split(sizes)
        for (_, fut), part, ran in zip(items, parts, rans, strict=True):
            if not fut.done():  # the request may have been cancelled meanwhile
                fut.set_result(RunResult(part, result.block_ms, len(items), ran))
