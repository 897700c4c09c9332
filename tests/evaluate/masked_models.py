"""Models built to fool one gradient-masking check each, for the checks on the `standard` suite
(test_checks_standard.py; the masked models shared with other tests are fixtures in conftest.py)."""

from __future__ import annotations

import torch
from torch import nn


class Shattered(nn.Module):
    """``base(x + a sin(w x))``: a differentiable layer that moves no pixel by more than ``a`` but whose
    Jacobian ``1 + a w cos(w x)`` flips sign from one pixel value to the next (``a w`` = 100): the input
    gradient points nowhere useful (shattered gradients, Athalye et al. 2018), while score-based search
    (Square) sees the model as it is."""

    def __init__(self, base: nn.Module, a: float = 0.01, w: float = 1e4) -> None:
        super().__init__()
        self.base, self.a, self.w = base, a, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base((x + self.a * torch.sin(self.w * x)).clamp(0, 1))


class Annulus(nn.Module):
    """The honest model only on an annulus ``rho < d(x) <= tau`` around each reference image (``d``: the
    linf distance to the nearest one); elsewhere the model at that reference image, a constant with a zero
    gradient. Attacks from the clean image (FGSM, FMN) cannot move; attacks with a random start at a radius
    above ``tau`` start in the constant region: the larger the radius, the more "robust" the model looks."""

    def __init__(self, base: nn.Module, refs: torch.Tensor, rho: float = 1e-3, tau: float = 0.15) -> None:
        super().__init__()
        self.base, self.rho, self.tau = base, rho, tau
        self.register_buffer("refs", refs.flatten(1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist, nearest = (x.flatten(1)[:, None, :] - self.refs[None]).abs().amax(dim=2).min(dim=1)  # (N,)
        off = ((dist <= self.rho) | (dist > self.tau)).reshape(-1, *([1] * (x.ndim - 1)))
        return self.base(torch.where(off, self.refs[nearest].reshape(x.shape), x))


class Scaled(nn.Module):
    """Logits times ``scale``: a confident model (large logit gaps) with the honest model's gradients."""

    def __init__(self, base: nn.Module, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale


class Jittery(nn.Module):
    """Large logits (x 1e3) that differ from one forward pass to the next by a relative 1e-7, as kernels
    that are not bitwise reproducible make them (a deterministic model, up to rounding)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.calls = base, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.base(x) * 1e3 * (1 + 1e-7 * (self.calls % 3))


class Noisy(nn.Module):
    """Gaussian noise (sigma 0.1) on the input at every forward pass: a randomised model (its own generator)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.gen = base, torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.gen, dtype=x.dtype).to(x.device)
        return self.base((x + 0.1 * noise).clamp(0, 1))
