"""Deliberately masked models for the gradient-masking checks, and a small suite for digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl


class Saturated(nn.Module):
    """Logits scaled by 1e4: the softmax is exactly one-hot in float32, so the cross-entropy's input
    gradient is exactly zero (the 'saturated softmax' of defensive distillation, Carlini & Wagner 2016)."""

    def __init__(self, base: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale


class Quantized(nn.Module):
    """Input quantised to 16 levels (``round(16 x) / 16``) before the model: the digits' own grey
    levels pass unchanged, the gradient is zero almost everywhere (a thresholding defence)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 16) / 16)


@pytest.fixture(scope="session")
def small_suite() -> rl.evaluate.Suite:
    """FGSM and PGD-10 at three linf radii, checks on 32 images (digits-sized)."""
    return rl.evaluate.Suite(
        "small", (rl.evaluate.Threat("linf", (0.05, 0.1, 0.2)),), ("fgsm", "pgd"), {"pgd": {"steps": 10}},
        checks=rl.evaluate.Checks(n=32, path_steps=8), exemplars=3)


@pytest.fixture(scope="session")
def saturated(digits_model) -> nn.Module:
    return Saturated(digits_model).eval()


@pytest.fixture(scope="session")
def quantized(digits_model) -> nn.Module:
    return Quantized(digits_model).eval()


class _FlipOffGrid(torch.autograd.Function):
    """Identity forward; backward passes the gradient at images on the digits' 1/16 grey-level grid
    (the clean images) and reverses it everywhere else."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        on_grid = ((x * 16 - torch.round(x * 16)).abs() < 1e-4).flatten(1).all(dim=1)  # (N,)
        ctx.save_for_backward(on_grid)
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (on_grid,) = ctx.saved_tensors
        sign = torch.where(on_grid, 1.0, -1.0).to(g.dtype).reshape(-1, *([1] * (g.ndim - 1)))
        return g * sign


class Misleading(nn.Module):
    """The honest model's predictions with an obfuscated gradient (Athalye et al. 2018): true at the
    clean images, reversed a step away from them. FGSM (one step from the clean image) is not
    fooled; PGD (random start, many steps) is led away from the adversarial examples."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(_FlipOffGrid.apply(x))


@pytest.fixture(scope="session")
def misleading(digits_model) -> nn.Module:
    return Misleading(digits_model).eval()

