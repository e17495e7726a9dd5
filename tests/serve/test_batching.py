"""The block batcher: concurrent calls share one block call and each gets its own rows back."""

from __future__ import annotations

import threading
import time

import torch

from collabinfer.model.gates import gate_net, gated_blocks
from collabinfer.model.zoo import create_model
from collabinfer.serve.batching import BlockBatcher


def _gated():
    torch.manual_seed(0)
    net = gate_net(create_model("fmnist-resnet")).eval()
    with torch.no_grad():  # gates that open for some inputs and not for others
        for _, block in gated_blocks(net):
            for p in block.gate.parameters():
                p.normal_(0.0, 2.0)
    return net


def _call_concurrently(batcher: BlockBatcher, k: int, inputs: list[torch.Tensor]):
    results: list[object] = [None] * len(inputs)

    def run(i: int) -> None:
        results[i] = batcher(k, inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_calls_share_a_block_call_and_get_their_own_rows() -> None:
    net = _gated()
    k, _ = gated_blocks(net)[0]
    sizes: list[int] = []
    batcher = BlockBatcher(net, window_ms=1000.0, max_batch=8, on_batch=sizes.append)
    real = batcher._compute

    def slow(k: int, group) -> None:  # the first call holds the block while others arrive
        time.sleep(0.05)
        real(k, group)

    batcher._compute = slow  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        z = net.run_until(torch.rand(6, 1, 28, 28, generator=g), k)
    inputs = [z[i : i + 1] for i in range(6)]
    results = _call_concurrently(batcher, k, inputs)
    assert sum(sizes) == 6 and len(sizes) < 6, "later calls gathered behind the first"
    block = net.blocks[k]
    with torch.inference_mode():
        for x, (out, gate, ms) in zip(inputs, results, strict=True):  # type: ignore[misc]
            alone = block(x)
            assert torch.allclose(out, alone, atol=1e-6)
            assert torch.equal(gate, block.last_ran), "each call gets its own gate decisions"
            assert ms > 0


def test_a_lone_call_runs_at_once_whatever_the_window() -> None:
    net = _gated()
    batcher = BlockBatcher(net, window_ms=60_000.0, max_batch=8)
    t0 = time.perf_counter()
    out, _, _ = batcher(0, torch.rand(1, 1, 28, 28))
    assert time.perf_counter() - t0 < 30.0  # far below the minute-long window
    assert out.shape[0] == 1


def test_a_failing_block_fails_every_call_of_its_batch() -> None:
    net = _gated()
    batcher = BlockBatcher(net, window_ms=1000.0, max_batch=8)
    bad = torch.rand(1, 3, 28, 28)  # wrong channel count for the stem
    results: list[BaseException | None] = []

    def run() -> None:
        try:
            batcher(0, bad)
            results.append(None)
        except RuntimeError as e:
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 3 and all(isinstance(r, RuntimeError) for r in results)
    out, _, _ = batcher(0, torch.rand(1, 1, 28, 28))  # and the batcher still serves
    assert out.shape[0] == 1
