"""Certified training adversaries: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

Both minimise a mix of the clean loss and the *worst-case* loss over the eps-ball, computed from
verified lower bounds ``m_j <= z_y - z_j`` of the margins (``robustlab.verify``)::

    L = kappa * CE(z(x), y) + (1 - kappa) * CE(-m(x, eps), y)

``-m`` are logits whose cross-entropy upper-bounds the cross-entropy of every point of the ball
(Wong & Kolter 2018, Thm 2; Gowal et al. 2018, arXiv:1810.12715, eq. 10). IBP computes ``m`` by
interval propagation; CROWN-IBP (arXiv:1906.06316, eq. 7) mixes the CROWN-IBP bound (IBP
intermediate bounds, a CROWN backward pass for the margins) and the IBP bound,
``m = beta m_CROWN-IBP + (1 - beta) m_IBP``.

Schedules (driven by ``set_progress``, the fraction of training done): a warm-up (clean training,
eps 0) for the first ``warmup`` fraction, then a linear ramp over the next ``ramp`` fraction of
eps from 0 to ``eps`` (times the loop's ``eps_scale``), kappa from ``kappa_start`` to
``kappa_end`` and beta from 1 to 0; constant afterwards. Gowal et al. use kappa 1 -> 0.5; Zhang et
al. kappa 1 -> 0 (or 0 -> 0) and beta 1 -> 0.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.training.base import Adversary, Param, register_adversary
from robustlab.threat import ThreatModel
from robustlab.verify.bounds import bound_network, spec_matrix
from robustlab.verify.network import trace


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class IBPAdversary(Adversary):
    """Interval bound propagation training (Gowal et al. 2018, arXiv:1810.12715).

    Args:
        threat: the threat model (linf, l2 or l1) whose eps is the final training radius.
        kappa_start, kappa_end: clean-loss weight at the start and end of the ramp.
        warmup, ramp: fractions of training for clean warm-up and for the linear ramp.
    """

    name = "ibp"
    method = "ibp"

    def __init__(self, threat: ThreatModel, *, kappa_start: float = 1.0, kappa_end: float = 0.5,
                 warmup: float = 0.05, ramp: float = 0.5) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab ThreatModel, got {type(threat).__name__}")
        if threat.norm not in ("linf", "l2", "l1"):
            raise ValueError(f"certified training needs a linf, l2 or l1 threat model, got {threat.norm!r}")
        self.threat = threat
        self.kappa_start = _fraction(kappa_start, "kappa_start")
        self.kappa_end = _fraction(kappa_end, "kappa_end")
        self.warmup = _fraction(warmup, "warmup")
        self.ramp = _fraction(ramp, "ramp")
        if self.warmup + self.ramp > 1.0:
            raise ValueError(f"warmup + ramp must be <= 1 (fractions of training), got {self.warmup} + {self.ramp}")

    # -- schedules --------------------------------------------------------------------------------
    def ramp_fraction(self) -> float:
        """0 during warm-up, linear to 1 over the ramp, then 1."""
        if self.progress < self.warmup:
            return 0.0
        if self.ramp == 0:
            return 1.0
        return min(1.0, (self.progress - self.warmup) / self.ramp)

    def schedule(self, eps_scale: float = 1.0) -> dict:
        """The current ``eps``, ``kappa`` and ``beta``."""
        r = self.ramp_fraction()
        return {"eps": self.threat.eps * r * float(eps_scale), "kappa": self.kappa_start + (self.kappa_end -
                self.kappa_start) * r, "beta": 1.0 - r}

    # -- loss --------------------------------------------------------------------------------------
    def worst_logits(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, beta: float) -> Tensor:
        """``-m``: minus the verified margin lower bounds (N, K), differentiable in the parameters."""
        net = trace(model, x)
        c = spec_matrix("margin", y, x.shape[0], net.num_classes, x)
        tm = self.threat.with_eps(eps)
        low, _ = bound_network(net, x, tm, "ibp", c, upper=False)
        if self.method == "crown-ibp" and beta > 0:
            crown, _ = bound_network(net, x, tm, "crown-ibp", c, upper=False)
            low = beta * crown + (1 - beta) * low
        return -low

    def loss_and_logits(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator,
                        eps_scale: float = 1.0) -> tuple[Tensor, Optional[Tensor]]:
        s = self.schedule(eps_scale)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if s["kappa"] < 1.0:
            robust = F.cross_entropy(self.worst_logits(model, x, y, s["eps"], s["beta"]), y)
            loss = s["kappa"] * loss + (1 - s["kappa"]) * robust
        return loss, logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator,
             eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, "norm": self.threat.norm, "eps": self.threat.eps, "kappa_start": self.kappa_start,
                "kappa_end": self.kappa_end, "warmup": self.warmup, "ramp": self.ramp}


class CROWNIBP(IBPAdversary):
    """CROWN-IBP training (Zhang et al. 2020, arXiv:1906.06316): the margin bound mixes CROWN-IBP
    and IBP with beta going 1 -> 0 over the ramp; kappa 1 -> 0 by default."""

    name = "crown-ibp"
    method = "crown-ibp"

    def __init__(self, threat: ThreatModel, *, kappa_start: float = 1.0, kappa_end: float = 0.0,
                 warmup: float = 0.05, ramp: float = 0.5) -> None:
        super().__init__(threat, kappa_start=kappa_start, kappa_end=kappa_end, warmup=warmup, ramp=ramp)


_PARAMS = (
    Param("norm", str, "threat model norm for adversarial training (linf, l2, l1)", "linf"),
    Param("eps", float, "threat model radius in [0, 1] pixel units", required=True),
    Param("kappa_start", float, "certified training: clean-loss weight at the start of the eps ramp"),
    Param("kappa_end", float, "certified training: clean-loss weight at the end of the eps ramp"),
    Param("warmup", float, "certified training: fraction of training with eps 0 (default 0.05)", 0.05),
    Param("ramp", float, "certified training: fraction of training over which eps ramps up (default 0.5)", 0.5),
)


def _factory(cls: type, default_end: float):
    def make(norm: str, eps: float, kappa_start: Optional[float], kappa_end: Optional[float], warmup: float,
             ramp: float) -> IBPAdversary:
        check_positive(eps, "eps", allow_zero=True)
        return cls(ThreatModel(norm, eps), kappa_start=1.0 if kappa_start is None else kappa_start,
                   kappa_end=default_end if kappa_end is None else kappa_end, warmup=warmup, ramp=ramp)
    return make


register_adversary("ibp", _factory(IBPAdversary, 0.5), _PARAMS,
                   "IBP certified training (Gowal et al. 2018): eps ramp, kappa 1 -> 0.5")
register_adversary("crown-ibp", _factory(CROWNIBP, 0.0), _PARAMS,
                   "CROWN-IBP certified training (Zhang et al. 2020): eps ramp, kappa 1 -> 0, beta 1 -> 0")
