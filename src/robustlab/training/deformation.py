"""ADef adversarial training: the training loop's adversary that deforms the batch.

Alaifari, Alberti, Gauksson (ICLR 2019, arXiv:1804.07729, Sec. 4.3) train MNIST networks on
adversarial deformations: each batch is replaced by the ADef deformations of its images (the
minimisation of ``E[CE(f(x_tau*), y)]`` with ``tau*`` found by ADef within ``||tau||_T <= max_norm``).
Crafting runs in eval mode through :meth:`robustlab.attacks.ADef.attack` (which restores the
model's modes and never writes parameter gradients); the deformed images are constants for the
train-mode forward pass that makes the loss. ``eps_scale`` (the loop's warm-up) scales
``max_norm``; at 0 the batch is trained clean.

Registered as ``adef`` (``robustlab train --adversary adef --max-norm 2``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.adef import ADef, DeformationThreat
from robustlab.training.adversaries import Adversary, Param, register_adversary


class ADefAdversary(Adversary):
    """Train on ADef deformations bounded by ``max_norm`` pixels.

    Args:
        max_norm: the deformation budget ``||tau||_T`` in pixels (> 0).
        steps: ADef iterations per batch (the paper's MNIST attack needs about 10; default 10).
        candidates: candidate classes per ADef step (9).
        sigma: Gaussian smoothing of the field, pixels (1.0).
        overshoot: ADef's overshoot (0.1).
    """

    name = "adef"

    def __init__(self, max_norm: float, *, steps: int = 10, candidates: int = 9, sigma: float = 1.0, overshoot: float = 0.1) -> None:
        self.max_norm = float(DeformationThreat(max_norm).max_norm)  # validates: > 0
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.candidates = int(check_positive(candidates, "candidates", integer=True))
        self.sigma = float(check_positive(sigma, "sigma", allow_zero=True))
        self.overshoot = float(check_positive(overshoot, "overshoot", allow_zero=True))

    def craft(self, model: nn.Module, x: Tensor, y: Tensor, *, eps_scale: float = 1.0) -> Tensor:
        """The deformed batch (a constant), or ``x`` when the warm-up radius is 0."""
        radius = self.max_norm * float(eps_scale)
        if radius <= 0:
            return x.detach()
        attack = ADef(DeformationThreat(radius), steps=self.steps, candidates=self.candidates,
                      sigma=self.sigma, overshoot=self.overshoot)
        return attack.attack(model, x.detach(), y).x_adv.detach()

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        x_def = self.craft(model, x, y, eps_scale=eps_scale)
        logits = model(x_def)
        return F.cross_entropy(logits, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, "max_norm": self.max_norm, "steps": self.steps, "candidates": self.candidates,
                "sigma": self.sigma, "overshoot": self.overshoot}


register_adversary(
    "adef",
    lambda max_norm, steps: ADefAdversary(max_norm, steps=steps),
    (Param("max_norm", float, "ADef deformation budget ||tau||_T in pixels", required=True),
     Param("steps", int, "ADef iterations per batch", 10)),
    "ADef adversarial deformations (Alaifari et al. 2019)",
)
