"""Batching the blocks of concurrent requests on one tier server.

Why: per-call overhead (op dispatch, thread hand-offs) dominates small models
at batch 1, so requests that sit at the same cut at the same time can share
one call. Each request still runs its own :class:`~collabinfer.runtime.engine.Engine`
step on a worker thread; only the block call goes through :class:`BlockBatcher`,
the engine's :data:`~collabinfer.runtime.engine.BlockExecutor` seam.

The rule (work-conserving): a call runs at once when no batch is computing;
calls that arrive while one computes gather per ``(block, shape)`` and go, in
arrival order of their groups, as soon as it ends. A group takes at most
``max_batch`` requests and gathers for at most ``window_ms`` (later arrivals
start a new group), so a lone request never waits for the window. The result
per request equals running it alone (blocks are per-sample in eval mode); each
request gets its own rows of a gated block's decisions (``last_ran`` is read
right after the block ran, before anything else overwrites it).

Example::

    >>> import threading, torch
    >>> from collabinfer.model.zoo import create_model
    >>> net = create_model("tiny-cnn").eval()
    >>> batcher = BlockBatcher(net, window_ms=5.0, max_batch=8)
    >>> out, gate, ms = batcher(0, torch.rand(2, 1, 28, 28))
    >>> tuple(out.shape), gate
    ((2, 4, 14, 14), None)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from collabinfer.model.blocks import BlockNet

__all__ = ["BlockBatcher"]


@dataclass
class _Group:
    """Calls waiting for the same ``(block, shape)`` batch."""

    created: float
    inputs: list[torch.Tensor] = field(default_factory=list)
    taken: bool = False  # a leader is computing it: nobody may join
    outputs: list[torch.Tensor] | None = None
    gates: list[torch.Tensor | None] | None = None
    ms: float = 0.0
    error: BaseException | None = None


class BlockBatcher:
    """A thread-safe block executor that batches concurrent calls (see the module doc)."""

    def __init__(
        self,
        model: BlockNet,
        window_ms: float,
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.blocks = tuple(model.blocks)
        self.window_s = window_ms / 1e3
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._open: dict[tuple[int, tuple[int, ...]], _Group] = {}
        self._queue: deque[_Group] = deque()  # groups not yet taken, oldest first
        self._busy = False

    def __call__(self, k: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        key = (k, tuple(z.shape[1:]))
        with self._cond:
            now = time.perf_counter()
            group = self._open.get(key)
            if (
                group is None
                or group.taken
                or len(group.inputs) >= self.max_batch
                or now - group.created > self.window_s
            ):
                group = self._open[key] = _Group(now)
                self._queue.append(group)
            slot = len(group.inputs)
            group.inputs.append(z)
            while not group.taken:
                if not self._busy and self._queue[0] is group:
                    self._busy, group.taken = True, True
                    self._queue.popleft()
                    if self._open.get(key) is group:
                        del self._open[key]
                    break
                self._cond.wait()
            else:  # another thread took the group: wait for its result
                while group.outputs is None and group.error is None:
                    self._cond.wait()
                return self._share(group, slot)
        try:  # this thread leads: compute outside the lock
            self._compute(k, group)
        except BaseException as exc:  # every waiting request gets the failure
            group.error = exc
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return self._share(group, slot)

    def _compute(self, k: int, group: _Group) -> None:
        inputs = group.inputs
        if self.on_batch is not None:
            self.on_batch(len(inputs))
        sizes = [z.shape[0] for z in inputs]
        z = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        block = self.blocks[k]
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = block(z)
        group.ms = (time.perf_counter() - t0) * 1e3
        gate = getattr(block, "last_ran", None)
        group.gates = list(gate.split(sizes)) if gate is not None else [None] * len(sizes)
        group.outputs = list(out.split(sizes))

    @staticmethod
    def _share(group: _Group, slot: int) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        if group.error is not None:
            raise group.error
        assert group.outputs is not None and group.gates is not None
        return group.outputs[slot], group.gates[slot], group.ms
