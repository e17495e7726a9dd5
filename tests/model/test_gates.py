"""Gated residual blocks: forced open is the plain block bit for bit, a closed gate
really skips the branch, a mixed batch equals its inputs run one by one."""

from __future__ import annotations

import pytest
import torch

from collabinfer.errors import ConfigError, ModelError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.gates import (
    Gate,
    GatedResidual,
    gate_net,
    gate_rates,
    gated_blocks,
    gates_forced,
    is_gated,
    last_path,
)
from collabinfer.model.zoo import create_model


@pytest.fixture(scope="module")
def backbone() -> BlockNet:
    torch.manual_seed(0)
    return create_model("fmnist-resnet").eval()


@pytest.fixture()
def gated(backbone: BlockNet) -> BlockNet:
    return gate_net(backbone).eval()


def threshold_gate(gate: Gate, x: torch.Tensor, channel: int = 0) -> torch.Tensor:
    """Make ``gate`` open iff the pooled ``channel`` of its input is above the middle
    of the values ``x`` gives (a gap between the two middle values, no tie); returns
    the decisions it will make on ``x``."""
    with torch.no_grad():
        gate.fc1.weight.zero_()
        gate.fc1.bias.zero_()
        gate.fc1.weight[0, channel] = 1.0
        gate.bn.running_mean.zero_()
        gate.bn.running_var.fill_(1.0)
        gate.bn.weight.fill_(1.0)
        gate.bn.bias.zero_()
        gate.fc2.weight.zero_()
        gate.fc2.weight[1, 0] = 1.0
        gate.fc2.bias.zero_()
        gate.eval()
        h = gate(x)[:, 1]
        s = h.sort().values
        mid = x.shape[0] // 2
        thr = float((s[mid - 1] + s[mid]) / 2)
        assert s[mid] - s[mid - 1] > 1e-4, "test input has no gap at the median"
        gate.fc2.bias[0] = thr
    return h > thr


