"""Normalisation inside the model.

Attacks, threat models and certificates are defined in pixel space, images in [0, 1]: an eps of
0.3 means 0.3 of the pixel range whatever the training normalisation, the box constraint
``0 <= x' <= 1`` is the valid-image set, and a smoothing sigma is a pixel-space standard
deviation. If the data loader standardised the images instead, every eps would silently be
rescaled by ``1 / std`` (3.2x for MNIST) and the [0, 1] clipping would be wrong. So the
standardisation ``(x - mean) / std`` is the model's first layer (as in Cohen et al.'s smoothing
code, ``NormalizeLayer``), and the mean and std travel with the weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """``net((x - mean) / std)`` with per-channel ``mean`` / ``std`` buffers of shape (1, C, 1, 1).

    Attributes: ``net`` (the wrapped network, which sees standardised inputs), ``mean`` and
    ``std`` (buffers, so they move with ``.to(device)`` and are saved in the state dict).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean_t) != len(std_t) or not mean_t:
            raise ValueError(f"mean and std need one value per channel, got {len(mean_t)} and {len(std_t)} values")
        if not all(math.isfinite(v) for v in mean_t + std_t):
            raise ValueError(f"mean and std must be finite, got mean={mean_t}, std={std_t}")
        if any(s <= 0 for s in std_t):
            raise ValueError(f"std values must be > 0, got {std_t}")
        self.net = net
        self.register_buffer("mean", torch.tensor(mean_t).reshape(1, -1, 1, 1))  # (1, C, 1, 1)
        self.register_buffer("std", torch.tensor(std_t).reshape(1, -1, 1, 1))  # (1, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"
