"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, CVPR 2017,
arXiv:1610.08401, Algorithm 1).

One perturbation ``v`` with ``||v||_p <= xi`` for a whole data set, such that the classifier's
decision changes on most images: ``k(x + v) != k(x)``. Algorithm 1 visits the training images in
a random order; for each image ``x_i`` that ``v`` does not fool yet it computes the minimal
perturbation ``dv_i`` that sends ``x_i + v`` across the decision boundary (DeepFool) and updates::

    v <- P_{p, xi}(v + dv_i)

(``P`` the projection onto the ``l_p`` ball of radius ``xi``), passing over the data until the
fooling rate on the training images reaches ``1 - delta`` or ``epochs`` passes are spent. Here the
images of a mini-batch of ``batch_size`` are attacked together (one batched DeepFool call at the
current ``v``) and the mean of their perturbations (over the images not yet fooled) is added before
the projection; ``batch_size=1`` is the paper's sequential algorithm. The fooling rate of a held-out set is :func:`fooling_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_positive, check_probability
from robustlab.attacks.base import eval_mode, model_device, predict
from robustlab.attacks.deepfool import DeepFool
from robustlab.threat import ThreatModel


def fooling_rate(model: nn.Module, x: Tensor, v: Tensor, *, lower: float = 0.0, upper: float = 1.0, batch_size: int = 512) -> float:
    """The fraction of images whose predicted label changes: ``mean_i [k(clip(x_i + v)) != k(x_i)]``
    (the paper's fooling rate, which compares with the prediction, not the true label)."""
    with eval_mode(model):
        clean = predict(model, x, batch_size).argmax(1)
        adv = predict(model, (x + v).clamp(lower, upper), batch_size).argmax(1)
    return float((clean != adv).float().mean()) if x.shape[0] else 0.0


@dataclass
class UniversalResult:
    """``perturbation`` (1, C, H, W), the training fooling rate after each pass, passes run."""

    perturbation: Tensor
    train_fooling_rate: list[float]
    epochs: int


class UniversalPerturbation:
    """Algorithm 1 of Moosavi-Dezfooli et al. 2017, with DeepFool as the inner attack.

    Args:
        threat: a ``l2`` or ``linf`` :class:`robustlab.ThreatModel`; ``eps`` is the paper's ``xi``
            (their MNIST-scale choice is not given; for ImageNet ``xi = 2000`` in l2 and 10 in linf
            on a 0-255 scale) and ``(lower, upper)`` the image box.
        delta: stop once the training fooling rate is at least ``1 - delta`` (0.2, as the paper).
        epochs: maximum passes over the training images (10).
        batch_size: images attacked together per update (32; 1 = the sequential algorithm).
        deepfool_steps: DeepFool iterations per image (50), overshoot ``overshoot`` (0.02).
        seed: the order in which images are visited.

    ``fit(model, x)`` returns the perturbation (1, C, H, W); ``apply(x)`` adds it and clips.
    """

    def __init__(
        self,
        threat: ThreatModel,
        *,
        delta: float = 0.2,
        epochs: int = 10,
        batch_size: int = 32,
        deepfool_steps: int = 50,
        overshoot: float = 0.02,
        seed: int = 0,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel (l2 or linf), got {type(threat).__name__}")
        if threat.norm not in ("l2", "linf"):
            raise ValueError(f"threat.norm must be 'l2' or 'linf' (DeepFool's norms), got {threat.norm!r}")
        if threat.eps <= 0:
            raise ValueError(f"threat.eps (the radius xi of the perturbation) must be > 0, got {threat.eps}")
        self.threat = threat
        self.delta = float(check_probability(delta, "delta"))
        self.epochs = int(check_positive(epochs, "epochs", integer=True))
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.deepfool_steps = int(check_positive(deepfool_steps, "deepfool_steps", integer=True))
        self.overshoot = float(check_positive(overshoot, "overshoot", allow_zero=True))
        self.seed = int(seed)
        self.perturbation_: Optional[Tensor] = None
        self.result_: Optional[UniversalResult] = None

    def _project(self, v: Tensor) -> Tensor:
        """``P_{p, xi}``: onto the l_p ball (no box: the box applies to ``x + v``)."""
        span = self.threat.upper - self.threat.lower
        ball = ThreatModel(self.threat.norm, self.threat.eps, -span, span)
        return ball.project(v, torch.zeros_like(v))

    def fit(self, model: nn.Module, x: Tensor) -> Tensor:
        """Compute ``v`` on the images ``x`` (N, C, H, W); returns it, shape (1, C, H, W)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        lo, hi = self.threat.box
        check_images(x, "x", lower=lo, upper=hi)
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one image, got an empty batch")
        if model_device(model, x.device) != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {model_device(model, x.device)}")
        x = x.detach()
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        inner = DeepFool(self.threat.norm, steps=self.deepfool_steps, overshoot=self.overshoot, bounds=(lo, hi))
        v = torch.zeros(1, *x.shape[1:], device=x.device, dtype=x.dtype)
        rates: list[float] = []
        with eval_mode(model):
            labels = predict(model, x, 512).argmax(1)  # k(x_i): the decision to change
            for _ in range(self.epochs):
                order = torch.randperm(x.shape[0], generator=g).to(x.device)
                for start in range(0, x.shape[0], self.batch_size):
                    idx = order[start : start + self.batch_size]
                    xv = (x[idx] + v).clamp(lo, hi)
                    res = inner.attack(model, xv, labels[idx])  # unchanged (dv = 0) where already fooled
                    count = res.clean_correct.sum().clamp_min(1)  # images v does not fool yet
                    dv = (res.x_adv - xv).sum(dim=0, keepdim=True) / count  # mean over the images attacked
                    v = self._project(v + dv)
                rates.append(fooling_rate(model, x, v, lower=lo, upper=hi))
                if rates[-1] >= 1.0 - self.delta:
                    break
        self.perturbation_ = v
        self.result_ = UniversalResult(v, rates, len(rates))
        return v

    def apply(self, x: Tensor, v: Optional[Tensor] = None) -> Tensor:
        """``clip(x + v)`` with the fitted perturbation (or ``v``)."""
        v = self._fitted(v)
        return (x + v.to(x.device, x.dtype)).clamp(*self.threat.box)

    def fooling_rate(self, model: nn.Module, x: Tensor, v: Optional[Tensor] = None) -> float:
        """The fooling rate of the fitted perturbation (or ``v``) on held-out images ``x``."""
        v = self._fitted(v)
        check_images(x, "x", lower=self.threat.lower, upper=self.threat.upper)
        return fooling_rate(model, x, v.to(x.device, x.dtype), lower=self.threat.lower, upper=self.threat.upper)

    def _fitted(self, v: Optional[Tensor]) -> Tensor:
        if v is None:
            if self.perturbation_ is None:
                raise ValueError("no perturbation: call fit(model, x) first or pass v")
            return self.perturbation_
        return v
