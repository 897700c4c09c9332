"""A torchvision-style ResNet in plain PyTorch (no torchvision), as a user's own model file.

The names of the layers follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
..., ``fc``), so a state dict saved from such a network loads as is. Evaluate it with robustlab
(docs/byo.md)::

    robustlab evaluate --model docs/examples/my_resnet.py:resnet18 --model-option num_classes=10 \\
        --weights resnet18.pt --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 --dataset images/

The network expects standardised inputs, ``(x - mean) / std``; robustlab wraps it so attacks work on
images in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (He et al. 2016, arXiv:1512.03385)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout: stem, four stages of ``BasicBlock``s, global average pooling, ``fc``.

    ``small_input=True`` uses a 3x3 stride-1 stem without max pooling (the CIFAR variant), so tiny
    images keep their resolution.
    """

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3, width: int = 64,
                 small_input: bool = False) -> None:
        super().__init__()
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        planes, inplanes, stages = width, width, []
        for i, blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes, planes = planes, planes * 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, C, 1, 1) -> (N, C) -> (N, K)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 exactly as torchvision builds it (11.7M parameters at 1000 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


def resnet_small(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNet:
    """The same network with one block per stage, ``width`` channels in the first stage and the
    small-input stem: for 28x28 / 32x32 images on a CPU."""
    return ResNet((1, 1, 1, 1), num_classes, in_channels, width=width, small_input=True)
