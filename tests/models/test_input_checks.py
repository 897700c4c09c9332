"""Inputs that do not fit the model: the API names the mismatch (channels, dtype, size) instead of
torch's shape error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl


def _conv_net(in_channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


def test_attack_names_a_channel_mismatch():
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x has 3 channels .* first layer '0' \(Conv2d\) expects 1 input channels"):
        rl.attacks.PGD(rl.ThreatModel("linf", 0.1), steps=2).attack(_conv_net(), x, y)


def test_attack_names_a_dtype_mismatch():
    x, y = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x has dtype torch.float64 but the model's parameters are torch.float32"):
        rl.attacks.FGSM(rl.ThreatModel("linf", 0.1)).attack(_conv_net(), x, y)


def test_attack_names_a_size_mismatch_of_a_linear_first_layer():
    model = rl.models.create("mlp", dataset="digits", seed=0)  # Normalize -> Flatten -> Linear(64, ...)
    with pytest.raises(ValueError, match=r"81 values per image .* expects 64 inputs"):
        rl.attacks.FGSM(rl.ThreatModel("linf", 0.1)).attack(model, torch.rand(2, 1, 9, 9), torch.tensor([0, 1]))


def test_evaluate_run_names_a_channel_mismatch(tmp_path):
    model = rl.models.create("small-cnn", dataset="cifar10", seed=0)  # expects 3 channels
    data = rl.data.load("digits", "test")
    with pytest.raises(ValueError, match=r"1 channels .* 3 channels"):
        rl.evaluate.run(model, data, "quick", n=4, progress=False)


def test_a_model_that_fits_is_untouched_by_the_check(digits_model, batch):
    x, y = batch
    res = rl.attacks.FGSM(rl.ThreatModel("linf", 0.05)).attack(digits_model, x, y)
    assert res.x_adv.shape == x.shape
