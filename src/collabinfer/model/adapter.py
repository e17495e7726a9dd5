"""Any PyTorch model as blocks: cut a module whose forward chains its children.

Why tracing: a torchvision-style ResNet or MobileNetV2 is written as a forward
that calls ``self.conv1``, ``self.layer1``, ... with a ``torch.flatten`` in
between; its children alone do not say how they connect. :func:`blocknet_from_module`
traces the forward with ``torch.fx`` and cuts it where exactly one tensor
crosses from one child to the next, so "split execution equals the monolithic
forward" holds bit-exactly: every block replays the same operations in the same
order on the same parameters.

Granularity: one block per top-level child, and one per element where that
child is a plain ``nn.Sequential`` (so a ResNet's ``layer1`` becomes ``layer1.0``,
``layer1.1``, and MobileNetV2's ``features`` one block per inverted residual).
Functional operations (flatten, an addition) join the block they follow. A skip
connection that spans blocks, or a child called twice, cannot be cut: the error
names the first child whose output does not feed only the next.

The blocks hold the original module's parameters (shared, not copied), so load
the user's weights into the module before adapting it, or afterwards through
:func:`original_state_dict_keys`.

Example::

    >>> import torch
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(8, 3)
    ...     def forward(self, x):
    ...         return self.fc(torch.flatten(self.conv(x), 1))
    >>> net = blocknet_from_module(Net(), (1, 4, 4))
    >>> net.block_names
    ('conv', 'fc')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from collabinfer.errors import ModelError
from collabinfer.model.blocks import BlockNet

__all__ = ["blocknet_from_module", "load_original_state_dict", "original_state_dict_keys"]


def blocknet_from_module(module: nn.Module, input_shape: Sequence[int]) -> BlockNet:
    """``module`` cut into blocks at the points where one tensor crosses (see the module
    docstring); a BlockNet passes through, an ``nn.Sequential`` keeps its children."""
    shape = tuple(int(s) for s in input_shape)
    if isinstance(module, BlockNet):
        return module
    if isinstance(module, nn.Sequential):
        return BlockNet.from_sequential(module, input_shape=shape)
    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:  # fx raises many types on what it cannot trace
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(
            f"cannot trace {type(module).__name__} with torch.fx ({msg}); write it as an "
            "nn.Sequential or a BlockNet"
        ) from None
    groups = _groups(gm, module)
    blocks = [(name, _block(gm, nodes, inp, out)) for name, nodes, inp, out in groups]
    net = BlockNet(blocks, input_shape=shape)
    net.eval() if not module.training else net.train()
    return net


def original_state_dict_keys(net: BlockNet) -> dict[str, str]:
    """BlockNet state-dict key -> the original module's key (``blocks.3.layer1.0.conv1.weight``
    -> ``layer1.0.conv1.weight``), for weights saved from the original model."""
    return {k: k.split(".", 2)[2] for k in net.state_dict()}


def load_original_state_dict(net: BlockNet, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict of the original module into its adapted blocks (strict)."""
    keys = original_state_dict_keys(net)
    missing = sorted(set(keys.values()) - set(state))
    extra = sorted(set(state) - set(keys.values()))
    if missing or extra:
        raise ModelError(f"state dict does not fit: missing {missing[:5]}, unexpected {extra[:5]}")
    net.load_state_dict({k: state[o] for k, o in keys.items()}, strict=True)


def _owner(target: str, root: nn.Module) -> str:
    """The block a submodule path belongs to: its top-level child, descending into
    plain ``nn.Sequential`` children (``layer1.0.conv1`` -> ``layer1.0``); a subclass of
    Sequential (a ``ConvBNReLU``) is the user's own unit and stays one block."""
    parts = target.split(".")
    mod: nn.Module = root
    owner: list[str] = []
    for part in parts:
        if owner and type(mod) is not nn.Sequential:  # a named subclass is one unit
            break
        mod = getattr(mod, part)
        owner.append(part)
    return ".".join(owner)


_Group = tuple[str, list[fx.Node], fx.Node, fx.Node]


def _groups(gm: fx.GraphModule, root: nn.Module) -> list[_Group]:
    """Nodes per block in graph order, each block's input and output node."""
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ModelError(f"the forward must take one tensor, it takes {len(inputs)} arguments")
    out_node = next(n for n in nodes if n.op == "output")
    result = out_node.args[0]
    if not isinstance(result, fx.Node):
        raise ModelError("the forward must return one tensor (not a tuple or a dict)")
    owners: list[str] = []
    members: list[list[fx.Node]] = []
    for n in nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        owner = _owner(str(n.target), root) if n.op == "call_module" else None
        if owner is not None and (not owners or owners[-1] != owner):
            if owner in owners:
                raise ModelError(f"child {owner!r} is called twice; it cannot be one block")
            owners.append(owner)
            if len(owners) > len(members) or len(owners) > 1:  # else: adopts leading ops
                members.append([])
        if not members:
            members.append([])
        members[-1].append(n)
    if not owners:
        raise ModelError("the forward calls no child module: nothing to cut into blocks")
    where = {n: g for g, group in enumerate(members) for n in group}
    where[inputs[0]] = -1
    groups: list[_Group] = []
    prev_out = inputs[0]
    for g, group in enumerate(members):
        crossing = {
            a
            for later in members[g + 1 :]
            for n in later
            for a in n.all_input_nodes
            if a.op != "get_attr" and where.get(a, g + 1) <= g
        }
        if g == len(members) - 1:
            crossing = {result}
        if len(crossing) != 1:
            first = min((a for a in crossing if a is not group[-1]), key=lambda a: where.get(a, -1))
            who = owners[where[first]] if where[first] >= 0 else "the input"
            raise ModelError(
                f"the output of {who!r} does not feed only the next block (it reaches past "
                f"{owners[g]!r}: a skip connection across children); cannot cut there"
            )
        (out,) = crossing
        outside = [
            a for n in group for a in n.all_input_nodes
            if a.op != "get_attr" and where.get(a, g) < g and a is not prev_out
        ]  # fmt: skip
        if outside:
            who = owners[where[outside[0]]] if where[outside[0]] >= 0 else "the input"
            raise ModelError(
                f"the output of {who!r} does not feed only the next block "
                f"({owners[g]!r} reads it too); cannot cut there"
            )
        groups.append((owners[g], group, prev_out, out))
        prev_out = out
    return groups


def _block(gm: fx.GraphModule, nodes: list[fx.Node], inp: fx.Node, out: fx.Node) -> nn.Module:
    """One block: the nodes replayed on a graph of their own over the same submodules."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {inp: graph.placeholder("x")}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:  # a parameter or buffer read functionally: fetched in this block
            assert n.op == "get_attr", n
            env[n] = graph.node_copy(n, arg)
        return env[n]

    for n in nodes:
        env[n] = graph.node_copy(n, arg)
    graph.output(env[out])
    return fx.GraphModule(gm, graph, class_name="TracedBlock")
