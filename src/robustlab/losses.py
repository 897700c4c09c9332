"""Attack losses, written once: every attack and adversarial trainer uses these.

All functions take logits ``z`` of shape (N, K) and labels (N,) and return one value per sample
(shape (N,)) that the *attacker maximises*. For a targeted attack pass ``target`` (N,): the loss
then rewards moving towards the target class.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def max_other(logits: Tensor, y: Tensor) -> Tensor:
    """``max_{j != y} z_j`` per sample, correct for negative logits (masking with -inf, not 0;
    cf. torchattacks issue #184)."""
    mask = F.one_hot(y, logits.shape[1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(dim=1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Classification margin ``z_y - max_{j != y} z_j``: > 0 iff ``y`` is the (unique) argmax."""
    return logits.gather(1, y[:, None]).squeeze(1) - max_other(logits, y)


def cross_entropy(logits: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Untargeted: ``CE(z, y)``; targeted: ``-CE(z, t)`` (Goodfellow et al. 2015; Kurakin et al. 2017)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def cw_margin(logits: Tensor, y: Tensor, target: Optional[Tensor] = None, kappa: float = float("inf")) -> Tensor:
    """Carlini & Wagner (2017, arXiv:1608.04644) margin ``f_6`` as a quantity to maximise.

    Untargeted: ``min(max_{j != y} z_j - z_y, kappa)``; targeted: ``min(z_t - max_{j != t} z_j, kappa)``.
    It is positive exactly when the attack succeeds; ``kappa`` caps the reward for confidence.
    """
    m = -margin(logits, y) if target is None else margin(logits, target)
    return m.clamp_max(kappa) if kappa != float("inf") else m


def dlr(logits: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, arXiv:2003.01690, eq. 4 and the targeted eq. 5).

    Untargeted: ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with ``z_pi`` the logits sorted decreasingly.
    Invariant to shifting and rescaling the logits, so saturated softmax cannot hide a gradient.
    Needs at least 3 classes (4 for the targeted form).
    """
    k = logits.shape[1]
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        if k < 3:
            raise ValueError(f"the DLR loss needs at least 3 classes, the model has {k}")
        return -(z_y - max_other(logits, y)) / (srt[:, 0] - srt[:, 2] + 1e-12)
    if k < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {k}")
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}


def get_loss(name: "str | LossFn") -> LossFn:
    """Look a loss up by name (``ce``, ``cw``, ``dlr``) or pass a callable through."""
    if callable(name):
        return name
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)} or a callable")
    return LOSSES[name]


def is_adversarial(logits: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Success criterion: untargeted ``argmax z != y``; targeted ``argmax z == t``."""
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target
