"""The edge's semantic cache behind the wire: flagged answers, stats, metrics, 16 clients."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from collabinfer.cache.keys import PooledKey
from collabinfer.cache.reuse import Reuse
from collabinfer.cache.rule import HitRule
from collabinfer.cache.semantic import SemanticCache
from collabinfer.errors import ConfigError
from collabinfer.model.checkpoint import weights_hash
from collabinfer.serve.server import ServerConfig, create_app, serve_in_thread
from collabinfer.serve.wire import decode_response, encode_request

from .tier_helpers import INFER, NAME, asgi_client, device_request, make_input, make_net, metric

TOKEN = "tok-reuse"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PLAN = (0, 1, 4)
CODECS = ("fp32", None)


def reuse_for(net, max_bytes: int = 1 << 22) -> Reuse:
    cache = SemanticCache(max_bytes)
    # a tight rule: only (near-)identical features hit, so every answer is checkable
    return Reuse(cache, NAME, weights_hash(net), {1: PooledKey(2)}, {1: HitRule(1, 1e-6)})


def body(net, seed: int, rid: str) -> bytes:
    return encode_request(*device_request(net, make_input(seed), PLAN, CODECS, rid))


def test_a_repeat_is_answered_from_the_cache_and_flagged() -> None:
    net = make_net()
    reuse = reuse_for(net)
    app = create_app(ServerConfig("edge", 1, token=TOKEN), net, NAME, reuse=reuse)

    async def go() -> tuple:
        async with asgi_client(app, TOKEN) as client:
            first = await client.post(INFER, content=body(net, 1, "a"))
            second = await client.post(INFER, content=body(net, 1, "b"))
            other = await client.post(INFER, content=body(net, 2, "c"))
            stats = await client.get("/v2/cache")
            anon = await client.get("/v2/cache", headers={"authorization": ""})
            text = (await client.get("/metrics")).text
            return first, second, other, stats, anon, text

    first, second, other, stats, anon, text = asyncio.run(go())
    a, b, c = (decode_response(r.content) for r in (first, second, other))
    assert not a.cached and b.cached and not c.cached
    assert b.output == a.output
    assert not any(s.kind == "compute" for s in b.steps)  # no tail ran for the hit
    st = stats.json()
    assert (st["hits"], st["misses"], st["entries"]) == (1, 2, 2)
    assert st["rules"] == {"1": {"k": 1, "tau": 1e-6, "min_confidence": 0.0}}
    assert anon.status_code == 401
    assert metric(text, "collabinfer_server_semantic_cache_hits_total") == 1
    assert metric(text, "collabinfer_server_semantic_cache_entries") == 2
    assert metric(text, "collabinfer_server_semantic_cache_seconds_count", op="lookup") == 3
    assert metric(text, "collabinfer_server_semantic_cache_seconds_count", op="insert") == 2


def test_no_cache_means_404_on_the_stats_and_a_cache_needs_a_tier_index() -> None:
    net = make_net()
    app = create_app(ServerConfig("edge", 1), net, NAME)

    async def go() -> httpx.Response:
        async with asgi_client(app) as client:
            return await client.get("/v2/cache")

    assert asyncio.run(go()).status_code == 404
    with pytest.raises(ConfigError, match="tier index"):
        create_app(ServerConfig("custom"), net, NAME, reuse=reuse_for(net))
    with pytest.raises(ConfigError, match="cache-key"):
        ServerConfig("edge", 1, reuse_key="pixels")


def test_sixteen_clients_over_real_sockets_share_one_cache_exactly() -> None:
    """16 concurrent clients: distinct inputs are each stored once (no loss), the same
    input sent by all at once is stored once (no double), and every answer equals the
    uncached forward pass."""
    net = make_net()
    reuse = reuse_for(net)
    app = create_app(ServerConfig("edge", 1, token=TOKEN, max_in_flight=64), net, NAME, reuse=reuse)
    clients, each = 16, 6
    with serve_in_thread(app) as url:

        def run(client_id: int, seeds: list[int], tag: str) -> list[tuple[int, bool, list]]:
            out = []
            with httpx.Client(base_url=url, headers=AUTH, trust_env=False, timeout=30) as http:
                for s in seeds:
                    r = http.post(INFER, content=body(net, s, f"{tag}-{client_id}-{s}"))
                    assert r.status_code == 200, r.text
                    ans = decode_response(r.content)
                    out.append((s, ans.cached, [list(row) for row in ans.output]))
            return out

        def all_clients(seeds_of, tag: str) -> list[tuple[int, bool, list]]:
            with ThreadPoolExecutor(clients) as pool:
                futures = [pool.submit(run, c, seeds_of(c), tag) for c in range(clients)]
                return [item for f in futures for item in f.result()]

        distinct = all_clients(lambda c: [100 + c * each + i for i in range(each)], "d")
        after_distinct = reuse.cache.stats()
        repeats = all_clients(lambda c: [100 + c * each + i for i in range(each)], "r")
        same = all_clients(lambda c: [7], "s")
        stats = httpx.get(f"{url}/v2/cache", headers=AUTH, trust_env=False).json()
    assert after_distinct.entries == clients * each and after_distinct.hits == 0
    assert all(cached for _, cached, _ in repeats)
    assert stats["entries"] == clients * each + 1  # the shared input: one entry, not 16
    with torch.inference_mode():
        for s, _, logits in distinct + repeats + same:
            want = net(make_input(s))
            assert torch.allclose(torch.tensor(logits), want, atol=1e-5), s
    assert json.dumps(stats)  # the stats endpoint is plain JSON
