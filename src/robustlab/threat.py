"""Threat models: the set of allowed perturbations, and its geometry.

A :class:`ThreatModel` is the set ``B(x) = {x' : ||x' - x||_p <= eps, lower <= x' <= upper}``.
It owns the small hooks every gradient attack, adversarial trainer and verifier needs (Foolbox 3's
design): a random start inside the set, the steepest-ascent direction of unit norm, the
projection back onto the set, and the distance. One implementation of each, used everywhere.

Norms: ``linf``, ``l2``, ``l1`` (over all components) and ``l0``, which counts *pixels*: a spatial
location (h, w) is changed if any of its channels is (as in Carlini & Wagner 2017 and Croce & Hein's
sparse attacks; for inputs that are not 4-D every component is a "pixel").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

NORMS = ("linf", "l2", "l1", "l0")
_ALIASES = {"inf": "linf", "Linf": "linf", "L2": "l2", "L1": "l1", "L0": "l0", "2": "l2", "1": "l1", "0": "l0"}


def _flat(t: Tensor) -> Tensor:
    return t.flatten(1) if t.dim() > 1 else t.reshape(-1, 1)  # (N, D), also for N = 0


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (N,) so it broadcasts against ``like`` (N, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _pixel_magnitude(delta: Tensor) -> Tensor:
    """Squared change per pixel: (N, C, H, W) -> (N, H*W); other ranks: per component (N, D)."""
    if delta.dim() == 4:
        return delta.square().sum(dim=1).flatten(1)
    return _flat(delta).square()


def _expand_pixel_mask(mask: Tensor, like: Tensor) -> Tensor:
    """(N, H*W) pixel mask -> broadcastable over channels of ``like``."""
    if like.dim() == 4:
        n, _, h, w = like.shape
        return mask.reshape(n, 1, h, w)
    return mask.reshape(like.shape)


def project_l2_box(z: Tensor, eps: Tensor, lo: Tensor, hi: Tensor, *, iters: int = 60) -> Tensor:
    """Exact Euclidean projection of each row of ``z`` onto ``{d : ||d||_2 <= eps, lo <= d <= hi}``.

    Solves ``argmin_d ||d - z||_2^2`` over the l2 ball intersected with a box that contains 0. With
    a multiplier ``mu >= 0`` for the ball the problem separates per coordinate, whose minimiser is
    ``d_i(mu) = clip(z_i / (1 + mu), lo_i, hi_i)`` (KKT). Writing ``t = 1 / (1 + mu)`` in (0, 1],
    ``||clip(t z, lo, hi)||_2`` is continuous and non-decreasing in ``t``, so the answer is
    ``clip(z, lo, hi)`` when that is inside the ball and otherwise ``clip(t* z, lo, hi)`` with
    ``||clip(t* z, lo, hi)||_2 = eps``, found by ``iters`` batched bisection halvings of ``t``
    (60 halvings reach float64 resolution). Shapes: z, lo, hi (N, D); eps (N,).
    """
    clipped = torch.minimum(torch.maximum(z, lo), hi)
    inside = clipped.norm(p=2, dim=1) <= eps
    t_lo = torch.zeros_like(eps)  # ||d(t_lo)|| <= eps always holds (d(0) = 0)
    t_hi = torch.ones_like(eps)
    for _ in range(iters):
        mid = 0.5 * (t_lo + t_hi)
        d = torch.minimum(torch.maximum(z * mid[:, None], lo), hi)  # (N, D)
        ok = d.norm(p=2, dim=1) <= eps
        t_lo = torch.where(ok, mid, t_lo)
        t_hi = torch.where(ok, t_hi, mid)
    d = torch.minimum(torch.maximum(z * t_lo[:, None], lo), hi)
    return torch.where(inside[:, None], clipped, d)


def project_l1_box(z: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Exact Euclidean projection of each row of ``z`` onto ``{d : ||d||_1 <= eps, lo <= d <= hi}``.

    Solves ``argmin_d ||d - z||_2^2`` over the L1 ball intersected with a box that contains 0
    (``lo <= 0 <= hi``). The KKT conditions give ``d_i = sign(z_i) * clip(|z_i| - lam, 0, u_i)``
    with ``u_i`` the box room in the direction of ``z_i`` and ``lam >= 0`` the smallest value with
    ``sum_i clip(|z_i| - lam, 0, u_i) <= eps``: Duchi et al. 2008 (simplex projection by sorting)
    extended to box constraints. ``f(lam)`` is piecewise linear and non-increasing with breakpoints
    at ``|z_i| - u_i`` and ``|z_i|``, so sorting the 2D breakpoints and a cumulative sum of slopes
    locate ``lam`` exactly, batched over rows. Shapes: z, lo, hi (N, D); eps (N,).
    """
    a = z.abs()
    u = torch.where(z >= 0, hi, -lo).clamp_min(0)  # room in the direction of z_i
    f0 = torch.minimum(a, u).sum(dim=1)  # f(0)
    need = f0 > eps
    if not bool(need.any()):
        return torch.where(z >= 0, torch.minimum(a, u), -torch.minimum(a, u))
    # Breakpoints where the slope of f changes: entering the linear part at |z|-u (slope -1),
    # leaving it at |z| (slope +1). Only lam >= 0 matters, so clamp breakpoints at 0.
    p = (a - u).clamp_min(0)
    q = a
    points = torch.cat([p, q], dim=1)  # (N, 2D)
    slopes = torch.cat([-torch.ones_like(p), torch.ones_like(q)], dim=1)
    # Coordinates with u == 0 never contribute: give them zero-slope breakpoints.
    dead = torch.cat([u <= 0, u <= 0], dim=1)
    slopes = torch.where(dead, torch.zeros_like(slopes), slopes)
    order = points.argsort(dim=1)
    pts = points.gather(1, order)  # (N, 2D) ascending
    dsl = slopes.gather(1, order)
    slope_after = dsl.cumsum(dim=1)  # slope of f on [pts_k, pts_{k+1}]
    gaps = torch.diff(pts, dim=1, prepend=torch.zeros_like(pts[:, :1]))  # pts_k - pts_{k-1}, pts_{-1} = 0
    slope_before = slope_after - dsl  # slope on [pts_{k-1}, pts_k]
    f_at = f0.unsqueeze(1) + (slope_before * gaps).cumsum(dim=1)  # f(pts_k)
    # First breakpoint where f drops to <= eps; lam lies between it and the previous one.
    below = f_at <= eps.unsqueeze(1)
    k = torch.where(below.any(dim=1), below.float().argmax(dim=1), torch.full_like(eps, pts.shape[1] - 1, dtype=torch.long))
    f_k = f_at.gather(1, k[:, None]).squeeze(1)
    pt_k = pts.gather(1, k[:, None]).squeeze(1)
    s_k = slope_before.gather(1, k[:, None]).squeeze(1)  # slope on the segment ending at pts_k (< 0)
    lam = pt_k + (eps - f_k) / torch.where(s_k < 0, s_k, -torch.ones_like(s_k))
    lam = torch.where(need, lam.clamp_min(0), torch.zeros_like(lam))
    mag = (a - lam.unsqueeze(1)).clamp_min(0)
    mag = torch.minimum(mag, u)
    return torch.where(z >= 0, mag, -mag)


