"""Network builders. Each takes ``(in_channels, num_classes, input_size)`` and works for any input
size: fully connected widths are computed from a dummy forward pass at construction, the ResNet
ends in adaptive average pooling. The builders return bare networks; :func:`robustlab.models.create`
wraps them in :class:`~robustlab.models.Normalize`."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _flat_width(features: nn.Module, in_channels: int, input_size: tuple[int, int]) -> int:
    """Number of features ``features`` produces for one (in_channels, H, W) image."""
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, *input_size)).numel())


def mlp(in_channels: int, num_classes: int, input_size: tuple[int, int], hidden: int = 256) -> nn.Module:
    """Flatten, then two hidden ReLU layers of ``hidden`` units, then logits."""
    d = in_channels * input_size[0] * input_size[1]
    return nn.Sequential(
        nn.Flatten(),  # (N, C, H, W) -> (N, C*H*W)
        nn.Linear(d, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """The MNIST CNN of Madry et al. 2018 (arXiv:1706.06083, the MNIST challenge model): conv 32
    5x5 (pad 2), ReLU, max-pool 2, conv 64 5x5 (pad 2), ReLU, max-pool 2, fc 1024, ReLU, fc K.
    3.3 M parameters and 28 MFLOP per 28x28 image. Pooling rounds up, so odd sizes work."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # (N, 32, H/2, W/2)
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # (N, 64, H/4, W/4)
        nn.Flatten(),  # (N, 64 * H/4 * W/4)
    )
    width = _flat_width(features, in_channels, input_size)
    return nn.Sequential(features, nn.Linear(width, 1024), nn.ReLU(), nn.Linear(1024, num_classes))


def small_cnn(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """A fast CPU network, the "small" model of Wong & Kolter 2018 (arXiv:1711.00851): conv 16 4x4
    stride 2, ReLU, conv 32 4x4 stride 2, ReLU, fc 100, ReLU, fc K. 166 k parameters and
    1.2 MFLOP per 28x28 image (23x less than :func:`cnn`)."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),  # (N, 16, H/2, W/2)
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),  # (N, 32, H/4, W/4)
        nn.Flatten(),  # (N, 32 * H/4 * W/4)
    )
    width = _flat_width(features, in_channels, input_size)
    return nn.Sequential(features, nn.Linear(width, 100), nn.ReLU(), nn.Linear(100, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016, arXiv:1512.03385):
    ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``, the shortcut a 1x1 conv + BN when the
    stride or the width changes, else the identity. ``batch_norm=False`` gives the BN-free block
    of the VNN-COMP ResNets: convolutions with biases, the BNs (and the shortcut's) the identity."""

    def __init__(self, cin: int, cout: int, stride: int, *, batch_norm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            projection: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride, bias=not batch_norm)]
            self.shortcut = nn.Sequential(*projection, nn.BatchNorm2d(cout)) if batch_norm else nn.Sequential(*projection)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18: a stem, four stages of two :class:`BasicBlock` with 64/128/256/512 channels
    (strides 1/2/2/2), global average pooling (so any input size works), fc K. 11.2 M parameters.

    ``stem="cifar"`` (default): a 3x3 stride-1 convolution without max-pool, so 32x32 inputs keep
    their resolution (the CIFAR variant; also pyautoattack's and Rice et al.'s ResNet-18).
    ``stem="imagenet"``: He et al.'s ImageNet stem, a 7x7 stride-2 convolution (padding 3), BN,
    ReLU and a 3x3 stride-2 max-pool (padding 1): a 224x224 image reaches the first stage at
    56x56 and the last at 7x7 (1.8 GFLOP per image, as in the paper's Table 1).
    """

    def __init__(self, in_channels: int, num_classes: int, *, stem: str = "cifar") -> None:
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        elif stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))  # (N, 64, H/4, W/4)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)  # (N, 512, H/8, W/8) for the CIFAR stem, H/32 for ImageNet's
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))  # (N, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet18(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """:class:`ResNet18` (``input_size`` is accepted for the common signature; pooling is adaptive)."""
    return ResNet18(in_channels, num_classes)


def resnet18_imagenet(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """:class:`ResNet18` with the ImageNet stem (for 224x224 inputs and up)."""
    return ResNet18(in_channels, num_classes, stem="imagenet")
