"""Attacks: configured objects with ``attack(model, x, y, *, target=None) -> AttackResult``.

Every attack here passes :func:`robustlab.testing.check_attack`.
"""

from robustlab.attacks.base import Attack, AttackResult, RawResult, eval_mode, input_gradient, predict
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.pgd import BIM, PGD
from robustlab.attacks.registry import available, get

__all__ = [
    "Attack", "AttackResult", "BIM", "FGSM", "PGD", "RawResult", "available", "eval_mode", "get", "input_gradient", "predict",
]
