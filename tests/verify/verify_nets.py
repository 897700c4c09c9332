"""Tiny random ReLU networks for the verification tests (4x4 or 8x8 single-channel inputs)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.models.architectures import BasicBlock
from robustlab.models.normalize import Normalize

KINDS = ("mlp", "conv", "maxpool", "avgpool-bn", "residual")
ACTIVATION_KINDS = ("sigmoid-mlp", "tanh-conv")  # S-shaped activations: bounds only (the MILP encodes ReLUs)


def tiny_net(kind: str, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random network of one of ``KINDS`` with Normalize inside, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    elif kind == "conv":
        body = nn.Sequential(nn.Conv2d(1, 3, 3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    elif kind == "maxpool":
        body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    elif kind == "avgpool-bn":
        body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
                             nn.Flatten(), nn.Dropout(0.2), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(),
                             nn.Linear(6, 4))
    elif kind == "sigmoid-mlp":
        body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Sigmoid(), nn.Linear(12, 10), nn.ReLU(),
                             nn.Linear(10, 8), nn.Sigmoid(), nn.Linear(8, 4))
    elif kind == "tanh-conv":
        body = nn.Sequential(nn.Conv2d(1, 3, 3, stride=1, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 2, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    elif kind == "residual":  # robustlab's ResNet basic blocks: identity and projection shortcuts
        body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), BasicBlock(3, 3, 1),
                             BasicBlock(3, 4, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for p in body.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.8 if p.dim() > 1 else 0.3))
        for m in body.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    model = Normalize(body, [0.4], [0.3]).to(dtype)
    return model.eval()


def tiny_inputs(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g).to(dtype)
