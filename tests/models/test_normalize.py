"""Normalize: (x - mean) / std per channel, as buffers that travel with the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.models import Normalize


def test_normalize_math_per_channel():
    m = Normalize(nn.Identity(), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    x = torch.rand(4, 3, 5, 6)
    expected = torch.stack([(x[:, 0] - 0.1) / 0.5, (x[:, 1] - 0.2) / 0.25, (x[:, 2] - 0.3) / 2.0], dim=1)
    assert torch.allclose(m(x), expected, atol=1e-6)
    assert m.mean.shape == (1, 3, 1, 1) and m.std.shape == (1, 3, 1, 1)


def test_normalize_is_inside_the_model():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    m = Normalize(net, [0.1307], [0.3081])
    x = torch.rand(3, 1, 2, 2)
    assert m.net is net and torch.allclose(m(x), net((x - 0.1307) / 0.3081))
    # Buffers: saved in the state dict, not trained, moved with the module.
    assert {"mean", "std"} <= set(m.state_dict()) and all(p is not m.mean for p in m.parameters())
    assert m.double().mean.dtype == torch.float64


def test_normalize_rejects_bad_statistics():
    with pytest.raises(ValueError, match="std values must be > 0"):
        Normalize(nn.Identity(), [0.0], [0.0])
    with pytest.raises(ValueError, match="one value per channel"):
        Normalize(nn.Identity(), [0.0, 0.1], [1.0])
    with pytest.raises(ValueError, match="finite"):
        Normalize(nn.Identity(), [float("nan")], [1.0])
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        Normalize(lambda x: x, [0.0], [1.0])
