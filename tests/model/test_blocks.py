"""The model contract, run over every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from collabinfer.errors import ModelError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.zoo import create_model, list_models, model_spec


@pytest.fixture(params=list_models())
def net(request: pytest.FixtureRequest) -> BlockNet:
    torch.manual_seed(0)
    model = create_model(request.param)
    # non-trivial BN statistics so eval-mode BN is not the identity
    model.train()
    with torch.no_grad():
        model(torch.rand(8, *model_spec(request.param).input_shape))
    return model.eval()


def test_split_then_merge_equals_forward_bit_exactly(net: BlockNet) -> None:
    x = torch.rand(3, *net.input_shape)  # type: ignore[misc]
    with torch.inference_mode():
        full = net(x)
        for k in range(net.num_blocks + 1):
            z = net.run_until(x, k)
            assert torch.equal(net.run_from(z, k), full), f"cut {k}"


def test_run_range_composes(net: BlockNet) -> None:
    x = torch.rand(1, *net.input_shape)  # type: ignore[misc]
    n = net.num_blocks
    with torch.inference_mode():
        for i in range(n + 1):
            for j in range(i, n + 1):
                z = net.run_range(net.run_until(x, i), i, j)
                assert torch.equal(z, net.run_until(x, j))


def test_cut_points_match_real_shapes(net: BlockNet) -> None:
    cuts = net.cut_points()
    assert [c.index for c in cuts] == list(range(net.num_blocks + 1))
    assert cuts[0].name == "input" and cuts[-1].name == "output"
    x = torch.rand(2, *net.input_shape)  # type: ignore[misc]
    with torch.inference_mode():
        for c in cuts:
            assert tuple(net.run_until(x, c.index).shape[1:]) == c.shape


def test_bad_cuts_raise_model_error(net: BlockNet) -> None:
    x = torch.rand(1, *net.input_shape)  # type: ignore[misc]
    for bad in (-1, net.num_blocks + 1):
        with pytest.raises(ModelError, match="out of range"):
            net.run_until(x, bad)
    with pytest.raises(ModelError, match="backwards"):
        net.run_range(x, 2, 1)


def test_from_sequential_keeps_names() -> None:
    seq = nn.Sequential()
    seq.add_module("flat", nn.Flatten())
    seq.add_module("lin", nn.Linear(4, 2))
    net = BlockNet.from_sequential(seq, input_shape=(2, 2))
    assert net.block_names == ("flat", "lin")
    x = torch.rand(5, 2, 2)
    assert torch.equal(net(x), seq(x))


def test_constructor_rejects_bad_blocks() -> None:
    with pytest.raises(ModelError, match="at least one"):
        BlockNet([])
    with pytest.raises(ModelError, match=r"not an nn\.Module"):
        BlockNet([("a", 3)])  # type: ignore[list-item]
    with pytest.raises(ModelError, match="duplicate"):
        BlockNet([("a", nn.ReLU()), ("a", nn.ReLU())])


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ModelError, match="fmnist-resnet"):
        create_model("resnet-9000")


def test_reference_models_have_the_promised_sizes() -> None:
    params = {
        n: sum(p.numel() for p in create_model(n).parameters())
        for n in ("fmnist-resnet", "fmnist-small")
    }
    assert 150_000 <= params["fmnist-resnet"] <= 200_000
    assert 10_000 <= params["fmnist-small"] <= 60_000


def test_activations_are_the_tensor_at_every_cut_in_one_pass() -> None:
    torch.manual_seed(0)
    net = create_model("tiny-cnn").eval()
    x = torch.rand(3, 1, 28, 28)
    calls = []
    hooks = [b.register_forward_hook(lambda *_: calls.append(1)) for b in net.blocks]
    with torch.inference_mode():
        acts = net.activations(x)
    for h in hooks:
        h.remove()
    assert len(calls) == net.num_blocks, "one pass: every block runs once"
    assert len(acts) == net.num_blocks + 1 and acts[0] is x
    with torch.inference_mode():
        for k, z in enumerate(acts):
            assert torch.equal(z, net.run_until(x, k))
