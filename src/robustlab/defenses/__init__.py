"""Defended models: randomized smoothing, PixelDP, nearest-neighbour classifiers, detectors,
input transformations and ensembles.

Training (the loop, its configuration and the adversaries) moved to :mod:`robustlab.training`;
its names are still found here for one release, with a ``DeprecationWarning``.
"""

import importlib
import warnings

from robustlab.defenses.detect import LID, Detector, FeatureSqueezing, KNNDetector, MagNetDetector, MMDTest
from robustlab.defenses.ensemble import Ensemble
from robustlab.defenses.knn import BoundaryWalk, NearestNeighbor, SoftNearestNeighbor, SurrogatePGD
from robustlab.defenses.pixeldp import PixelDP  # registers the training adversary "pixeldp"
from robustlab.defenses.smoothing import Smoothed
from robustlab.defenses.transforms import (
    JPEG, BitDepth, GaussianBlur, MagNetAutoencoder, MedianFilter, RandomRotateScale, Randomized, Reconstruct, Threshold,
    Transform, train_autoencoder,
)

__all__ = [
    "BitDepth", "BoundaryWalk", "Detector", "Ensemble", "FeatureSqueezing", "GaussianBlur", "JPEG", "KNNDetector", "LID",
    "MMDTest", "MagNetAutoencoder", "MagNetDetector", "MedianFilter", "NearestNeighbor", "PixelDP", "RandomRotateScale",
    "Randomized", "Reconstruct", "Smoothed", "SoftNearestNeighbor", "SurrogatePGD", "Threshold", "Transform",
    "train_autoencoder",
]

#: Modules of the training family that lived here, by their old name.
_MOVED_MODULES = ("adversarial", "adversaries", "augment", "base", "certified", "checkpointing", "config",
                  "deformation", "distillation", "parallel", "preflight", "training")


def __getattr__(name: str):
    training = importlib.import_module("robustlab.training")
    if name in training.__all__ or name in _MOVED_MODULES:
        where = "robustlab.training.loop" if name == "training" else f"robustlab.training.{name}" \
            if name in _MOVED_MODULES else f"robustlab.training.{name}"
        warnings.warn(f"robustlab.defenses.{name} moved to {where}; the old name is deprecated and will be removed in "
                      "the next release", DeprecationWarning, stacklevel=2)
        if name in _MOVED_MODULES:
            return importlib.import_module(where)
        return getattr(training, name)
    raise AttributeError(f"module 'robustlab.defenses' has no attribute {name!r}")
