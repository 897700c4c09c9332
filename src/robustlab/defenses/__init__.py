"""Defences: the one training loop and its adversaries (standard, Gaussian noise, FGSM-regularised,
FGSM-RS, PGD, TRADES, MART), and randomized smoothing."""

from robustlab.defenses.adversarial import FGSMRS, MART, TRADES, FGSMRegularized, PGDAdversary, robust_validation
from robustlab.defenses.adversaries import ADVERSARIES, Adversary, GaussianNoise, Standard, from_args, register_adversary
from robustlab.defenses.smoothing import Smoothed
from robustlab.defenses.knn import BoundaryWalk, NearestNeighbor, SoftNearestNeighbor, SurrogatePGD
from robustlab.defenses.pixeldp import PixelDP
from robustlab.defenses.training import TrainResult, train

__all__ = [
    "ADVERSARIES", "Adversary", "FGSMRS", "FGSMRegularized", "GaussianNoise", "MART", "PGDAdversary", "Smoothed", "Standard", "TRADES",
    "TrainResult", "from_args", "register_adversary", "robust_validation", "train",
]
__all__ += ["BoundaryWalk", "NearestNeighbor", "PixelDP", "SoftNearestNeighbor", "SurrogatePGD"]  # issue 15