@dataclass(frozen=True)
class ThreatModel:
    """Perturbation set ``{x' : ||x' - x||_p <= eps, lower <= x' <= upper}``.

    Args:
        norm: ``"linf"``, ``"l2"``, ``"l1"`` or ``"l0"`` (pixels changed).
        eps: radius, >= 0 (for ``l0`` the number of pixels that may change).
        lower, upper: the valid input box (images in [0, 1] by default).
        exact: for ``l2``, project exactly onto ball ∩ box (:func:`project_l2_box`, a bisection of
            about 60 clamp-and-norm passes) instead of the default rescale-then-clip. No effect on
            the other norms, whose projections are always exact.
    """

    norm: str
    eps: float
    lower: float = 0.0
    upper: float = 1.0
    exact: bool = False

    def __post_init__(self) -> None:
        norm = _ALIASES.get(str(self.norm), str(self.norm).lower())
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        object.__setattr__(self, "norm", norm)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if norm == "linf" and self.eps > self.upper - self.lower:
            raise ValueError(
                f"eps={self.eps} is larger than the input range [{self.lower}, {self.upper}] for norm linf; "
                f"expected 0 <= eps <= {self.upper - self.lower}"
            )
        if norm == "l0" and float(self.eps) != int(self.eps):
            raise ValueError(f"eps for norm l0 counts pixels and must be an integer, got {self.eps!r}")
        if not self.lower < self.upper:
            raise ValueError(f"lower must be < upper, got lower={self.lower}, upper={self.upper}")
        if not isinstance(self.exact, bool):
            raise TypeError(f"exact must be a bool, got {self.exact!r}")
        object.__setattr__(self, "eps", float(self.eps))

    # -- construction helpers -------------------------------------------------------------
    def with_eps(self, eps: float) -> "ThreatModel":
        """The same norm and box with another radius."""
        return ThreatModel(self.norm, eps, self.lower, self.upper, self.exact)

    @property
    def box(self) -> tuple[float, float]:
        return (self.lower, self.upper)

    def _eps(self, x: Tensor, eps: Optional[Tensor]) -> Tensor:
        if eps is None:
            return torch.full((x.shape[0],), self.eps, device=x.device, dtype=x.dtype)
        return eps.to(device=x.device, dtype=x.dtype)

    # -- geometry -------------------------------------------------------------------------
    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample ``||x_adv - x||_p`` (shape (N,)); for l0 the number of changed pixels."""
        delta = x_adv - x
        if self.norm == "linf":
            return _flat(delta).abs().amax(dim=1)
        if self.norm == "l2":
            return _flat(delta).norm(p=2, dim=1)
        if self.norm == "l1":
            return _flat(delta).abs().sum(dim=1)
        return (_pixel_magnitude(delta) > 0).sum(dim=1).to(x.dtype)

    def contains(self, x_adv: Tensor, x: Tensor, *, atol: float = 1e-5) -> Tensor:
        """Per-sample bool: ``x_adv`` lies in the ball (tolerance ``atol`` x dimension-aware) and box."""
        dist = self.distance(x_adv, x)
        slack = atol if self.norm in ("linf", "l0") else atol * max(1.0, math.sqrt(_flat(x).shape[1]))
        in_ball = dist <= self.eps + slack
        in_box = (_flat(x_adv) >= self.lower - atol).all(dim=1) & (_flat(x_adv) <= self.upper + atol).all(dim=1)
        return in_ball & in_box

    def project(self, x_adv: Tensor, x: Tensor, eps: Optional[Tensor] = None) -> Tensor:
        """Map ``x_adv`` into ``B(x)`` = ball ∩ box.

        linf, l1 and l0 are exact Euclidean projections onto ball ∩ box: linf clips per coordinate;
        l1 via :func:`project_l1_box`; l0 solves ``argmin ||x' - x_adv||_2`` over ``x'`` in the box
        differing from ``x`` in at most ``eps`` pixels: a kept pixel's best value is
        ``clip(x_adv)``, so each pixel's gain from being kept is ``||x_adv - x||^2 -
        ||x_adv - clip(x_adv)||^2`` (summed over its channels) and the ``eps`` pixels of largest
        positive gain are kept (the l0 ∩ box projection of PGD_0, Croce & Hein 2019,
        arXiv:1909.05040). l2 by default rescales into the ball and then clips to the box (the PGD
        step of Madry et al. 2018 and AutoAttack): the result lies in both sets but is in general
        *not* the nearest point of ball ∩ box; with ``exact=True`` it is (:func:`project_l2_box`).
        ``eps`` optionally gives a per-sample radius (N,).
        """
        e = self._eps(x, eps)
        delta = x_adv - x
        if self.norm == "linf":
            e4 = _per_sample(e, delta)
            delta = torch.maximum(torch.minimum(delta, e4), -e4)
        elif self.norm == "l2" and self.exact:
            d = project_l2_box(_flat(delta), e, _flat(self.lower - x), _flat(self.upper - x))
            delta = d.reshape(x.shape)
        elif self.norm == "l2":
            norms = _flat(delta).norm(p=2, dim=1)
            scale = torch.where(norms > e, e / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta = delta * _per_sample(scale, delta)
        elif self.norm == "l1":
            lo = _flat(self.lower - x)
            hi = _flat(self.upper - x)
            d = project_l1_box(_flat(delta), e, lo, hi)
            return (x + d.reshape(x.shape)).clamp(self.lower, self.upper)
        else:  # l0: keep the eps pixels whose best in-box value gains most over leaving them at x
            clipped = x_adv.clamp(self.lower, self.upper)
            gain = _pixel_magnitude(delta) - _pixel_magnitude(x_adv - clipped)  # (N, P), >= 0
            k = e.long().clamp(0, gain.shape[1])
            rank = gain.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
            keep = (rank < k.unsqueeze(1)) & (gain > 0)
            delta = (clipped - x) * _expand_pixel_mask(keep, delta).to(delta.dtype)
        return (x + delta).clamp(self.lower, self.upper)

    def random_start(self, x: Tensor, generator: Optional[torch.Generator] = None, eps: Optional[Tensor] = None) -> Tensor:
        """A random point of ``B(x)``: uniform in the linf cube; uniform in the l2 / l1 ball
        (direction from a Gaussian / Laplace draw, radius ``eps * U^(1/D)``); for l0 random values
        on ``eps`` random pixels. Then projected onto the box."""
        e = self._eps(x, eps)
        n, d = x.shape[0], _flat(x).shape[1]
        dev, dt = x.device, x.dtype
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=dev, dtype=dt)
            delta = (2 * u - 1) * _per_sample(e, x)
        elif self.norm in ("l2", "l1"):
            g = torch.randn(x.shape, generator=generator, device=dev, dtype=dt)
            if self.norm == "l1":  # Laplace via sign * Exp(1)
                ex = -torch.rand(x.shape, generator=generator, device=dev, dtype=dt).clamp_min(1e-12).log()
                g = g.sign() * ex
            p = 2 if self.norm == "l2" else 1
            direction = g / _per_sample(_flat(g).norm(p=p, dim=1).clamp_min(1e-12), g)
            r = torch.rand(n, generator=generator, device=dev, dtype=dt).pow(1.0 / d) * e
            delta = direction * _per_sample(r, g)
        else:
            values = torch.rand(x.shape, generator=generator, device=dev, dtype=dt) * (self.upper - self.lower) + self.lower
            score = torch.rand(_pixel_magnitude(x).shape, generator=generator, device=dev, dtype=dt)
            rank = score.argsort(dim=1).argsort(dim=1)
            keep = rank < e.long().unsqueeze(1)
            delta = (values - x) * _expand_pixel_mask(keep, x).to(dt)
        return self.project(x + delta, x, eps=e)

    def ascent(self, grad: Tensor, x_adv: Optional[Tensor] = None, *, sparsity: float = 0.99) -> Tensor:
        """Steepest-ascent direction of unit norm for a first-order step: ``argmax_{||v||<=1} <g, v>``.

        linf: ``sign(g)``; l2: ``g / ||g||_2``; l0: ``g / ||g||_2`` (the step is made sparse by the
        projection); l1: the sparse direction of SLIDE (Tramer & Boneh 2019, arXiv:1904.13000): the
        signs of the top ``(1 - sparsity)`` fraction of ``|g|``, normalised to unit l1 norm, skipping
        coordinates that ``x_adv`` cannot move along because they sit on the box boundary.
        """
        flat = _flat(grad)
        if self.norm == "linf":
            return grad.sign()
        if self.norm in ("l2", "l0"):
            return grad / _per_sample(flat.norm(p=2, dim=1).clamp_min(1e-12), grad)
        # l1: sparse signed step over the largest gradient coordinates that can still move.
        mag = flat.abs()
        if x_adv is not None:
            xf = _flat(x_adv)
            stuck = ((xf <= self.lower) & (flat < 0)) | ((xf >= self.upper) & (flat > 0))
            mag = mag.masked_fill(stuck, 0)
        k = max(1, int(round((1.0 - sparsity) * flat.shape[1])))
        thresh = mag.topk(k, dim=1).values[:, -1:]
        mask = (mag >= thresh) & (mag > 0)
        v = flat.sign() * mask
        v = v / v.abs().sum(dim=1, keepdim=True).clamp_min(1)
        return v.reshape(grad.shape)

    def to_dict(self) -> dict:
        d = {"norm": self.norm, "eps": self.eps, "lower": self.lower, "upper": self.upper}
        if self.exact:
            d["exact"] = True
        return d
