"""Adaptive attacks on pre-processing defences and detectors (Athalye, Carlini, Wagner 2018,
arXiv:1802.00420; Carlini & Wagner 2017, "Adversarial Examples Are Not Easily Detected",
arXiv:1705.07263).

- :class:`BPDA` ``(attack)``: runs ``attack`` on the defended model's BPDA view
  (``model.bpda()``: the exact forward pass, the gradient of a differentiable surrogate of the
  non-differentiable pre-processing; see :class:`robustlab.attacks.BPDAWrapper`). The base class
  still judges success on the true defended model. Combine with :class:`robustlab.attacks.EOT`
  for randomised pre-processing: ``EOT(BPDA(PGD(...)), n)``.
- :class:`DetectorAwarePGD`: PGD on
  ``J(x') = min(L_cw(f(x'), y), kappa) - lambda * relu((s(x') - tau) / scale)``, where ``s`` is the
  detector's differentiable score (``detector.score_surrogate``), ``tau`` its fitted threshold and
  ``scale = |tau|`` (the penalty in units of the threshold, so one ``lambda`` fits every
  detector). Capping the classification term at ``kappa`` (CW's confidence) makes the detector
  term the only one left once the input is misclassified. Each sample stops at the first iterate
  that is misclassified *and* not flagged (``info["evaded"]``). Detectors are duck-typed: any
  object with ``threshold`` and ``score_surrogate(x)``, and ``flag(x)`` for the final judgement.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, Wrapper
from robustlab.losses import cw_margin, is_adversarial
from robustlab.threat import ThreatModel

__all__ = ["BPDA", "DetectorAwarePGD", "bpda_view"]


def bpda_view(model: nn.Module) -> nn.Module:
    """``model.bpda()`` for robustlab defences (transforms, hard-voting ensembles)."""
    view = getattr(model, "bpda", None)
    if not callable(view):
        raise TypeError(
            f"BPDA needs a defended model with a .bpda() method (robustlab.defenses transforms and ensembles), "
            f"got {type(model).__name__}; for your own pre-processing wrap it in robustlab.attacks.BPDAWrapper"
        )
    out = view()
    if not isinstance(out, nn.Module):
        raise TypeError(f"{type(model).__name__}.bpda() must return an nn.Module, got {type(out).__name__}")
    return out


class BPDA(Wrapper):
    """``attack`` run on ``model.bpda()``; success judged on ``model`` itself."""

    @property
    def name(self) -> str:
        return f"BPDA[{self.inner.name}]"

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        inner = self.inner._with_draws(self._eot_draws)  # EOT(BPDA(a)) averages inside a
        return inner._run(bpda_view(model), x, y, target, generator)


class DetectorAwarePGD(Attack):
    """PGD that misclassifies while keeping a fitted detector's score below its threshold.

    Args:
        threat: the threat model (any norm).
        detector: a fitted detector (``threshold`` set), e.g. from :mod:`robustlab.defenses.detect`.
        steps, step_size, restarts, random_start: as :class:`robustlab.attacks.PGD`.
        lam: weight of the detector penalty (in units of the threshold).
        kappa: cap on the CW margin ``max_{j != y} z_j - z_y`` (logit units).
        seed: seed of the random starts.
    """

    def __init__(
        self,
        threat: ThreatModel,
        detector: Any,
        steps: int = 100,
        step_size: Optional[float] = None,
        *,
        lam: float = 10.0,
        kappa: float = 1.0,
        restarts: int = 1,
        random_start: bool = True,
        seed: int = 0,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        if not callable(getattr(detector, "score_surrogate", None)):
            raise TypeError(f"detector must have a score_surrogate(x) method, got {type(detector).__name__}")
        if getattr(detector, "threshold", None) is None:
            raise ValueError(f"detector {type(detector).__name__} is not fitted: call detector.fit(clean_data, fpr=...) first")
        self.threat = threat
        self.detector = detector
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.restarts = int(check_positive(restarts, "restarts", integer=True))
        if step_size is None:
            step_size = 2.5 * threat.eps / self.steps
        self.step_size = float(check_positive(step_size, "step_size", allow_zero=threat.eps == 0))
        self.lam = float(check_positive(lam, "lam", allow_zero=True))
        self.kappa = float(check_positive(kappa, "kappa", allow_zero=True))
        self.random_start = bool(random_start)
        self.seed = int(seed)

    def config(self) -> dict:
        out = super().config()
        out["detector"] = getattr(self.detector, "name", type(self.detector).__name__)
        return out

    def _objective(self, model: nn.Module, xa: Tensor, y: Tensor, target: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, surrogate scores, grad J)``, averaged over ``_eot_draws`` forward passes."""
        tau = float(self.detector.threshold)
        scale = max(abs(tau), 1e-12)
        logits_sum = score_sum = grad_sum = None
        with torch.enable_grad():
            for _ in range(self._eot_draws):
                xr = xa.detach().requires_grad_(True)
                logits = model(xr)
                score = self.detector.score_surrogate(xr)
                obj = cw_margin(logits, y, target).clamp_max(self.kappa) - self.lam * torch.relu((score - tau) / scale)
                (grad,) = torch.autograd.grad(obj.sum(), xr)
                if logits_sum is None:
                    logits_sum, score_sum, grad_sum = logits.detach(), score.detach(), grad
                else:
                    logits_sum, score_sum, grad_sum = logits_sum + logits.detach(), score_sum + score.detach(), grad_sum + grad
        d = float(self._eot_draws)
        return logits_sum / d, score_sum / d, grad_sum / d  # type: ignore[operator]

    def _evades(self, logits: Tensor, xa: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        with torch.no_grad():
            return is_adversarial(logits, y, target) & ~self.detector.flag(xa)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        tm = self.threat
        n = x.shape[0]
        out = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        evaded = torch.zeros(n, dtype=torch.bool, device=x.device)
        remaining = torch.arange(n, device=x.device)
        for _ in range(self.restarts):
            idx = remaining
            x0, y0 = x[idx], y[idx]
            t0 = None if target is None else target[idx]
            xa = tm.random_start(x0, generator) if self.random_start else x0.clone()
            for _step in range(self.steps + 1):
                logits, _, grad = self._objective(model, xa, y0, t0)
                hit = self._evades(logits, xa, y0, t0)
                if bool(hit.any()):
                    out[idx[hit]] = xa[hit]
                    evaded[idx[hit]] = True
                    keep = ~hit
                    idx, xa, x0, y0, grad = idx[keep], xa[keep], x0[keep], y0[keep], grad[keep]
                    t0 = None if t0 is None else t0[keep]
                    if idx.numel() == 0:
                        break
                if _step == self.steps:
                    break
                xa = tm.project(xa + self.step_size * tm.ascent(grad, xa), x0)
                iterations[idx] += 1
            if idx.numel():
                out[idx] = xa  # the last iterate for samples that never evaded in this restart
            remaining = idx
            if remaining.numel() == 0:
                break
        return RawResult(out, iterations, info={"evaded": evaded})
