"""PrepackedForward: the model's own logits, bit for bit, through prepacked oneDNN convolutions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.attacks.prepacked import PrepackedForward

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _calls(fwd: PrepackedForward, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return fwd(x), fwd(x)  # the first call checks against the model, the second runs prepacked only


@pytest.mark.parametrize("arch", ["small-cnn", "cnn"])
def test_logits_are_bitwise_the_models_own(arch):
    model = rl.models.create(arch, num_classes=10, in_channels=1, input_size=28, seed=0).eval()
    x = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fwd = PrepackedForward(model.net)
    first, second = _calls(fwd, x)
    with torch.no_grad():
        want = model.net(x)
    assert fwd.applies(x) is False  # autograd is on outside no_grad
    assert torch.equal(first, want) and torch.equal(second, want)
    assert fwd._verified, "the prepacked path was taken and verified"
    with torch.no_grad():  # another batch size is checked again, then trusted
        y = torch.rand(5, 1, 28, 28)
        assert torch.equal(fwd(y), model.net(y)) and torch.equal(fwd(y), model.net(y))


def test_convolutions_without_bias_padding_strings_and_pooling():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding="same"), nn.ReLU()),  # not packed: run as the layer itself
        nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 3 * 3, 4),
    ).eval()
    x = torch.rand(9, 3, 14, 14)
    fwd = PrepackedForward(net)
    first, second = _calls(fwd, x)
    with torch.no_grad():
        assert torch.equal(first, net(x)) and torch.equal(second, net(x))
    assert fwd._verified


def test_weights_changed_in_place_are_packed_again():
    model = rl.models.create("small-cnn", num_classes=10, in_channels=1, input_size=28, seed=0).eval()
    x = torch.rand(8, 1, 28, 28)
    fwd = PrepackedForward(model.net)
    _calls(fwd, x)
    with torch.no_grad():
        model.net[0][0].weight.mul_(-1.5)  # as an optimiser step would
        assert torch.equal(fwd(x), model.net(x)) and torch.equal(fwd(x), model.net(x))


def test_anything_else_is_the_models_own_forward():
    resnet = rl.models.create("resnet18", num_classes=10, in_channels=1, input_size=28, seed=0).eval()
    small = rl.models.create("small-cnn", num_classes=10, in_channels=1, input_size=28, seed=0).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert not PrepackedForward(resnet.net).applies(x)  # not a Sequential of torch's layers
        assert not PrepackedForward(small).applies(x)  # Normalize has its own forward
        fwd = PrepackedForward(small.net)
        assert not fwd.applies(x.transpose(2, 3))  # not contiguous
        assert not fwd.applies(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fwd.applies(x)
        assert fwd.applies(x)


def test_a_difference_sends_every_later_call_to_the_model(monkeypatch):
    model = rl.models.create("small-cnn", num_classes=10, in_channels=1, input_size=28, seed=0).eval()
    x = torch.rand(6, 1, 28, 28)
    fwd = PrepackedForward(model.net)
    monkeypatch.setattr(fwd, "_run", lambda b: model.net(b) + 1e-3)  # a prepacked path that disagrees
    with torch.no_grad():
        assert torch.equal(fwd(x), model.net(x))
        assert not fwd._usable and not fwd.applies(x)
