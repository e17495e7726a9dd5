"""Per-hop overhead of the tier server: a real HTTP hop on loopback vs the same work in-process.

The State is a (1, 16, 16, 16) float32 tensor (16 KiB as fp32) at cut 0 of a
two-block model (global pool + a 16x10 linear layer), so the server's compute
is trivial and what is measured is the hop: framing, HTTP over a keep-alive
loopback connection (httpx -> uvicorn), the event loop, the worker-thread
hand-offs, the JSON answer. Unshaped: no relay. Both sides do the same wire
work (encode the request, validate, decode the tensor, run the blocks, build
and parse the JSON answer); only the HTTP hop differs. Runs are interleaved so
drift hits both equally. Target: median difference <= 2 ms.

The server runs in its own process by default (tiers do not share a GIL);
``--server thread`` runs it in a thread of this process instead.

    PYTHONPATH=src python benchmarks/bench_server_hop.py [--repeats 300] [--server process]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack

import httpx
import torch
from torch import nn

from collabinfer.codec import get_codec
from collabinfer.model.blocks import BlockNet
from collabinfer.model.checkpoint import weights_hash
from collabinfer.runtime.engine import Charger, Engine
from collabinfer.runtime.policy import PlanFollower
from collabinfer.serve.server import ServerConfig, create_app, free_port, serve_in_thread
from collabinfer.serve.wire import (
    HostedModel,
    RequestHeader,
    ResponseBody,
    WirePlan,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    state_from_request,
)

NAME = "hop-16k"
SHAPE = (16, 16, 16)  # 4096 floats: 16 KiB at fp32


def build_model(seed: int = 0) -> BlockNet:
    torch.manual_seed(seed)
    blocks: list[tuple[str, nn.Module]] = [
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("fc", nn.Linear(SHAPE[0], 10)),
    ]
    return BlockNet(blocks, input_shape=SHAPE).eval()


def _serve_process(port: int, seed: int) -> None:
    import uvicorn

    torch.set_num_threads(1)
    app = create_app(ServerConfig("edge", 1), build_model(seed), NAME)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _start_process(stack: ExitStack, seed: int) -> str:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=_serve_process, args=(port, seed), daemon=True)
    proc.start()
    stack.callback(lambda: (proc.terminate(), proc.join(10)))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # up to ~30 s for the child to import torch and bind
        try:
            if httpx.get(f"{url}/v2/health/ready", trust_env=False).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        if not proc.is_alive():
            break
        time.sleep(0.05)
    raise SystemExit("the server process did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server", choices=("process", "thread"), default="process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = build_model(args.seed)
    hosted = HostedModel.from_model(NAME, net, 0, net.num_blocks, tier=1)
    x = torch.rand((1, *SHAPE), generator=torch.Generator().manual_seed(args.seed + 1))
    enc = get_codec("fp32").encode(x)
    plan = WirePlan((0, 0, net.num_blocks), ("fp32", None))

    def header(i: int) -> RequestHeader:  # fresh ids: the server's retry cache never answers
        return RequestHeader(NAME, weights_hash(net), f"hop-{i}", 1, 0, enc.header, plan)

    engine = Engine(net, PlanFollower(), Charger.for_tier(1.0), check_finite=True)

    def in_process(i: int) -> ResponseBody:  # what the server does, minus HTTP
        h, payload = decode_request(encode_request(header(i), enc.payload), 2**24)
        hosted.validate(h, payload)
        state = state_from_request(h, payload)
        engine.advance(state)
        return decode_response(encode_response(ResponseBody.from_state(state, 0.0)))

    with ExitStack() as stack:
        if args.server == "process":
            url = _start_process(stack, args.seed)
        else:
            app = create_app(ServerConfig("edge", 1), build_model(args.seed), NAME)
            url = stack.enter_context(serve_in_thread(app))
        client = stack.enter_context(httpx.Client(base_url=url, trust_env=False))
        endpoint = f"/v2/models/{NAME}/infer"

        def over_http(i: int) -> ResponseBody:
            r = client.post(endpoint, content=encode_request(header(i), enc.payload))
            r.raise_for_status()
            return decode_response(r.content)

        assert torch.equal(over_http(-1).output_tensor(), in_process(-1).output_tensor())
        runs: list[tuple[Callable[[int], ResponseBody], list[float]]] = [
            (in_process, []),
            (over_http, []),
        ]
        for i in range(args.warmup + args.repeats):
            for fn, times in runs:  # interleaved
                t0 = time.perf_counter()
                fn(i)
                if i >= args.warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
    local, http = (statistics.median(t) for _, t in runs)
    p90 = statistics.quantiles(runs[1][1], n=10)[-1]
    print(
        f"server hop, {enc.payload_bytes} B fp32 State, {args.repeats} interleaved repeats, "
        f"server in a {args.server}, 1 torch thread, loopback, unshaped"
    )
    print(f"in-process median {local:.3f} ms; HTTP hop median {http:.3f} ms (p90 {p90:.3f} ms)")
    print(f"hop overhead {http - local:.3f} ms (target <= 2 ms); ratio {http / local:.1f}x")


if __name__ == "__main__":
    main()
