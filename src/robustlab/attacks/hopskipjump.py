"""HopSkipJump: decision-based minimal-norm attack (Chen, Jordan, Wainwright 2020,
arXiv:1904.02144). The model is seen only through :class:`robustlab.attacks.queries.LabelOracle`:
one top-1 label per query.

Starting from a random adversarial point (uniform noise, Sec. 4), each iteration ``t = 1, 2, ...``

1. **boundary**: binary search on the segment (l2: ``(1 - a) x + a x~``) or the shrinking box
   (linf: ``clip(x~, x - a, x + a)``) from ``x`` to the adversarial ``x~`` until the bracket is
   below ``theta`` (l2: ``theta = gamma / d^(3/2)``; linf: ``min(theta, theta * dist)`` with
   ``theta = gamma / d^2``), giving ``x_t`` on the adversarial side (Alg. 1, Sec. 3.3);
2. **gradient-direction estimate** (eq. 9-10): ``B_t = B_0 sqrt(t)`` unit directions ``u_b``
   (Gaussian for l2, uniform in a cube for linf, normalised), at radius ``delta_t``
   (``0.1 (upper - lower)`` at ``t = 1``, then ``sqrt(d) theta d_{t-1}`` for l2 and
   ``d theta d_{t-1}`` for linf), ``phi_b = +-1`` from the labels, baseline-corrected
   ``grad ~ mean_b (phi_b - mean phi) u_b``; the update direction is ``v = grad / ||grad||_2`` (l2)
   or ``sign(grad)`` (linf);
3. **geometric step-size search**: ``xi = ||x_t - x|| / sqrt(t)``, halved until
   ``x_t + xi v`` (clipped to the box) is adversarial (Sec. 3.2); then back to 1.

All images move together: each phase queries, in one batched call, the images still in that
phase; an image whose remaining budget cannot pay for the next gradient estimate stops with its
current boundary point (always adversarial). Given a ThreatModel, an image also stops as soon as
its distance is within eps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, resolve_threat
from robustlab.attacks.queries import LabelOracle, check_budget
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings


def _dist(a: Tensor, b: Tensor, norm: str) -> Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def _bshape(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class HopSkipJump(Attack):
    """HopSkipJump, l2 or linf.

    Args:
        threat: a norm name (``"l2"``, ``"linf"``: unbounded minimal-norm search) or a ThreatModel
            (the result is kept inside its ball; an image stops once within eps).
        queries: model evaluations per image (labels only), >= 2.
        init_evals: ``B_0`` (paper: 100); ``max_evals`` caps ``B_t`` (paper: 10,000).
        gamma: ``theta`` numerator (paper: 1.0).
        init_trials: uniform-noise draws tried to find a starting adversarial point.
        max_halvings: halvings of the geometric step search before giving up an iteration.
        chunk: rows per forward pass of the gradient estimate (default 512: bounds memory and keeps the
            batch cache-sized on CPU, where 8192-row passes of an MNIST CNN cost 2-3x more per row); the
            directions are drawn per group of images, so the draws (not their law) depend on it.
        bounds: the input box (when ``threat`` is a norm name).
        seed: seed of the noise.
    """

    minimal = True
    query_based = True

    @spellings(positional=("queries",))
    def __init__(self, threat: "ThreatModel | str" = "l2", *, queries: int = 5000, init_evals: int = 100,
                 max_evals: int = 10_000, gamma: float = 1.0, init_trials: int = 100, max_halvings: int = 25,
                 chunk: int = 512, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        self.threat, self.distance_norm, self.bounds = resolve_threat(threat, ("l2", "linf"), bounds, "HopSkipJump")
        self.queries = check_budget(queries, "queries")
        if self.queries < 2:
            raise ValueError(f"queries must be >= 2 (a starting point and one boundary step), got {queries!r}")
        self.init_evals = check_budget(init_evals, "init_evals")
        self.max_evals = check_budget(max_evals, "max_evals")
        self.gamma = float(check_positive(gamma, "gamma"))
        self.init_trials = check_budget(init_trials, "init_trials")
        self.max_halvings = check_budget(max_halvings, "max_halvings")
        self.chunk = check_budget(chunk, "chunk")
        self.seed = int(seed)

    # -- phases (each takes the active images only) --------------------------------------------
    def _project(self, x: Tensor, x_adv: Tensor, a: Tensor) -> Tensor:
        """The point at bracket value ``a`` (N,) between ``x`` and ``x_adv``."""
        if self.distance_norm == "l2":
            a = _bshape(a, x)
            return (1 - a) * x + a * x_adv
        a = _bshape(a, x)
        return torch.minimum(torch.maximum(x_adv, x - a), x + a)

    def _binary_search(self, oracle: LabelOracle, act: Tensor, x: Tensor, x_adv: Tensor, y: Tensor,
                       target: Optional[Tensor], theta: float) -> Tensor:
        """Boundary point on the adversarial side between ``x`` and the adversarial ``x_adv``."""
        m = x.shape[0]
        if self.distance_norm == "l2":
            high = torch.ones(m, device=x.device, dtype=x.dtype)
            tol = torch.full_like(high, theta)
        else:
            high = _dist(x_adv, x, "linf")
            tol = torch.clamp(high * theta, max=theta)
        low = torch.zeros_like(high)
        while True:
            busy = ((high - low) > tol) & (oracle.remaining(act) >= 1)
            if not bool(busy.any()):
                break
            b = busy.nonzero().squeeze(1)
            mid = (high[b] + low[b]) / 2
            adv = oracle.is_adversarial(self._project(x[b], x_adv[b], mid), act[b], y[b],
                                        None if target is None else target[b])
            high[b] = torch.where(adv, mid, high[b])
            low[b] = torch.where(adv, low[b], mid)
        return self._project(x, x_adv, high)

    def _initial(self, oracle: LabelOracle, x: Tensor, y: Tensor, target: Optional[Tensor],
                 g: torch.Generator) -> tuple[Tensor, Tensor]:
        """(uniform-noise adversarial starting points, found?) for every image."""
        n = x.shape[0]
        lo, hi = self.box
        start = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        everyone = torch.arange(n, device=x.device)
        for _ in range(self.init_trials):
            b = everyone[~found & (oracle.remaining() >= 1)]
            if b.numel() == 0:
                break
            noise = lo + (hi - lo) * torch.rand(x[b].shape, generator=g, device=x.device, dtype=x.dtype)
            adv = oracle.is_adversarial(noise, b, y[b], None if target is None else target[b])
            start[b[adv]] = noise[adv]
            found[b[adv]] = True
        return start, found

    def _direction(self, oracle: LabelOracle, act: Tensor, xt: Tensor, y: Tensor, target: Optional[Tensor],
                   delta: Tensor, evals: int, g: torch.Generator) -> Tensor:
        """Monte Carlo estimate of the boundary normal at ``xt`` (m, C, H, W), unit L2 norm (eq. 9-10)."""
        m = xt.shape[0]
        lo, hi = self.box
        per = max(1, self.chunk // evals)  # images per chunk: per * evals rows
        grads = []
        for s in range(0, m, per):
            sl = slice(s, s + per)
            xs = xt[sl]
            k = xs.shape[0]
            shape = (k, evals, *xt.shape[1:])
            if self.distance_norm == "l2":
                u = torch.randn(shape, generator=g, device=xt.device, dtype=xt.dtype)
            else:
                u = 2 * torch.rand(shape, generator=g, device=xt.device, dtype=xt.dtype) - 1
            u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None, None]
            d = delta[sl][:, None, None, None, None]
            pert = (xs[:, None] + d * u).clamp(lo, hi)  # (k, B, C, H, W)
            u = (pert - xs[:, None]) / d
            rows = act[sl].repeat_interleave(evals)
            y_rep = y[sl].repeat_interleave(evals)
            t_rep = None if target is None else target[sl].repeat_interleave(evals)
            phi = oracle.is_adversarial(pert.reshape(k * evals, *xt.shape[1:]), rows, y_rep, t_rep)
            phi = phi.reshape(k, evals).to(xt.dtype) * 2 - 1  # (k, B) in {-1, +1}
            mean = phi.mean(dim=1, keepdim=True)
            # all one sign: the mean direction (signed); else the baseline-corrected estimate (eq. 10)
            centred = torch.where(mean.abs() == 1, mean.expand_as(phi), phi - mean)
            grad = (centred[:, :, None, None, None] * u).mean(dim=1)
            grads.append(grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None])
        return torch.cat(grads)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev = x.shape[0], x.device
        d = x[0].numel()
        norm = self.distance_norm
        lo, hi = self.box
        theta = self.gamma / (d * math.sqrt(d)) if norm == "l2" else self.gamma / d**2
        oracle = LabelOracle(model, n, dev, budget=self.queries)
        start, found = self._initial(oracle, x, y, target, generator)
        everyone = torch.arange(n, device=dev)
        out = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        act = everyone[found]
        if act.numel():
            out[act] = self._binary_search(oracle, act, x[act], start[act], y[act],
                                           None if target is None else target[act], theta)
        dist = _dist(out, x, norm)
        active = found.clone()
        eps = self.threat.eps if self.threat is not None else None
        t = 0
        while True:
            t += 1
            evals = int(min(self.init_evals * math.sqrt(t), self.max_evals))
            if eps is not None:
                active &= dist > eps
            active &= oracle.remaining() >= evals + 1  # the estimate and at least one step query
            act = everyone[active]
            if act.numel() == 0:
                break
            xa, xt, ya = x[act], out[act], y[act]
            ta = None if target is None else target[act]
            if t == 1:
                delta = torch.full((act.numel(),), 0.1 * (hi - lo), device=dev, dtype=x.dtype)
            else:
                scale = math.sqrt(d) if norm == "l2" else d
                delta = scale * theta * dist[act]
            grad = self._direction(oracle, act, xt, ya, ta, delta, evals, generator)
            v = grad if norm == "l2" else grad.sign()
            # geometric step-size search: xi = dist / sqrt(t), halved until adversarial
            xi = dist[act] / math.sqrt(t)
            cand = xt.clone()
            ok = torch.zeros(act.numel(), dtype=torch.bool, device=dev)
            for _ in range(self.max_halvings):
                busy = (~ok & (oracle.remaining(act) >= 1)).nonzero().squeeze(1)
                if busy.numel() == 0:
                    break
                trial = (xt[busy] + _bshape(xi[busy], xt[busy]) * v[busy]).clamp(lo, hi)
                adv = oracle.is_adversarial(trial, act[busy], ya[busy], None if ta is None else ta[busy])
                cand[busy[adv]] = trial[adv]
                ok[busy[adv]] = True
                xi[busy[~adv]] = xi[busy[~adv]] / 2
            new = xt.clone()
            if bool(ok.any()):
                k = ok.nonzero().squeeze(1)
                new[k] = self._binary_search(oracle, act[k], xa[k], cand[k], ya[k], None if ta is None else ta[k], theta)
            new_dist = _dist(new, xa, norm)
            better = new_dist < dist[act]  # the boundary point moved closer (keep the best)
            out[act[better]] = new[better]
            dist[act[better]] = new_dist[better]
            iterations[act] += 1
        return RawResult(out, iterations, oracle.counts.clone())
