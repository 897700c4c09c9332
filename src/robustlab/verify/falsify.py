"""Counterexample search for a :class:`~robustlab.verify.spec.Property`: PGD over the input box.

For each disjunct ``{y : C_i y <= d_i}`` of the unsafe region the violation of a point is
``v_i(x) = max_j (C_i f(x) - d_i)_j`` (``<= 0`` exactly when ``f(x)`` lies in the disjunct); PGD
minimises it over the box ``lo <= x <= hi`` (Madry et al. 2018, arXiv:1706.06083, with the box
as the feasible set): ``x <- clip(x - step * r * sign(grad v_i), lo, hi)``, ``r`` the box's
half-widths, the step decayed on a cosine schedule, from random starts, the box's centre and
given warm starts (e.g. the minimisers of branch and bound's linear bounds). Every restart and
disjunct runs in one batch; the search stops at the first point whose output, recomputed by a
plain forward pass of the network, lies in the unsafe region.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
from torch import Tensor

from robustlab.verify.spec import Property


def violation(y: Tensor, groups: tuple) -> Tensor:
    """``v_i`` (N, G): the largest row violation ``max_j (C_i y - d_i)_j`` per point and disjunct."""
    y = y.to(torch.float64)
    return torch.stack([((y @ c.to(y.device).T) - d.to(y.device)).amax(1) for c, d in groups], 1)


def inner_box(prop: Property, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The box in ``dtype`` rounded inwards: every ``dtype`` point of it lies in the property's box."""
    lo64, hi64 = prop.lower.to(torch.float64), prop.upper.to(torch.float64)
    lo, hi = lo64.to(dtype), hi64.to(dtype)
    lo = torch.where(lo.to(torch.float64) < lo64, torch.nextafter(lo, torch.full_like(lo, math.inf)), lo)
    hi = torch.where(hi.to(torch.float64) > hi64, torch.nextafter(hi, torch.full_like(hi, -math.inf)), hi)
    return lo, torch.maximum(hi, lo)


def first_unsafe(forward: Callable[[Tensor], Tensor], prop: Property, x: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """The first point of ``x`` (N, *shape) in the box whose output (a plain forward pass) is unsafe,
    with that output; None if there is none."""
    if x.shape[0] == 0:
        return None
    with torch.no_grad():
        y = forward(x)
    hit = prop.unsafe(y) & prop.contains(x.to(torch.float64))
    if not bool(hit.any()):
        return None
    i = int(hit.nonzero()[0, 0])
    return x[i].detach().clone(), y[i].detach().clone()


def pgd(forward: Callable[[Tensor], Tensor], prop: Property, *, restarts: int, steps: int, generator: torch.Generator,
        starts: Optional[Tensor] = None, groups: Optional[list] = None, deadline: Optional[float] = None,
        dtype: Optional[torch.dtype] = None) -> Optional[tuple[Tensor, Tensor]]:
    """PGD on every disjunct (or those in ``groups``) from ``restarts`` random starts plus the centre
    and ``starts`` (R, *shape), in ``dtype`` (default the box's); returns ``(x, f(x))`` of a
    counterexample or None."""
    dtype = prop.lower.dtype if dtype is None else dtype
    lo, hi = inner_box(prop, dtype)
    shape = tuple(lo.shape)
    chosen = list(range(len(prop.groups))) if groups is None else list(groups)
    g = len(chosen)
    pts = [(lo + hi).unsqueeze(0) / 2]
    if restarts:
        u = torch.rand(restarts, *shape, generator=generator, dtype=torch.float64).to(dtype)
        pts.append(lo + (hi - lo) * u)
    if starts is not None and starts.shape[0]:
        pts.append(torch.minimum(torch.maximum(starts.to(dtype).reshape(-1, *shape), lo), hi))
    x0 = torch.cat(pts)  # (R, *shape)
    found = first_unsafe(forward, prop, x0)
    if found is not None or steps == 0 or g == 0:
        return found
    r = x0.shape[0]
    x = x0.repeat_interleave(g, 0).clone()  # (R * G, *shape): each start against each disjunct
    col = torch.arange(g).repeat(r).unsqueeze(1)  # (R * G, 1): the disjunct of each row
    radius = (hi - lo) / 2
    cs = tuple(prop.groups[i] for i in chosen)
    for t in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        step = 0.25 * 0.5 * (1 + math.cos(math.pi * t / steps)) + 0.005
        with torch.enable_grad():
            x.requires_grad_(True)
            y = forward(x)
            own = violation(y, cs).gather(1, col).squeeze(1)  # (R * G,)
            grad, = torch.autograd.grad(own.sum(), x)
        with torch.no_grad():
            hit = own <= 0
            if bool(hit.any()):
                cand = first_unsafe(forward, prop, x.detach()[hit])
                if cand is not None:
                    return cand
            x = torch.minimum(torch.maximum(x.detach() - step * radius * grad.sign(), lo), hi)
    return first_unsafe(forward, prop, x.detach())
