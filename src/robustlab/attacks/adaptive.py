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
- :class:`KNNFeaturePGD`: the adaptive attack on a nearest-neighbour consistency detector
  (:class:`robustlab.defenses.KNNDetector`; the idea of Sitawarin & Wagner 2019, "On the
  Robustness of Deep K-Nearest Neighbors", arXiv:1903.08333): rather than a surrogate of the
  detector's score, it moves the input's *features* into another class's neighbourhood, so that
  the neighbours and the classifier agree on the wrong class. See the class docstring.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, Wrapper
from robustlab.losses import cw_margin, is_adversarial
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings

__all__ = ["BPDA", "DetectorAwarePGD", "KNNFeaturePGD", "bpda_view"]


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


class _AgainstDetector(Attack):
    """An attack that evades a detector (``self.detector``) as well as the classifier; its
    configuration names the detector."""

    detector: Any

    def config(self) -> dict:
        out = super().config()
        out["detector"] = getattr(self.detector, "name", type(self.detector).__name__)
        return out


class DetectorAwarePGD(_AgainstDetector):
    """PGD that misclassifies while keeping a fitted detector's score below its threshold.

    Args:
        threat: the threat model (any norm).
        detector: a fitted detector (``threshold`` set), e.g. from :mod:`robustlab.defenses.detect`.
        steps, step_size, restarts, random_start: as :class:`robustlab.attacks.PGD`.
        lam: weight of the detector penalty (in units of the threshold).
        kappa: cap on the CW margin ``max_{j != y} z_j - z_y`` (logit units).
        seed: seed of the random starts.
    """

    @spellings(positional=("detector", "steps", "step_size"))
    def __init__(
        self,
        threat: ThreatModel,
        *,
        detector: Any,
        steps: int = 100,
        step_size: Optional[float] = None,
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


class KNNFeaturePGD(_AgainstDetector):
    """Feature-space PGD against a kNN consistency detector (Sitawarin & Wagner 2019, arXiv:1903.08333).

    A kNN detector flags an input when the labels of its ``k`` nearest reference points, in the
    detector's space ``phi`` (pixels or the model's penultimate features), disagree with the
    model's prediction. Attacking a differentiable surrogate of that score with the neighbours held
    fixed pulls the prediction back toward the clean class (the neighbours' label), so this attack
    moves the neighbourhood instead. For each input ``x`` with label ``y``:

    1. target class: the classes ``t != y`` ordered by the distance from ``phi(x)`` to their
       nearest reference point (targeted: ``t`` = the target); restart ``r`` tries the ``r``-th;
    2. guides ``g_1..g_m``: the ``m`` reference points of class ``t`` nearest to ``phi(x)``;
    3. PGD descent on ``L(x') = (1/m) sum_j ||phi(x') - g_j||_2^2`` in the threat model:
       ``x' <- Proj_B(x)(x' - alpha * a(grad L(x')))`` with ``a`` the norm's steepest-ascent
       direction (sign for linf), ``alpha = 2.5 eps / steps`` by default, from ``x`` itself on
       the first restart (from a seeded random point of the ball with ``random_start``);
    4. each input keeps the first iterate that is misclassified (``== t`` when targeted) **and**
       not flagged by the detector, and stops there (``info["evaded"]``); inputs that never evade
       keep the last iterate of their last restart, or of an earlier one whose last iterate was
       misclassified when the later one's is not (``info["target_class"]``: the last class tried).

    The detector is duck-typed: ``threshold`` (fitted), ``flag(x)``, ``embed(x) -> (logits,
    points (N, D))`` differentiable in ``x``, and the reference set ``ref_points`` (R, D) with
    ``ref_labels`` (R,). ``embed`` evaluates the detector's own model, so :meth:`attack` must be
    given that model (a ValueError otherwise). Deterministic apart from the seeded random starts.

    Args:
        threat: the threat model (any norm).
        detector: a fitted kNN detector (see above).
        steps, step_size: PGD steps per restart and their size (default ``2.5 eps / steps``).
        guides: ``m``, the reference points of the target class the features are pulled to.
        classes: target classes tried, nearest first (untargeted; restarts).
        random_start: start restarts after the first from a random point of the ball.
        seed: seed of the random starts.
    """

    @spellings(positional=("detector", "steps", "step_size"))
    def __init__(self, threat: ThreatModel, *, detector: Any, steps: int = 100, step_size: Optional[float] = None,
                 guides: int = 10, classes: int = 3, random_start: bool = False, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        for attr in ("embed", "flag"):
            if not callable(getattr(detector, attr, None)):
                raise TypeError(f"detector must be a kNN detector with {attr}() (robustlab.defenses.KNNDetector), "
                                f"got {type(detector).__name__}")
        points, labels = getattr(detector, "ref_points", None), getattr(detector, "ref_labels", None)
        if not isinstance(points, Tensor) or not isinstance(labels, Tensor) or points.dim() != 2 \
                or labels.shape != points.shape[:1]:
            raise TypeError(f"detector must hold ref_points (R, D) and ref_labels (R,) tensors, got "
                            f"{type(detector).__name__} without them")
        if getattr(detector, "threshold", None) is None:
            raise ValueError(f"detector {type(detector).__name__} is not fitted: call detector.fit(clean_data, fpr=...) first")
        self.threat = threat
        self.detector = detector
        self.steps = int(check_positive(steps, "steps", integer=True))
        if step_size is None:
            step_size = 2.5 * threat.eps / self.steps
        self.step_size = float(check_positive(step_size, "step_size", allow_zero=threat.eps == 0))
        self.guides = int(check_positive(guides, "guides", integer=True))
        self.classes = int(check_positive(classes, "classes", integer=True))
        self.random_start = bool(random_start)
        self.seed = int(seed)

    def _targets(self, f0: Tensor, y: Tensor, target: Optional[Tensor], k: int) -> Tensor:
        """(N, C) candidate target classes of K = ``k``, nearest first; -1 where a class has no
        reference point."""
        labels = self.detector.ref_labels.to(f0.device)
        if target is not None:
            return target.unsqueeze(1)
        d = torch.cdist(f0, self.detector.ref_points.to(f0))  # (N, R)
        k = max(k, int(labels.max()) + 1)
        nearest = torch.full((f0.shape[0], k), float("inf"), dtype=d.dtype, device=d.device)
        nearest = nearest.scatter_reduce(1, labels.expand_as(d), d, reduce="amin")  # (N, K): per-class nearest
        nearest.scatter_(1, y.unsqueeze(1), float("inf"))  # never the true class
        dist, order = nearest.sort(dim=1)
        order = order[:, : self.classes]
        return torch.where(torch.isfinite(dist[:, : self.classes]), order, torch.full_like(order, -1))

    def _guides(self, f0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(guides (N, m, D), valid (N, m))``: the ``m`` reference points of class ``t`` nearest to ``f0``."""
        points = self.detector.ref_points.to(f0)
        labels = self.detector.ref_labels.to(f0.device)
        d = torch.cdist(f0, points).masked_fill(labels.unsqueeze(0) != t.unsqueeze(1), float("inf"))  # (N, R)
        near = d.topk(min(self.guides, d.shape[1]), dim=1, largest=False)
        return points[near.indices], torch.isfinite(near.values)

    def _evades(self, logits: Tensor, xa: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        hit = is_adversarial(logits, y, target)
        if bool(hit.any()):
            idx = hit.nonzero().squeeze(1)
            with torch.no_grad():
                hit[idx] = ~self.detector.flag(xa[idx])
        return hit

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        own = getattr(self.detector, "model", model)
        if own is not model:
            raise ValueError("KNNFeaturePGD attacks the detector's own model (detector.model); got another model")
        tm = self.threat
        n = x.shape[0]
        with torch.no_grad():
            logits0, f0 = self.detector.embed(x)  # (N, K), (N, D)
            candidates = self._targets(f0, y, target, logits0.shape[1])  # (N, C)
        out = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        evaded = torch.zeros(n, dtype=torch.bool, device=x.device)
        wrong = torch.zeros(n, dtype=torch.bool, device=x.device)  # out[i] is misclassified (not evading)
        tried = torch.full((n,), -1, dtype=torch.long, device=x.device)
        remaining = torch.arange(n, device=x.device)
        for r in range(candidates.shape[1]):
            idx = remaining[candidates[remaining, r] >= 0]
            if idx.numel() == 0:
                break
            t = candidates[idx, r]
            tried[idx] = t
            with torch.no_grad():
                g, valid = self._guides(f0[idx], t)  # (n, m, D), (n, m)
            w = valid.to(x.dtype) / valid.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)  # (n, m)
            x0, y0 = x[idx], y[idx]
            t0 = None if target is None else target[idx]
            xa = tm.random_start(x0, generator) if (self.random_start and r > 0) else x0.clone()
            for step in range(self.steps + 1):
                xr = xa.detach().requires_grad_(True)
                with torch.enable_grad():
                    logits, f = self.detector.embed(xr)
                    d2 = (f.unsqueeze(1) - g.to(f)).square().sum(dim=2).masked_fill(~valid, 0.0)  # (n, m)
                    (grad,) = torch.autograd.grad((d2 * w.to(d2)).sum(), xr)
                mis = is_adversarial(logits.detach(), y0, t0)
                hit = self._evades(logits.detach(), xa, y0, t0)
                if bool(hit.any()):
                    out[idx[hit]] = xa[hit]
                    evaded[idx[hit]] = True
                    keep = ~hit
                    idx, xa, x0, y0, grad, g, valid, w, mis = (v[keep] for v in (idx, xa, x0, y0, grad, g, valid, w, mis))
                    t0 = None if t0 is None else t0[keep]
                    if idx.numel() == 0:
                        break
                if step == self.steps:
                    break
                xa = tm.project(xa.detach() - self.step_size * tm.ascent(grad, xa), x0)
                iterations[idx] += 1
            if idx.numel():  # no evasion in this restart: keep its last iterate unless only an earlier one fools f
                take = mis | ~wrong[idx]
                out[idx[take]] = xa.detach()[take]
                wrong[idx[take]] = mis[take]
            remaining = remaining[~evaded[remaining]]
            if remaining.numel() == 0:
                break
        return RawResult(out, iterations, info={"evaded": evaded, "target_class": tried})
