"""Real tier servers and relays on loopback for the serving tests.

Servers are uvicorn in a background thread (:func:`collabinfer.serve.serve_in_thread`),
wrapped so a test can stop one and start it again *on the same port* (the
fault test). Profiles are synthetic (block times chosen by the test, byte
counts exact), so plans are chosen on purpose and no test pays for profiling.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from fastapi import FastAPI

from collabinfer.codec import get_codec
from collabinfer.model.blocks import BlockNet
from collabinfer.model.zoo import create_model
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import (
    FEATURE_CODECS,
    INPUT_CODECS,
    BlockProfile,
    CodecCost,
    CutProfile,
    Profile,
)
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.exit_policy import DeviceExits, ExitingPolicy
from collabinfer.runtime.policy import AdaptivePolicy, Policy
from collabinfer.serve import ServerConfig, create_app, serve_in_thread
from collabinfer.serve.client import DeviceClient
from collabinfer.serve.relay import RelayThread
from collabinfer.serve.server import free_port
from collabinfer.topology.links import LinkProfile

LOOPBACK = LinkProfile("loopback", 1000.0, 1.0)
FROZEN = 1e-9  # an EWMA weight so small that estimates never move: plans stay put


def synthetic_profile(net: BlockNet, name: str, times_ms: Sequence[float]) -> Profile:
    """A profile with the given block times and exact byte counts (header: 100 B, a guess)."""
    cuts = net.cut_points()
    blocks = tuple(
        BlockProfile(i, net.block_names[i], 0, 0, cuts[i + 1].shape, float(t))
        for i, t in enumerate(times_ms)
    )
    cut_profiles = []
    for cut in cuts:
        names = INPUT_CODECS if cut.index == 0 else FEATURE_CODECS
        costs = {
            c: CodecCost(get_codec(c).payload_size((1, *cut.shape)), 100, 0.01, 0.01) for c in names
        }
        cut_profiles.append(CutProfile(cut.index, cut.name, cut.shape, costs))
    return Profile(name, blocks, tuple(cut_profiles), 1, "synthetic")


def device_client(
    net: BlockNet,
    name: str,
    url: str,
    planner: Planner,
    ests: Sequence[LinkEstimator],
    *,
    exits: DeviceExits | None = None,
    **kwargs: Any,
) -> DeviceClient:
    """A client under an adaptive policy over ``planner`` (charged from its profile),
    trying ``exits`` on the device when given."""
    policy: Policy = AdaptivePolicy(planner, ests)
    if exits is not None:
        policy = ExitingPolicy(policy, exits)
    return DeviceClient(net, name, url, policy, planner.tiers, profile=planner.profile, **kwargs)


def estimators(*links: LinkProfile, alpha: float = FROZEN) -> list[LinkEstimator]:
    return [LinkEstimator(link, alpha=alpha) for link in links]


def grid_images(n: int, seed: int = 0) -> torch.Tensor:
    """Random images on the 1/255 grid, so the u8 codec carries them exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255.0


class ServerThread:
    """One tier server on a fixed port that can be stopped and started again.

    ``make_app`` builds a fresh app per start: a restarted server has lost its
    cache and its connections, as a crashed one would.
    """

    def __init__(self, make_app: Callable[[], FastAPI], port: int | None = None) -> None:
        self.make_app = make_app
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: FastAPI | None = None
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> str:
        if self._stack is not None:
            return self.url
        stack = contextlib.ExitStack()
        self.app = self.make_app()
        stack.enter_context(serve_in_thread(self.app, port=self.port))
        self._stack = stack
        return self.url

    def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @property
    def running(self) -> bool:
        return self._stack is not None


@pytest.fixture
def tiny_net() -> BlockNet:
    torch.manual_seed(0)
    return create_model("tiny-cnn").eval()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerThread]]:
    """``start_server(config, net, name="tiny-cnn", port=None)``: a running ServerThread."""
    started: list[ServerThread] = []

    def start(
        config: ServerConfig, net: BlockNet, name: str = "tiny-cnn", port: int | None = None
    ) -> ServerThread:
        own = copy.deepcopy(net)  # each tier holds its own copy of the weights
        server = ServerThread(lambda: create_app(config, own, name), port)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def start_relay() -> Iterator[Callable[..., str]]:
    """``start_relay(target_url, profile, seed=0)``: the URL of a shaped way to ``target_url``."""
    relays: list[RelayThread] = []

    def start(target_url: str, profile: LinkProfile, seed: int = 0) -> str:
        host, _, port = target_url.removeprefix("http://").rpartition(":")
        relay = RelayThread((host, int(port)), profile, seed=seed)
        rhost, rport = relay.start()
        relays.append(relay)
        return f"http://{rhost}:{rport}"

    yield start
    for relay in relays:
        relay.stop()
