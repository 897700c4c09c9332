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
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab.threat import ThreatModel
from robustlab.verify.network import Network
from robustlab.verify.spec import Property, stack_rows

__all__ = ["box_inward", "box_outward", "falsify", "network_like"]

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
