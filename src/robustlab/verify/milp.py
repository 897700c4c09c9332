"""Complete verification of small ReLU networks by mixed-integer linear programming (HiGHS).

Tjeng, Xiao & Tedrake 2019 (arXiv:1711.07356, Sec. 4): over the linf ball ∩ box, with
pre-activation bounds ``l <= z <= u`` (from CROWN, :mod:`robustlab.verify.bounds`), each unstable
ReLU ``h = max(0, z)`` is encoded exactly with one binary ``a`` (big-M with the tight M = l, u)::

    h >= 0,  h >= z,  h <= z - l (1 - a),  h <= u a,  a in {0, 1}

(stable ReLUs become ``h = z`` or ``h = 0``).

Numerics. Every verdict asks for a margin above ``tau`` (:data:`robustlab.verify.tolerance.TAU`,
1e-4 by default): *verified up to tau*. The CROWN screening runs in the model's precision, as
:func:`robustlab.verify.certify`'s bound methods do (a bound above ``tau`` proves the sample). The
MILP of every sample the screening leaves open is built in float64 from the network's own weights
(cast exactly from float32), over the ball's box computed in float64, with the pre-activation
bounds recomputed in float64 and widened by :data:`BOUND_SLACK` (relative) so that rounding can
never cut off a reachable point.

:func:`verify_milp` answers, for each class ``j != y`` whose CROWN margin bound is not already
above ``tau``, the feasibility question "is there an ``x'`` in the ball with ``z_y - z_j <= tau``?"
(objective zero; HiGHS stops at the first feasible point). Infeasible (HiGHS status 2) proves
``z_y - z_j > tau`` on the whole ball; a feasible point is a candidate counterexample, accepted
only after it changes the model's own float32 prediction (when it does not, the point is within
``_STRICT`` of the boundary, and a second question asks for ``z_y - z_j <= -_STRICT``); the time
limit, or a tie the float32 forward does not flip, gives ``unknown``. No dual bound is used there:
a class is proven only by infeasibility. :func:`margin_optimum` instead minimises ``z_y - z_j``
and returns the optimum, or, where HiGHS stops at the time limit, its dual (lower) bound, so that
every entry is a valid lower bound of the exact margin (``-inf`` where HiGHS has none). Relaxing
the binaries to ``[0, 1]`` gives the triangle LP of Wong & Kolter 2018 (Ehlers 2017):
:func:`lp_margin_bounds` solves it exactly, for comparison with the dual network's bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels
from robustlab.threat import ThreatModel
from robustlab.verify.bounds import InputSet, _detached, _final, _prepare, preactivation_bounds
from robustlab.verify.network import Network, ReLUOp
from robustlab.verify.tolerance import TAU, check_tau

STATUSES = ("verified", "counterexample", "unknown")
_STRICT = 1e-4  # a counterexample's margin is at most -_STRICT when one exists (ties are not enough)

#: Relative widening of every pre-activation bound before it becomes a big-M constant:
#: ``l - BOUND_SLACK (|l| + |u|)``, ``u + BOUND_SLACK (|l| + |u|)``. The bounds are computed in
#: float64 (relative rounding about 1e-16 per operation), so 1e-9 covers their rounding with a wide
#: margin while changing the encoding only for neurons within 1e-9 of stability.
BOUND_SLACK: float = 1e-9


@dataclass
class MILPResult:
    """Per-sample outcome of :func:`verify_milp`.

    ``status`` (list of "verified" / "counterexample" / "unknown"; verified means every margin is
    above ``info["tau"]`` on the whole ball); ``x_adv`` (N, C, H, W) the counterexamples (the clean
    image where there is none); ``min_margin`` (N,) the best lower bound on ``min_j z_y - z_j``
    proven (``tau`` where the MILP proved a class, ``-inf`` unknown), ``seconds`` (N,) solver time,
    ``crown`` (N,) bool: already verified by the screening alone (a bound above ``tau``, in the
    model's precision).
    """

    status: list
    x_adv: Tensor
    min_margin: Tensor
    seconds: Tensor
    crown: Tensor
    info: dict = field(default_factory=dict)


def _segments(net: Network, x: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dense matrices (A, b) of the affine segments between ReLUs: ``z_k = A_k h_{k-1} + b_k``."""
    bounds_at = net.relu_indices + [len(net.ops)]
    out = []
    start = 0
    for end in bounds_at:
        shape = net.ops[start].in_shape if start < len(net.ops) else net.ops[-1].out_shape
        d = int(np.prod(shape))
        with torch.no_grad():
            probe = torch.cat([torch.zeros(1, d), torch.eye(d)]).to(x).reshape(d + 1, *shape)
            for op in net.ops[start:end]:
                probe = op.forward(probe)
            probe = probe.reshape(d + 1, -1).double().cpu()
        b = probe[0].numpy()
        a = (probe[1:] - probe[0]).t().numpy()  # (d_out, d_in)
        out.append((a, b))
        start = end + 1
    return out


class _Model:
    """The MILP of one sample: variables [x, h_1, ..., h_L, a_1, ...] with the ReLU encoding."""

    def __init__(self, segs: list, masks: list, lo_in: np.ndarray, hi_in: np.ndarray, pre: list,
                 relax: bool) -> None:
        from scipy import sparse

        self.sizes = [lo_in.size] + [a.shape[0] for a, _ in segs[:-1]]
        offsets = np.cumsum([0] + self.sizes)
        n_cont = int(offsets[-1])
        lb, ub = [lo_in], [hi_in]
        rows: list = []
        rlo: list = []
        rhi: list = []
        binaries: list = []  # (layer, neuron index, variable index)
        n_var = n_cont
        for k, (a, b) in enumerate(segs[:-1]):
            lo, hi = pre[k]
            mask = masks[k]
            relu = mask & (hi > 0)
            active = relu & (lo >= 0)
            unstable = relu & (lo < 0)
            passthrough = ~mask
            off_prev, off = offsets[k], offsets[k + 1]
            h_lb = np.where(mask, np.maximum(lo, 0), lo)
            h_ub = np.where(mask, np.maximum(hi, 0), hi)
            lb.append(h_lb)
            ub.append(h_ub)
            eye = sparse.identity(a.shape[0], format="csr")
            a_s = sparse.csr_matrix(a)
            # Rows of h - A h_prev (the pre-activation z = A h_prev + b).
            diff = sparse.hstack([sparse.csr_matrix((a.shape[0], off_prev)), -a_s, eye,
                                  sparse.csr_matrix((a.shape[0], 0))], format="csr")
            exact = np.flatnonzero(active | passthrough)
            if exact.size:  # h = z
                rows.append(diff[exact])
                rlo.append(b[exact])
                rhi.append(b[exact])
            unst = np.flatnonzero(unstable)
            if unst.size:
                rows.append(diff[unst])  # h >= z
                rlo.append(b[unst])
                rhi.append(np.full(unst.size, np.inf))
                idx = np.arange(n_var, n_var + unst.size)
                binaries.append(idx)
                n_var += unst.size
                l_u, u_u = lo[unst], hi[unst]
                # h - z - l a <= -l   (h <= z - l (1 - a))
                rows.append(("bigm_low", diff[unst], idx, -l_u))
                rlo.append(np.full(unst.size, -np.inf))
                rhi.append(b[unst] - l_u)
                # h - u a <= 0
                sel = sparse.csr_matrix((np.ones(unst.size), (np.arange(unst.size), off + unst)),
                                        shape=(unst.size, n_cont))
                rows.append(("bigm_up", sel, idx, -u_u))
                rlo.append(np.full(unst.size, -np.inf))
                rhi.append(np.zeros(unst.size))
        self.n_cont, self.n_var = n_cont, n_var
        blocks = []
        for r in rows:
            if isinstance(r, tuple):
                _, base, idx, coef = r
                extra = sparse.csr_matrix((coef, (np.arange(idx.size), idx - n_cont)), shape=(idx.size, n_var - n_cont))
                blocks.append(sparse.hstack([_pad(base, n_cont), extra], format="csr"))
            else:
                blocks.append(sparse.hstack([_pad(r, n_cont), sparse.csr_matrix((r.shape[0], n_var - n_cont))],
                                            format="csr"))
        self.a = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, n_var))
        self.lo = np.concatenate(rlo) if rlo else np.zeros(0)
        self.hi = np.concatenate(rhi) if rhi else np.zeros(0)
        n_bin = n_var - n_cont
        self.lb = np.concatenate(lb + [np.zeros(n_bin)])
        self.ub = np.concatenate(ub + [np.ones(n_bin)])
        self.integrality = np.concatenate([np.zeros(n_cont), np.zeros(n_bin) if relax else np.ones(n_bin)])
        self.last_a, self.last_b = segs[-1]
        self.last_off = int(offsets[-2])
        self.d_in = lo_in.size

    def solve(self, c_out: np.ndarray, time_limit: float,
              below: Optional[float] = None) -> tuple[int, Optional[np.ndarray], float, float]:
        """min ``c_out . logits``: (scipy status, x or None, objective or nan, dual bound).

        With ``below`` the problem is the feasibility question ``c_out . logits <= below`` (objective
        zero, HiGHS stops at the first feasible point; status 2, infeasible, proves
        ``c_out . logits > below`` on the whole ball; the returned bound is then +inf, else -inf).
        Without it, the bound is HiGHS's dual bound (the optimum when solved; -inf if none)."""
        from scipy import sparse
        from scipy.optimize import Bounds, LinearConstraint, milp

        w_row = np.zeros(self.n_var)
        w = c_out @ self.last_a  # (d_last,)
        w_row[self.last_off : self.last_off + w.size] = w
        const = float(c_out @ self.last_b)
        a, lo, hi = self.a, self.lo, self.hi
        obj = w_row
        if below is not None:
            a = sparse.vstack([a, sparse.csr_matrix(w_row)], format="csr")
            lo, hi = np.append(lo, -np.inf), np.append(hi, below - const)
            obj = np.zeros(self.n_var)
        cons = [LinearConstraint(a, lo, hi)] if a.shape[0] else []
        res = milp(obj, integrality=self.integrality, bounds=Bounds(self.lb, np.maximum(self.ub, self.lb)),
                   constraints=cons, options={"time_limit": max(1e-3, time_limit), "disp": False,
                                              "mip_rel_gap": 0.0})
        x = None if res.x is None else res.x[: self.d_in]
        value = float(w_row @ res.x) + const if res.x is not None else float("nan")
        if below is not None:
            return int(res.status), x, value, (np.inf if res.status == 2 else -np.inf)
        dual = getattr(res, "mip_dual_bound", None)
        dual = (float(dual) + const) if dual is not None and np.isfinite(dual) else (value if res.status == 0 else -np.inf)
        return int(res.status), x, value, dual


