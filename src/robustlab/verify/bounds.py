"""Sound output bounds of a ReLU network over a threat-model ball intersected with the image box.

For the set ``B(x) = {x' : ||x' - x||_p <= eps, lower <= x' <= upper}`` and a specification matrix
``C`` (identity: the logits; rows ``e_y - e_j``: the margins), every method returns ``lo, hi`` with
``lo <= C f(x') <= hi`` for all ``x'`` in ``B(x)``:

* ``ibp`` -- interval bound propagation (Gowal et al. 2018, arXiv:1810.12715, eq. 6):
  ``c' = W c + b, r' = |W| r`` through affine maps, ``relu`` is monotone. The last affine segment
  is concretised together with ``C`` (the elision of the last layer, Sec. 3).
* ``crown`` -- backward linear relaxation (Zhang et al. 2018, arXiv:1811.00866, Thm 3.2): each
  unstable ReLU (``l < 0 < u``) is bounded by ``a x <= relu(x) <= u (x - l) / (u - l)``, the lower
  slope chosen adaptively (``a = 1`` if ``u > -l`` else 0); the coefficients ``Lambda`` are
  pushed back to the input and concretised: ``min_{x' in B} Lambda x' = sum Lambda^+ lo +
  Lambda^- hi`` over the box, and for l2 / l1 also ``Lambda x - eps ||Lambda||_q`` (dual norm):
  the larger of the two (both hold on the intersection). Pre-activation bounds come from the
  same backward pass started at each layer (only for neurons IBP finds unstable) and are
  intersected with IBP's.
* ``alpha-crown`` -- the lower slopes ``a in [0, 1]`` of the final bound optimised by projected
  gradient ascent (Xu et al. 2021, arXiv:2011.13824, Sec. 3.1), from CROWN's choice and keeping
  the best bound seen per entry, so never looser than CROWN. Intermediate bounds are CROWN's.
* ``lp`` -- the dual network of Wong & Kolter 2018 (arXiv:1711.00851, Thm 1): the triangle
  relaxation with the dual choice ``a = u / (u - l)`` (the same slope below and above), for the
  intermediate and the final bounds. ``robustlab.verify.milp.lp_bounds`` solves the triangle LP
  itself with HiGHS.
* ``crown-ibp`` -- IBP pre-activation bounds, CROWN for the final layer (Zhang et al. 2020,
  arXiv:1906.06316, eq. 7): the cheap bound certified training uses.

Sigmoid and tanh (:class:`~robustlab.verify.network.ActivationOp`) are monotone (IBP maps the
interval ends) and get the tangent / chord lines of CROWN (Zhang et al. 2018, Sec. 3.2, Table 1)
in every backward pass: :func:`activation_relaxation`.

All batched over images, differentiable in the model's parameters (for certified training) and
on any device/dtype. The network is traced by :func:`robustlab.verify.network.trace`, which
refuses modules it cannot bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels
from robustlab.threat import ThreatModel
from robustlab.verify.network import ActivationOp, Affine, Network, ReLUOp, trace
from robustlab.verify.tolerance import TAU, check_tau

METHODS = ("ibp", "crown", "alpha-crown", "lp", "crown-ibp")
SPECS = ("logits", "margin")
_CHUNK_ELEMENTS = 1 << 24  # coefficient entries per backward pass (bounds the memory of intermediate CROWN)


@dataclass
class InputSet:
    """The perturbation set of each image: the box ``[lo, hi]`` (ball's box ∩ image box) and, for
    l2 / l1, the ball ``||x' - x||_p <= eps`` itself (``eps`` per sample, (N,))."""

    x: Tensor
    lo: Tensor
    hi: Tensor
    eps: Tensor
    norm: str

    @classmethod
    def from_box(cls, lo: Tensor, hi: Tensor) -> "InputSet":
        """The box ``lo <= x' <= hi`` itself (N, *shape each): a VNNLIB input region."""
        return cls((lo + hi) / 2, lo, hi, lo.new_zeros(lo.shape[0]), "linf")

    @classmethod
    def build(cls, x: Tensor, tm: ThreatModel, eps: Optional[Tensor] = None) -> "InputSet":
        e = torch.full((x.shape[0],), tm.eps, device=x.device, dtype=x.dtype) if eps is None else eps.to(x)
        r = e.reshape(-1, *([1] * (x.dim() - 1)))
        lo = (x - r).clamp(tm.lower, tm.upper)
        hi = (x + r).clamp(tm.lower, tm.upper)
        return cls(x, lo, hi, e, tm.norm)

    def concretize(self, lam: Tensor) -> Tensor:
        """``min_{x' in set} <lam, x'>`` (a lower bound of it for l2/l1), lam (S, N, *shape) -> (S, N)."""
        flat = lam.flatten(2)  # (S, N, D)
        lo, hi = self.lo.flatten(1), self.hi.flatten(1)  # (N, D)
        box = (flat.clamp(min=0) * lo).sum(-1) + (flat.clamp(max=0) * hi).sum(-1)
        if self.norm == "linf":
            return box
        q = 2.0 if self.norm == "l2" else float("inf")  # dual norm of l2 / l1
        ball = (flat * self.x.flatten(1)).sum(-1) - self.eps * flat.norm(p=q, dim=-1)
        return torch.maximum(box, ball)


def _relu_relaxation(lower: Tensor, upper: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Upper line ``d x + b`` of relu on [l, u] (the chord through (l, 0) and (u, u) when unstable,
    exact when stable) and the unstable mask. Pass-through coordinates (mask False) get d=1, b=0."""
    l_r, u_r = lower.clamp(max=0), upper.clamp(min=0)
    u_r = torch.maximum(u_r, l_r + 1e-12)
    d = u_r / (u_r - l_r)
    b = -l_r * d
    unstable = (lower < 0) & (upper > 0)
    if mask is not None:
        d = torch.where(mask, d, torch.ones_like(d))
        b = torch.where(mask, b, torch.zeros_like(b))
        unstable = unstable & mask
    return d, b, unstable


def _act(kind: str, x: Tensor) -> Tensor:
    return torch.sigmoid(x) if kind == "sigmoid" else torch.tanh(x)


def _act_slope(kind: str, x: Tensor) -> Tensor:
    f = _act(kind, x)
    return f * (1 - f) if kind == "sigmoid" else 1 - f * f


def _tangent_through(kind: str, anchor: Tensor, lo: Tensor, hi: Tensor, above: bool, steps: int = 40) -> Tensor:
    """A tangent point ``t`` in ``[lo, hi]`` whose tangent line passes on the sound side of the point
    ``(anchor, f(anchor))``: ``g(t) = f(t) + f'(t) (anchor - t) - f(anchor)`` is monotone in t on the
    bracket (it increases on the concave side t >= 0 with anchor < t, and on the convex side t <= 0 with
    anchor > t); bisection keeps the end where ``g >= 0`` (``above``) or ``g <= 0`` and returns it, so the
    line is sound whatever the bisection's precision."""
    f_anchor = _act(kind, anchor)
    for _ in range(steps):
        mid = (lo + hi) / 2
        g = _act(kind, mid) + _act_slope(kind, mid) * (anchor - mid) - f_anchor
        ok = g >= 0 if above else g <= 0
        # above (t on the concave side, g increasing): ok -> move hi down; below (convex side, g increasing):
        # ok -> move lo up.
        if above:
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        else:
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
    return hi if above else lo


def activation_relaxation(kind: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines ``a_lo x + b_lo <= f(x) <= a_up x + b_up`` for ``x`` in ``[lower, upper]``, f = sigmoid or tanh
    (CROWN, Zhang et al. 2018, arXiv:1811.00866, Sec. 3.2 and Table 1; f is convex on x <= 0 and concave
    on x >= 0):

    * ``u <= 0`` (convex): lower = tangent at the midpoint, upper = chord;
    * ``l >= 0`` (concave): upper = tangent at the midpoint, lower = chord;
    * ``l < 0 < u``: the upper line is the chord if ``f'(u) >= k`` (k the chord's slope), else the
      tangent at a point ``t in [0, u]`` whose line passes above ``(l, f(l))`` (valid on [0, u] as a
      tangent of the concave part, and on [l, 0] because the gap to f is concave there and >= 0 at
      both ends); symmetrically the lower line is the chord if ``f'(l) >= k``, else the tangent at a
      point ``t in [l, 0]`` passing below ``(u, f(u))``.

    Computed in float64 (the tangent point by a bisection that keeps the sound end); the intercepts
    are then moved outwards by a few units of the working precision so that rounding the lines to
    ``lower.dtype`` keeps them sound. Intervals narrower than 1e-9 get the constant lines f(l), f(u).
    """
    dtype = lower.dtype
    l, u = lower.double(), upper.double()
    fl, fu = _act(kind, l), _act(kind, u)
    width = u - l
    narrow = width < 1e-9
    k = (fu - fl) / torch.where(narrow, torch.ones_like(width), width)
    chord_b_lo = fl - k * l  # the chord through (l, f(l)) and (u, f(u))
    mid = (l + u) / 2
    zero = torch.zeros_like(l)
    t_up = torch.where(l >= 0, mid, _tangent_through(kind, l, zero, u.clamp(min=0), above=True))
    t_lo = torch.where(u <= 0, mid, _tangent_through(kind, u, l.clamp(max=0), zero, above=False))
    a_tu, a_tl = _act_slope(kind, t_up), _act_slope(kind, t_lo)
    b_tu, b_tl = _act(kind, t_up) - a_tu * t_up, _act(kind, t_lo) - a_tl * t_lo
    upper_chord = (u <= 0) | ((l < 0) & (_act_slope(kind, u) >= k))
    lower_chord = (l >= 0) | ((u > 0) & (_act_slope(kind, l) >= k))
    a_up = torch.where(upper_chord, k, a_tu)
    b_up = torch.where(upper_chord, chord_b_lo, b_tu)
    a_lo = torch.where(lower_chord, k, a_tl)
    b_lo = torch.where(lower_chord, chord_b_lo, b_tl)
    a_up, a_lo = torch.where(narrow, zero, a_up), torch.where(narrow, zero, a_lo)
    b_up, b_lo = torch.where(narrow, fu, b_up), torch.where(narrow, fl, b_lo)
    span = l.abs().maximum(u.abs())
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 2.0 ** -52
    slack_up = 1e-12 + 8 * max(eps, 2.0 ** -52) * (1 + b_up.abs() + a_up.abs() * span)
    slack_lo = 1e-12 + 8 * max(eps, 2.0 ** -52) * (1 + b_lo.abs() + a_lo.abs() * span)
    return a_lo.to(dtype), (b_lo - slack_lo).to(dtype), a_up.to(dtype), (b_up + slack_up).to(dtype)


def _lower_slope(d: Tensor, unstable: Tensor, rule: str) -> Tensor:
    """Lower line slope: 'adaptive' (CROWN: 1 if u > -l), 'parallel' (Wong & Kolter: u / (u - l))."""
    if rule == "parallel":
        return d
    return torch.where(unstable, (d > 0.5).to(d), d)


def backward_lower(net: Network, end: int, lam: Tensor, bounds: dict, inputs: InputSet, *, rule: str = "adaptive",
                   slopes: Optional[dict] = None, start: int = 0, box: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """Lower bound of ``<lam, f_{start:end}(h)>`` by back-substitution (CROWN), (S, N).

    ``lam`` (S, N, *shape of op end-1's output); ``bounds[i]`` the pre-activation bounds of ReLU op
    ``i``; ``slopes[i]`` optional lower slopes (S, N, *shape) for alpha-CROWN; the input set is
    ``inputs`` when ``start`` is 0, else the box ``box`` of op ``start``'s input.
    """
    bias = lam.new_zeros(lam.shape[:2])
    for i in range(end - 1, start - 1, -1):
        op = net.ops[i]
        if isinstance(op, ActivationOp):
            a_lo, b_lo, a_up, b_up = activation_relaxation(op.kind, *bounds[i])
            pos, neg = lam.clamp(min=0), lam.clamp(max=0)
            bias = bias + (pos * b_lo + neg * b_up).flatten(2).sum(-1)
            lam = pos * a_lo + neg * a_up
        elif isinstance(op, ReLUOp):
            lower, upper = bounds[i]
            d, b, unstable = _relu_relaxation(lower, upper, op.mask)
            a = _lower_slope(d, unstable, rule) if slopes is None or i not in slopes else torch.where(
                unstable, slopes[i], _lower_slope(d, unstable, rule))
            pos, neg = lam.clamp(min=0), lam.clamp(max=0)
            bias = bias + (neg * b).flatten(2).sum(-1)
            lam = pos * a + neg * d
        else:
            bias = bias + op.bias_term(lam)
            lam = op.back(lam)
    if start == 0:
        return inputs.concretize(lam) + bias
    assert box is not None
    flat = lam.flatten(2)
    return (flat.clamp(min=0) * box[0].flatten(1)).sum(-1) + (flat.clamp(max=0) * box[1].flatten(1)).sum(-1) + bias


def _interval(op: Affine, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    c, r = (lo + hi) / 2, (hi - lo) / 2
    c, r = op.forward(c), op.abs_forward(r)
    return c - r, c + r


def _identity_spec(shape: tuple, n: int, idx: Tensor, like: Tensor) -> Tensor:
    """One-hot coefficients (S, N, *shape) selecting the flat neurons ``idx`` (S,)."""
    s = idx.shape[0]
    lam = like.new_zeros(s, n, int(torch.tensor(shape).prod()))
    lam[torch.arange(s, device=idx.device), :, idx] = 1.0
    return lam.reshape(s, n, *shape)


def _crown_preactivation(net: Network, i: int, bounds: dict, inputs: InputSet, ibp: tuple[Tensor, Tensor],
                         rule: str, everything: bool) -> tuple[Tensor, Tensor]:
    """CROWN bounds of the input of ReLU op ``i`` for the neurons ``ibp`` finds unstable (union over
    the batch; all of them when ``everything``), intersected with ``ibp``."""
    lo, hi = ibp
    n, shape = lo.shape[0], lo.shape[1:]
    if isinstance(net.ops[i], ActivationOp):
        unstable = hi > lo  # every neuron of a sigmoid / tanh layer is relaxed: all need bounds
    else:
        mask = net.ops[i].mask
        unstable = (lo < 0) & (hi > 0)
        if mask is not None:
            unstable = unstable & mask
    flat_unstable = unstable.reshape(n, -1).any(0) if not everything else torch.ones_like(lo[0], dtype=torch.bool).flatten()
    idx = flat_unstable.nonzero().squeeze(1)
    if idx.numel() == 0:
        return lo, hi
    widest = max(int(torch.tensor(op.in_shape).prod()) for op in net.ops[:i]) if i else 1
    chunk = max(1, _CHUNK_ELEMENTS // max(1, 2 * n * widest))
    lows, ups = [], []
    for k in range(0, idx.numel(), chunk):
        sel = idx[k : k + chunk]
        lam = _identity_spec(shape, n, sel, lo)
        both = backward_lower(net, i, torch.cat([lam, -lam]), bounds, inputs, rule=rule)  # (2S, N)
        lows.append(both[: sel.numel()])
        ups.append(-both[sel.numel():])
    new_lo = lo.reshape(n, -1).clone()
    new_hi = hi.reshape(n, -1).clone()
    new_lo[:, idx] = torch.maximum(new_lo[:, idx], torch.cat(lows).t())
    new_hi[:, idx] = torch.minimum(new_hi[:, idx], torch.cat(ups).t())
    return new_lo.reshape(lo.shape), new_hi.reshape(hi.shape)


def preactivation_bounds(net: Network, inputs: InputSet, mode: str) -> tuple[dict, tuple[Tensor, Tensor]]:
    """Bounds of every ReLU's / activation's input (``{op index: (lower, upper)}``) and the interval
    of the last one's output (or of the input when there is none). ``mode``: 'ibp', 'crown' (adaptive) or
    'lp' (parallel slopes)."""
    lo, hi = inputs.lo, inputs.hi
    bounds: dict = {}
    first = True
    last_box = (lo, hi)
    for i, op in enumerate(net.ops):
        if isinstance(op, (ReLUOp, ActivationOp)):
            if mode != "ibp" and (not first or inputs.norm != "linf" or _weight_ops(net, i) > 1):
                lo, hi = _crown_preactivation(net, i, bounds, inputs, (lo, hi), "parallel" if mode == "lp" else
                                              "adaptive", everything=first and inputs.norm != "linf")
            elif mode == "ibp" and first and inputs.norm != "linf":
                lo, hi = _crown_preactivation(net, i, bounds, inputs, (lo, hi), "adaptive", everything=True)
            first = False
            bounds[i] = (lo, hi)
            lo, hi = op.forward(lo), op.forward(hi)  # monotone
            last_box = (lo, hi)
        else:
            lo, hi = _interval(op, lo, hi)
    return bounds, last_box


def _weight_ops(net: Network, end: int) -> int:
    return sum(1 for op in net.ops[:end] if type(op).__name__ in ("LinearOp", "ConvOp",
                                                                                              "MixOp", "ResidualOp"))


def spec_matrix(spec: str, labels: Optional[Tensor], n: int, k: int, like: Tensor) -> Tensor:
    """C (S, N, K): the identity (logits, S = K) or rows ``e_y - e_j`` for all j (margins, S = K; the
    row j = y is zero)."""
    eye = torch.eye(k, dtype=like.dtype, device=like.device)
    if spec == "logits":
        return eye.unsqueeze(1).expand(k, n, k)
    assert labels is not None
    onehot = eye[labels]  # (N, K)
    return onehot.unsqueeze(0) - eye.unsqueeze(1)  # (K, N, K): row j is e_y - e_j


def _final(net: Network, c: Tensor, bounds: dict, last_box: tuple[Tensor, Tensor], inputs: InputSet,
           method: str, steps: int, lr: float, *, upper: bool = True, tighten: bool = False) -> Tensor:
    """Lower bounds (2S, N) of ``[C; -C] f`` (or (S, N) of ``C f`` without ``upper``) by the chosen
    final method. ``tighten``: each bound is the better of the method's and the interval bound through
    the layers after the last ReLU (both sound, from the same ReLU bounds; on IBP-trained networks
    the interval bound is often the tighter one)."""
    both = torch.cat([c, -c]) if upper else c
    end = len(net.ops)
    relus = net.nonlinear_indices

    def interval() -> Tensor:
        start = relus[-1] + 1 if relus else 0
        return backward_lower(net, end, both, bounds, inputs, start=start, box=last_box if relus else None)

    if method == "ibp":
        return interval()
    if method == "alpha-crown":
        low = _alpha_crown(net, both, bounds, inputs, steps, lr)
    else:
        low = backward_lower(net, end, both, bounds, inputs, rule="parallel" if method == "lp" else "adaptive")
    return torch.maximum(low, interval()) if tighten and relus else low


def _alpha_crown(net: Network, both: Tensor, bounds: dict, inputs: InputSet, steps: int, lr: float) -> Tensor:
    """Projected gradient ascent on the lower slopes, per (spec, sample, neuron), from CROWN's."""
    end = len(net.ops)
    with torch.no_grad():
        best = backward_lower(net, end, both, bounds, inputs)
    if steps == 0 or not any(isinstance(net.ops[i], ReLUOp) for i in bounds):
        return best
    alphas = {}
    for i, (lower, upper) in bounds.items():
        if not isinstance(net.ops[i], ReLUOp):
            continue
        d, _, unstable = _relu_relaxation(lower, upper, net.ops[i].mask)
        init = _lower_slope(d, unstable, "adaptive")
        alphas[i] = init.unsqueeze(0).expand(both.shape[0], *init.shape).clone().requires_grad_(True)
    opt = torch.optim.Adam(list(alphas.values()), lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            value = backward_lower(net, end, both, bounds, inputs, slopes=alphas)
            grads = torch.autograd.grad(-value.sum(), list(alphas.values()))
        for a, g in zip(alphas.values(), grads):
            a.grad = g
        opt.step()
        with torch.no_grad():
            for a in alphas.values():
                a.clamp_(0.0, 1.0)
            best = torch.maximum(best, value.detach())
    with torch.no_grad():
        best = torch.maximum(best, backward_lower(net, end, both, bounds, inputs, slopes=alphas))
    return best


def bound_network(net: Network, x: Tensor, tm: ThreatModel, method: str, c: Tensor, *,
                  eps: Optional[Tensor] = None, alpha_steps: int = 20, alpha_lr: float = 0.1,
                  upper: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Bounds (N, S) of ``C f`` for a traced network; differentiable in the weights (no validation:
    the public :func:`bounds` validates). ``eps`` optionally overrides ``tm.eps`` per sample.
    ``upper=False`` computes the lower bounds only (half the final pass; the upper is None).
    'crown', 'alpha-crown' and 'lp' return the better of their bound and the interval bound through
    the last layers; 'crown-ibp' (the training objective of Zhang et al. 2020) is CROWN's alone."""
    inputs = InputSet.build(x, tm, eps)
    mode = {"ibp": "ibp", "crown-ibp": "ibp", "lp": "lp"}.get(method, "crown")
    bounds, last_box = preactivation_bounds(net, inputs, mode)
    final = "crown" if method == "crown-ibp" else method
    low = _final(net, c, bounds, last_box, inputs, final, alpha_steps, alpha_lr, upper=upper,
                 tighten=method in ("crown", "alpha-crown", "lp"))  # (2S, N), or (S, N)
    s = c.shape[0]
    return low[:s].t(), (-low[s:]).t() if upper else None


def bounds(model: nn.Module, x: Tensor, tm: ThreatModel, method: str = "crown", spec: str = "logits",
           labels: Optional[Tensor] = None, *, alpha_steps: int = 20, alpha_lr: float = 0.1) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds over ``{x' : ||x' - x||_p <= eps} ∩ [lower, upper]`` of the logits
    (``spec="logits"``, (N, K)) or of the margins ``z_y - z_j`` (``spec="margin"``, (N, K), column
    ``y`` is 0); CROWN-type methods bound the margins directly (``C = e_y - e_j`` multiplied into
    the back-substitution), tighter than differencing logit bounds.

    Args:
        model: a ReLU network built from the supported modules (anything else raises TypeError).
        x: images (N, C, H, W) in the threat model's box, on the model's device and dtype.
        tm: linf, l2 or l1 threat model.
        method: ``"ibp"``, ``"crown"``, ``"alpha-crown"``, ``"lp"`` or ``"crown-ibp"``.
        labels: the classes y (N,) for ``spec="margin"``.
        alpha_steps, alpha_lr: Adam steps and step size of alpha-CROWN's slope optimisation.

    The model is evaluated with eval-mode semantics (BatchNorm running statistics, no dropout) and
    its mode, parameters and gradients are left as they were.
    """
    net, c = _prepare(model, x, tm, method, spec, labels)
    if not isinstance(alpha_steps, int) or isinstance(alpha_steps, bool) or alpha_steps < 0:
        raise ValueError(f"alpha_steps must be an integer >= 0, got {alpha_steps!r}")
    if not isinstance(alpha_lr, (int, float)) or not alpha_lr > 0:
        raise ValueError(f"alpha_lr must be > 0, got {alpha_lr!r}")
    with torch.no_grad():
        net = _detached(net)
        return bound_network(net, x, tm, method, c, alpha_steps=alpha_steps, alpha_lr=float(alpha_lr))


def _prepare(model: nn.Module, x: Tensor, tm: ThreatModel, method: str, spec: str,
             labels: Optional[Tensor]) -> tuple[Network, Tensor]:
    """Validate the arguments, trace the model and build C."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(tm, ThreatModel):
        raise TypeError(f"tm must be a robustlab ThreatModel, got {type(tm).__name__}")
    if tm.norm not in ("linf", "l2", "l1"):
        raise ValueError(f"tm.norm must be linf, l2 or l1 for bound propagation, got {tm.norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if spec not in SPECS:
        raise ValueError(f"spec must be one of {', '.join(SPECS)}, got {spec!r}")
    x = check_images(x, "x", lower=tm.lower, upper=tm.upper)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"x (dtype {x.dtype}, device {x.device}) must match the model's parameters "
                            f"(dtype {t.dtype}, device {t.device})")
        break
    was_training = model.training
    try:
        model.eval()
        net = trace(model, x)
        with torch.no_grad():
            out = model(x[:1])
            traced = net.forward(x[:1])
        if out.shape != traced.shape or not torch.allclose(out, traced, rtol=1e-3, atol=1e-4 * (1 + float(out.abs().max()))):
            raise TypeError("robustlab.verify traced the model's modules, but their composition does not reproduce "
                            "model(x) (a custom forward?); refusing to bound it")
    finally:
        model.train(was_training)
    k = net.num_classes
    if spec == "margin":
        if labels is None:
            raise ValueError("labels are required for spec='margin' (the margins z_y - z_j need y)")
        labels = check_labels(labels, x.shape[0], "labels", num_classes=k).to(x.device)
    return net, spec_matrix(spec, labels, x.shape[0], k, x)


def _detached(net: Network, dtype: Optional[torch.dtype] = None) -> Network:
    """A copy of the ops whose tensors are detached from the model's autograd graph (also inside
    composite ops such as a residual block's paths); with ``dtype`` their floating-point tensors
    are cast to it (the MILP reads the network in float64)."""
    return Network([_detached_op(op, dtype) for op in net.ops], net.in_shape)


def _detached_op(op: object, dtype: Optional[torch.dtype] = None) -> object:
    import copy

    op = copy.copy(op)
    for key, value in vars(op).items():
        if isinstance(value, Tensor):
            value = value.detach()
            setattr(op, key, value.to(dtype) if dtype is not None and value.is_floating_point() else value)
        elif isinstance(value, list) and value and all(hasattr(v, "forward") for v in value):
            setattr(op, key, [_detached_op(v, dtype) for v in value])
    return op


def verified(lower_margin: Tensor, labels: Tensor, tau: float = TAU) -> Tensor:
    """Bool (N,): every margin ``z_y - z_j`` (j != y) has a lower bound above ``tau`` (verified up
    to tau, :mod:`robustlab.verify.tolerance`)."""
    tau = check_tau(tau)
    keep = torch.ones_like(lower_margin, dtype=torch.bool)
    keep[torch.arange(labels.shape[0], device=labels.device), labels] = False
    return torch.where(keep, lower_margin, torch.full_like(lower_margin, float("inf"))).amin(dim=1) > tau
