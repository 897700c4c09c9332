"""Attacks: configured objects with ``attack(model, x, y, *, target=None) -> AttackResult``.

Fixed budget (a :class:`robustlab.ThreatModel`): :class:`FGSM`, :class:`BIM`, :class:`PGD`,
:class:`APGD`, :class:`APGDT`. Minimal norm (a norm name, or a ThreatModel to cap the radius):
:class:`CarliniWagner` (L2), :class:`CarliniWagnerLinf`, :class:`CarliniWagnerL0`,
:class:`DeepFool`, :class:`FMN`, :class:`DDN`. Adaptive: :class:`EOT` (randomised models),
:class:`BPDAWrapper` (non-differentiable pre-processing). Ensembles: :class:`WorstCase` and
:func:`standard`. By name: :func:`get` / :func:`available`.

Every attack here passes :func:`robustlab.testing.check_attack`.
"""

from robustlab.attacks.adaptive import BPDA, DetectorAwarePGD, KNNFeaturePGD, bpda_view
from robustlab.attacks.apgd import APGD, APGDT
from robustlab.attacks.base import (
    Attack,
    AttackResult,
    RawResult,
    eval_mode,
    input_gradient,
    input_jacobian,
    predict,
)
from robustlab.attacks.cw import CarliniWagner, CarliniWagnerL0, CarliniWagnerLinf
from robustlab.attacks.deepfool import DeepFool
from robustlab.attacks.ensemble import WorstCase
from robustlab.attacks.eot import EOT, BPDAWrapper
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.minnorm import DDN, FMN
from robustlab.attacks.pgd import BIM, PGD
from robustlab.attacks.registry import STANDARD, available, describe, get, register, standard
from robustlab.attacks.square import Square
from robustlab.attacks.hopskipjump import HopSkipJump
from robustlab.attacks.nattack import NATTACK
from robustlab.attacks.onepixel import OnePixel

__all__ = [
    "APGD", "APGDT", "Attack", "AttackResult", "BIM", "BPDAWrapper", "CarliniWagner", "CarliniWagnerL0",
    "CarliniWagnerLinf", "DDN", "DeepFool", "EOT", "FGSM", "FMN", "PGD", "RawResult", "STANDARD", "WorstCase",
    "available", "describe", "eval_mode", "get", "input_gradient", "input_jacobian", "predict", "register", "standard",
]
__all__ += ["HopSkipJump", "NATTACK", "OnePixel", "Square"]  # black-box attacks (issue 13)
__all__ += ["BPDA", "DetectorAwarePGD", "bpda_view"]  # adaptive attacks (issue 14)
__all__ += ["KNNFeaturePGD"]  # the adaptive attack on kNN detectors (issue 20)

# Deformation, spatial, patch and universal attacks (issue 13).
from robustlab.attacks.adef import ADef, DeformationThreat, deform, field_norm  # noqa: E402
from robustlab.attacks.patch import AdversarialPatch  # noqa: E402
from robustlab.attacks.spatial import Spatial  # noqa: E402
from robustlab.attacks.universal import UniversalPerturbation, fooling_rate  # noqa: E402

__all__ += ["ADef", "AdversarialPatch", "DeformationThreat", "Spatial", "UniversalPerturbation", "deform",
            "field_norm", "fooling_rate"]

# The fast path (issue 16): bf16 autocast, channels_last, torch.compile, deferred success checks.
from robustlab.attacks.fastpath import FastPath  # noqa: E402

__all__ += ["FastPath"]