def _pad(m: object, width: int) -> object:
    from scipy import sparse

    m = sparse.csr_matrix(m)
    if m.shape[1] == width:
        return m
    return sparse.hstack([m, sparse.csr_matrix((m.shape[0], width - m.shape[1]))], format="csr")


def _bounds(model: nn.Module, x: Tensor, tm: ThreatModel, bound_method: str, float64: bool):
    """The traced network, input set, pre-activation bounds and the last ReLU's output box of a
    batch: in the model's precision, or (``float64``) with the weights cast exactly to float64, the
    ball's box and the bounds computed in float64 and widened by :data:`BOUND_SLACK`."""
    if tm.norm != "linf":
        raise ValueError(f"MILP verification needs a linf threat model (a linear feasible set), got norm {tm.norm!r}")
    if bound_method not in ("crown", "alpha-crown", "ibp", "lp"):
        raise ValueError(f"bound_method must be crown, alpha-crown, lp or ibp, got {bound_method!r}")
    net, _ = _prepare(model, x, tm, "crown", "logits", None)
    net = _detached(net, torch.float64 if float64 else None)
    inputs = InputSet.build(x.double() if float64 else x, tm)
    with torch.no_grad():
        pre, last_box = preactivation_bounds(net, inputs, {"ibp": "ibp", "lp": "lp"}.get(bound_method, "crown"))
    if float64:
        pre = {k: _widen(*b) for k, b in pre.items()}
        if pre:  # the last ReLU's output interval, from its widened input bounds (the input box if none)
            last = max(pre)
            last_box = (net.ops[last].forward(pre[last][0]), net.ops[last].forward(pre[last][1]))
    return net, inputs, pre, last_box


