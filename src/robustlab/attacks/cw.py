"""Carlini & Wagner attacks (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural
Networks", arXiv:1608.04644): minimal-norm attacks for L2, Linf and L0.

All three optimise over ``w`` with the change of variables ``x' = mid + half * tanh(w)`` (sec. V.C,
box constraint; ``mid, half`` map the box [lower, upper] to (-1, 1)) with Adam, and use the margin
(their ``f_6``) from :func:`robustlab.losses.cw_margin`::

    f(x') = max(Z(x')_y - max_{j != y} Z(x')_j, -kappa)        untargeted
    f(x') = max(max_{j != t} Z(x')_j - Z(x')_t, -kappa)        targeted

* :class:`CarliniWagner` (L2): ``min ||x' - x||_2^2 + c f(x')``, a per-sample binary search over
  ``c`` (9 steps from ``c = 1e-3``; x10 while no success has been seen), early abort when the
  loss stalls (checked every ``steps / 10`` iterations), the smallest successful ``x'`` kept.
* :class:`CarliniWagnerLinf`: ``min c f(x') + sum_i max(|x'_i - x_i| - tau, 0)``; after each
  success ``tau <- 0.9 min(tau, ||x' - x||_inf)`` and the search warm-starts from that solution;
  ``c`` doubles (from 1e-5) while the sub-problem fails, up to 20 (sec. VI.B).
* :class:`CarliniWagnerL0`: repeatedly solve the L2 problem restricted to an allowed set of
  pixels, then freeze the pixels with the smallest ``|delta_i| |g_i|`` (summed over channels; ``g``
  the tanh-space gradient of the whole objective, as the reference code),
  until the restricted problem becomes infeasible; the last solution is returned (sec. VI.A).

Everything runs batched with per-sample state (constants, tau, pixel masks, Adam moments), so
samples progress independently and leave the working batch when they are done.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, predict, resolve_threat
from robustlab.losses import cw_margin, is_adversarial
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))  # (N,) -> (N, 1, 1, 1)


class _TanhBox:
    """``x = mid + half * tanh(w)`` and its inverse, for the box [lower, upper]."""

    def __init__(self, lower: float, upper: float) -> None:
        self.mid = (upper + lower) / 2
        self.half = (upper - lower) / 2

    def to_w(self, x: Tensor) -> Tensor:
        return torch.atanh(((x - self.mid) / self.half).clamp(-1 + 1e-6, 1 - 1e-6))

    def to_x(self, w: Tensor) -> Tensor:
        return self.mid + self.half * torch.tanh(w)

    def dx_dw(self, w: Tensor) -> Tensor:
        return self.half * (1 - torch.tanh(w).square())


class _Adam:
    """Adam (Kingma & Ba 2015, arXiv:1412.6980) with per-sample state, so samples can leave the
    batch (``keep``) or restart (``reset``) independently."""

    def __init__(self, like: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = torch.zeros(like.shape[0], device=like.device, dtype=like.dtype)

    def step(self, w: Tensor, grad: Tensor) -> Tensor:
        """``w - lr * m_hat / (sqrt(v_hat) + eps)`` (descent)."""
        self.t = self.t + 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad.square()
        m_hat = self.m / _view(1 - self.b1 ** self.t, w)
        v_hat = self.v / _view(1 - self.b2 ** self.t, w)
        return w - self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def keep(self, mask: Tensor) -> None:
        self.m, self.v, self.t = self.m[mask], self.v[mask], self.t[mask]


def _f(logits: Tensor, y: Tensor, target: Optional[Tensor], kappa: float) -> Tensor:
    """CW objective term ``max(Z_y - max_{j!=y} Z_j, -kappa)`` (to minimise), via losses.cw_margin."""
    return -cw_margin(logits, y, target, kappa)


def _succeeds(logits: Tensor, y: Tensor, target: Optional[Tensor], kappa: float) -> Tensor:
    """Adversarial with margin at least ``kappa``."""
    return is_adversarial(logits, y, target) & (cw_margin(logits, y, target) >= kappa)


class _CWBase(Attack):
    minimal = True

    def _setup(self, threat: "ThreatModel | str", norms: tuple[str, ...], bounds: tuple[float, float], kappa: float, step_size: float, seed: int) -> None:
        self.threat, self.distance_norm, self.bounds = resolve_threat(threat, norms, bounds, type(self).__name__)
        self.kappa = float(check_positive(kappa, "kappa", allow_zero=True))
        self.step_size = float(check_positive(step_size, "step_size"))
        self.seed = int(seed)


class CarliniWagner(_CWBase):
    """Carlini-Wagner L2: ``min_w ||x'(w) - x||_2^2 + c f(x'(w))`` with a binary search over ``c``.

    Args:
        threat: ``"l2"`` (unbounded: ``distance`` is the L2 norm found) or an l2 ThreatModel (the
            result is then projected into its ball, so ``success`` means found within eps).
        steps: Adam iterations per binary-search step (Carlini's code: up to 10,000).
        binary_search_steps: rounds of the search over ``c`` (9).
        initial_const: the first ``c`` (1e-3).
        step_size: Adam learning rate (1e-2; formerly ``lr``).
        kappa: confidence margin (0).
        abort_early: stop a sample's round once its loss stops decreasing by 0.01% over
            ``steps / 10`` iterations.
        bounds: the input box when ``threat`` is a norm name.
    """

    @spellings(renamed={"lr": "step_size"})
    def __init__(
        self,
        threat: "ThreatModel | str" = "l2",
        *,
        steps: int = 1000,
        binary_search_steps: int = 9,
        initial_const: float = 1e-3,
        step_size: float = 1e-2,
        kappa: float = 0.0,
        abort_early: bool = True,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self._setup(threat, ("l2",), bounds, kappa, step_size, seed)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.binary_search_steps = int(check_positive(binary_search_steps, "binary_search_steps", integer=True))
        self.initial_const = float(check_positive(initial_const, "initial_const"))
        self.abort_early = bool(abort_early)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev, dt = x.shape[0], x.device, x.dtype
        box = _TanhBox(*self.box)
        w0 = box.to_w(x)
        const = torch.full((n,), self.initial_const, device=dev, dtype=dt)
        c_lo = torch.zeros(n, device=dev, dtype=dt)
        c_hi = torch.full((n,), math.inf, device=dev, dtype=dt)
        best_dist = torch.full((n,), math.inf, device=dev, dtype=dt)
        best_x = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        check_every = max(self.steps // 10, 1)
        kappa = self.kappa

        for _ in range(self.binary_search_steps):
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            idx = torch.arange(n, device=dev)
            w, xo, yo, c = w0.clone(), x, y, const
            to = target
            adam = _Adam(w, self.step_size)
            prev = torch.full((n,), math.inf, device=dev, dtype=dt)
            for step in range(self.steps):
                xa = box.to_x(w)
                f_val, logits, g_f = self._gradient(model, xa, lambda z: _f(z, yo, to, kappa))
                delta = xa - xo
                dist2 = delta.flatten(1).square().sum(1)
                loss = dist2 + c * f_val
                # Keep the smallest successful iterate (judged at the point the gradient was taken).
                ok = _succeeds(logits, yo, to, kappa)
                smaller = ok & (dist2.sqrt() < best_dist[idx])
                best_dist[idx] = torch.where(smaller, dist2.sqrt(), best_dist[idx])
                best_x[idx] = torch.where(_view(smaller, xa), xa, best_x[idx])
                found[idx] |= ok
                grad_w = (2 * delta + _view(c, xa) * g_f) * box.dx_dw(w)
                w = adam.step(w, grad_w)
                iterations[idx] += 1
                if self.abort_early and (step + 1) % check_every == 0:
                    stalled = loss > prev * 0.9999
                    prev = loss
                    if bool(stalled.any()):
                        keep = ~stalled
                        idx, w, xo, yo, c, prev = idx[keep], w[keep], xo[keep], yo[keep], c[keep], prev[keep]
                        to = None if to is None else to[keep]
                        adam.keep(keep)
                        if idx.numel() == 0:
                            break
            # Binary search on c (per sample): success -> smaller c, failure -> larger c.
            c_hi = torch.where(found, torch.minimum(c_hi, const), c_hi)
            c_lo = torch.where(found, c_lo, torch.maximum(c_lo, const))
            const = torch.where(
                torch.isfinite(c_hi), (c_lo + c_hi) / 2, const * 10
            )
        return RawResult(best_x, iterations)


class CarliniWagnerLinf(_CWBase):
    """Carlini-Wagner Linf: ``min_w c f(x') + sum_i max(|x'_i - x_i| - tau, 0)`` with tau decreasing.

    Args:
        threat: ``"linf"`` (unbounded) or an linf ThreatModel.
        steps: Adam iterations per sub-problem (1000 in the paper's code).
        initial_const, largest_const, const_factor: ``c`` starts at 1e-5 and is multiplied by 2
            while a sub-problem fails, up to 20.
        tau_decrease: ``tau <- tau_decrease * min(tau, ||delta||_inf)`` after each success (0.9).
        min_tau: stop once ``tau`` falls below this (1/256).
        reduce_const: halve ``c`` after each success (off in the paper).
        step_size: Adam learning rate (5e-3; formerly ``lr``).
        kappa: confidence margin (0).
    """

    @spellings(renamed={"lr": "step_size"})
    def __init__(
        self,
        threat: "ThreatModel | str" = "linf",
        *,
        steps: int = 1000,
        initial_const: float = 1e-5,
        largest_const: float = 20.0,
        const_factor: float = 2.0,
        tau_decrease: float = 0.9,
        min_tau: float = 1 / 256,
        reduce_const: bool = False,
        step_size: float = 5e-3,
        kappa: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self._setup(threat, ("linf",), bounds, kappa, step_size, seed)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.initial_const = float(check_positive(initial_const, "initial_const"))
        self.largest_const = float(check_positive(largest_const, "largest_const"))
        if not const_factor > 1:
            raise ValueError(f"const_factor must be > 1, got {const_factor!r}")
        self.const_factor = float(const_factor)
        if not 0 < tau_decrease < 1:
            raise ValueError(f"tau_decrease must be in (0, 1), got {tau_decrease!r}")
        self.tau_decrease = float(tau_decrease)
        self.min_tau = float(check_positive(min_tau, "min_tau"))
        self.reduce_const = bool(reduce_const)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev, dt = x.shape[0], x.device, x.dtype
        box = _TanhBox(*self.box)
        kappa = self.kappa
        tau = torch.full((n,), float(self.box[1] - self.box[0]), device=dev, dtype=dt)
        const = torch.full((n,), self.initial_const, device=dev, dtype=dt)
        start = box.to_w(x)  # warm start of the next sub-problem (the last solution)
        best_x = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        active = torch.arange(n, device=dev)
        while active.numel():
            # One sub-problem (tau, c) for every active sample, from its warm start.
            idx = active
            w, xo, yo = start[idx].clone(), x[idx], y[idx]
            to = None if target is None else target[idx]
            c, t_ = const[idx], tau[idx]
            adam = _Adam(w, self.step_size)
            solved = torch.zeros(n, dtype=torch.bool, device=dev)
            solution = torch.zeros_like(x)
            last = torch.zeros_like(x)
            for _ in range(self.steps):
                xa = box.to_x(w)
                f_val, logits, g_f = self._gradient(model, xa, lambda z: _f(z, yo, to, kappa) + kappa)
                delta = xa - xo
                over = (delta.abs() - _view(t_, delta)).clamp_min(0)
                loss = c * f_val + over.flatten(1).sum(1)
                # Solved: adversarial, and the loss is (nearly) zero (Carlini's test) or every
                # coordinate is within tau (the same, without waiting for the penalty to vanish).
                inside = delta.flatten(1).abs().amax(1) <= t_
                done = ((loss < 1e-4 * c) | inside) & _succeeds(logits, yo, to, kappa)
                if bool(done.any()):
                    solved[idx[done]] = True
                    solution[idx[done]] = xa[done]
                    keep = ~done
                    idx, w, xo, yo, c, t_ = idx[keep], w[keep], xo[keep], yo[keep], c[keep], t_[keep]
                    to = None if to is None else to[keep]
                    adam.keep(keep)
                    xa, delta, g_f = xa[keep], delta[keep], g_f[keep]
                    if idx.numel() == 0:
                        break
                grad_x = _view(c, xa) * g_f + delta.sign() * (delta.abs() > _view(t_, delta))
                w = adam.step(w, grad_x * box.dx_dw(w))
                iterations[idx] += 1
            if idx.numel():
                last[idx] = w  # failed sub-problems continue from where they stopped, with a larger c
            ok = solved[active]
            won, lost = active[ok], active[~ok]
            if won.numel():
                best_x[won] = solution[won]
                start[won] = box.to_w(solution[won])
                actual = (solution[won] - x[won]).flatten(1).abs().amax(1)
                tau[won] = torch.minimum(tau[won], actual) * self.tau_decrease
                if self.reduce_const:
                    const[won] = const[won] / 2
            if lost.numel():
                const[lost] = const[lost] * self.const_factor
                start[lost] = last[lost]
            finished = (tau[active] < self.min_tau) | (const[active] > self.largest_const)
            active = active[~finished]
        return RawResult(best_x, iterations)


class CarliniWagnerL0(_CWBase):
    """Carlini-Wagner L0: the L2 attack on a shrinking set of allowed pixels.

    Each round solves ``min ||x' - x||_2^2 + c f(x')`` over the allowed pixels (warm start from the
    last solution, ``c`` doubled from its last value while infeasible, up to ``largest_const``),
    then freezes allowed pixels in increasing order of ``sum_channels |delta_i| |g_i|`` with ``g``
    the gradient of the whole objective ``||delta||^2 + c f`` with respect to the tanh variable
    ``w`` at the solution (``g = dx'/dw * grad_x'``), as in Carlini's reference ``l0_attack.py``:
    at least one pixel, at most ``ceil(0.3 sqrt(m))`` with ``m`` the pixels changed by at least
    ``1e-4`` of the box in some channel (the reference's tolerance), stopping after the first
    whose score exceeds 0.01. Stops when a round fails; returns the last solution, with changes
    below ``1e-3`` of the box reset to ``x`` where it stays adversarial (so ``distance``, which
    counts every nonzero change, reports real changes).

    Args:
        threat: ``"l0"`` (unbounded: ``distance`` counts changed pixels) or an l0 ThreatModel.
        steps: Adam iterations per sub-problem (1000).
        initial_const, largest_const, const_factor: ``c`` from 1e-3, x2 while infeasible, <= 2e6.
        step_size: Adam learning rate (1e-2; formerly ``lr``).
        kappa: confidence margin (0).
    """

    CHANGE_TOL = 1e-4  # a pixel whose channels all moved by less (x box width) counts as unchanged

    @spellings(renamed={"lr": "step_size"})
    def __init__(
        self,
        threat: "ThreatModel | str" = "l0",
        *,
        steps: int = 1000,
        initial_const: float = 1e-3,
        largest_const: float = 2e6,
        const_factor: float = 2.0,
        step_size: float = 1e-2,
        kappa: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self._setup(threat, ("l0",), bounds, kappa, step_size, seed)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.initial_const = float(check_positive(initial_const, "initial_const"))
        self.largest_const = float(check_positive(largest_const, "largest_const"))
        if not const_factor > 1:
            raise ValueError(f"const_factor must be > 1, got {const_factor!r}")
        self.const_factor = float(const_factor)

    @staticmethod
    def _pixels(t: Tensor) -> Tensor:
        """Per-pixel sum over channels: (N, C, H, W) -> (N, H*W); other ranks per component."""
        if t.dim() == 4:
            return t.sum(dim=1).flatten(1)
        return t.flatten(1)

    @staticmethod
    def _pixel_max(t: Tensor) -> Tensor:
        """Per-pixel max over channels: (N, C, H, W) -> (N, H*W); other ranks per component."""
        if t.dim() == 4:
            return t.amax(dim=1).flatten(1)
        return t.flatten(1)

    @staticmethod
    def _expand(mask: Tensor, like: Tensor) -> Tensor:
        if like.dim() == 4:
            n, _, h, w = like.shape
            return mask.reshape(n, 1, h, w)
        return mask.reshape(like.shape)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev, dt = x.shape[0], x.device, x.dtype
        box = _TanhBox(*self.box)
        kappa = self.kappa
        n_pix = self._pixels(x).shape[1]
        allowed = torch.ones(n, n_pix, dtype=torch.bool, device=dev)
        const = torch.full((n,), self.initial_const, device=dev, dtype=dt)
        start = box.to_w(x)
        best_x = x.clone()
        have = torch.zeros(n, dtype=torch.bool, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        active = torch.arange(n, device=dev)
        while active.numel():
            idx = active
            w, xo, yo, c = start[idx].clone(), x[idx], y[idx], const[idx]
            to = None if target is None else target[idx]
            m = self._expand(allowed[idx], x[idx]).to(dt)
            adam = _Adam(w, self.step_size)
            solved = torch.zeros(n, dtype=torch.bool, device=dev)
            solution = torch.zeros_like(x)
            grad_at = torch.zeros_like(x)
            for _ in range(self.steps):
                xa = m * box.to_x(w) + (1 - m) * xo
                f_val, logits, g_f = self._gradient(model, xa, lambda z: _f(z, yo, to, kappa))
                done = _succeeds(logits, yo, to, kappa)
                if bool(done.any()):
                    solved[idx[done]] = True
                    solution[idx[done]] = xa[done]
                    # As the reference: the gradient of the whole objective in tanh space (w.r.t. w).
                    grad_obj = 2 * (xa[done] - xo[done]) + _view(c[done], xa[done]) * g_f[done]
                    grad_at[idx[done]] = m[done] * grad_obj * box.dx_dw(w[done])
                    keep = ~done
                    idx, w, xo, yo, c, m = idx[keep], w[keep], xo[keep], yo[keep], c[keep], m[keep]
                    to = None if to is None else to[keep]
                    adam.keep(keep)
                    xa, g_f = xa[keep], g_f[keep]
                    if idx.numel() == 0:
                        break
                grad_x = 2 * (xa - xo) + _view(c, xa) * g_f
                w = adam.step(w, m * grad_x * box.dx_dw(w))
                iterations[idx] += 1
            ok = solved[active]
            won, lost = active[ok], active[~ok]
            if won.numel():
                sol = solution[won]
                best_x[won] = sol
                have[won] = True
                start[won] = box.to_w(sol)
                delta = sol - x[won]
                score = self._pixels((delta * grad_at[won]).abs())  # (W, P)
                # A pixel counts as changed when some channel moved by >= 1e-4 of the box (reference).
                changed = self._pixel_max(delta.abs()) >= self.CHANGE_TOL * (self.box[1] - self.box[0])
                score = score.masked_fill(~allowed[won], math.inf)
                rank = score.argsort(dim=1).argsort(dim=1)  # 0 = smallest score
                limit = (0.3 * changed.sum(1).to(dt).sqrt()).ceil().clamp_min(1).to(torch.long)
                small = ((score <= 0.01) & allowed[won]).sum(1)
                count = torch.minimum(limit, small + 1)
                freeze = (rank < count[:, None]) & allowed[won]
                allowed[won] = allowed[won] & ~freeze
            if lost.numel():
                const[lost] = const[lost] * self.const_factor
            finished = (const[active] > self.largest_const) | (allowed[active].sum(1) == 0)
            active = active[~finished]
        best_x = self._prune(model, best_x, x, y, target, have)
        return RawResult(best_x, iterations)

    def _prune(self, model: nn.Module, x_adv: Tensor, x: Tensor, y: Tensor, target: Optional[Tensor], have: Tensor) -> Tensor:
        """Reset pixels changed by less than 1e-3 of the box (tanh round-off, and Adam's unit-size
        steps drifting saturated pixels of the allowed set) to ``x`` where the result stays
        adversarial, so ``distance`` counts real changes (Carlini's code counts a pixel as equal
        below 1e-4)."""
        tol = 1e-3 * (self.box[1] - self.box[0])
        tiny = self._pixels((x_adv - x).abs()) <= tol * (x.shape[1] if x.dim() == 4 else 1)
        cleaned = torch.where(self._expand(tiny, x), x, x_adv)
        ok = _succeeds(predict(model, cleaned), y, target, self.kappa)
        return torch.where(_view(ok & have, x), cleaned, x_adv)
