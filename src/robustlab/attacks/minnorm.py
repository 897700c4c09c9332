"""Minimal-norm attacks with an adaptive radius: FMN (linf, l2, l1) and DDN (l2).

Both search the smallest perturbation that changes the decision by alternating a normalised
gradient step with a projection onto a ball whose radius ``eps_k`` shrinks while the iterate is
adversarial and grows while it is not. ``AttackResult.distance`` is then the size of the smallest
adversarial perturbation found per sample. Given a ThreatModel, the radius is capped at its eps
(the search stays inside the ball, and ``success`` means "found within eps"); by default they
then stop per sample at the first adversarial iterate, as a fixed-budget attack would.

**FMN** (Pintor, Roli, Brendel, Biggio 2021, "Fast Minimum-norm Adversarial Attacks through
Adaptive Norm Constraints", arXiv:2102.12827, Algorithm 1), with the logit margin
``L(x) = Z_y - max_{j != y} Z_j`` (targeted: ``max_{j != t} Z_j - Z_t``), ``g = grad L``::

    eps_k = min(eps_{k-1} (1 - gamma_k), ||delta*||_p)       if x + delta_{k-1} is adversarial
    eps_k = eps_{k-1} (1 + gamma_k)                            elif an adversarial was found before
    eps_k = max(||delta_{k-1}||_p + L / ||g||_q, eps_{k-1} (1 + gamma_k))   else
    delta_k = Proj_{eps_k ball ∩ box}(delta_{k-1} - alpha_k g / ||g||_2)

with ``q`` the dual norm. Before the first adversarial point the paper uses the linearised
distance ``||delta|| + L / ||g||_q`` alone; we never let it fall below the growing radius, because
where the box clips the step (saturated pixels, as in MNIST) the linearisation underestimates the
distance and the search can stall at a non-adversarial radius (on an 8x8 digits CNN the paper's
rule left 63% of the samples unbroken after 100 steps; with the floor none).

with ``alpha_k`` and ``gamma_k`` cosine-annealed from ``alpha_init``/``gamma_init`` to
``alpha_final``/``gamma_final``.

**DDN** (Rony et al. 2019, "Decoupling Direction and Norm", arXiv:1811.09600, Algorithm 1),
with the cross-entropy ``J``::

    delta_k = delta_{k-1} + alpha_k grad J / ||grad J||_2
    eps_k = (1 - gamma) eps_{k-1} if x + delta_{k-1} is adversarial else (1 + gamma) eps_{k-1}
    x_k = clip(x + eps_k delta_k / ||delta_k||_2)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive, check_probability
from robustlab.attacks.base import Attack, RawResult, predict, resolve_threat
from robustlab.losses import cross_entropy, is_adversarial, margin
from robustlab.threat import ThreatModel

_DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))  # (N,) -> (N, 1, 1, 1)


def _cosine(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` (k = 0) to ``end`` (k = steps)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


class _MinNorm(Attack):
    minimal = True

    def _init_threat(self, threat: "ThreatModel | str", norms: tuple[str, ...], bounds: tuple[float, float], early_stop: Optional[bool]) -> None:
        self.threat, self.distance_norm, self.bounds = resolve_threat(threat, norms, bounds, type(self).__name__)
        # Bounded: success within eps is all that counts, so stop at the first adversarial iterate.
        self.early_stop = (self.threat is not None) if early_stop is None else bool(early_stop)

    def _geometry(self, x: Tensor) -> tuple[ThreatModel, Tensor]:
        """A radius-free ThreatModel for projections with per-sample eps, and the radius cap."""
        lower, upper = self.box
        geo = ThreatModel(self.norm, 0.0, lower, upper)
        d = x[0].numel()
        if self.threat is not None:
            cap = self.threat.eps
        else:  # the largest distance inside the box
            span = upper - lower
            cap = {"linf": span, "l2": span * math.sqrt(d), "l1": span * d}[self.norm]
        return geo, torch.full((x.shape[0],), float(cap), device=x.device, dtype=x.dtype)


class FMN(_MinNorm):
    """Fast Minimum-Norm attack (Pintor et al. 2021) for ``linf``, ``l2`` and ``l1``.

    Args:
        threat: a norm name (unbounded) or a ThreatModel (radius capped at its eps).
        steps: iterations (100; the paper uses 100-1000).
        alpha_init, alpha_final: step size, cosine-annealed (1.0 -> alpha_init / 100).
        gamma_init, gamma_final: radius change factor, cosine-annealed (0.05 -> 0.001).
        early_stop: stop per sample at the first adversarial iterate (default: only when bounded).
        bounds: the input box when ``threat`` is a norm name.
    """

    def __init__(
        self,
        threat: "ThreatModel | str" = "l2",
        *,
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: Optional[float] = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        early_stop: Optional[bool] = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self._init_threat(threat, ("linf", "l2", "l1"), bounds, early_stop)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.alpha_init = float(check_positive(alpha_init, "alpha_init"))
        self.alpha_final = float(check_positive(alpha_final, "alpha_final")) if alpha_final is not None else self.alpha_init / 100
        self.gamma_init = check_probability(gamma_init, "gamma_init")
        self.gamma_final = check_probability(gamma_final, "gamma_final")
        self.seed = int(seed)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev, dt = x.shape[0], x.device, x.dtype
        geo, cap = self._geometry(x)
        q = _DUAL[self.norm]
        out = x.clone()
        best_norm = torch.full((n,), math.inf, device=dev, dtype=dt)
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)

        idx = torch.arange(n, device=dev)
        x0, y0, t0 = x, y, target
        xa = x.clone()
        eps = torch.zeros(n, device=dev, dtype=dt)
        cap_a = cap
        best_a, best_x_a, found_a = best_norm, x.clone(), found

        def objective(z: Tensor) -> Tensor:  # the margin to drive below zero
            return margin(z, y0) if t0 is None else -margin(z, t0)

        for k in range(self.steps):
            loss, logits, g = self._gradient(model, xa, objective)
            adv = is_adversarial(logits, y0, t0)
            norm = geo.distance(xa, x0)
            smaller = adv & (norm < best_a)
            best_a = torch.where(smaller, norm, best_a)
            best_x_a = torch.where(_view(smaller, xa), xa, best_x_a)
            found_a = found_a | adv
            if self.early_stop and bool(adv.any()):
                done = adv
                out[idx[done]] = best_x_a[done]
                best_norm[idx[done]] = best_a[done]
                found[idx[done]] = True
                keep = ~done
                idx, x0, y0, xa, eps, cap_a, best_a, best_x_a, found_a, loss, g, adv, norm = (
                    idx[keep], x0[keep], y0[keep], xa[keep], eps[keep], cap_a[keep], best_a[keep],
                    best_x_a[keep], found_a[keep], loss[keep], g[keep], adv[keep], norm[keep],
                )
                t0 = None if t0 is None else t0[keep]
                if idx.numel() == 0:
                    break
            gamma = _cosine(self.gamma_init, self.gamma_final, k, self.steps)
            alpha = _cosine(self.alpha_init, self.alpha_final, k, self.steps)
            g_flat = g.flatten(1)
            to_boundary = loss.abs() / g_flat.norm(p=q, dim=1).clamp_min(1e-12)
            eps = torch.where(
                adv,
                torch.minimum(eps * (1 - gamma), best_a),
                torch.where(found_a, eps * (1 + gamma), torch.maximum(norm + to_boundary, eps * (1 + gamma))),
            )
            eps = torch.minimum(eps, cap_a)
            step = g / _view(g_flat.norm(dim=1).clamp_min(1e-12), g)
            xa = geo.project(xa - alpha * step, x0, eps=eps)
            iterations[idx] += 1
        if idx.numel():
            # The last iterate has not been judged yet.
            logits = predict(model, xa)
            adv = is_adversarial(logits, y0, t0)
            norm = geo.distance(xa, x0)
            smaller = adv & (norm < best_a)
            best_x_a = torch.where(_view(smaller, xa), xa, best_x_a)
            found_a = found_a | adv
            # Not found: the last iterate (inside the ball when bounded).
            out[idx] = torch.where(_view(found_a, xa), best_x_a, xa)
        return RawResult(out, iterations)


class DDN(_MinNorm):
    """Decoupled Direction and Norm attack (Rony et al. 2019), L2.

    Args:
        threat: ``"l2"`` (unbounded) or an l2 ThreatModel (radius capped at its eps).
        steps: iterations (100).
        init_norm: the first radius ``eps_0`` (1.0).
        gamma: radius change factor (0.05).
        alpha_init, alpha_final: step size, cosine-annealed (1.0 -> 0.01).
        early_stop: stop per sample at the first adversarial iterate (default: only when bounded).
        seed: seed of the random directions taken where the gradient is exactly zero.

    Where the gradient is exactly zero the step follows a Gaussian direction drawn from the
    attack's generator instead (as Foolbox's and adv_lib's DDN), so a flat start does not stall.
    """

    def __init__(
        self,
        threat: "ThreatModel | str" = "l2",
        *,
        steps: int = 100,
        init_norm: float = 1.0,
        gamma: float = 0.05,
        alpha_init: float = 1.0,
        alpha_final: float = 0.01,
        early_stop: Optional[bool] = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self._init_threat(threat, ("l2",), bounds, early_stop)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.init_norm = float(check_positive(init_norm, "init_norm"))
        self.gamma = check_probability(gamma, "gamma")
        self.alpha_init = float(check_positive(alpha_init, "alpha_init"))
        self.alpha_final = float(check_positive(alpha_final, "alpha_final"))
        self.seed = int(seed)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev, dt = x.shape[0], x.device, x.dtype
        geo, cap = self._geometry(x)
        lower, upper = self.box
        out = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        idx = torch.arange(n, device=dev)
        x0, y0, t0 = x, y, target
        delta = torch.zeros_like(x)
        xa = x.clone()
        eps = torch.minimum(torch.full((n,), self.init_norm, device=dev, dtype=dt), cap)
        cap_a = cap
        best_a = torch.full((n,), math.inf, device=dev, dtype=dt)
        best_x_a = x.clone()
        found_a = torch.zeros(n, dtype=torch.bool, device=dev)

        def objective(z: Tensor) -> Tensor:
            return cross_entropy(z, y0, t0)

        for k in range(self.steps):
            _, logits, g = self._gradient(model, xa, objective)
            adv = is_adversarial(logits, y0, t0)
            norm = geo.distance(xa, x0)
            smaller = adv & (norm < best_a)
            best_a = torch.where(smaller, norm, best_a)
            best_x_a = torch.where(_view(smaller, xa), xa, best_x_a)
            found_a = found_a | adv
            if self.early_stop and bool(adv.any()):
                out[idx[adv]] = best_x_a[adv]
                keep = ~adv
                idx, x0, y0, xa, delta, eps, cap_a, best_a, best_x_a, found_a, g, adv = (
                    idx[keep], x0[keep], y0[keep], xa[keep], delta[keep], eps[keep], cap_a[keep],
                    best_a[keep], best_x_a[keep], found_a[keep], g[keep], adv[keep],
                )
                t0 = None if t0 is None else t0[keep]
                if idx.numel() == 0:
                    break
            alpha = _cosine(self.alpha_init, self.alpha_final, k, self.steps)
            g_norm = g.flatten(1).norm(dim=1)
            zero = g_norm == 0
            if bool(zero.any()):  # no signal: step along a random direction (as Foolbox and adv_lib)
                noise = torch.randn(g.shape, generator=generator, device=dev, dtype=dt)
                g = torch.where(_view(zero, g), noise, g)
                g_norm = g.flatten(1).norm(dim=1)
            delta = delta + alpha * g / _view(g_norm.clamp_min(1e-12), g)
            eps = torch.minimum(torch.where(adv, eps * (1 - self.gamma), eps * (1 + self.gamma)), cap_a)
            d_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * _view(eps / d_norm, delta)
            xa = (x0 + delta).clamp(lower, upper)
            delta = xa - x0
            iterations[idx] += 1
        if idx.numel():
            logits = predict(model, xa)
            adv = is_adversarial(logits, y0, t0)
            norm = geo.distance(xa, x0)
            smaller = adv & (norm < best_a)
            best_x_a = torch.where(_view(smaller, xa), xa, best_x_a)
            found_a = found_a | adv
            out[idx] = torch.where(_view(found_a, xa), best_x_a, xa)
        return RawResult(out, iterations)