def _margin_bounds(net: Network, inputs: InputSet, pre: dict, last_box: tuple, y: Tensor, bound_method: str) -> Tensor:
    """Lower bounds (N, K) of the margins ``z_y - z_j`` from the given pre-activation bounds (column
    y: +inf)."""
    k = net.num_classes
    eye = torch.eye(k, dtype=inputs.x.dtype, device=inputs.x.device)
    c = eye[y].unsqueeze(0) - eye.unsqueeze(1)  # (K, N, K)
    with torch.no_grad():
        low = _final(net, c, pre, last_box, inputs, bound_method, 20, 0.1)[:k].t()
    low[torch.arange(y.shape[0], device=low.device), y] = float("inf")
    return low


def _setup(model: nn.Module, x: Tensor, tm: ThreatModel, bound_method: str):
    """The float64 MILP data of a batch: network, input set, widened pre-activation bounds, the
    affine segments, the ReLU masks and the last box."""
    net, inputs, pre, last_box = _bounds(model, x, tm, bound_method, float64=True)
    segs = _segments(net, inputs.x)
    masks = [(op.mask.reshape(-1).cpu().numpy() if op.mask is not None else np.ones(int(np.prod(op.out_shape)), bool))
             for op in net.ops if isinstance(op, ReLUOp)]
    return net, inputs, pre, segs, masks, last_box


