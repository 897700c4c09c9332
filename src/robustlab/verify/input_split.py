"""Branch and bound over the input box (input splitting), for networks with few inputs.

Splitting ReLUs (:mod:`robustlab.verify.bab`) pays when the input has many coordinates: a split
fixes one neuron wherever it lies in the box. With a handful of inputs (ACAS Xu's 5, control and
physics surrogates) halving the box along one coordinate tightens *every* intermediate bound at
once, and a few thousand sub-boxes decide what ReLU splitting cannot; alpha,beta-CROWN splits the
input on such benchmarks (Wang et al. 2021, arXiv:2103.06624; Xu et al. 2021, arXiv:2011.13824).

Each sub-box ``[l, u]`` is bounded by CROWN from scratch: every ReLU input's bounds over that box,
then the property rows ``c.f(x) - d``, in float64. Writing the bound of row ``c`` as the linear
function ``lam . x + b`` minimised over the box, the sub-box is closed when every disjunct of the
unsafe region has a row whose bound exceeds ``tau`` (the verdict margin of branch and bound). An
open box is halved along the coordinate ``k`` maximising ``|lam_k| (u_k - l_k)`` (``lam`` of the
best row of its weakest disjunct): the amount by which that coordinate's width enters the bound,
the smart input split of alpha,beta-CROWN. The minimiser of each open box's bound (``l_k`` where
``lam_k > 0``, ``u_k`` where ``lam_k < 0``) and its centre are tried as counterexamples (a plain
forward pass decides), and PGD runs from the weakest boxes now and then. The boxes with the lowest
bounds are split first, many per batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from robustlab.verify.bounds import InputSet, _detached, backward_lower, preactivation_bounds
from robustlab.verify.falsify import first_unsafe, pgd
from robustlab.verify.network import Network
from robustlab.verify.spec import Property, stack_rows

#: Networks with at most this many input coordinates are searched by input splitting by default.
INPUT_SPLIT_MAX_DIMS = 8
_MAX_BOXES = 1 << 22  # open boxes kept at most (then the answer is "unknown")
_TINY = 1e-12  # a box narrower than this (relative to the input box) in every coordinate is a point


class _Capture:
    """The boxes' :class:`InputSet` for the last backward pass of :func:`backward_lower`: it
    concretises ``lam`` as the set does and keeps it (S, N, D), the input coefficients of the bound."""

    def __init__(self, boxes: InputSet) -> None:
        self.boxes = boxes
        self.lam: Optional[Tensor] = None

    def concretize(self, lam: Tensor) -> Tensor:
        self.lam = lam.flatten(2)
        return self.boxes.concretize(lam)


@dataclass
class InputSplitStats:
    """What the search did: boxes bounded, rounds, the lowest open bound and open boxes at the end."""

    boxes: int = 0
    rounds: int = 0
    open_bound: Optional[float] = None
    open_boxes: int = 0


class _Boxes:
    """The open boxes (flat (N, D) float64 ``lo``, ``hi``) and their keys (lowest bound first)."""

    def __init__(self, lo: Tensor, hi: Tensor, key: Tensor) -> None:
        self.lo, self.hi, self.key = lo, hi, key

    def __len__(self) -> int:
        return int(self.key.numel())

    def pop(self, count: int) -> tuple[Tensor, Tensor]:
        take = self.key.topk(min(count, len(self)), largest=False).indices
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[take] = False
        out = self.lo[take], self.hi[take]
        self.lo, self.hi, self.key = self.lo[rest], self.hi[rest], self.key[rest]
        return out

    def push(self, lo: Tensor, hi: Tensor, key: Tensor) -> None:
        self.lo, self.hi = torch.cat([self.lo, lo]), torch.cat([self.hi, hi])
        self.key = torch.cat([self.key, key])


def search_inputs(net: Network, prop: Property, *, tau: float, deadline: float, forward: Callable[[Tensor], Tensor],
                  point: Callable[[Tensor], Tensor], generator: torch.Generator, dtype: torch.dtype,
                  groups: Optional[list] = None, batch_size: int = 1024,
                  stats: Optional[InputSplitStats] = None) -> tuple[str, Optional[tuple]]:
    """Decide the disjuncts ``groups`` (default all) of ``prop`` by splitting its input box:
    ``("unsat", None)``, ``("sat", (x, y))``, ``("timeout", None)`` (at ``deadline``,
    ``time.perf_counter()``) or ``("unknown", None)`` (a box shrunk to a point within ``tau`` of the
    region, or too many open boxes). ``forward`` is the network's own forward pass (it decides
    counterexamples), ``point`` clamps a point into the box in the network's dtype."""
    stats = InputSplitStats() if stats is None else stats
    net64 = _detached(net, torch.float64)
    shape = tuple(prop.lower.shape)
    c, d, row_group = stack_rows(prop.groups)
    c, d = c.to(torch.float64), d.to(torch.float64)
    n_groups = len(prop.groups)
    wanted = torch.zeros(n_groups, dtype=torch.bool)
    wanted[list(range(n_groups)) if groups is None else groups] = True
    out_shape = tuple(net64.ops[-1].out_shape) if net64.ops else (c.shape[1],)
    root_lo, root_hi = prop.lower.double().reshape(1, -1), prop.upper.double().reshape(1, -1)
    tiny = _TINY * (root_hi - root_lo).clamp(min=1.0)
    boxes = _Boxes(root_lo, root_hi, torch.full((1,), float("-inf"), dtype=torch.float64))
    undecided = False
    while len(boxes):
        if len(boxes) > _MAX_BOXES:
            return _stop(stats, boxes, "unknown")
        if time.perf_counter() > deadline:
            return _stop(stats, boxes, "timeout")
        stats.rounds += 1
        lo, hi = boxes.pop(batch_size)
        n = lo.shape[0]
        with torch.no_grad():
            cap = _Capture(InputSet.from_box(lo.reshape(n, *shape), hi.reshape(n, *shape)))
            pre, _ = preactivation_bounds(net64, cap.boxes, "crown")
            lam = c.unsqueeze(1).expand(-1, n, -1).reshape(c.shape[0], n, *out_shape)
            lb = (backward_lower(net64, len(net64.ops), lam, pre, cap) - d.unsqueeze(1)).t()  # (N, S)
        stats.boxes += n
        gv = torch.full((n, n_groups), float("-inf"), dtype=torch.float64)
        gv = gv.scatter_reduce(1, row_group.unsqueeze(0).expand(n, -1), lb, "amax")
        gv = torch.where(wanted, gv, torch.full_like(gv, float("inf")))
        open_ = (gv <= tau).any(1)
        if not bool(open_.any()):
            continue
        idx = open_.nonzero().squeeze(1)
        lo, hi, lb, gv = lo[idx], hi[idx], lb[idx], gv[idx]
        weakest = gv.argmin(1)  # (M,) the open disjunct of each box with the lowest bound
        in_group = row_group.unsqueeze(0) == weakest.unsqueeze(1)  # (M, S)
        row = torch.where(in_group, lb, torch.full_like(lb, float("-inf"))).argmax(1)
        lam_row = cap.lam[row, idx]  # (M, D)
        mid = (lo + hi) / 2
        cand = torch.where(lam_row > 0, lo, torch.where(lam_row < 0, hi, mid))
        found = first_unsafe(forward, prop, point(torch.cat([cand, mid]).reshape(-1, *shape)))
        if found is None and (stats.rounds & (stats.rounds - 1) == 0 or stats.rounds % 16 == 0):
            worst = gv.amin(1).topk(min(16, idx.numel()), largest=False).indices
            found = pgd(forward, prop, restarts=0, steps=20, generator=generator,
                        starts=point(cand[worst].reshape(-1, *shape)), deadline=deadline, dtype=dtype)
        if found is not None:
            return "sat", found
        point_like = ((hi - lo) <= tiny).all(1)
        if bool(point_like.any()):  # a point whose bound cannot clear tau: no verdict at this margin
            undecided = True
            keep = (~point_like).nonzero().squeeze(1)
            lo, hi, lam_row, gv = lo[keep], hi[keep], lam_row[keep], gv[keep]
            if keep.numel() == 0:
                continue
        dim = (lam_row.abs() * (hi - lo)).argmax(1)
        dim = torch.where((hi - lo).gather(1, dim.unsqueeze(1)).squeeze(1) > 0, dim, (hi - lo).argmax(1))
        rows = torch.arange(dim.numel())
        split = (lo[rows, dim] + hi[rows, dim]) / 2
        hi_a, lo_b = hi.clone(), lo.clone()
        hi_a[rows, dim] = split
        lo_b[rows, dim] = split
        key = gv.amin(1)
        boxes.push(torch.cat([lo, lo_b]), torch.cat([hi_a, hi]), torch.cat([key, key]))
    return ("unknown" if undecided else "unsat"), None


def _stop(stats: InputSplitStats, boxes: _Boxes, verdict: str) -> tuple[str, None]:
    stats.open_boxes = len(boxes)
    stats.open_bound = float(boxes.key.min()) if len(boxes) else None
    return verdict, None
