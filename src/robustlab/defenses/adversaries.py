"""The training loop's pluggable adversary: how a clean batch becomes a training loss.

Contract: ``loss(model, x, y, *, generator, eps_scale) -> scalar``. The loop calls it with the
model in train mode and back-propagates the result. Adversaries that craft inputs do so with the
model in eval mode (``robustlab.attacks.eval_mode``) and treat the crafted points as constants;
``generator`` is the loop's seeded generator for this epoch (never the global RNG) and
``eps_scale`` in [0, 1] the eps warm-up factor. ``config()`` is recorded in the model metadata.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive


class Adversary(abc.ABC):
    """Base class of training adversaries; see the module docstring for the contract."""

    name: str = "adversary"

    @abc.abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        """The scalar training loss on batch (x, y)."""

    def config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"


class Standard(Adversary):
    """Empirical risk minimisation: mean cross-entropy on the clean batch."""

    name = "none"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return F.cross_entropy(model(x), y)


class GaussianNoise(Adversary):
    """Train on ``x + N(0, sigma^2 I)``, the base-classifier training of randomized smoothing
    (Cohen, Rosenfeld, Kolter 2019, arXiv:1902.02918, Sec. 5). The noisy input is *not* clipped to
    [0, 1], matching how the smoothed classifier samples noise at certification time."""

    name = "noise"

    def __init__(self, sigma: float) -> None:
        self.sigma = float(check_positive(sigma, "sigma"))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return F.cross_entropy(model(x + self.sigma * noise), y)

    def config(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}
