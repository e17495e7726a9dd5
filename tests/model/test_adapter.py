"""The fx adapter cuts user-written torchvision-style models into blocks; split
execution equals the monolithic forward bit-exactly at every cut (fp32, eval)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from collabinfer.errors import ModelError
from collabinfer.model.adapter import (
    blocknet_from_module,
    load_original_state_dict,
    original_state_dict_keys,
)
from collabinfer.model.blocks import BlockNet
from collabinfer.plan.profile import profile_model


# --- a ResNet-18-like definition (torchvision's structure, small widths) ----------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 24, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --- a MobileNetV2-like definition ---------------------------------------------
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU(cin, hidden, 1)] if expand != 1 else []
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        settings = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1)]
        features: list[nn.Module] = [ConvBNReLU(3, 8, stride=2)]
        cin = 8
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNReLU(cin, 64, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _randomise_bn(module: nn.Module) -> None:
    """BatchNorm statistics that are not the identity, so buffers must travel too."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("make", [ResNet18, MobileNetV2])
def test_split_execution_is_bit_exact_at_every_cut(make: type[nn.Module]) -> None:
    model = make().eval()
    _randomise_bn(model)
    net = blocknet_from_module(model, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        assert torch.equal(net(x), full)
        for k in range(net.num_blocks + 1):
            assert torch.equal(net.run_from(net.run_until(x, k), k), full), k


def test_resnet_is_cut_at_every_basic_block() -> None:
    net = blocknet_from_module(ResNet18().eval(), (3, 32, 32))
    assert net.block_names == (
        "conv1", "bn1", "relu", "maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
        "layer3.0", "layer3.1", "layer4.0", "layer4.1", "avgpool", "fc",
    )  # fmt: skip
    shapes = [c.shape for c in net.cut_points()]
    assert shapes[4] == (8, 8, 8) and shapes[7] == (16, 4, 4) and shapes[-2] == (32,)


def test_mobilenet_is_cut_inside_features() -> None:
    net = blocknet_from_module(MobileNetV2().eval(), (3, 32, 32))
    assert net.block_names[:3] == ("features.0", "features.1", "features.2")
    assert net.block_names[-1] == "classifier.1"  # dropout and linear: two blocks
    assert net.cut_points()[-3].shape == (64,)  # pool + flatten joined the last feature block


def test_the_original_state_dict_loads_into_the_blocks() -> None:
    a, b = ResNet18().eval(), ResNet18().eval()
    _randomise_bn(a)
    net = blocknet_from_module(b, (3, 32, 32))
    load_original_state_dict(net, a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), a(x))
    assert set(original_state_dict_keys(net).values()) == set(a.state_dict())
    with pytest.raises(ModelError, match="does not fit"):
        load_original_state_dict(net, {"fc.weight": torch.zeros(1)})


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.c(self.b(y)) + y  # y reaches past b


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.b(self.a(x)))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.a(x)
        return x


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (Skip(), "output of 'a' does not feed only the next"),
        (Twice(), "child 'a' is called twice"),
        (Branchy(), "cannot trace Branchy"),
    ],
)
def test_what_cannot_be_cut_is_named(model: nn.Module, needle: str) -> None:
    with pytest.raises(ModelError, match=needle):
        blocknet_from_module(model, (3, 8, 8))


def test_a_block_local_skip_is_fine() -> None:
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y) + y  # y is the one tensor crossing into b's block

    m = Local().eval()
    net = blocknet_from_module(m, (3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert net.num_blocks == 2 and torch.equal(net.run_from(net.run_until(x, 1), 1), m(x))


def test_sequential_and_blocknet_pass_through() -> None:
    seq = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    net = blocknet_from_module(seq, (1, 2, 2))
    assert net.block_names == ("0", "1") and net.input_shape == (1, 2, 2)
    assert blocknet_from_module(net, (1, 2, 2)) is net
    assert isinstance(net, BlockNet)


def test_an_adapted_model_profiles() -> None:
    net = blocknet_from_module(MobileNetV2().eval(), (3, 32, 32))
    prof = profile_model(net, "mnv2", repeats=1)
    assert len(prof.blocks) == net.num_blocks and prof.total_ms() > 0
