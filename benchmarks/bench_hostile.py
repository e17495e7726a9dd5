# ruff: noqa: E501, RUF012  (a table of long literal cases; the fake server keeps class state)
"""The hostile-client review, replayed: what a tier server does now with each case.

Setup: real ``collabinfer serve`` subprocesses on loopback (``fmnist-resnet``,
seeded untrained weights: the cases are about the server, not the model), a
fake next tier / fake edge in this process where a case needs one that lies,
and raw sockets where HTTP itself is the attack. One row per case: the class
(the review's seven), the case, what the review saw before the fix (quoted
from the issue, not re-measured) and what happens now (statuses, wall time,
server memory or a concurrent health check's latency where that was the harm).
Defaults of ``collabinfer serve`` unless the row says otherwise. Run::

    PYTHONPATH=src python benchmarks/bench_hostile.py [--out rows.json]

About 2 minutes on a 2-core machine (the slow-client rows wait out real timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import torch

from collabinfer.codec import TensorHeader, get_codec
from collabinfer.model.checkpoint import weights_hash
from collabinfer.runtime.state import PathEntry
from collabinfer.serve.server import free_port, load_served_model
from collabinfer.serve.wire import RequestHeader, WirePlan, encode_request

MODEL = "fmnist-resnet"
TOKEN = "bench-token"
SRC = str(Path(__file__).resolve().parents[1] / "src")
ROWS: list[dict[str, str]] = []
NET = load_served_model(MODEL, untrained=True)
WEIGHTS = weights_hash(NET)
AUTH = {"authorization": f"Bearer {TOKEN}"}


def row(cls: str, case: str, before: str, now: str) -> None:
    ROWS.append({"class": cls, "case": case, "before": before, "now": now})
    print(f"[{cls}] {case}: {now}", flush=True)


@contextmanager
def serve(tier: str, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "COLLABINFER_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "collabinfer.cli", "serve", "--tier", tier, "--model", MODEL,
           "--untrained", "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        until = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1, trust_env=False).is_success:
                    break
            except httpx.HTTPError:
                if time.monotonic() > until or proc.poll() is not None:
                    raise SystemExit(f"{tier} did not start") from None
                time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def header(cut: int, codec: str, shape: tuple[int, ...], params: tuple[float, ...] = (),
           rid: str = "r1", boundaries: tuple[int, ...] | None = None,
           deadline_ms: float | None = None) -> RequestHeader:  # fmt: skip
    n = NET.num_blocks
    b = boundaries or (0, cut, n)
    codecs = (codec, None) if len(b) == 3 else (codec, codec, None)
    return RequestHeader(MODEL, WEIGHTS, rid, 1, cut, TensorHeader(codec, "float32", shape, params),
                         WirePlan(b, codecs), tuple(PathEntry(k, 0, True) for k in range(cut)),
                         deadline_ms)  # fmt: skip


def image_request(rid: str, x: torch.Tensor | None = None, **kw: object) -> bytes:
    x = torch.rand(1, 1, 28, 28) if x is None else x
    enc = get_codec("u8").encode(x)
    h = header(0, "u8", tuple(enc.header.shape), enc.header.params, rid, **kw)  # type: ignore[arg-type]
    return encode_request(h, enc.payload)


def post(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, float, bytes]:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=AUTH,
                   timeout=timeout, trust_env=False)  # fmt: skip
    return r.status_code, (time.perf_counter() - t0) * 1e3, r.content


def while_measuring(url: str, work: Callable[[], object], path: str = "/v2/health/ready") -> float:
    """The worst latency of ``path`` (ms) polled every 20 ms while ``work`` runs."""
    worst = [0.0]
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(trust_env=False) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get(f"{url}{path}", timeout=60)
                worst[0] = max(worst[0], (time.perf_counter() - t0) * 1e3)
                time.sleep(0.02)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(0.1)
    work()
    time.sleep(0.1)
    stop.set()
    t.join()
    return worst[0]


def bounded_work() -> None:
    with serve("edge") as (url, proc):
        rows = 4_194_304
        enc = get_codec("int8+zstd").encode(torch.zeros(1, 64))
        body = encode_request(header(8, "int8+zstd", (rows, 64), enc.header.params), enc.payload)
        before_mb, out = rss_mb(proc), {}

        def bomb() -> None:
            out["r"] = post(url, body)

        worst = while_measuring(url, bomb)
        code, ms, _ = out["r"]
        row("1 bounded work", f"int8+zstd [{rows:,}, 64] at cut 8 ({len(body):,} B)",
            "335 MB -> 4.6 GB, 63 s of compute, 860 MB answer, health stalled 21 s",
            f"{code} in {ms:.1f} ms; RSS {before_mb:.0f} -> {rss_mb(proc):.0f} MB; "
            f"health worst {worst:.1f} ms")  # fmt: skip
        enc = get_codec("u8+zstd").encode(torch.zeros(1, 1, 28, 28))
        big = encode_request(header(0, "u8+zstd", (4000, 1, 28, 28)), enc.payload)
        res: dict[str, tuple[int, float, bytes]] = {}
        t = threading.Thread(target=lambda: res.update(big=post(url, big)))
        t.start()
        res["normal"] = post(url, image_request("normal"))
        t.join()
        row("1 bounded work", f"u8+zstd 4,000 images ({len(big)} B) beside a normal request",
            "the normal request waited 9 s",
            f"{res['big'][0]} in {res['big'][1]:.1f} ms; the normal one {res['normal'][0]} in "
            f"{res['normal'][1]:.1f} ms")  # fmt: skip


def slow_clients() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with serve("edge", "--body-timeout-s", "5") as (url, proc):
        host, port = url.removeprefix("http://").split(":")
        addr = (host, int(port))
        idle = [socket.create_connection(addr) for _ in range(1017)]
        time.sleep(0.5)
        t0 = time.perf_counter()
        code, ms, _ = post(url, image_request("after-idle"))
        health = httpx.get(f"{url}/v2/health/ready", timeout=30, trust_env=False).status_code
        row("2 slow clients", "1,017 idle connections, then a client",
            "every client and the health check locked out",
            f"infer {code} in {ms:.1f} ms, health {health} "
            f"(the 513th connection evicts the oldest idle one)")  # fmt: skip
        for s in idle:
            s.close()
        s = socket.create_connection(addr)
        s.settimeout(1.0)  # one byte a second, until the server answers or closes
        head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: x\r\n".encode()
        t0, got, i = time.perf_counter(), b"", 0
        while time.perf_counter() - t0 < 60:
            try:
                if i < len(head):
                    s.send(head[i : i + 1])
                    i += 1
                got = s.recv(100)
                break
            except TimeoutError:
                continue
            except OSError:
                break
        row("2 slow clients", "request head at 1 byte/s", "never cut off",
            f"{got[:12].decode(errors='replace').strip()} after "
            f"{time.perf_counter() - t0:.1f} s (--header-timeout-s 10)")  # fmt: skip
        before = rss_mb(proc)
        socks = []
        for _ in range(8):
            c = socket.create_connection(addr)
            c.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: x\r\nauthorization: "
                      f"Bearer {TOKEN}\r\ncontent-length: {8 * 2**20 - 1024}\r\n\r\n".encode())  # fmt: skip
            c.sendall(bytes(int(7.7 * 2**20)))
            socks.append(c)
        time.sleep(1.0)
        during = rss_mb(proc)
        codes = []
        for c in socks:
            c.settimeout(30)
            codes.append(c.recv(100)[:12].decode(errors="replace").strip())
            c.close()
        time.sleep(0.5)
        row("2 slow clients", "8 half-sent 8 MB bodies", "7.7 MB each, kept",
            f"RSS {before:.0f} -> {during:.0f} MB while sending; {Counter(codes)} at the 5 s "
            f"body timeout; RSS after {rss_mb(proc):.0f} MB")  # fmt: skip


def idempotency() -> None:
    with serve("edge") as (url, _):
        first = post(url, image_request("same"))[0]
        other = post(url, image_request("same", torch.ones(1, 1, 28, 28)))[0]
        enc = get_codec("u8").encode(torch.rand(2, 1, 28, 28))
        two = post(url, encode_request(header(0, "u8", (2, 1, 28, 28), enc.header.params, "same"),
                                       enc.payload))[0]  # fmt: skip
        fp32 = header(0, "fp32", (1, 1, 28, 28), (), "same")
        nan = post(url, encode_request(fp32, torch.full((784,), math.nan).numpy().tobytes()))[0]
        row("3 idempotency", "id reused with another image / 2 images / NaN payload",
            "200 with the first image's logits / a 1-row answer / 200",
            f"first {first}; then {other} / {two} / {nan}")  # fmt: skip


class _Fake(BaseHTTPRequestHandler):
    bodies: list[bytes] = []
    count = [0]

    def do_GET(self) -> None:  # health checks of a breaker trial
        self._send(b'{"ready": true}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = self.bodies[self.count[0] % len(self.bodies)]
        self.count[0] += 1
        self._send(body)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def fake(bodies: list[bytes]) -> Iterator[str]:
    handler = type("Fake", (_Fake,), {"bodies": bodies, "count": [0]})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def _answer(rid: str, rows: int, value: str = "0.5") -> bytes:
    out = ",".join("[" + ",".join([value] * 10) + "]" for _ in range(rows))
    return (f'{{"request_id":"{rid}","tier":1,"output":[{out}],"prediction":[{",".join(["0"] * rows)}],'
            f'"path":[],"steps":[],"server_ms":1.0,"fell_back":false}}').encode()  # fmt: skip


def next_tier_answers() -> None:
    hostile = [b"<html>not json", _answer("x", 1, "1e400"), _answer("x", 0),
               _answer("x", 200_000), _answer("someone-else", 1)]  # fmt: skip
    with fake(hostile) as edge:
        env = {**os.environ, "PYTHONPATH": SRC, "COLLABINFER_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "collabinfer.cli", "run", "--edge", edge, "--model", MODEL,
               "--untrained", "--num-inputs", "5", "--link", "wifi"]  # fmt: skip
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        out = p.stdout + p.stderr
        fallbacks = [ln for ln in out.splitlines() if "finished on the device" in ln]
        row("4 checked answers", "`collabinfer run` against an edge answering 5 hostile 200s",
            "traceback, every input lost (5/5)",
            f"exit {p.returncode} in {time.perf_counter() - t0:.0f} s, traceback: "
            f"{'Traceback' in out}; {len(fallbacks)} kinds of device fallback reported")  # fmt: skip
    for name, body in (("1e400 logits", _answer("r1", 1, "1e400")), ("0 rows", _answer("r1", 0)),
                       ("200,000 rows", _answer("r1", 200_000))):  # fmt: skip
        with fake([body]) as cloud, serve("edge", "--next", cloud) as (url, _):
            req = image_request("r1", boundaries=(0, 0, 4, NET.num_blocks))
            code, ms, content = post(url, req)
            fell = json.loads(content).get("fell_back") if code == 200 else None
            row("4 checked answers", f"cloud answers {name} to the edge",
                "500 with no fallback" if "1e400" in name else "relayed as 200",
                f"{code} in {ms:.0f} ms, fell_back={fell}")  # fmt: skip


def contract() -> None:
    with serve("edge") as (url, _):
        base = json.loads(header(1, "fp32", (1, 16, 28, 28)).to_json_bytes())
        payload = bytes(4 * 16 * 28 * 28)

        def send(obj: dict[str, object]) -> int:
            head = json.dumps(obj).encode()
            body = b"CIW1" + len(head).to_bytes(4, "big") + head + payload
            return post(url, body)[0]

        cases = {
            "png at a feature cut": {**base, "tensor": {**base["tensor"], "codec": "png"}},  # type: ignore[dict-item]
            "400-digit tensor.params": {**base, "tensor": {**base["tensor"], "params": [10**400]}},  # type: ignore[dict-item]
            "400-digit deadline_ms": {**base, "deadline_ms": 10**400},
            "lone surrogate in weights": {**base, "weights": "\ud800"},
            "lone surrogate in a key": {**base, "\udfff": 1},
        }
        codes = {name: send(obj) for name, obj in cases.items()}
        metrics = httpx.get(f"{url}/metrics", headers=AUTH, trust_env=False).text
        five = [ln for ln in metrics.splitlines() if 'requests_total{code="500"}' in ln]
        row("5 4xx not 500", "; ".join(codes), "500 (png: 42/42), some counted as 409 or 400",
            f"{list(codes.values())}; 500s counted: {five[0].split()[-1] if five else 0}")  # fmt: skip


def hung_tier() -> None:
    with (
        serve("cloud", "--blocks", "4:") as (cloud, cproc),
        serve("edge", "--next", cloud) as (
            url,
            _,
        ),
    ):
        m = lambda: httpx.get(f"{cloud}/metrics", headers=AUTH, trust_env=False).text  # noqa: E731
        count = lambda t: float(  # noqa: E731
            next(ln for ln in t.splitlines() if ln.startswith("collabinfer_server_computations_total")
                 ).split()[-1])  # fmt: skip
        before = count(m())
        cproc.send_signal(signal.SIGSTOP)
        times, fell = [], 0
        for i in range(20):
            req = image_request(f"h{i}", boundaries=(0, 0, 4, NET.num_blocks), deadline_ms=5000.0)
            code, ms, content = post(url, req)
            times.append(ms)
            fell += code == 200 and json.loads(content)["fell_back"]
        cproc.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        after = count(m())
        row("6 hung tier", "cloud frozen, 20 requests to the edge (deadline 5 s)",
            "every request waited 5 s; the cloud computed them later",
            f"{fell}/20 fell back; first {times[0]:.0f} ms, then median "
            f"{statistics.median(times[1:]):.1f} ms, max {max(times[1:]):.0f} ms; "
            f"cloud computed {after - before:.0f} of them after the thaw")  # fmt: skip


def hardening() -> None:
    with serve("edge") as (url, _):

        async def wrong_tokens() -> Counter[int | str]:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
            gate = asyncio.Semaphore(32)
            async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=10) as c:

                async def one() -> int | str:
                    async with gate:
                        try:
                            r = await c.post(f"{url}/v2/models/{MODEL}/infer", content=b"x",
                                             headers={"authorization": "Bearer no"})  # fmt: skip
                            return r.status_code
                        except httpx.HTTPError as e:
                            return type(e).__name__

                rs = await asyncio.gather(*(one() for _ in range(3000)))
            return Counter(rs)

        t0 = time.perf_counter()
        codes = asyncio.run(wrong_tokens())
        row("7 hardening", "3,000 wrong tokens", "3,000 x 401 in 1.3 s, no throttling",
            f"{dict(codes)} in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    with serve("edge") as (url, _):
        open_ = {p: httpx.get(f"{url}{p}", trust_env=False).status_code
                 for p in ("/metrics", "/docs", "/openapi.json")}  # fmt: skip
        row(
            "7 hardening",
            "/metrics, /docs, /openapi.json without the token",
            "200 (open)",
            str(open_),
        )

        async def burst() -> tuple[Counter[int], float]:
            limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
            async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=60) as c:

                async def one(i: int) -> tuple[int, float]:
                    t = time.perf_counter()
                    r = await c.post(f"{url}/v2/models/{MODEL}/infer", headers=AUTH,
                                     content=image_request(f"b{i}"))  # fmt: skip
                    return r.status_code, (time.perf_counter() - t) * 1e3

                rs = await asyncio.gather(*(one(i) for i in range(400)))
            ok = [ms for code, ms in rs if code == 200]
            return Counter(code for code, _ in rs), statistics.median(ok) if ok else math.nan

        codes2, p50 = asyncio.run(burst())
        row("7 hardening", "a burst of 400 concurrent requests", "queue 332 deep, p50 1.3 s",
            f"{dict(codes2)}, p50 of the 200s {p50:.0f} ms")  # fmt: skip
        host, port = url.removeprefix("http://").split(":")
        got = []
        for raw in (b"GET /v2/health/live HTTP/9.9\r\nhost: x\r\n\r\n",
                    b"POST /v2/health/live HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
                    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"):  # fmt: skip
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(raw)
                got.append(s.recv(100).split(b" ")[1].decode())
        row("7 hardening", "HTTP/9.9; Content-Length with chunked", "accepted", " / ".join(got))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    for part in (bounded_work, slow_clients, idempotency, next_tier_answers, contract, hung_tier,
                 hardening):  # fmt: skip
        part()
    print("\n| class | case | before (the review) | now |\n|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['class']} | {r['case']} | {r['before']} | {r['now']} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(ROWS, indent=2))


if __name__ == "__main__":
    main()
