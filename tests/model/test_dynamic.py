"""DynamicNet: a batch of N gives what N runs at batch 1 give, and really skips work
(compaction after exits, no branch for closed gates); FLOPs follow the path run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.dynamic import (
    NEVER,
    DynamicNet,
    DynamicOutput,
    ExitRule,
    flops_table,
    per_input_flops,
)
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import GatedResidual, gate_net, gated_blocks
from collabinfer.model.zoo import create_model

from .test_gates import threshold_gate

N = 16
CUTS = (1, 3, 5)


@dataclass
class Setup:
    net: BlockNet  # gated fmnist-resnet, gates 1, 3, 5 split the batch in half
    exits: ExitBranches
    rule: ExitRule  # thresholds: half of the survivors leave at each exit
    x: torch.Tensor


def _midpoint(values: torch.Tensor) -> float:
    s = values.sort().values
    mid = s.shape[0] // 2
    assert float(s[mid] - s[mid - 1]) > 1e-5, "no gap at the median"
    return float((s[mid - 1] + s[mid]) / 2)


@pytest.fixture(scope="module")
def setup() -> Setup:
    torch.manual_seed(0)
    net = gate_net(create_model("fmnist-resnet")).eval()
    exits = ExitBranches.for_model(net, CUTS, width=8).eval()
    exits.set_temperatures([1.5, 0.7, 2.0])
    x = torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    thresholds = []
    alive = torch.ones(N, dtype=torch.bool)
    with torch.inference_mode():
        z = x
        for k, block in enumerate(net.blocks):
            if isinstance(block, GatedResidual) and k in (1, 3, 5):
                threshold_gate(block.gate, z, channel=k)
            z = block(z)
            e = exits.index_at(k + 1)
            if e is not None:
                _, conf = exits.score(e, z, "maxprob")
                t = _midpoint(conf[alive])
                thresholds.append(t)
                alive &= conf < t
    return Setup(net, exits, ExitRule(tuple(thresholds)), x)


def _alone(dyn: DynamicNet, x: torch.Tensor) -> list[DynamicOutput]:
    return [dyn.infer(x[n : n + 1]) for n in range(x.shape[0])]


def _assert_same_as_alone(dyn: DynamicNet, x: torch.Tensor, out: DynamicOutput) -> None:
    for n, one in enumerate(_alone(dyn, x)):
        assert int(one.exit_index) == int(out.exit_index[n]), f"input {n}"
        assert torch.equal(one.ran[0], out.ran[n]), f"input {n}"
        assert torch.equal(one.tried[0], out.tried[n]), f"input {n}"
        assert int(one.path) == int(out.path[n]), f"input {n}"
        assert torch.allclose(one.logits[0], out.logits[n], atol=1e-5), f"input {n}"


def _stops(out: DynamicOutput, num_blocks: int) -> torch.Tensor:
    return torch.tensor([*CUTS, num_blocks])[out.exit_index]


def test_a_batch_equals_its_inputs_run_alone(setup: Setup) -> None:
    dyn = DynamicNet(setup.net, setup.exits, setup.rule)
    out = dyn.infer(setup.x)
    # the setup really mixes: every exit and the final classifier are taken, gates differ
    assert out.exit_index.tolist().count(0) == 8
    assert out.exit_index.tolist().count(1) == 4
    assert out.exit_index.tolist().count(2) == 2
    assert out.exit_index.tolist().count(3) == 2
    assert bool(out.ran.any()) and not bool(out.ran.all())
    assert out.logits.shape == (N, 10)
    _assert_same_as_alone(dyn, setup.x, out)


def test_an_exit_answers_with_its_calibrated_head(setup: Setup) -> None:
    dyn = DynamicNet(setup.net, setup.exits, setup.rule)
    out = dyn.infer(setup.x)
    with torch.inference_mode():
        z = setup.net.run_until(setup.x, CUTS[1])
        head = setup.exits.calibrated(1, z)
        final = setup.net(setup.x)
    at1 = out.exit_index == 1
    assert torch.allclose(out.logits[at1], head[at1], atol=1e-5)
    last = out.exit_index == 3
    assert torch.allclose(out.logits[last], final[last], atol=1e-5)
    # tried: every exit before the one taken, and that one
    for n in range(N):
        e = int(out.exit_index[n])
        assert out.tried[n].tolist() == [i <= e for i in range(3)]


def test_the_batch_is_compacted_to_the_survivors(setup: Setup) -> None:
    dyn = DynamicNet(setup.net, setup.exits, setup.rule)
    blocks = setup.net.blocks
    seen: dict[int, list[int]] = {k: [] for k in range(len(blocks))}
    branch: dict[int, list[int]] = {k: [] for k, _ in gated_blocks(setup.net)}
    handles = [
        b.register_forward_pre_hook(lambda _m, args, k=k: seen[k].append(args[0].shape[0]))
        for k, b in enumerate(blocks)
    ]
    handles += [
        g.block.conv1.register_forward_pre_hook(
            lambda _m, args, k=k: branch[k].append(args[0].shape[0])
        )
        for k, g in gated_blocks(setup.net)
    ]
    try:
        out = dyn.infer(setup.x)
    finally:
        for h in handles:
            h.remove()
    stop = _stops(out, len(blocks))
    for k in range(len(blocks)):
        survivors = int((stop > k).sum())
        assert seen[k] == ([survivors] if survivors else []), f"block {k}"
    assert seen[8] == [2]
    for j, (k, _) in enumerate(gated_blocks(setup.net)):
        # the branch ran on exactly the reached inputs whose gate opened
        assert sum(branch[k]) == int(out.ran[:, j].sum()), f"block {k}"


def test_never_firing_thresholds_give_the_plain_backbone(setup: Setup) -> None:
    dyn = DynamicNet(setup.net, setup.exits, ExitRule.never(3))
    calls: list[int] = []
    h = setup.exits.heads[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        out = dyn.infer(setup.x)
    finally:
        h.remove()
    with torch.inference_mode():
        ref = setup.net(setup.x)
    assert torch.equal(out.logits, ref)
    assert calls == []  # an inactive exit is not evaluated
    assert not bool(out.tried.any())
    assert out.exit_index.tolist() == [3] * N
    assert torch.equal(dyn(setup.x), ref)


def test_a_zero_threshold_at_the_first_exit_takes_everyone(setup: Setup) -> None:
    dyn = DynamicNet(setup.net, setup.exits, ExitRule((0.0, NEVER, NEVER)))
    called: list[int] = []
    handles = [b.register_forward_hook(lambda *_: called.append(1)) for b in setup.net.blocks[1:]]
    try:
        out = dyn.infer(setup.x)
    finally:
        for h in handles:
            h.remove()
    assert called == []
    assert out.exit_index.tolist() == [0] * N
    with torch.inference_mode():
        want = setup.exits.calibrated(0, setup.net.blocks[0](setup.x))
    assert torch.allclose(out.logits, want, atol=1e-6)
    assert not bool(out.ran.any())  # no gated block was reached
    assert out.tried[:, 0].all() and not bool(out.tried[:, 1:].any())


def test_an_empty_path_condition_means_never_tried(setup: Setup) -> None:
    rule = ExitRule(setup.rule.thresholds, allowed_paths=(None, frozenset(), None))
    dyn = DynamicNet(setup.net, setup.exits, rule)
    out = dyn.infer(setup.x)
    assert not bool(out.tried[:, 1].any())
    assert 1 not in out.exit_index.tolist()
    assert out.exit_index.tolist().count(0) == 8  # the first exit is unaffected
    assert bool(out.tried[:, 2].any())
    _assert_same_as_alone(dyn, setup.x, out)


def test_allowing_every_path_is_the_same_as_no_condition(setup: Setup) -> None:
    every = frozenset(range(1 << 6))
    base = DynamicNet(setup.net, setup.exits, setup.rule).infer(setup.x)
    rule = ExitRule(setup.rule.thresholds, allowed_paths=(every, every, every))
    out = DynamicNet(setup.net, setup.exits, rule).infer(setup.x)
    assert torch.equal(out.exit_index, base.exit_index)
    assert torch.equal(out.tried, base.tried)
    assert torch.equal(out.ran, base.ran)
    assert torch.allclose(out.logits, base.logits, atol=1e-6)


def test_a_path_condition_tries_the_exit_only_on_matching_paths(setup: Setup) -> None:
    # exit 1 (cut 3) sees gated blocks 1 and 2 (bits 0 and 1): allow only the commonest
    # of their masks among the inputs that reach it, so some are tried and some are not
    base = DynamicNet(setup.net, setup.exits, setup.rule).infer(setup.x)
    reached = base.exit_index >= 1
    masks = (base.path & 0b11)[reached]
    keep = int(masks.mode().values)
    assert 0 < int((masks == keep).sum()) < int(reached.sum()), "the condition does not bite"
    rule = ExitRule(setup.rule.thresholds, allowed_paths=(None, frozenset({keep}), None))
    dyn = DynamicNet(setup.net, setup.exits, rule)
    out = dyn.infer(setup.x)
    assert torch.equal(out.tried[:, 1], reached & ((out.path & 0b11) == keep))
    _assert_same_as_alone(dyn, setup.x, out)


def test_per_input_flops_match_the_flop_counter(setup: Setup) -> None:
    table = flops_table(setup.net, setup.exits)
    assert table.gate_index == (1, 2, 3, 4, 5, 6)
    for k in table.gate_index:  # skipping a branch is cheaper, the gate is counted both ways
        assert table.block_skip[k] < table.block_open[k]
    dyn = DynamicNet(setup.net, setup.exits, setup.rule)
    batch = dyn.infer(setup.x)
    predicted = per_input_flops(batch, table, CUTS)
    assert len(set(predicted.tolist())) > 3  # inputs really spent different amounts
    for n in range(N):
        counter = FlopCounterMode(display=False)
        with counter:
            dyn.infer(setup.x[n : n + 1])
        assert int(predicted[n]) == counter.get_total_flops(), f"input {n}"
    # a batch of N costs what N runs at batch 1 cost
    counter = FlopCounterMode(display=False)
    with counter:
        dyn.infer(setup.x)
    assert int(predicted.sum()) == counter.get_total_flops()


def test_flops_table_of_a_plain_backbone_has_equal_open_and_skip() -> None:
    net = create_model("tiny-cnn").eval()
    table = flops_table(net)
    assert table.block_open == table.block_skip
    assert table.gate_index == () and table.head == ()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.rand(1, 1, 28, 28))
    assert table.backbone == counter.get_total_flops()


def test_exit_rule_validation() -> None:
    with pytest.raises(ConfigError):
        ExitRule((0.5,), score="margin")
    with pytest.raises(ConfigError):
        ExitRule((0.5, 0.6), allowed_paths=(None,))
    with pytest.raises(ConfigError):
        ExitRule((0.5, math.nan))
    rule = ExitRule((0.5, NEVER), "entropy", (frozenset({2, 0}), None))
    assert rule.active(0) and not rule.active(1)
    assert rule.to_json() == {
        "thresholds": [0.5, None],
        "score": "entropy",
        "allowed_paths": [[0, 2], None],
    }
    assert ExitRule.never(2).thresholds == (NEVER, NEVER)


def test_dynamic_net_validation(setup: Setup) -> None:
    with pytest.raises(ConfigError):
        DynamicNet(setup.net, setup.exits, ExitRule((0.5, 0.5)))
    with pytest.raises(ConfigError):
        DynamicNet(setup.net, None, ExitRule((0.5,)))
    net = create_model("tiny-cnn")
    beyond = ExitBranches((4,), [(10,)], ["output"], 10)
    with pytest.raises(ConfigError):
        DynamicNet(net, beyond)


def test_an_ungated_net_without_exits_runs_as_the_backbone() -> None:
    net = create_model("tiny-cnn").eval()
    x = torch.rand(5, 1, 28, 28)
    out = DynamicNet(net).infer(x)
    with torch.inference_mode():
        assert torch.equal(out.logits, net(x))
    assert out.exit_index.tolist() == [0] * 5
    assert out.ran.shape == (5, 0) and out.tried.shape == (5, 0)
