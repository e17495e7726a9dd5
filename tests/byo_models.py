"""Models that are not in the zoo, written as a user would: what the package tests
pack, serve and run (importable as ``byo_models`` with ``tests/`` on the path)."""

from __future__ import annotations

import torch
from torch import nn


class ColourNet(nn.Module):
    """A small CNN on 3x32x32 inputs whose forward chains its children (with a
    functional flatten between them), the shape torchvision models have."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def colour_net() -> nn.Module:
    return ColourNet()


def colour_seq() -> nn.Sequential:
    """The same idea as an ``nn.Sequential`` (no tracing needed)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def trained_weights(seed: int = 7) -> dict[str, torch.Tensor]:
    """'Trained' weights of :class:`ColourNet`: seeded, with BatchNorm statistics that
    are not the defaults, so a package that dropped buffers would answer differently."""
    torch.manual_seed(seed)
    net = ColourNet()
    net.bn1.running_mean.uniform_(-0.5, 0.5)
    net.bn1.running_var.uniform_(0.5, 2.0)
    return {k: v.clone() for k, v in net.state_dict().items()}


def not_a_module() -> int:
    return 3
