"""The colour-image architectures: ImageNet-stem ResNet-18, PreAct ResNet-18, WRN-28-10 / 34-10 and the
VNN-COMP 2021 ResNet-2B / 4B: published layouts and parameter counts, any input size, save/load, and
the VNN-COMP networks read by the verifier's tracer (exactly the module's function)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.models.preact import PreActBlock, WideResNet
from robustlab.verify.network import ReLUOp, trace


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts():
    # torchvision's resnet18 has 11,689,512 parameters; WRN-28-10 36.5 M (Zagoruyko & Komodakis, Table 1).
    assert _params(rl.models.create("resnet18-imagenet", num_classes=1000, in_channels=3, input_size=224).net) == 11_689_512
    assert 11.1e6 < _params(rl.models.create("preact-resnet18", "cifar10").net) < 11.2e6
    assert 36.4e6 < _params(rl.models.create("wrn-28-10", "cifar10").net) < 36.6e6
    assert 46.1e6 < _params(rl.models.create("wrn-34-10", "cifar10").net) < 46.2e6


def test_imagenet_stem_downsamples_by_32():
    net = rl.models.create("resnet18-imagenet", "imagenet-sample", seed=0).net.eval()
    assert net.stem[0].kernel_size == (7, 7) and net.stem[0].stride == (2, 2) and isinstance(net.stem[3], nn.MaxPool2d)
    with torch.no_grad():
        assert net.layers(net.stem(torch.rand(1, 3, 224, 224))).shape == (1, 512, 7, 7)
        assert net(torch.rand(2, 3, 224, 224)).shape == (2, 1000)


def test_preact_blocks_add_without_a_relu_after_the_sum():
    torch.manual_seed(0)
    block = PreActBlock(4, 4, 1).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        residual = block.conv2(block.bn2(block.conv1(block.bn1(x).relu())).relu())
        assert torch.allclose(block(x), x + residual)  # identity path untouched; negative outputs possible
        assert (block(x) < 0).any()
    down = PreActBlock(4, 8, 2)
    assert down.shortcut is not None and down.shortcut.stride == (2, 2)
    wrn = WideResNet(3, 10, 16, 2)
    assert sum(isinstance(m, PreActBlock) for m in wrn.modules()) == 6
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(3, 10, 27, 10)


@pytest.mark.parametrize("arch", ["resnet18-imagenet", "preact-resnet18", "resnet2b", "resnet4b"])
def test_save_and_load_roundtrip(arch, tmp_path):
    m = rl.models.create(arch, num_classes=5, in_channels=3, input_size=64 if "imagenet" in arch else 32, seed=1).eval()
    rl.models.save(m, tmp_path / "m")
    back = rl.models.load(tmp_path / "m")
    x = torch.rand(2, 3, *m.arch_config["input_size"])
    with torch.no_grad():
        assert torch.equal(m(x), back(x))


@pytest.mark.parametrize("arch,relus,width", [("resnet2b", 6244, 1024), ("resnet4b", 14436, 512)])
def test_vnncomp_resnets_match_the_benchmark_and_trace_exactly(arch, relus, width):
    m = rl.models.create(arch, "cifar10", mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616), seed=0).eval()
    names = set(m.net.state_dict())
    assert {"conv1.weight", "conv1.bias", "layer1.0.conv1.bias", "layer1.0.shortcut.0.weight", "linear1.weight",
            "linear2.bias"} <= names and not any("bn" in n or "running" in n for n in names)
    assert m.net.linear1.in_features == width and m.net.conv1.stride == (2, 2)
    x = torch.rand(3, 3, 32, 32)
    net = trace(m, x)
    assert sum(math.prod(op.out_shape) if op.mask is None else int(op.mask.sum())
               for op in net.ops if isinstance(op, ReLUOp)) == relus  # the benchmark README's ReLU counts
    with torch.no_grad():
        assert torch.allclose(net.forward(x), m(x), atol=1e-5)
    tm = rl.ThreatModel("linf", 2 / 255)
    x1 = x[:1]
    lo, hi = rl.verify.bounds(m, x1, tm, method="crown" if arch == "resnet2b" else "ibp")  # CROWN on 4B: minutes
    with torch.no_grad():
        out = m((x1 + tm.eps * (2 * torch.rand(16, 3, 32, 32) - 1)).clamp(0, 1))  # (16, 10)
    assert (lo <= out + 1e-5).all() and (out <= hi + 1e-5).all()
