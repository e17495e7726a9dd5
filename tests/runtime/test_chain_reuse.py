"""The edge's semantic cache inside the engine: lookup before the tail, insert once answered."""

from __future__ import annotations

import pytest
import torch

from collabinfer.cache.keys import PooledKey
from collabinfer.cache.reuse import Reuse
from collabinfer.cache.rule import HitRule
from collabinfer.cache.semantic import SemanticCache
from collabinfer.model.zoo import create_model
from collabinfer.plan.cost import Plan, evaluate_plan
from collabinfer.plan.profile import profile_model
from collabinfer.runtime.chain import Chain
from collabinfer.runtime.engine import Charger, Engine, RemoteAnswer
from collabinfer.runtime.policy import PlanFollower, StaticPolicy
from collabinfer.runtime.state import State, StepKind
from collabinfer.testing.links import MockLink
from collabinfer.topology.links import LinkProfile
from collabinfer.topology.tiers import TierSpec

TIERS = [TierSpec("device", 10.0), TierSpec("edge", 1.0), TierSpec("cloud", 0.5)]
LINK = LinkProfile("test", 10.0, 20.0)
CUT = 2


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))
    return model.eval()


@pytest.fixture(scope="module")
def prof(net):
    return profile_model(net, "tiny-cnn", repeats=3, warmup=1)


def reuse_for(cut: int = CUT, tau: float = 1e-6) -> Reuse:
    cache = SemanticCache(1 << 20)
    return Reuse(cache, "tiny-cnn", "w0", {cut: PooledKey(2)}, {cut: HitRule(1, tau)})


def chain(net, prof, tiers, reuse: Reuse | None) -> Chain:
    n = net.num_blocks
    bounds = (0, CUT, n) if len(tiers) == 2 else (0, CUT, n - 1, n)
    codecs = ("fp32", None) if len(tiers) == 2 else ("fp32", "fp32", None)
    links = [LINK] * (len(tiers) - 1)
    plan = Plan(bounds, codecs, "latency", evaluate_plan(prof, tiers, links, bounds, codecs))
    mocks = [MockLink(latency_s=0.01) for _ in links]
    return Chain(
        net, tiers, mocks, StaticPolicy(plan), profile=prof, reuse={1: reuse} if reuse else None
    )


@pytest.mark.parametrize("tiers", [TIERS[:2], TIERS], ids=["edge-finishes", "cloud-finishes"])
def test_a_repeat_is_answered_by_the_edge_cache_without_running_the_tail(net, prof, tiers) -> None:
    reuse = reuse_for()
    c = chain(net, prof, tiers, reuse)
    x = torch.rand(1, 1, 28, 28)
    first = c.run(x)
    assert not first.state.cache_hit
    assert len(reuse.cache) == 1  # inserted once the answer was known
    second = c.run(x.clone())
    assert second.state.cache_hit
    assert torch.equal(second.output, first.output)
    ran = {p.block for p in second.state.path}
    assert ran == set(range(CUT))  # only the device's head ran
    kinds = [s.kind for s in second.state.trace.steps if s.tier == 1]
    assert StepKind.CACHE in kinds and StepKind.COMPUTE not in kinds
    assert second.latency_ms < first.latency_ms


def test_a_miss_pays_only_the_lookup_and_insert_and_answers_like_no_cache(net, prof) -> None:
    x = torch.rand(1, 1, 28, 28)
    plain = chain(net, prof, TIERS[:2], None).run(x)
    cached = chain(net, prof, TIERS[:2], reuse_for()).run(x)
    assert torch.equal(plain.output, cached.output)
    extra = [s for s in cached.state.trace.steps if s.kind == StepKind.CACHE]
    assert len(extra) == 2  # one lookup, one insert
    assert all(s.tier == 1 for s in extra)


def test_a_cut_without_a_rule_and_a_batch_are_not_cached(net, prof) -> None:
    reuse = reuse_for(cut=CUT + 1)  # a rule for another cut
    c = chain(net, prof, TIERS[:2], reuse)
    x = torch.rand(1, 1, 28, 28)
    c.run(x)
    assert not c.run(x).state.cache_hit and len(reuse.cache) == 0
    reuse = reuse_for()
    c = chain(net, prof, TIERS[:2], reuse)
    c.run(torch.rand(2, 1, 28, 28))
    assert len(reuse.cache) == 0


def test_an_answer_from_the_next_tier_is_stored_and_a_cached_flag_reaches_the_sender(net) -> None:
    """A tier server's engine: it misses, forwards, and stores what comes back."""
    reuse = reuse_for()
    engine = Engine(net, PlanFollower(), Charger.for_tier(1.0), reuse={1: reuse})
    n = net.num_blocks
    z = net.run_until(torch.rand(1, 1, 28, 28), CUT).detach()
    state = State(
        z=z, next_block=CUT, tier=1, plan=Plan((0, CUT, n - 1, n), ("fp32", "fp32", None))
    )
    handoff = engine.advance(state)
    assert handoff is not None and state.cache_probe is not None
    logits = torch.randn(1, 10)
    engine.delivered(state, handoff, 0.001)
    engine.answered(state, RemoteAnswer(logits, 2, tuple(state.path), (), False))
    assert len(reuse.cache) == 1 and state.cache_probe is None
    again = State(z=z.clone(), next_block=CUT, tier=1, plan=state.plan)
    assert engine.advance(again) is None and again.cache_hit
    assert torch.equal(again.output, logits)
    sender = State(z=z.clone(), next_block=CUT, tier=0)
    Engine(net, PlanFollower(), Charger.for_tier(1.0)).answered(
        sender, RemoteAnswer(logits, 1, (), (), False, True)
    )
    assert sender.cache_hit
