"""Architectures by name: any input size and channel count gives (N, K) logits; the published
layouts; create() from a dataset name, a Dataset or explicit arguments; seeded initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.data.specs import spec
from robustlab.models import Normalize


@pytest.mark.parametrize("arch", ["mlp", "cnn", "small-cnn", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 13, 17)])
def test_every_architecture_maps_any_input_to_logits(arch, shape):
    m = rl.models.create(arch, num_classes=7, in_channels=shape[0], input_size=shape[1:], seed=0)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert m.eval()(x).shape == (3, 7)
        assert m.train()(x).shape == (3, 7)  # train mode too (BatchNorm in resnet18)


def test_madry_cnn_layout():
    net = rl.models.create("cnn", "mnist").net
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (5, 5), (2, 2)), (64, (5, 5), (2, 2))]
    assert [f.out_features for f in fcs] == [1024, 10] and fcs[0].in_features == 7 * 7 * 64
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2


def test_resnet18_is_the_cifar_variant():
    net = rl.models.create("resnet18", "cifar10", seed=0).net
    stem = net.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    blocks = [m for m in net.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8 and [b.conv1.out_channels for b in blocks[::2]] == [64, 128, 256, 512]
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert 11.1e6 < sum(p.numel() for p in net.parameters()) < 11.2e6


def test_create_from_a_name_a_dataset_or_arguments(digits_train):
    by_name = rl.models.create("small-cnn", "fashion_mnist")
    assert isinstance(by_name, Normalize) and by_name.metadata == {"dataset": "fashion-mnist"}
    s = spec("fashion-mnist")
    assert by_name.arch_config == {"name": "small-cnn", "num_classes": 10, "in_channels": 1, "input_size": [28, 28],
                                   "mean": list(s.mean), "std": list(s.std)}
    by_data = rl.models.create("MLP", digits_train)
    assert by_data.arch_config["input_size"] == [8, 8] and by_data.metadata["dataset"] == "digits"
    assert by_data.arch_config["mean"] == list(digits_train.mean)
    explicit = rl.models.create("cnn", "cifar10", num_classes=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert explicit.arch_config["num_classes"] == 4 and torch.equal(explicit.std, torch.full((1, 3, 1, 1), 0.25))
    with torch.no_grad():
        assert explicit(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_create_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg'; expected one of mlp, cnn, small-cnn, resnet18"):
        rl.models.create("vgg", "mnist")
    with pytest.raises(ValueError, match="needs a dataset"):
        rl.models.create("mlp", num_classes=10)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        rl.models.create("mlp", "imagenet")
    with pytest.raises(ValueError, match="num_classes >= 2"):
        rl.models.create("mlp", "mnist", num_classes=1)
    with pytest.raises(ValueError, match="mean and std need in_channels=3"):
        rl.models.create("mlp", "cifar10", mean=(0.5,))
    with pytest.raises(TypeError, match="Dataset-like"):
        rl.models.create("mlp", 42)


def test_seed_makes_init_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = rl.models.create("small-cnn", "mnist", seed=3), rl.models.create("small-cnn", "mnist", seed=3)
    c = rl.models.create("small-cnn", "mnist", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    # Without a seed, initialisation draws from the global RNG like any nn.Module: two models differ.
    d, e = rl.models.create("mlp", "digits"), rl.models.create("mlp", "digits")
    assert not torch.equal(d.net[1].weight, e.net[1].weight)


def test_registered_architectures_are_created_and_listed():
    def tiny(c, k, hw):
        return nn.Sequential(nn.Flatten(), nn.Linear(c * hw[0] * hw[1], k))

    rl.models.register_architecture("tiny-test-net", tiny)
    try:
        assert "tiny-test-net" in rl.models.architectures()
        m = rl.models.create("tiny_test_net", "digits", seed=0)
        assert m(torch.rand(2, 1, 8, 8)).shape == (2, 10)
        with pytest.raises(ValueError, match="already registered"):
            rl.models.register_architecture("tiny-test-net", tiny)
    finally:
        from robustlab.models.registry import ARCHITECTURES

        ARCHITECTURES.pop("tiny-test-net", None)
