"""Pre-activation residual networks, the CIFAR-10 architectures of the adversarial-training papers.

Pre-activation (He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep Residual Networks",
arXiv:1603.05027): BatchNorm and ReLU come *before* each convolution, and the residual path is
added without a ReLU after it, so a block computes ``x_{l+1} = x_l + F(relu(bn(x_l)))`` and the
identity path runs untouched from the stem to the head (a final BN + ReLU before pooling).

- :class:`PreActResNet18`: four stages of two :class:`PreActBlock` (64/128/256/512 channels,
  strides 1/2/2/2) after a 3x3 stem; 11.2 M parameters. The network of Rice, Wong & Kolter 2020
  (arXiv:2002.11569) and Wong, Rice & Kolter 2020 (arXiv:2001.03994); a projection shortcut
  (1x1 convolution) reads the pre-activated input, as in He et al.'s Fig. 4(e).
- :class:`WideResNet` (Zagoruyko & Komodakis 2016, "Wide Residual Networks", arXiv:1605.07146):
  depth ``6n + 4``, three groups of ``n`` pre-activation blocks with ``16k / 32k / 64k`` channels
  (widening factor ``k``; strides 1/2/2) after a 16-channel 3x3 stem. WRN-28-10 (``n = 4``,
  ``k = 10``) has 36.5 M parameters; WRN-34-10 (46.2 M) is TRADES' network (Zhang et al. 2019,
  arXiv:1901.08573). Dropout between the convolutions is an option (``dropout``, 0 by default as
  in the adversarial-training papers).

Both end in global average pooling, so any input size works.
"""

from __future__ import annotations

from torch import Tensor, nn


class PreActBlock(nn.Module):
    """``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``, the shortcut a 1x1 convolution of
    ``relu(bn1(x))`` when the stride or the width changes (then it replaces ``x``)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn1(x).relu()
        skip = x if self.shortcut is None else self.shortcut(a)
        return skip + self.conv2(self.drop(self.bn2(self.conv1(a)).relu()))


class _PreActNet(nn.Module):
    """A 3x3 stem, stages of :class:`PreActBlock`, then BN, ReLU, global average pooling, fc."""

    def __init__(self, in_channels: int, num_classes: int, stem: int, stages: "list[tuple[int, int, int]]",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = stem
        for cout, stride, n in stages:
            for i in range(n):
                blocks.append(PreActBlock(cin, cout, stride if i == 0 else 1, dropout))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))  # (N, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.bn(self.layers(self.stem(x))).relu())


class PreActResNet18(_PreActNet):
    """Pre-activation ResNet-18 (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, 64, [(64, 1, 2), (128, 2, 2), (256, 2, 2), (512, 2, 2)])


class WideResNet(_PreActNet):
    """WRN-``depth``-``widen`` (see the module docstring); ``depth = 6n + 4``."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10, dropout: float = 0.0) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if widen < 1:
            raise ValueError(f"WideResNet widen must be >= 1, got {widen}")
        n = (depth - 4) // 6
        super().__init__(in_channels, num_classes, 16,
                         [(16 * widen, 1, n), (32 * widen, 2, n), (64 * widen, 2, n)], dropout)


def preact_resnet18(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """:class:`PreActResNet18` (pooling is adaptive; ``input_size`` is for the common signature)."""
    return PreActResNet18(in_channels, num_classes)


def wrn_28_10(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """WRN-28-10 (:class:`WideResNet`)."""
    return WideResNet(in_channels, num_classes, 28, 10)


def wrn_34_10(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """WRN-34-10 (:class:`WideResNet`), TRADES' CIFAR-10 network."""
    return WideResNet(in_channels, num_classes, 34, 10)
