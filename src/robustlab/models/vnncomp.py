"""The CIFAR-10 ResNets of the VNN-COMP 2021 ``cifar10_resnet`` benchmark (Wang et al. 2021,
beta-CROWN, arXiv:2103.06624): ResNet-2B and ResNet-4B, PGD-trained at eps = 2/255.

Read from the benchmark's ONNX graphs (every layer, stride and padding) and its PyTorch state
dicts (``pytorch_model/resnet{2,4}b/model_best.pth``, names and shapes), and written here:

- a 3x3 stride-2 convolution with bias (3 -> w channels, 32x32 -> 16x16), ReLU;
- residual stages of two BN-free basic blocks (:class:`~robustlab.models.architectures.BasicBlock`
  with ``batch_norm=False``: convolutions with biases), the first of each stage with stride 2 and
  a 1x1 projection shortcut (with bias): ResNet-2B one stage 8 -> 16 channels (16x16 -> 8x8),
  ResNet-4B two stages 16 -> 32 -> 32 channels (16x16 -> 8x8 -> 4x4);
- flatten, a 100-unit fully connected layer, ReLU, the 10 logits.

ResNet-2B has 6,244 ReLUs and ResNet-4B 14,436 (the benchmark's README counts the same). The
networks expect CIFAR-10-standardised inputs (mean (0.4914, 0.4822, 0.4465), std (0.2471, 0.2435,
0.2616), the values of the benchmark's property generator): the catalogue wraps them in
:class:`~robustlab.models.Normalize` so attacks and verifiers work in [0, 1] pixel space. The
modules are ``nn.Sequential`` of modules :mod:`robustlab.verify.network` traces, so IBP, CROWN,
alpha-CROWN, LP and MILP read them unchanged; the state-dict names (``conv1``, ``layer1.0.conv1``,
``layer1.0.shortcut.0``, ``linear1``, ``linear2``) are the benchmark's, so its files load as they are.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from robustlab.models.architectures import BasicBlock

#: The normalisation the VNN-COMP 2021 CIFAR-10 ResNets were trained with.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)


def _resnet(in_channels: int, num_classes: int, input_size: tuple[int, int], stem: int,
            stages: "list[int]") -> nn.Sequential:
    parts: "OrderedDict[str, nn.Module]" = OrderedDict()
    parts["conv1"] = nn.Conv2d(in_channels, stem, 3, 2, 1)  # (N, stem, H/2, W/2)
    parts["relu1"] = nn.ReLU()
    cin = stem
    for i, cout in enumerate(stages, start=1):
        parts[f"layer{i}"] = nn.Sequential(BasicBlock(cin, cout, 2, batch_norm=False),  # halves H and W
                                           BasicBlock(cout, cout, 1, batch_norm=False))
        cin = cout
    parts["flatten"] = nn.Flatten()  # (N, C * H' * W')
    with torch.no_grad():
        width = nn.Sequential(parts)(torch.zeros(1, in_channels, *input_size)).shape[1]
    parts["linear1"] = nn.Linear(width, 100)
    parts["relu2"] = nn.ReLU()
    parts["linear2"] = nn.Linear(100, num_classes)
    return nn.Sequential(parts)


def resnet2b(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """VNN-COMP 2021 ResNet-2B: stem 8 channels, one stage of two blocks with 16 channels."""
    return _resnet(in_channels, num_classes, input_size, 8, [16])


def resnet4b(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """VNN-COMP 2021 ResNet-4B: stem 16 channels, two stages of two blocks with 32 channels."""
    return _resnet(in_channels, num_classes, input_size, 16, [32, 32])