def count_calls(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []
    handle = module.register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
    return sizes, handle


def test_gated_blocks_are_the_residual_blocks(backbone: BlockNet, gated: BlockNet) -> None:
    assert [i for i, _ in gated_blocks(gated)] == [1, 2, 3, 4, 5, 6]
    assert is_gated(gated) and not is_gated(backbone)
    assert gated.block_names == backbone.block_names
    # weights copied, not shared
    g1 = gated.blocks[1]
    assert isinstance(g1, GatedResidual)
    assert g1.block.conv1.weight is not backbone.blocks[1].conv1.weight
    assert torch.equal(g1.block.conv1.weight, backbone.blocks[1].conv1.weight)


@pytest.mark.parametrize("batch", [1, 8])
def test_forced_open_equals_the_ungated_net_bit_for_bit(
    backbone: BlockNet, gated: BlockNet, batch: int
) -> None:
    x = torch.rand(batch, 1, 28, 28)
    with torch.inference_mode():
        ref = backbone(x)
        with gates_forced(gated, "open"):
            out = gated(x)
    assert torch.equal(out, ref)
    assert bool(last_path(gated).all())


def test_forced_closed_skips_the_branch_at_batch_1(gated: BlockNet) -> None:
    g = gated.blocks[1]
    assert isinstance(g, GatedResidual)
    sizes, handle = count_calls(g.block.conv1)
    x = torch.rand(1, 1, 28, 28)
    try:
        with torch.inference_mode(), gates_forced(gated, "closed"):
            z = gated.blocks[0](x)
            out = g(z)
    finally:
        handle.remove()
    assert sizes == []
    assert torch.equal(out, torch.relu(z))  # identity shortcut, branch not added
    assert g.last_ran is not None and g.last_ran.tolist() == [False]


def test_a_mixed_batch_runs_the_branch_only_on_inputs_whose_gate_opened(gated: BlockNet) -> None:
    g = gated.blocks[1]
    assert isinstance(g, GatedResidual)
    x = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        z = gated.blocks[0](x)
    want = threshold_gate(g.gate, z)
    assert 0 < int(want.sum()) < 8
    sizes, handle = count_calls(g.block.conv1)
    try:
        with torch.inference_mode():
            out = g(z)
    finally:
        handle.remove()
    assert sizes == [int(want.sum())]
    assert g.last_ran is not None and torch.equal(g.last_ran, want)
    with torch.inference_mode():
        plain = g.block(z)  # the ungated block: shortcut + branch for everyone
    assert torch.allclose(out[want], plain[want], atol=1e-6)
    assert torch.equal(out[~want], torch.relu(z[~want]))


def test_a_mixed_batch_equals_each_input_run_alone(gated: BlockNet) -> None:
    x = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        z = x
        for k, block in enumerate(gated.blocks):
            if isinstance(block, GatedResidual) and k in (1, 3, 5):
                threshold_gate(block.gate, z, channel=k % 4)
            z = block(z)
        batch = gated(x)
        path = last_path(gated)
        for k in (1, 3, 5):
            col = path[:, [i for i, _ in gated_blocks(gated)].index(k)]
            assert 0 < int(col.sum()) < 8, f"block {k} is not mixed"
        for n in range(8):
            alone = gated(x[n : n + 1])
            assert torch.allclose(alone, batch[n : n + 1], atol=1e-5)
            assert torch.equal(last_path(gated)[0], path[n])


def test_monkeypatched_decisions_drive_the_branch(
    gated: BlockNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = gated.blocks[2]
    assert isinstance(g, GatedResidual)
    mask = torch.tensor([True, False, False, True, False, True])
    monkeypatch.setattr(g, "decide", lambda x: mask)
    sizes, handle = count_calls(g.block.conv1)
    z = torch.rand(6, 16, 28, 28)
    try:
        with torch.inference_mode():
            out = g(z)
            plain = g.block(z)
    finally:
        handle.remove()
    assert sizes == [3, 6]  # the gated call, then the plain block above
    assert torch.allclose(out[mask], plain[mask], atol=1e-6)
    assert torch.equal(out[~mask], torch.relu(z[~mask]))


def test_training_gate_rates_are_differentiable(gated: BlockNet) -> None:
    gated.train()
    x = torch.rand(8, 1, 28, 28)
    gated(x)
    rates = gate_rates(gated)
    assert rates.shape == (6,)
    assert rates.requires_grad
    assert bool(((rates >= 0) & (rates <= 1)).all())
    rates.sum().backward()
    for i, g in gated_blocks(gated):
        grad = g.gate.fc2.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0, f"block {i}"
        assert g.gate.fc1.weight.grad is not None


def test_gate_rates_before_a_training_forward_is_a_model_error(gated: BlockNet) -> None:
    with pytest.raises(ModelError):
        gate_rates(gated)
    with pytest.raises(ModelError):
        last_path(gated)
    with torch.inference_mode():
        gated(torch.rand(2, 1, 28, 28))
    with pytest.raises(ModelError):  # inference forwards record no training gate
        gate_rates(gated)


def test_training_forward_in_a_forced_mode_is_deterministic(gated: BlockNet) -> None:
    gated.train()
    with gates_forced(gated, "closed"):
        gated(torch.rand(4, 1, 28, 28))
    assert not bool(last_path(gated).any())


def test_gates_forced_restores_modes_after_an_exception(gated: BlockNet) -> None:
    gates = [g for _, g in gated_blocks(gated)]
    modes = ["auto", "closed", "open", "auto", "closed", "auto"]
    for g, m in zip(gates, modes, strict=True):
        g.mode = m
    with pytest.raises(RuntimeError, match="boom"), gates_forced(gated, "open"):
        assert all(g.mode == "open" for g in gates)
        raise RuntimeError("boom")
    assert [g.mode for g in gates] == modes


def test_bad_gate_mode_is_a_config_error(gated: BlockNet) -> None:
    before = [g.mode for _, g in gated_blocks(gated)]
    with pytest.raises(ConfigError), gates_forced(gated, "half"):
        pass
    assert [g.mode for _, g in gated_blocks(gated)] == before


def test_gate_net_without_residual_blocks_is_a_model_error() -> None:
    with pytest.raises(ModelError):
        gate_net(create_model("tiny-mlp"))
