"""Normalisation inside the model.

Attacks, threat models and certificates are defined in pixel space, images in [0, 1]: an eps of
0.3 means 0.3 of the pixel range whatever the training normalisation. So the standardisation
``(x - mean) / std`` is the model's first layer, never the data loader's job (as in Cohen et al.'s
smoothing code, ``NormalizeLayer``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``net((x - mean) / std)`` with per-channel ``mean`` / ``std`` buffers of shape (1, C, 1, 1)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {tuple(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
