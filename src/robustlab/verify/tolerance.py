"""The margin every "verified" decision asks for: a sample is *verified up to tau*.

A verifier proves the prediction ``y`` constant on the ball when every margin ``z_y - z_j``
(``j != y``) is shown to be larger than ``tau`` on the whole ball, not merely larger than 0:

* the bound methods (IBP, CROWN, alpha-CROWN, LP) require their lower bound ``> tau``;
* the MILP proves ``z_y - z_j <= tau`` infeasible (:mod:`robustlab.verify.milp`).

Why ``tau > 0``: the bounds are computed in the model's precision (float32 for a float32 model),
whose rounding moves a computed margin bound by about ``1e-6`` to ``1e-5`` on MNIST-sized
networks (robustlab's CROWN and auto_LiRPA's differ by up to 1.7e-5 on a small CNN,
docs/benchmarks/verify.md), and the model's own float32 forward rounds its logits by as much; a
bound of ``+1e-7`` therefore proves nothing about the float32 classifier. The MILP is solved in
float64 with HiGHS's feasibility tolerances (1e-7 to 1e-6); ``tau`` keeps its verdict clear of
them too. A sample whose exact worst-case margin lies in ``(0, tau]`` is not verified (the MILP
reports it ``unknown``): the price of soundness, paid only by samples on the decision boundary.

``tau`` is in logit units; for a model with logits far larger than MNIST's (|z| of 1e3 and more,
where float32 rounds by 1e-4) pass a larger ``tau`` (``certify(..., tau=...)``).
"""

from __future__ import annotations

import math

#: The default margin a "verified" sample must exceed on the whole ball, in logit units.
TAU: float = 1e-4


def check_tau(tau: object) -> float:
    """``tau`` as a float; a clear error for a negative, non-finite or non-numeric value."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau (the margin a verified sample must exceed) must be a finite number >= 0, got {tau!r}")
    return float(tau)
