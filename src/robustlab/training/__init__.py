"""Training: the one training loop (:func:`train`, :class:`TrainConfig`; checkpoints, resume, DDP
under ``torchrun``) and its adversaries by name (:data:`ADVERSARIES`: standard, Gaussian noise,
FGSM-regularised, FGSM-RS, PGD, TRADES, MART, IBP / CROWN-IBP, ADef, defensive distillation).

Defended models (randomized smoothing, PixelDP, kNN classifiers, detectors, input transformations,
ensembles) live in :mod:`robustlab.defenses`; PixelDP's noise layer registers its training
adversary ``pixeldp`` from there.
"""

from robustlab.training.adversarial import FGSMRS, MART, TRADES, FGSMRegularized, PGDAdversary, robust_validation
from robustlab.training.adversaries import ADVERSARIES, Adversary, GaussianNoise, Standard, from_args, register_adversary
from robustlab.training.certified import CROWNIBP, IBPAdversary  # registers "ibp" and "crown-ibp"
from robustlab.training.config import TrainConfig
from robustlab.training.deformation import ADefAdversary  # registers "adef"
from robustlab.training.distillation import Distillation, Temperature, defensive_distillation  # "temperature", "distill"
from robustlab.training.loop import TrainResult, train

__all__ = [
    "ADVERSARIES", "ADefAdversary", "Adversary", "CROWNIBP", "Distillation", "FGSMRS", "FGSMRegularized", "GaussianNoise",
    "IBPAdversary", "MART", "PGDAdversary", "Standard", "TRADES", "Temperature", "TrainConfig", "TrainResult",
    "defensive_distillation", "from_args", "register_adversary", "robust_validation", "train",
]
