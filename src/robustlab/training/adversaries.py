"""The built-in training adversaries without a threat model (standard training, Gaussian noise)
and the registration of every built-in adversary by name.

The adversary contract and the registry (:class:`Adversary`, :func:`register_adversary`,
:func:`from_args`, :data:`ADVERSARIES`) live in :mod:`robustlab.training.base` and are re-exported
here; the adversaries with a threat model (FGSM, PGD, TRADES, MART) in
:mod:`robustlab.training.adversarial`. Imports point one way: this module -> adversarial -> base.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.training import adversarial
from robustlab.training.base import (
    ADVERSARIES,
    Adversary,
    AdversaryEntry,
    Param,
    adversary_names,
    cli_params,
    from_args,
    register_adversary,
)
from robustlab.threat import ThreatModel

__all__ = [
    "ADVERSARIES", "Adversary", "AdversaryEntry", "GaussianNoise", "Param", "Standard", "adversary_names", "cli_params",
    "from_args", "register_adversary",
]


class Standard(Adversary):
    """Empirical risk minimisation: ``mean_i CE(f(x_i), y_i)`` on the clean batch.
    ``adversary=None`` in :func:`~robustlab.training.train` means this."""

    name = "none"

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]


class GaussianNoise(Adversary):
    """Gaussian data augmentation: ``mean_i CE(f(x_i + delta_i), y_i)`` with
    ``delta_i ~ N(0, sigma^2 I)`` drawn from the loop's generator. This is how the base
    classifier of randomized smoothing is trained (Cohen, Rosenfeld, Kolter 2019,
    arXiv:1902.02918, Sec. 4 and their ``train.py``).

    The noisy input is **not** clipped to [0, 1]: the smoothed classifier
    ``g(x) = argmax_c P(f(x + delta) = c)`` samples unclipped noise at prediction and
    certification time, and the base classifier must be trained on that same distribution
    (Cohen et al. train on ``inputs + randn_like(inputs) * sigma`` without clamping).
    ``eps_scale`` is ignored: sigma is not warmed up.
    """

    name = "noise"

    def __init__(self, sigma: float) -> None:
        self.sigma = float(check_positive(sigma, "sigma"))

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x + self.sigma * noise)
        return F.cross_entropy(logits, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}


def _threat(norm: str, eps: float) -> ThreatModel:
    return ThreatModel(norm, eps)


_NORM = Param("norm", str, "threat model norm for adversarial training (linf, l2, l1)", "linf")
_EPS = Param("eps", float, "threat model radius in [0, 1] pixel units", required=True)
_STEPS = Param("steps", int, "PGD steps of the inner maximisation", 10)
_STEP_SIZE = Param("step_size", float, "attack step size (default: the adversary's own rule)")
_BETA = Param("beta", float, "weight of the robust term (TRADES / MART)", 6.0)
_FAST = Param("fast", str, "fast path of the inner attack (robustlab.attacks.FastPath): bf16 (autocast), fp32 or "
              "compile; channels_last, success checked every 8 steps (default: off)")

register_adversary("none", lambda: Standard(), (), "standard training (cross-entropy on clean inputs)")
register_adversary("noise", lambda sigma: GaussianNoise(sigma),
                   (Param("sigma", float, "Gaussian noise standard deviation in [0, 1] pixel units", 0.25),),
                   "Gaussian noise augmentation (Cohen et al. 2019), for randomized smoothing")
register_adversary("fgsm-reg", lambda norm, eps, clean_weight: adversarial.FGSMRegularized(_threat(norm, eps),
                                                                                         alpha=clean_weight),
                   (_NORM, _EPS, Param("clean_weight", float, "clean-loss weight alpha of FGSM-regularised training "
                                                              "(--alpha, deprecated: certify's --alpha is a probability)",
                                       0.5)),
                   "FGSM-regularised objective (Goodfellow et al. 2015)")
register_adversary("fgsm-rs", lambda norm, eps, step_size, fast: adversarial.FGSMRS(
                       _threat(norm, eps), step=step_size, fast=fast),
                   (_NORM, _EPS, _STEP_SIZE, _FAST),
                   "FGSM from a random start, 'fast' adversarial training (Wong et al. 2020)")
register_adversary("pgd", lambda norm, eps, steps, step_size, fast: adversarial.PGDAdversary(
                       _threat(norm, eps), steps=steps, step_size=step_size, fast=fast),
                   (_NORM, _EPS, _STEPS, _STEP_SIZE, _FAST), "PGD adversarial training (Madry et al. 2018)")
register_adversary("trades", lambda norm, eps, beta, steps, step_size, fast: adversarial.TRADES(
                       _threat(norm, eps), beta=beta, steps=steps, step_size=step_size, fast=fast),
                   (_NORM, _EPS, _BETA, _STEPS, _STEP_SIZE, _FAST), "TRADES (Zhang et al. 2019)")
register_adversary("mart", lambda norm, eps, beta, steps, step_size, fast: adversarial.MART(
                       _threat(norm, eps), beta=beta, steps=steps, step_size=step_size, fast=fast),
                   (_NORM, _EPS, _BETA, _STEPS, _STEP_SIZE, _FAST), "MART (Wang et al. 2020)")
