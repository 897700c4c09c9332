"""A verification property over an input box: the form VNNLIB files and robustness questions share.

A :class:`Property` asks whether any input ``x`` with ``lower <= x <= upper`` (elementwise, the
input's own shape) drives the network's outputs ``y = f(x)`` (K,) into the *unsafe region*

    U = union_i { y : C_i y <= d_i }        (each C_i (m_i, K), d_i (m_i,): a conjunction of m_i rows)

(the VNN-COMP convention: a VNNLIB file asserts the input box and the unsafe output region as a
disjunction of conjunctions of linear constraints). The answers, as VNN-COMP names them:

* ``unsat`` -- no input of the box reaches U: the property is verified (for a robustness property,
  the prediction is constant on the box);
* ``sat`` -- a counterexample ``x`` in the box with ``f(x)`` in U;
* ``timeout`` / ``unknown`` -- neither was shown (out of time / the method is incomplete).

A conjunction group is infeasible on a set of inputs as soon as one of its rows is: ``unsat``
holds when, for every group i, some row j has ``min_x (C_i y - d_i)_j > 0`` over the box (or over
every sub-domain of a branch-and-bound split of it).

The robustness property of class ``c`` over a box (the l-inf ball intersected with the image
box) is :func:`robustness_property`: U = union_{j != c} { y : y_c - y_j <= 0 }, one single-row
group per other class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["Property", "robustness_property", "stack_rows"]


@dataclass(frozen=True)
class Property:
    """Input box ``lower <= x <= upper`` and unsafe output region ``union_i {y : C_i y <= d_i}``.

    Attributes:
        lower, upper: the input box, float tensors of the network's input shape (no batch dimension).
        groups: the disjuncts ``(C_i, d_i)``: ``C_i`` (m_i, K), ``d_i`` (m_i,), float64.
        label: for a robustness property, the class that must be kept (else None).
        name: where it came from (a file name), for messages and reports.
    """

    lower: Tensor
    upper: Tensor
    groups: tuple[tuple[Tensor, Tensor], ...]
    label: Optional[int] = None
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.lower, Tensor) or not isinstance(self.upper, Tensor):
            raise TypeError("Property: lower and upper must be tensors")
        if self.lower.shape != self.upper.shape:
            raise ValueError(f"Property {self.name!r}: lower {tuple(self.lower.shape)} and upper "
                             f"{tuple(self.upper.shape)} differ in shape")
        if not bool(torch.isfinite(self.lower).all() and torch.isfinite(self.upper).all()):
            raise ValueError(f"Property {self.name!r}: the input box must be finite")
        if bool((self.lower > self.upper).any()):
            raise ValueError(f"Property {self.name!r}: the input box is empty (some lower bound exceeds its upper bound)")
        groups = tuple((torch.as_tensor(c, dtype=torch.float64), torch.as_tensor(d, dtype=torch.float64))
                       for c, d in self.groups)
        if not groups:
            raise ValueError(f"Property {self.name!r}: the unsafe region has no disjunct")
        k = groups[0][0].shape[-1]
        for i, (c, d) in enumerate(groups):
            if c.ndim != 2 or d.ndim != 1 or c.shape[0] != d.shape[0] or c.shape[1] != k or c.shape[0] == 0:
                raise ValueError(f"Property {self.name!r}: group {i} must be C (m, {k}) and d (m,) with m >= 1, got "
                                 f"C {tuple(c.shape)} and d {tuple(d.shape)}")
            if not bool(torch.isfinite(c).all() and torch.isfinite(d).all()):
                raise ValueError(f"Property {self.name!r}: group {i} holds a non-finite coefficient")
        object.__setattr__(self, "groups", groups)

    @property
    def num_outputs(self) -> int:
        return int(self.groups[0][0].shape[1])

    def unsafe(self, y: Tensor, tol: float = 0.0) -> Tensor:
        """Per output row of ``y`` (N, K): whether it lies in the unsafe region (each row of some
        group satisfied up to ``tol``: ``C_i y <= d_i + tol``)."""
        y = y.to(torch.float64)
        hit = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        for c, d in self.groups:
            hit |= ((y @ c.to(y.device).T) <= d.to(y.device) + tol).all(dim=1)
        return hit

    def contains(self, x: Tensor, tol: float = 0.0) -> Tensor:
        """Per input of ``x`` (N, *shape): whether it lies in the box (up to ``tol``)."""
        lo, hi = self.lower.to(x.device, x.dtype), self.upper.to(x.device, x.dtype)
        flat = (x >= lo - tol) & (x <= hi + tol)
        return flat.reshape(x.shape[0], -1).all(dim=1)


def robustness_property(lower: Tensor, upper: Tensor, label: int, num_classes: int, name: str = "",
                        margin: float = 0.0) -> Property:
    """The property "class ``label`` stays the arg max on the box, by more than ``margin``":
    U = union_{j != label} {y_label - y_j <= margin}."""
    if not 0 <= int(label) < int(num_classes):
        raise ValueError(f"label {label} is not a class of a {num_classes}-class network")
    groups: list[tuple[Tensor, Tensor]] = []
    for j in range(int(num_classes)):
        if j == int(label):
            continue
        c = torch.zeros(1, int(num_classes), dtype=torch.float64)
        c[0, int(label)], c[0, j] = 1.0, -1.0
        groups.append((c, torch.full((1,), float(margin), dtype=torch.float64)))
    return Property(lower, upper, tuple(groups), int(label), name)


def stack_rows(groups: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """All rows of all groups as one specification matrix: ``C`` (M, K), ``d`` (M,) and the group
    index of each row (M,), for bounding every row in one pass."""
    cs = torch.cat([c for c, _ in groups])
    ds = torch.cat([d for _, d in groups])
    idx = torch.cat([torch.full((c.shape[0],), i, dtype=torch.long) for i, (c, _) in enumerate(groups)])
    return cs, ds, idx