def _widen(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``[l, u]`` widened by :data:`BOUND_SLACK` ``(|l| + |u|)`` on both sides."""
    pad = BOUND_SLACK * (lo.abs() + hi.abs())
    return lo - pad, hi + pad


def _sample_model(i: int, inputs: InputSet, pre: dict, segs: list, masks: list, relax: bool) -> _Model:
    per = [(pre[k][0][i].reshape(-1).double().cpu().numpy(), pre[k][1][i].reshape(-1).double().cpu().numpy())
           for k in sorted(pre)]
    return _Model(segs, masks, inputs.lo[i].reshape(-1).double().cpu().numpy(),
                  inputs.hi[i].reshape(-1).double().cpu().numpy(), per, relax)


def margin_optimum(model: nn.Module, x: Tensor, y: Tensor, tm: ThreatModel, *, relax: bool = False,
                   bound_method: str = "crown", time_limit: float = 60.0) -> Tensor:
    """``min_{x' in B(x)} z_y(x') - z_j(x')`` for every j (N, K) by MILP (exact) or, with ``relax``,
    the triangle LP (a lower bound); column y is 0. Where HiGHS stops at ``time_limit`` (seconds per
    MILP) the entry is its dual bound, a lower bound of the optimum (``-inf`` where it has none)."""
    x = check_images(x, "x", lower=tm.lower, upper=tm.upper)
    net, inputs, pre, segs, masks, _ = _setup(model, x, tm, bound_method)
    k = net.num_classes
    y = check_labels(y, x.shape[0], "y", num_classes=k)
    out = torch.zeros(x.shape[0], k, dtype=torch.float64)
    for i in range(x.shape[0]):
        m = _sample_model(i, inputs, pre, segs, masks, relax)
        for j in range(k):
            if j == int(y[i]):
                continue
            c = np.zeros(k)
            c[int(y[i])], c[j] = 1.0, -1.0
            status, _, value, dual = m.solve(c, time_limit)
            out[i, j] = value if status == 0 else dual
    return out


def lp_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, tm: ThreatModel, *,
                     bound_method: str = "crown") -> Tensor:
    """The exact optimum of the triangle LP relaxation (binaries relaxed) for each margin, (N, K)."""
    return margin_optimum(model, x, y, tm, relax=True, bound_method=bound_method)


def verify_milp(model: nn.Module, x: Tensor, y: Tensor, tm: ThreatModel, *, time_limit: float = 60.0,
                bound_method: str = "crown", tau: float = TAU) -> MILPResult:
    """Complete verification per sample, *up to tau*: verified (every margin ``z_y - z_j`` proven
    above ``tau`` on the whole ball), counterexample (found and checked in the model's float32
    forward) or unknown (time limit, or the exact worst-case margin within ``[-_STRICT, tau]`` of
    the boundary). ``time_limit`` seconds per sample, shared by the classes j. ``bound_method``
    gives the pre-activation bounds (the big-M constants)."""
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    tau = check_tau(tau)
    x = check_images(x, "x", lower=tm.lower, upper=tm.upper)
    # Screening in the model's precision (as certify's bound methods: a bound above tau proves it).
    net, box, pre, last_box = _bounds(model, x, tm, bound_method, float64=False)
    k = net.num_classes
    y = check_labels(y, x.shape[0], "y", num_classes=k).to(x.device)
    crown_lo = _margin_bounds(net, box, pre, last_box, y, bound_method)  # (N, K)
    clean = model_eval_logits(model, x)
    crown_ok = crown_lo.amin(1) > tau
    # The MILP data, in float64, only for the samples the screening leaves open.
    todo = (~crown_ok & (clean.argmax(1) == y)).nonzero().flatten()
    row = {int(i): r for r, i in enumerate(todo.tolist())}
    if todo.numel():
        net64, inputs, pre64, segs, masks, last64 = _setup(model, x[todo], tm, bound_method)
        # The final margins from the same (float64, widened) pre-activation bounds the MILP uses.
        milp_lo = _margin_bounds(net64, inputs, pre64, last64, y[todo], bound_method)
    status, margins, secs, x_adv = [], [], [], x.clone()
    for i in range(x.shape[0]):
        t0 = time.perf_counter()
        yi = int(y[i])
        if bool(crown_ok[i]):
            status.append("verified"), margins.append(float(crown_lo[i].amin())), secs.append(0.0)
            continue
        if int(clean[i].argmax()) != yi:
            status.append("counterexample"), margins.append(-float("inf")), secs.append(0.0)
            continue
        r = row[i]
        m = _sample_model(r, inputs, pre64, segs, masks, relax=False)
        outcome, found = "verified", float("inf")
        for j in milp_lo[r].argsort().tolist():  # most promising classes first
            if j == yi or float(milp_lo[r, j]) > tau:
                continue
            left = time_limit - (time.perf_counter() - t0)
            if left <= 0:
                outcome = "unknown"
                break
            cvec = np.zeros(k)
            cvec[yi], cvec[j] = 1.0, -1.0
            # Is there x' in the ball with z_y - z_j <= tau? Infeasible (status 2) proves margin j > tau.
            st, sol, value, _ = m.solve(cvec, left, below=tau)
            if st == 2:
                continue
            if sol is not None and not value < -_STRICT:
                # A point within the tolerance band of the boundary: ask for a strictly violating one.
                left = time_limit - (time.perf_counter() - t0)
                st2, sol2, value2, _ = m.solve(cvec, max(1e-3, left), below=-_STRICT)
                sol, value = (sol2, value2) if sol2 is not None else (sol, value)
            if sol is not None:
                cand = torch.as_tensor(sol, dtype=x.dtype, device=x.device).reshape(x.shape[1:])
                cand = torch.minimum(torch.maximum(cand, box.lo[i]), box.hi[i])  # the ball's box, model dtype
                if int(model_eval_logits(model, cand[None]).argmax()) != yi:
                    outcome, found = "counterexample", value
                    x_adv[i] = cand
                    break
            outcome = "unknown"  # time limit, or a point near the boundary the model's forward does not flip
            break
        if outcome == "verified":
            found = max(tau, float(milp_lo[r].amin()))  # every margin proven > tau
        status.append(outcome)
        margins.append(found if outcome != "unknown" else -float("inf"))
        secs.append(time.perf_counter() - t0)
    return MILPResult(status, x_adv, torch.tensor(margins, dtype=torch.float64), torch.tensor(secs),
                      crown_ok.cpu(), info={"time_limit": float(time_limit), "bound_method": bound_method,
                                            "tau": tau, "bound_slack": BOUND_SLACK, "milp_precision": "float64",
                                            "screen_precision": str(x.dtype).replace("torch.", "")})


def model_eval_logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` in eval mode without gradients, the model's mode restored."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was)
