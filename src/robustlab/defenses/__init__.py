"""Defences: the one training loop and its adversaries (standard, Gaussian noise, FGSM-regularised,
FGSM-RS, PGD, TRADES, MART), and randomized smoothing."""

from robustlab.defenses.adversarial import FGSMRS, MART, TRADES, FGSMRegularized, PGDAdversary, robust_validation
from robustlab.defenses.adversaries import Adversary, GaussianNoise, Standard
from robustlab.defenses.training import TrainResult, train

__all__ = [
    "Adversary", "FGSMRS", "FGSMRegularized", "GaussianNoise", "MART", "PGDAdversary", "Standard", "TRADES",
    "TrainResult", "robust_validation", "train",
]
