"""The device side of a live deployment: a client for a model the servers host.

What ``collabinfer run`` (and any script driving live tiers) needs: profile the
model on this CPU for the planner (batch 1, one thread, as the device model
assumes), put the default tier factors and the link's first estimate together,
and hand back a :class:`~collabinfer.serve.client.DeviceClient` that re-plans
every input under an :class:`~collabinfer.runtime.policy.AdaptivePolicy`.

Example::

    >>> client = adaptive_client(net, "fmnist-resnet", "http://127.0.0.1:8001")  # doctest: +SKIP
    >>> summary = asyncio.run(client.run_many(images, labels))                  # doctest: +SKIP
"""

from __future__ import annotations

from collabinfer.model.blocks import BlockNet
from collabinfer.plan.planner import Planner
from collabinfer.plan.profile import one_thread, profile_model
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.policy import AdaptivePolicy
from collabinfer.serve.client import DeviceClient
from collabinfer.topology.links import get_profile
from collabinfer.topology.tiers import CLOUD_FACTOR, DEVICE_FACTOR, EDGE_FACTOR, TierSpec

__all__ = ["adaptive_client"]


def adaptive_client(
    net: BlockNet,
    model_name: str,
    edge_url: str,
    *,
    link: str = "lte",
    with_cloud: bool = False,
    device_factor: float = DEVICE_FACTOR,
    token: str | None = None,
    deadline_s: float = 5.0,
    profile_repeats: int = 20,
    ca: str | None = None,
) -> DeviceClient:
    """A client re-planning per input; ``with_cloud``: the edge forwards to a cloud, so
    the planner must know it is there (the edge reaches it itself)."""
    with one_thread():
        prof = profile_model(net, model_name, repeats=profile_repeats)
    tiers = [TierSpec("device", device_factor), TierSpec("edge", EDGE_FACTOR)]
    estimators = [LinkEstimator(get_profile(link), recovery_s=2.0)]
    if with_cloud:
        tiers.append(TierSpec("cloud", CLOUD_FACTOR))
        estimators.append(LinkEstimator(get_profile("wan"), recovery_s=2.0))
    policy = AdaptivePolicy(Planner(prof, tiers), estimators)
    return DeviceClient(
        net,
        model_name,
        edge_url,
        policy,
        tiers,
        profile=prof,
        token=token,
        deadline_s=deadline_s,
        ca=ca,
    )
