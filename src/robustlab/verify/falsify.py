"""Falsify a :class:`~robustlab.verify.spec.Property` by gradient search over its input box.

The box ``[l, u]`` is written ``x = l + v * (u - l)`` with ``v`` in the unit cube, which is the
linf ball of radius 1/2 around ``1/2`` intersected with robustlab's image box: robustlab's own
APGD (Croce & Hein 2020, arXiv:2003.01690) then searches it unchanged, ``restarts`` random
starts at once (one batch row each). Its classifier is the property's *violation*: class 0 is
"safe", class ``i`` (one per disjunct ``C_i y <= d_i``) scores
``s_i = -max_j (C_i y - d_i)_j - tau``, positive exactly when every row of the disjunct holds
with a slack ``tau`` (so a counterexample survives the rounding of another runtime), and the CW
margin ``max_i s_i - 0`` is the loss to maximise. For a robustness property of class c this is
``max_j y_j - y_c - tau``: the usual untargeted CW margin. A point the search returns is checked
again here (in the box, in the unsafe region of the network's own forward).

:func:`pgd` is the search branch and bound runs on the way: for each disjunct the violation
``v_i(x) = max_j (C_i f(x) - d_i)_j`` (:func:`violation`, ``<= 0`` exactly when ``f(x)`` lies in
the disjunct) is minimised over the box by signed-gradient steps (Madry et al. 2018,
arXiv:1706.06083, the box as the feasible set), ``x <- clip(x - step * r * sign(grad v_i), lo, hi)``
with ``r`` the box's half-widths and the step decayed on a cosine schedule, from random starts,
the box's centre and given warm starts (e.g. the minimisers of branch and bound's linear bounds),
every start and disjunct in one batch; it stops at the first point whose output, recomputed by a
plain forward pass (:func:`first_unsafe`), lies in the unsafe region.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from robustlab.threat import ThreatModel
from robustlab.verify.network import Network
from robustlab.verify.spec import Property, stack_rows

__all__ = ["box_inward", "box_outward", "falsify", "first_unsafe", "inner_box", "network_like", "pgd", "violation"]

TAU = 1e-5  # slack a counterexample keeps on every row of its disjunct


def network_like(net: Network) -> Tensor:
    """A tensor with the traced network's dtype and device (its first weight)."""
    stack = list(net.ops)
    while stack:
        op = stack.pop(0)
        for value in vars(op).values():
            if isinstance(value, Tensor) and value.is_floating_point():
                return value
            if isinstance(value, list):
                stack.extend(v for v in value if hasattr(v, "forward"))
    return torch.zeros(())


def box_inward(prop: Property, like: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """The box in ``like``'s dtype rounded inwards (every point of it lies in the property's box),
    or None when no point of that dtype lies in it."""
    lo, hi = prop.lower.to(like.device), prop.upper.to(like.device)
    lo_t, hi_t = lo.to(like.dtype), hi.to(like.dtype)
    lo_t = torch.where(lo_t.to(lo.dtype) < lo, torch.nextafter(lo_t, torch.full_like(lo_t, float("inf"))), lo_t)
    hi_t = torch.where(hi_t.to(hi.dtype) > hi, torch.nextafter(hi_t, torch.full_like(hi_t, float("-inf"))), hi_t)
    return None if bool((lo_t > hi_t).any()) else (lo_t, hi_t)


def box_outward(prop: Property, like: Tensor) -> tuple[Tensor, Tensor]:
    """The box in ``like``'s dtype rounded outwards (it contains the property's box): what sound
    bounds must cover."""
    lo, hi = prop.lower.to(like.device), prop.upper.to(like.device)
    lo_t, hi_t = lo.to(like.dtype), hi.to(like.dtype)
    lo_t = torch.where(lo_t.to(lo.dtype) > lo, torch.nextafter(lo_t, torch.full_like(lo_t, float("-inf"))), lo_t)
    hi_t = torch.where(hi_t.to(hi.dtype) < hi, torch.nextafter(hi_t, torch.full_like(hi_t, float("inf"))), hi_t)
    return lo_t, hi_t


class _Violation(nn.Module):
    """``v`` (N, 1, 1, D) in [0, 1] -> (N, 1 + G) scores ``[0, s_1, ..., s_G]`` (module docstring)."""

    def __init__(self, net: Network, prop: Property, lo: Tensor, hi: Tensor, tau: float) -> None:
        super().__init__()
        self.net, self.shape, self.tau = net, tuple(lo.shape), float(tau)
        self.register_buffer("lo", lo)
        self.register_buffer("width", hi - lo)
        c, d, group = stack_rows(prop.groups)
        self.register_buffer("c", c.to(lo))  # (M, K)
        self.register_buffer("d", d.to(lo))
        self.register_buffer("group", group.to(lo.device))
        self.groups = len(prop.groups)

    def inputs(self, v: Tensor) -> Tensor:
        return self.lo + v.reshape(v.shape[0], *self.shape) * self.width

    def forward(self, v: Tensor) -> Tensor:
        y = self.net.forward(self.inputs(v))
        slack = y.reshape(y.shape[0], -1) @ self.c.t() - self.d  # (N, M): C y - d
        worst = torch.full((y.shape[0], self.groups), float("-inf"), dtype=slack.dtype, device=slack.device)
        worst = worst.scatter_reduce(1, self.group.expand_as(slack), slack, reduce="amax")
        return torch.cat([torch.zeros_like(worst[:, :1]), -worst - self.tau], dim=1)


def falsify(net: Network, prop: Property, *, seed: int = 0, restarts: int = 32, steps: int = 100,
            tau: float = TAU) -> Optional[Tensor]:
    """A counterexample (one input of the property's shape, the network's dtype) found by APGD
    from ``restarts`` random points of the box, or None. The point lies in the box and its
    network output in the unsafe region (checked with the network's forward)."""
    from robustlab.attacks.apgd import APGD

    like = network_like(net)
    box = box_inward(prop, like)
    if box is None:
        return None
    lo, hi = box
    model = _Violation(net, prop, lo, hi, tau)
    d = lo.numel()
    v0 = torch.full((restarts, 1, 1, d), 0.5, dtype=like.dtype, device=like.device)
    labels = torch.zeros(restarts, dtype=torch.long, device=like.device)
    attack = APGD(ThreatModel("linf", 0.5), steps=steps, loss="cw", seed=seed)
    with torch.enable_grad():
        res = attack.attack(model, v0, labels)
    with torch.no_grad():
        x = torch.minimum(torch.maximum(model.inputs(res.x_adv), lo), hi)
        y = net.forward(x)
    hit = prop.unsafe(y.reshape(y.shape[0], -1)) & prop.contains(x.double())
    if not bool(hit.any()):
        return None
    return x[int(hit.nonzero()[0])]


def violation(y: Tensor, groups: tuple) -> Tensor:
    """``v_i`` (N, G): the largest row violation ``max_j (C_i y - d_i)_j`` per point and disjunct."""
    y = y.to(torch.float64)
    return torch.stack([((y @ c.to(y.device).T) - d.to(y.device)).amax(1) for c, d in groups], 1)


def inner_box(prop: Property, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`box_inward` in ``dtype``; where no point of that dtype lies in the box, the box rounded
    outwards (a search there finds nothing that :func:`first_unsafe` accepts)."""
    like = torch.zeros((), dtype=dtype, device=prop.lower.device)
    box = box_inward(prop, like)
    return box_outward(prop, like) if box is None else box


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
