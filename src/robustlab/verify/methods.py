"""The ways to answer a :class:`~robustlab.verify.spec.Property` on a traced network: one registry.

Every method is a function ``method(net, prop, *, timeout, seed=0) -> result`` whose result has
``status`` (``"unsat"`` / ``"sat"`` / ``"timeout"`` / ``"unknown"``, the VNN-COMP answers),
``counterexample`` (one input of the property's shape where sat, else None), ``output`` (the
network's output there), ``seconds`` and ``domains`` (:class:`PropertyResult`; branch and bound's
result type has the same fields). :data:`PROPERTY_METHODS` maps the names ``--method`` takes to
them:

* ``ibp``, ``crown``, ``alpha-crown``, ``lp`` -- *incomplete*: APGD from the box
  (:func:`robustlab.verify.falsify.falsify`), then the bound method of
  :mod:`robustlab.verify.bounds` over the box with the property's rows as the specification
  matrix ``C`` (a disjunct ``C_i y <= d_i`` is impossible once one of its rows has
  ``min (C_i y - d_i)_j > 0``), then a second, longer search; ``unknown`` when neither settles it.
* ``milp`` -- *complete* where it applies (ReLU networks; disjuncts of one row, as robustness
  properties are): the same search and alpha-CROWN first, then for each disjunct not yet excluded
  the mixed-integer feasibility problem of :mod:`robustlab.verify.milp` (Tjeng et al. 2019) with
  the remaining time: infeasible excludes it, a solution is a candidate counterexample, accepted
  after the network's forward confirms it. ``timeout`` when the time runs out.
* ``bab`` -- *complete*, the default: branch and bound with beta-CROWN bounds
  (:func:`robustlab.verify.bab.verify_property`; Wang et al. 2021, arXiv:2103.06624): PGD from
  the box, alpha-CROWN at the root, then ReLU splits bounded in batches with the split
  constraints, PGD on the way and exact LP leaves. Any linear disjunctive property, ReLU
  networks (sigmoid / tanh bounded by their linear relaxations: ``unknown`` where splitting ReLUs
  cannot decide).

Bounds run on the box rounded outwards to the network's dtype, searches on the box rounded
inwards (:func:`~robustlab.verify.falsify.box_outward`, ``box_inward``), so an answer about the
float box is an answer about the property's exact (float64) box.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from robustlab.verify.bounds import InputSet, _detached, _final, preactivation_bounds
from robustlab.verify.falsify import box_inward, box_outward, falsify, network_like
from robustlab.verify.network import Affine, Network, ReLUOp
from robustlab.verify.spec import Property, stack_rows

if TYPE_CHECKING:
    from robustlab.verify.bab import BaBResult

__all__ = ["DEFAULT_PROPERTY_METHOD", "PROPERTY_METHODS", "PropertyResult", "property_bounds"]

STATUSES = ("unsat", "sat", "timeout", "unknown")
SEARCH = {"restarts": 32, "steps": 100}  # APGD before the bounds: random starts (one batch), steps
LONG_SEARCH = {"restarts": 64, "steps": 200}  # after inconclusive bounds, when the time allows it


@dataclass
class PropertyResult:
    """The answer of a method for one property (fields as branch and bound's result)."""

    status: str
    counterexample: Optional[Tensor] = None
    output: Optional[Tensor] = None
    seconds: float = 0.0
    domains: int = 0
    info: dict = field(default_factory=dict)


def _sat(net: Network, x: Tensor, t0: float, **info: object) -> PropertyResult:
    with torch.no_grad():
        y = net.forward(x[None])[0]
    return PropertyResult("sat", x, y.reshape(-1), time.perf_counter() - t0, info=dict(info))


def property_bounds(net: Network, prop: Property, method: str = "alpha-crown", *, alpha_steps: int = 20,
                    alpha_lr: float = 0.1) -> Tensor:
    """Lower bounds (M,) of every row ``(C y - d)_j`` of the property (rows of all groups, in the
    order of :func:`~robustlab.verify.spec.stack_rows`) over its box, by ``method`` (``ibp``,
    ``crown``, ``alpha-crown`` or ``lp``): a row with a positive bound cannot hold anywhere in the box."""
    like = network_like(net)
    lo, hi = box_outward(prop, like)
    c, d, _ = stack_rows(prop.groups)
    with torch.no_grad():
        net = _detached(net)
        inputs = InputSet((lo + hi)[None] / 2, lo[None], hi[None], torch.zeros(1, dtype=like.dtype,
                                                                                device=like.device), "linf")
        pre, last_box = preactivation_bounds(net, inputs, {"ibp": "ibp", "lp": "lp"}.get(method, "crown"))
        spec = c.to(like)[:, None, :]  # (M, 1, K)
        low = _final(net, spec, pre, last_box, inputs, method, alpha_steps, alpha_lr, upper=False,
                     tighten=method != "ibp")  # (M, 1)
    return low[:, 0].double().cpu() - d


def _excluded(prop: Property, low: Tensor) -> Tensor:
    """Per group: some row has a positive lower bound (the disjunct is impossible on the box)."""
    _, _, group = stack_rows(prop.groups)
    return torch.tensor([bool((low[group == g] > 0).any()) for g in range(len(prop.groups))])


def _bounded(net: Network) -> bool:
    """Whether the bound methods read every op (affine maps and ReLUs only)."""
    return all(isinstance(op, (Affine, ReLUOp)) for op in net.ops)


def _search_and_bound(net: Network, prop: Property, bound: str, timeout: float, seed: int, t0: float
                      ) -> tuple[Optional[PropertyResult], Tensor]:
    """The first search and the bounds: a final result, or None and the excluded groups."""
    x = falsify(net, prop, seed=seed, restarts=SEARCH["restarts"], steps=SEARCH["steps"])
    if x is not None:
        return _sat(net, x, t0, found_by="apgd"), torch.zeros(0, dtype=torch.bool)
    if not _bounded(net):
        return None, torch.zeros(len(prop.groups), dtype=torch.bool)
    excluded = _excluded(prop, property_bounds(net, prop, bound))
    if bool(excluded.all()):
        return PropertyResult("unsat", seconds=time.perf_counter() - t0, info={"proved_by": bound}), excluded
    return None, excluded


def _bound_method(bound: str) -> Callable[..., PropertyResult]:
    def method(net: Network, prop: Property, *, timeout: float, seed: int = 0) -> PropertyResult:
        t0 = time.perf_counter()
        done, _ = _search_and_bound(net, prop, bound, timeout, seed, t0)
        if done is not None:
            return done
        spent = time.perf_counter() - t0
        factor = LONG_SEARCH["restarts"] * LONG_SEARCH["steps"] / (SEARCH["restarts"] * SEARCH["steps"])
        if spent * (1 + factor) < timeout:  # the longer search costs about ``factor`` first searches
            x = falsify(net, prop, seed=seed + 1, **LONG_SEARCH)
            if x is not None:
                return _sat(net, x, t0, found_by="apgd")
        status = "timeout" if time.perf_counter() - t0 >= timeout else "unknown"
        return PropertyResult(status, seconds=time.perf_counter() - t0)

    method.__name__ = method.__qualname__ = f"attack_and_{bound.replace('-', '_')}"
    method.__doc__ = f"APGD from the box, then {bound} bounds, then a longer APGD search (incomplete)."
    return method


def _milp_method(net: Network, prop: Property, *, timeout: float, seed: int = 0) -> PropertyResult:
    """APGD, alpha-CROWN, then MILP feasibility per remaining disjunct (complete for ReLU networks
    and one-row disjuncts)."""
    from robustlab.verify.milp import _sample_model, _segments

    t0 = time.perf_counter()
    done, excluded = _search_and_bound(net, prop, "alpha-crown", timeout, seed, t0)
    if done is not None:
        return done
    if not _bounded(net):
        return PropertyResult("unknown", seconds=time.perf_counter() - t0, info={"why": "not a ReLU network"})
    like = network_like(net)
    lo, hi = box_outward(prop, like)
    with torch.no_grad():
        net = _detached(net)
        inputs = InputSet((lo + hi)[None] / 2, lo[None], hi[None], torch.zeros(1, dtype=like.dtype,
                                                                                device=like.device), "linf")
        pre, _ = preactivation_bounds(net, inputs, "crown")
        segs = _segments(net, lo[None])
    masks = [(op.mask.reshape(-1).cpu().numpy() if op.mask is not None else np.ones(int(np.prod(op.out_shape)), bool))
             for op in net.ops if isinstance(op, ReLUOp)]
    model = _sample_model(0, inputs, pre, segs, masks, relax=False)
    inward = box_inward(prop, like)

    def left() -> float:
        return timeout - (time.perf_counter() - t0)

    def confirmed(sol: Optional[np.ndarray]) -> Optional[Tensor]:
        """The solver's point, moved into the box of the network's dtype, if the forward confirms it."""
        if sol is None or inward is None:
            return None
        x = torch.as_tensor(sol, dtype=like.dtype, device=like.device).reshape(lo.shape)
        x = torch.minimum(torch.maximum(x, inward[0]), inward[1])
        with torch.no_grad():
            y = net.forward(x[None])
        return x if bool(prop.unsafe(y.reshape(1, -1))[0]) else None

    undecided = False
    for g, (c, d) in enumerate(prop.groups):
        if bool(excluded[g]):
            continue
        proven = False
        for j in range(c.shape[0]):  # each row alone: one that never holds excludes the disjunct
            if left() <= 0:
                return PropertyResult("timeout", seconds=time.perf_counter() - t0)
            row, rhs = c[j].numpy(), float(d[j])
            status, sol, _, _ = model.solve(row, left(), below=rhs)
            if status == 2:  # infeasible
                proven = True
                break
            if c.shape[0] == 1 and sol is not None:  # the disjunct itself is feasible
                x = confirmed(sol)
                if x is None and left() > 0:  # a tie at the boundary: ask for a strictly violating point
                    x = confirmed(model.solve(row, left(), below=rhs - 1e-4)[1])
                if x is not None:
                    return _sat(net, x, t0, found_by="milp")
            elif sol is None and status == 1:
                return PropertyResult("timeout", seconds=time.perf_counter() - t0)
        undecided |= not proven
    if undecided:
        return PropertyResult("unknown", seconds=time.perf_counter() - t0,
                              info={"why": "a disjunct of several feasible rows, or a tie at the boundary"})
    return PropertyResult("unsat", seconds=time.perf_counter() - t0, info={"proved_by": "milp"})


def _bab_method(net: Network, prop: Property, *, timeout: float, seed: int = 0) -> "BaBResult":
    """Branch and bound with beta-CROWN bounds (complete)."""
    from robustlab.verify.bab import verify_property

    return verify_property(net, prop, timeout=timeout, seed=seed)


PROPERTY_METHODS: dict[str, Callable[..., PropertyResult]] = {
    **{name: _bound_method(name) for name in ("ibp", "crown", "alpha-crown", "lp")},
    "milp": _milp_method,
    "bab": _bab_method,
}
DEFAULT_PROPERTY_METHOD = "bab"
