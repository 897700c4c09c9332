"""Deterministic certificates from bounds: the prediction is proven constant on the whole ball.

A sample is verified at radius ``eps`` when every margin ``z_c - z_j`` (c the certified class,
j != c) has a lower bound above ``tau`` over ``B(x) = {x' : ||x' - x|| <= eps} ∩ [lower, upper]``:
*verified up to tau* (``tau`` = :data:`robustlab.verify.tolerance.TAU`, 1e-4 logits by default,
the allowance for float32 rounding in the bound and in the model's forward; the MILP proves
``z_c - z_j <= tau`` infeasible). The certificate's ``info["tau"]`` records it.
The :class:`~robustlab.certificates.Certificate` holds ``radius = eps`` there (``alpha = 0``: no
probability involved); elsewhere ``abstain`` with radius 0. With ``search_steps > 0`` the radius is
the largest eps in ``[0, tm.eps]`` proven by bisection on a per-sample eps (the verified set is not
guaranteed to be monotone in eps for relaxations, so the radius is the largest *tested* value that
was proven, each tested value being a sound certificate).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels
from robustlab.certificates import Certificate
from robustlab.threat import ThreatModel
from robustlab.verify.bounds import METHODS, InputSet, _detached, _prepare, bound_network, spec_matrix
from robustlab.verify.milp import model_eval_logits, verify_milp
from robustlab.verify.spec import robustness_property
from robustlab.verify.tolerance import TAU, check_tau

CERTIFY_METHODS = METHODS + ("milp", "bab")
_BAB_STATUS = {"unsat": "verified", "sat": "counterexample", "timeout": "unknown", "unknown": "unknown"}


def certify(model: nn.Module, x: Tensor, y: Optional[Tensor], tm: ThreatModel, method: str = "crown", *,
            search_steps: int = 0, time_limit: float = 60.0, alpha_steps: int = 20,
            tau: float = TAU) -> Certificate:
    """One deterministic certificate per sample.

    Args:
        model: a supported ReLU network (see :func:`robustlab.verify.bounds`).
        x: images (N, C, H, W); y: the class to certify per sample (N,), or None for the model's
            prediction (a misclassified sample with ``y`` given is never verified).
        tm: the threat model; ``tm.eps`` the radius to prove (the upper end with ``search_steps``).
        method: ``ibp``, ``crown``, ``alpha-crown``, ``lp``, ``crown-ibp``, ``milp`` or ``bab``
            (both complete, linf, ``time_limit`` seconds per sample; ``info["status"]`` holds
            verified / counterexample / unknown per sample; ``bab`` is branch and bound with
            beta-CROWN, :func:`robustlab.verify.bab.verify_property`, on the robustness property of
            the ball ∩ box, and adds ``info["domains"]``).
        search_steps: bisection steps for the largest provable radius (0: prove ``tm.eps`` only).
        tau: the margin (logits) every ``z_c - z_j`` must provably exceed (>= 0; see
            :mod:`robustlab.verify.tolerance`).
    """
    if method not in CERTIFY_METHODS:
        raise ValueError(f"method must be one of {', '.join(CERTIFY_METHODS)}, got {method!r}")
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or search_steps < 0:
        raise ValueError(f"search_steps must be an integer >= 0, got {search_steps!r}")
    if not isinstance(tm, ThreatModel):
        raise TypeError(f"tm must be a robustlab ThreatModel, got {type(tm).__name__}")
    tau = check_tau(tau)
    x = check_images(x, "x", lower=tm.lower, upper=tm.upper)
    pred = model_eval_logits(model, x).argmax(1)
    cls = pred if y is None else check_labels(y, x.shape[0], "y").to(x.device)
    if method == "bab":
        return _certify_bab(model, x, pred, cls, tm, search_steps, time_limit, tau)
    if method == "milp":
        if search_steps:
            raise ValueError("search_steps is not supported with method='milp' (one complete check per radius)")
        res = verify_milp(model, x, cls, tm, time_limit=time_limit, tau=tau)
        ok = torch.tensor([s == "verified" for s in res.status], device=x.device)
        cert = _certificate(cls, ok, tm.eps, tm.norm, x)
        cert.info.update({"method": "milp", "status": res.status, "time_limit": float(time_limit),
                          "seconds": res.seconds.tolist(), "tau": tau})
        return cert
    net, _ = _prepare(model, x, tm, method, "margin", cls)
    with torch.no_grad():
        net = _detached(net)
        c = spec_matrix("margin", cls, x.shape[0], net.num_classes, x)

        def proven(eps: Tensor) -> Tensor:
            lo, _ = bound_network(net, x, tm, method, c, eps=eps, alpha_steps=alpha_steps, upper=False)
            lo[torch.arange(x.shape[0], device=x.device), cls] = float("inf")
            return (lo.amin(1) > tau) & (pred == cls)

        top = torch.full((x.shape[0],), tm.eps, dtype=x.dtype, device=x.device)
        ok = proven(top)
        radius = torch.where(ok, top, torch.zeros_like(top))
        if search_steps:
            lo_e, hi_e = torch.zeros_like(top), top.clone()
            for _ in range(search_steps):
                todo = ~ok & (pred == cls)
                if not bool(todo.any()):
                    break
                mid = (lo_e + hi_e) / 2
                good = proven(torch.where(todo, mid, torch.zeros_like(mid))) & todo
                radius = torch.where(good, torch.maximum(radius, mid), radius)
                lo_e = torch.where(good, mid, lo_e)
                hi_e = torch.where(todo & ~good, mid, hi_e)
    any_ok = (radius > 0) | (ok & (tm.eps == 0))
    cert = _certificate(cls, any_ok, 0.0, tm.norm, x, radius=radius)
    cert.info.update({"method": method, "eps": tm.eps, "search_steps": search_steps, "tau": tau})
    return cert


def _certify_bab(model: nn.Module, x: Tensor, pred: Tensor, cls: Tensor, tm: ThreatModel, search_steps: int,
                 time_limit: float, tau: float) -> Certificate:
    """Branch and bound per sample on ``robustness_property(ball ∩ box, cls, margin=tau)``; a sample
    the model already misclassifies is a counterexample at once; a point of margin in ``(0, tau]``
    (unsafe for the property, the prediction unchanged) leaves the sample ``unknown``, as the MILP does."""
    from robustlab.verify.bab import verify_property

    if search_steps:
        raise ValueError("search_steps is not supported with method='bab' (one complete check per radius)")
    if tm.norm != "linf":
        raise ValueError(f"method='bab' needs a linf threat model (the ball ∩ box is a box), got norm {tm.norm!r}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    net, _ = _prepare(model, x, tm, "crown", "margin", cls)
    inputs = InputSet.build(x, tm)
    status, seconds, domains = [], [], []
    for i in range(x.shape[0]):
        if int(pred[i]) != int(cls[i]):
            status.append("counterexample"), seconds.append(0.0), domains.append(0)
            continue
        prop = robustness_property(inputs.lo[i], inputs.hi[i], int(cls[i]), net.num_classes, name=f"sample {i}",
                                   margin=tau)
        res = verify_property(net, prop, timeout=float(time_limit))
        verdict = _BAB_STATUS[res.status]
        if verdict == "counterexample" and int(res.output.reshape(-1).argmax()) == int(cls[i]):
            verdict = "unknown"  # within tau of the boundary, not across it
        status.append(verdict), seconds.append(res.seconds), domains.append(res.domains)
    ok = torch.tensor([st == "verified" for st in status], device=x.device)
    cert = _certificate(cls, ok, tm.eps, tm.norm, x)
    cert.info.update({"method": "bab", "status": status, "time_limit": float(time_limit), "seconds": seconds,
                      "domains": domains, "tau": tau})
    return cert


def _certificate(cls: Tensor, ok: Tensor, eps: float, norm: str, x: Tensor,
                 radius: Optional[Tensor] = None) -> Certificate:
    r = torch.where(ok, torch.full(ok.shape, eps, dtype=torch.float64, device=x.device),
                    torch.zeros(ok.shape, dtype=torch.float64, device=x.device)) if radius is None else radius.double()
    r = torch.where(ok, r, torch.zeros_like(r))
    prediction = torch.where(ok, cls, torch.full_like(cls, -1))
    return Certificate(prediction.cpu(), r.cpu(), (~ok).cpu(), norm, 0.0)
