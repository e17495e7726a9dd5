"""The model zoo: reference BlockNets registered by name.

``fmnist-resnet`` is the full model (the accurate one the edge and cloud run);
``fmnist-small`` stands for the compressed model of local computing. The
``tiny-*`` models exist for fast tests and examples.

Inputs are float images in ``[0, 1]`` of shape ``(1, 28, 28)``; normalisation
lives inside the first block so that every tier and codec sees the same input.

Example::

    >>> net = create_model("tiny-cnn")
    >>> net.num_blocks
    4
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from collabinfer.errors import ModelError
from collabinfer.model.blocks import BlockNet

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


class Normalize(nn.Module):
    """Fixed per-dataset normalisation, part of the model so codecs see raw pixels."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResidualBlock(nn.Module):
    """A basic pre-activation-free residual block (He et al.), stride on the first conv."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def fmnist_resnet(widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10) -> BlockNet:
    """A ~175k-parameter ResNet: stem, three stages of two residual blocks, pool, fc.

    Pool and fc are separate blocks on purpose: the cut between them carries
    only ``widths[2]`` numbers, the network's natural bottleneck.
    """
    w1, w2, w3 = widths
    blocks: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(Normalize(FMNIST_MEAN, FMNIST_STD), *_conv_bn_relu(1, w1))),
        ("res1a", ResidualBlock(w1, w1)),
        ("res1b", ResidualBlock(w1, w1)),
        ("res2a", ResidualBlock(w1, w2, 2)),
        ("res2b", ResidualBlock(w2, w2)),
        ("res3a", ResidualBlock(w2, w3, 2)),
        ("res3b", ResidualBlock(w3, w3)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("fc", nn.Linear(w3, num_classes)),
    ]
    return BlockNet(blocks, input_shape=(1, 28, 28))


def fmnist_small(num_classes: int = 10) -> BlockNet:
    """A ~24k-parameter plain CNN: the compressed model a device can afford."""
    blocks: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Sequential(Normalize(FMNIST_MEAN, FMNIST_STD), *_conv_bn_relu(1, 16, 2))),
        ("conv2", nn.Sequential(*_conv_bn_relu(16, 32, 2))),
        ("conv3", nn.Sequential(*_conv_bn_relu(32, 64, 2))),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("fc", nn.Linear(64, num_classes)),
    ]
    return BlockNet(blocks, input_shape=(1, 28, 28))


def tiny_cnn(num_classes: int = 10) -> BlockNet:
    """A few-hundred-parameter CNN for tests: four blocks, real convolutions."""
    blocks: list[tuple[str, nn.Module]] = [
        ("conv", nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU())),
        ("res", ResidualBlock(4, 4)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("fc", nn.Linear(4, num_classes)),
    ]
    return BlockNet(blocks, input_shape=(1, 28, 28))


def tiny_mlp(num_classes: int = 10) -> BlockNet:
    """A three-block MLP for tests that need no convolutions."""
    blocks: list[tuple[str, nn.Module]] = [
        ("flatten", nn.Flatten()),
        ("hidden", nn.Sequential(nn.Linear(784, 16), nn.ReLU())),
        ("fc", nn.Linear(16, num_classes)),
    ]
    return BlockNet(blocks, input_shape=(1, 28, 28))


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what it expects."""

    name: str
    factory: Callable[[], BlockNet]
    input_shape: tuple[int, ...]
    num_classes: int
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add a model to the zoo; names are unique."""
    if spec.name in _REGISTRY:
        raise ModelError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None


# Deployed variants of a zoo model are named by a suffix on its name; the recipes
# in collabinfer.train make them and collabinfer.train.packages packages them.
GATES_SUFFIX = "+gates"  # residual blocks gated (model/gates.py)
BOTTLENECK_SUFFIX = "+bn"  # a learned bottleneck at the head (model/bottleneck.py)
VARIATIONAL_SUFFIX = "+vbn"  # the variational bottleneck: the privacy defence
VARIANT_SUFFIXES = (GATES_SUFFIX, BOTTLENECK_SUFFIX, VARIATIONAL_SUFFIX)


def split_variant(name: str) -> tuple[str, str]:
    """``("fmnist-resnet", "+gates")`` for ``"fmnist-resnet+gates"``; no suffix: ``""``."""
    for suffix in VARIANT_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def create_model(name: str) -> BlockNet:
    """A freshly initialised (untrained) model from the zoo."""
    return model_spec(name).factory()


for _spec in (
    ModelSpec(
        "fmnist-resnet",
        fmnist_resnet,
        (1, 28, 28),
        10,
        "ResNet 16/32/64, 9 blocks, ~175k params: the full model",
    ),
    ModelSpec(
        "fmnist-small",
        fmnist_small,
        (1, 28, 28),
        10,
        "plain CNN, 5 blocks, ~24k params: the local (compressed) model",
    ),
    ModelSpec("tiny-cnn", tiny_cnn, (1, 28, 28), 10, "tiny CNN for tests"),
    ModelSpec("tiny-mlp", tiny_mlp, (1, 28, 28), 10, "tiny MLP for tests"),
):
    register_model(_spec)
