"""Architectures by name. Every builder takes ``(in_channels, num_classes, input_size)`` and works
for any input size (the flattened width is computed from a dummy forward at construction)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _flat_width(features: nn.Module, in_channels: int, input_size: tuple[int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, *input_size)).numel())


def mlp(in_channels: int, num_classes: int, input_size: tuple[int, int], hidden: int = 256) -> nn.Module:
    """Two hidden ReLU layers of ``hidden`` units."""
    d = in_channels * input_size[0] * input_size[1]
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def cnn(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """The MNIST CNN of Madry et al. 2018 (arXiv:1706.06083): conv 32 5x5, max-pool 2, conv 64 5x5,
    max-pool 2, fully connected 1024, logits."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
    )
    width = _flat_width(features, in_channels, input_size)
    return nn.Sequential(features, nn.Linear(width, 1024), nn.ReLU(), nn.Linear(1024, num_classes))


def small_cnn(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """A fast CPU network: conv 16 4x4 stride 2, conv 32 4x4 stride 2, fc 100 (the "small" model of
    Wong & Kolter 2018, arXiv:1711.00851), about 0.2 MFLOP per 28x28 image."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
    )
    width = _flat_width(features, in_channels, input_size)
    return nn.Sequential(features, nn.Linear(width, 100), nn.ReLU(), nn.Linear(100, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016, arXiv:1512.03385): two 3x3 convs with BatchNorm and a
    (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem without max-pool, stages of [2, 2, 2, 2] basic blocks with
    64/128/256/512 channels, global average pooling (any input size)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet18(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    return ResNet18(in_channels, num_classes)


ARCHITECTURES: dict[str, Callable[[int, int, tuple[int, int]], nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "small-cnn": small_cnn,
    "resnet18": resnet18,
}
