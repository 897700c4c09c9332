"""Defences: the one training loop and its adversaries (standard, Gaussian noise, FGSM-regularised,
FGSM-RS, PGD, TRADES, MART), and randomized smoothing."""

from robustlab.defenses.adversarial import FGSMRS, MART, TRADES, FGSMRegularized, PGDAdversary, robust_validation
from robustlab.defenses.adversaries import ADVERSARIES, Adversary, GaussianNoise, Standard, from_args, register_adversary
from robustlab.defenses.smoothing import Smoothed
from robustlab.defenses.certified import CROWNIBP, IBPAdversary  # registers "ibp" and "crown-ibp"
from robustlab.defenses.knn import BoundaryWalk, NearestNeighbor, SoftNearestNeighbor, SurrogatePGD
from robustlab.defenses.pixeldp import PixelDP
from robustlab.defenses.detect import LID, Detector, FeatureSqueezing, KNNDetector, MagNetDetector, MMDTest
from robustlab.defenses.distillation import Distillation, Temperature, defensive_distillation  # registers "temperature", "distill"
from robustlab.defenses.ensemble import Ensemble
from robustlab.defenses.transforms import (
    JPEG, BitDepth, GaussianBlur, MagNetAutoencoder, MedianFilter, RandomRotateScale, Randomized, Reconstruct, Threshold,
    Transform, train_autoencoder,
)
from robustlab.defenses.training import TrainResult, train
from robustlab.defenses.config import TrainConfig

__all__ = [
    "ADVERSARIES", "Adversary", "FGSMRS", "FGSMRegularized", "GaussianNoise", "MART", "PGDAdversary", "Smoothed", "Standard", "TRADES",
    "TrainResult", "from_args", "register_adversary", "robust_validation", "train",
]
__all__ += ["TrainConfig"]  # train(model, data, config=TrainConfig(...)) (issue 11)
__all__ += [  # detectors, transforms, ensembles (issue 14)
    "BitDepth", "Detector", "Ensemble", "FeatureSqueezing", "GaussianBlur", "JPEG", "KNNDetector", "LID", "MMDTest",
    "MagNetAutoencoder", "MagNetDetector", "MedianFilter", "RandomRotateScale", "Randomized", "Reconstruct", "Threshold",
    "Transform", "train_autoencoder",
]
__all__ += ["Distillation", "Temperature", "defensive_distillation"]  # defensive distillation (issue 14)
__all__ += ["BoundaryWalk", "NearestNeighbor", "PixelDP", "SoftNearestNeighbor", "SurrogatePGD"]  # issue 15

from robustlab.defenses.deformation import ADefAdversary  # noqa: E402  registers "adef" (issue 13)

__all__ += ["ADefAdversary"]
