"""Batched beta-CROWN: linear bounds of a specification over many ReLU-split sub-domains of a box.

A sub-domain of the input box ``B`` fixes some unstable ReLUs: ``z_j >= 0`` (active, ``s_j = +1``)
or ``z_j <= 0`` (inactive, ``s_j = -1``). For a specification row ``c`` (offset ``d``) its lower
bound over the sub-domain is the Lagrangian of beta-CROWN (Wang et al. 2021, arXiv:2103.06624,
Thm 3.1): for any lower slopes ``alpha in [0, 1]`` of the relaxed ReLUs and any multipliers
``beta >= 0`` of the split constraints,

    min_{x in B, s_j z_j(x) >= 0} c.f(x) - d  >=  min_{x in B} [ c.f(x) - sum_j beta_j s_j z_j(x) ] - d
                                              >=  CROWN's back-substitution of that objective,

where a split neuron's relaxation is exact (identity when active, zero when inactive) and the term
``-beta_j s_j`` is added to the coefficient of ``z_j`` when the backward pass reaches its layer.
The bound holds for every feasible ``(alpha, beta)``, so they are optimised by projected gradient
ascent (Adam, clamped to ``[0, 1]`` and ``[0, inf)``), warm-started from the parent domain.

**Intermediate bounds.** At the root (the whole box) every ReLU's input is bounded by CROWN, then
tightened layer by layer by optimising, per neuron, the slopes of every earlier layer (alpha-CROWN,
Xu et al. 2021, arXiv:2011.13824); those optimised slopes are kept. Each domain carries its own
bounds of the root's unstable neurons: a child inherits its parent's, the split neuron's become
``[max(l, 0), u]`` or ``[l, min(u, 0)]``, and near the top of the tree (where each domain's
subtree is large) the bounds of every layer after the split are *refreshed*: recomputed over the
domain by one backward pass with the root's optimised slopes and the domain's exact relaxations,
and intersected with the inherited ones (Bunel et al. 2020 recompute them at every split). A domain
whose bounds cross (``l > u``) is empty. Sigmoid / tanh layers keep their root tangent / chord
lines (:func:`robustlab.verify.bounds.activation_relaxation`).

Numerics: the ascent runs in float32; every bound that decides anything (a verdict, a pruned
domain, the intermediate bounds themselves) is recomputed from the optimised ``(alpha, beta)`` in
float64 by one more backward pass: any feasible ``(alpha, beta)`` gives a sound bound, so rounding
in the optimisation can only cost tightness, never soundness. Intermediate bounds are stored in
float32 rounded outwards.

Unstable neurons are stored compactly: per ReLU layer the indices ``U`` of the root's unstable
neurons (``m`` of ``n``); a batch of ``N`` domains holds ``split`` (N, m) int8, ``lower``,
``upper`` (N, m) and ``alpha``, ``beta`` (S, N, m) for ``S`` specification rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from robustlab.verify.bounds import InputSet, _detached, activation_relaxation, preactivation_bounds
from robustlab.verify.network import ActivationOp, LinearOp, Network, ReLUOp

_CHUNK_ELEMENTS = 1 << 24  # coefficient entries per backward pass of many specs (bounds the memory)


@dataclass
class ReluLayer:
    """One ReLU op of the network at the root.

    ``slope`` (n,): the exact slope of the root's stable neurons (1 active or pass-through, 0
    inactive; 0 at the unstable positions); ``unstable`` (m,) the flat indices of the others;
    ``lower``, ``upper`` (m,) their root bounds (float64); ``bias`` (m,) the constant of the affine map
    into the layer (for branching scores); ``spec_alpha[i]`` (2, m, m_i): the root-optimised slopes
    of the earlier ReLU layer ``i`` for this layer's lower (``[0]``) and upper (``[1]``) bounds."""

    op: int
    shape: tuple
    n: int
    unstable: Tensor
    slope: dict
    lower: Tensor
    upper: Tensor
    bias: Tensor = field(default_factory=lambda: torch.zeros(0))
    spec_alpha: Optional[list] = None
    leading: bool = False  # the unstable neurons are 0..m-1 and every other one has slope 1

    @property
    def m(self) -> int:
        return int(self.unstable.numel())


@dataclass
class ActLayer:
    """One sigmoid / tanh op with its fixed lines ``a_lo x + b_lo <= f(x) <= a_up x + b_up`` (n,) each."""

    op: int
    shape: tuple
    n: int
    lines: dict  # dtype -> (a_lo, b_lo, a_up, b_up)


@dataclass
class Relax:
    """The relaxation of one ReLU layer's (root-)unstable neurons in N domains, (N, m) each: ``free``
    (relaxed: unstable in the domain and not split; lower slope ``alpha``), upper line ``a_up z +
    b_up`` (the chord for free neurons; slope 1 / 0 and intercept 0 for neurons active / inactive in
    the domain), ``sign`` the branching decision (+1 / -1, else 0: the beta term's sign), ``init``
    CROWN's adaptive lower slope."""

    free: Tensor
    a_up: Tensor
    b_up: Tensor
    sign: Tensor
    init: Tensor

    def index(self, idx: Tensor) -> "Relax":
        return Relax(self.free[idx], self.a_up[idx], self.b_up[idx], self.sign[idx], self.init[idx])


def relax(lower: Tensor, upper: Tensor, split: Tensor, dtype: torch.dtype) -> Relax:
    """The :class:`Relax` of neurons with domain bounds ``[lower, upper]`` and decisions ``split``."""
    lower, upper = lower.to(dtype), upper.to(dtype)
    inactive = (upper <= 0) | (split < 0)
    active = ((lower >= 0) | (split > 0)) & ~inactive
    free = ~(active | inactive)
    l_c, u_c = lower.clamp(max=0), upper.clamp(min=0)
    u_c = torch.maximum(u_c, l_c + 1e-12)
    chord = u_c / (u_c - l_c)
    a_up = torch.where(free, chord, active.to(dtype))
    b_up = torch.where(free, -l_c * chord, torch.zeros_like(chord))
    return Relax(free, a_up, b_up, split.to(dtype), (chord > 0.5).to(torch.float32))


def outward(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """float64 bounds as float32 rounded outwards (still sound)."""
    lo, hi = lower.float(), upper.float()
    lo = torch.where(lo.double() > lower, torch.nextafter(lo, torch.full_like(lo, -float("inf"))), lo)
    hi = torch.where(hi.double() < upper, torch.nextafter(hi, torch.full_like(hi, float("inf"))), hi)
    return lo, hi


def _linear(weight: Tensor, bias: Optional[Tensor], name: str, in_shape: tuple) -> LinearOp:
    op = LinearOp(weight.contiguous(), None if bias is None else bias.contiguous(), name)
    op.in_shape, op.out_shape = tuple(in_shape), (int(weight.shape[0]),)
    return op


def dense_chain(net: Network, limit: int = 1 << 25) -> Optional[Network]:
    """The network as dense affine maps between its nonlinear ops, on the flattened input:
    ``[Linear, ReLU / activation, Linear, ..., Linear]`` (each segment of affine ops composed into
    one matrix by pushing the identity through it, in the network's dtype), or None when the
    matrices would hold more than ``limit`` entries (large convolutional networks keep their ops)."""
    bounds = [i for i, op in enumerate(net.ops) if isinstance(op, (ReLUOp, ActivationOp))]
    starts, ends = [0] + [i + 1 for i in bounds], bounds + [len(net.ops)]
    sizes = []
    for a, b in zip(starts, ends):
        if a < b:
            sizes.append(int(torch.tensor(net.ops[a].in_shape).prod()) * int(torch.tensor(net.ops[b - 1].out_shape).prod()))
    if sum(sizes) > limit:
        return None
    like = next((v for op in net.ops for v in vars(op).values() if isinstance(v, Tensor) and v.is_floating_point()), None)
    dtype = torch.float64 if like is None else like.dtype
    ops: list = []
    for k, (a, b) in enumerate(zip(starts, ends)):
        if a < b:
            shape = tuple(net.ops[a].in_shape)
            dim = int(torch.tensor(shape).prod())
            x = torch.cat([torch.zeros(1, dim, dtype=dtype), torch.eye(dim, dtype=dtype)]).reshape(dim + 1, *shape)
            with torch.no_grad():
                for op in net.ops[a:b]:
                    x = op.forward(x)
            x = x.reshape(dim + 1, -1)
            ops.append(_linear((x[1:] - x[0]).t(), x[0], f"{net.ops[a].name}..{net.ops[b - 1].name}", (dim,)))
        if k < len(bounds):
            op = net.ops[bounds[k]]
            n = int(torch.tensor(op.in_shape).prod())
            if isinstance(op, ReLUOp):
                ops.append(ReLUOp(op.name, None if op.mask is None else op.mask.reshape(-1), (n,), (n,)))
            else:
                ops.append(ActivationOp(op.name, op.kind, (n,), (n,)))
    return Network(ops, (int(torch.tensor(net.in_shape).prod()),))


def _both(t: Tensor) -> dict:
    return {torch.float64: t.double(), torch.float32: t.float()}


class BetaCrown:
    """The bounding engine of branch and bound for one network, input box and specification.

    Args:
        net: the traced network (its tensors are copied, detached, in float32 and float64).
        lower, upper: the input box, the network's input shape (no batch dimension).
        c, d: the specification rows ``c.f(x) - d`` (S, K) and (S,), float64.
    """

    def __init__(self, net: Network, lower: Tensor, upper: Tensor, c: Tensor, d: Tensor) -> None:
        net64 = _detached(net, torch.float64)
        dense = dense_chain(net64)
        if dense is not None:
            net64 = dense
        self.nets = {torch.float64: net64, torch.float32: _detached(net64, torch.float32)}
        self.in_shape = tuple(net64.in_shape)
        lo64 = lower.detach().to(torch.float64).reshape(1, *self.in_shape)
        hi64 = upper.detach().to(torch.float64).reshape(1, *self.in_shape)
        self.box = {dt: ((lo64.flatten(1) + hi64.flatten(1)).to(dt) / 2, (hi64.flatten(1) - lo64.flatten(1)).to(dt) / 2)
                    for dt in (torch.float64, torch.float32)}
        self.box64 = (lo64, hi64)
        self.c = c.to(torch.float64)
        self.d = d.to(torch.float64)
        self.ops = self.nets[torch.float64].ops
        self.pre: dict = {}
        self.relus: list[ReluLayer] = []
        self.acts: list[ActLayer] = []

    # ------------------------------------------------------------------ root bounds
    def init_bounds(self) -> None:
        """CROWN bounds of every nonlinear op's input over the box (float64), then the layers."""
        net = self.nets[torch.float64]
        with torch.no_grad():
            pre, _ = preactivation_bounds(net, InputSet.from_box(*self.box64), "crown")
        self.pre = {i: (lo.reshape(-1), hi.reshape(-1)) for i, (lo, hi) in pre.items()}
        self._build_layers()
        self.compress()

    def compress(self) -> None:
        """Drop the ReLUs that are inactive on the whole box (``u <= 0``: their output is 0) from a
        dense chain, their rows of the affine map before and their columns of the one after, and
        put the unstable ones first (the backward pass then slices instead of gathering). The
        network computes the same function on the box, with smaller matrices."""
        ops64, ops32 = self.nets[torch.float64].ops, self.nets[torch.float32].ops
        saved = {layer.op: layer.spec_alpha for layer in self.relus}
        changed = False
        for i, op in enumerate(ops64):
            if not isinstance(op, ReLUOp) or i not in self.pre or not 0 < i < len(ops64) - 1:
                continue
            before, after = ops64[i - 1], ops64[i + 1]
            if type(before).__name__ != "LinearOp" or type(after).__name__ != "LinearOp":
                continue
            lo, hi = self.pre[i]
            mask = torch.ones_like(lo, dtype=torch.bool) if op.mask is None else op.mask.reshape(-1)
            dead = (hi <= 0) & mask
            unstable = (lo < 0) & (hi > 0) & mask
            order = torch.cat([unstable.nonzero().squeeze(1), (~unstable & ~dead).nonzero().squeeze(1)])
            if order.numel() == 0 or torch.equal(order, torch.arange(lo.numel())):
                continue
            changed = True
            for ops in (ops64, ops32):
                ops[i - 1] = _linear(ops[i - 1].weight[order], ops[i - 1].bias[order], ops[i - 1].name,
                                     ops[i - 1].in_shape)
                ops[i] = ReLUOp(op.name, None if op.mask is None else mask[order], (order.numel(),), (order.numel(),))
                ops[i + 1] = _linear(ops[i + 1].weight[:, order], ops[i + 1].bias, ops[i + 1].name, (order.numel(),))
            self.pre[i] = (lo[order], hi[order])
        if changed:
            self._build_layers()
            for layer in self.relus:
                layer.spec_alpha = saved.get(layer.op)

    def _build_layers(self) -> None:
        old = {layer.op: layer for layer in self.relus}
        self.relus, self.acts = [], []
        for i in sorted(self.pre):
            op = self.ops[i]
            lo, hi = self.pre[i]
            shape = tuple(op.in_shape)
            n = lo.numel()
            if isinstance(op, ActivationOp):
                self.acts.append(ActLayer(i, shape, n, {dt: activation_relaxation(op.kind, lo.to(dt), hi.to(dt))
                                                        for dt in (torch.float64, torch.float32)}))
                continue
            mask = torch.ones(n, dtype=torch.bool) if op.mask is None else op.mask.reshape(-1).to(lo.device)
            unstable = (lo < 0) & (hi > 0) & mask
            slope = torch.where(mask, (lo >= 0).to(torch.float64), torch.ones_like(lo))
            slope = torch.where(unstable, torch.zeros_like(slope), slope)
            idx = unstable.nonzero().squeeze(1)
            layer = ReluLayer(i, shape, n, idx, _both(slope), lo[idx], hi[idx], self._segment_bias(i)[idx])
            layer.leading = bool(torch.equal(idx, torch.arange(idx.numel())) and (slope[idx.numel():] == 1).all())
            if i in old and old[i].spec_alpha is not None and torch.equal(old[i].unstable, idx):
                layer.spec_alpha = old[i].spec_alpha
            self.relus.append(layer)

    def _segment_bias(self, i: int) -> Tensor:
        """The constant of the affine map from the previous nonlinear op's output to op ``i``'s input."""
        start = max([j + 1 for j in self.pre if j < i], default=0)
        x = torch.zeros(1, *self.ops[start].in_shape, dtype=torch.float64)
        with torch.no_grad():
            for op in self.ops[start:i]:
                x = op.forward(x)
        return x.reshape(-1)

    @property
    def num_unstable(self) -> int:
        return sum(layer.m for layer in self.relus)

    def root_relax(self, dtype: torch.dtype, layers: Optional[list] = None) -> list:
        """The root's relaxation (N = 1) of ``layers`` (default all ReLU layers)."""
        layers = self.relus if layers is None else layers
        return [relax(layer.lower[None], layer.upper[None], torch.zeros(1, layer.m, dtype=torch.int8), dtype)
                for layer in layers]

    def tighten_intermediate(self, steps: int = 20, lr: float = 0.1, deadline: Optional[float] = None) -> None:
        """alpha-CROWN on the intermediate bounds: for each ReLU layer after the first, the lower and
        upper bounds of its unstable neurons with their own slopes of every earlier ReLU layer (Adam,
        ``steps`` steps, best kept), recomputed in float64 and intersected with the current ones;
        layer by layer, so each uses the tightened bounds of the layers before it. The optimised
        slopes of the neurons left unstable are kept (``spec_alpha``) for refreshing domains."""
        for pos, k in enumerate(sorted(self.pre)):
            op = self.ops[k]
            lo, hi = self.pre[k]
            earlier = [layer for layer in self.relus if layer.op < k]
            if isinstance(op, ActivationOp):
                targets = (hi > lo).nonzero().squeeze(1)
            else:
                mask = torch.ones_like(lo, dtype=torch.bool) if op.mask is None else op.mask.reshape(-1)
                targets = ((lo < 0) & (hi > 0) & mask).nonzero().squeeze(1)
            m = targets.numel()
            optimise = steps > 0 and pos > 0 and any(layer.m for layer in earlier) and m > 0
            if optimise and deadline is not None and time.perf_counter() > deadline:
                optimise = False
            if not optimise:
                alphas = [layer_init.reshape(1, 1, -1).expand(2, m, -1).clone()
                          for layer_init in (r.init[0] for r in self.root_relax(torch.float32, earlier))]
            else:
                per_spec = sum(layer.m for layer in earlier) + lo.numel()
                chunk = max(1, _CHUNK_ELEMENTS // max(1, 8 * per_spec))
                new_lo, new_hi = lo.clone(), hi.clone()
                parts: list = []
                for s in range(0, m, chunk):
                    sel = targets[s : s + chunk]
                    q = sel.numel()
                    lam = torch.zeros(1, 2 * q, lo.numel(), dtype=torch.float64)
                    lam[0, torch.arange(q), sel] = 1.0
                    lam[0, q + torch.arange(q), sel] = -1.0
                    late = deadline is not None and time.perf_counter() > deadline
                    bound, alpha = self._optimise_root(lam.reshape(1, 2 * q, *op.in_shape), k, 0 if late else steps,
                                                       lr, deadline)
                    new_lo[sel] = torch.maximum(new_lo[sel], bound[:q])
                    new_hi[sel] = torch.minimum(new_hi[sel], -bound[q:])
                    parts.append([a[0].reshape(2, q, -1) for a in alpha])
                self.pre[k] = (new_lo, torch.maximum(new_hi, new_lo))
                alphas = [torch.cat([p[i] for p in parts], 1) for i in range(len(earlier))]
            if isinstance(op, ActivationOp):
                self._build_layers()
                continue
            self._build_layers()
            layer = next(layer for layer in self.relus if layer.op == k)
            keep = torch.searchsorted(targets, layer.unstable)  # the targets still unstable
            layer.spec_alpha = [a[:, keep].contiguous() for a in alphas]
        self.compress()

    def _optimise_root(self, lam64: Tensor, end: int, steps: int, lr: float,
                       deadline: Optional[float] = None) -> tuple[Tensor, list]:
        """Lower bounds (V,) of ``<lam_v, h_end>`` over the box (no splits) for the V specs of ``lam64``
        (1, V, *shape), each with its own slopes (the specs ride on the domain axis, so a spec whose
        bound already shows its neuron stable leaves the ascent); also the slopes (1, V, m_i)."""
        v = lam64.shape[1]
        layers = [layer for layer in self.relus if layer.op < end]
        rx32, rx64 = self.root_relax(torch.float32, layers), self.root_relax(torch.float64, layers)
        alpha = [r.init.reshape(1, 1, -1).expand(1, v, -1).clone() for r in rx32]
        if steps and any(layer.m for layer in layers):
            lam32 = lam64.float()

            def value(params: list, idx: Tensor) -> Tensor:
                return self.backward(lam32[:, idx], torch.float32, rx32, params, None, end=end, layers=layers)[0]

            alpha, _ = ascend(value, alpha, [lr] * len(alpha), [(0.0, 1.0)] * len(alpha), steps,
                              done=lambda best, idx: best[0] > 0, deadline=deadline)
        with torch.no_grad():
            out, _, _ = self.backward(lam64, torch.float64, rx64, alpha, None, end=end, layers=layers)
        return out[0], alpha

    # ------------------------------------------------------------------ domain intermediate bounds
    def refresh(self, lower: list, upper: list, split: list, first: Tensor) -> tuple[list, list, Tensor]:
        """Recompute (float64) the bounds of every ReLU layer after layer ``first[n]`` of each domain
        with the root's optimised slopes and the domain's relaxations; intersect with ``lower``,
        ``upper`` (lists of (N, m) float32); return them (float32, outwards) and a mask (N,) of the
        domains shown empty (crossing bounds)."""
        lower, upper = [t.clone() for t in lower], [t.clone() for t in upper]
        n = first.numel()
        empty = torch.zeros(n, dtype=torch.bool)
        for k, layer in enumerate(self.relus):
            sel = (first < k).nonzero().squeeze(1)
            if layer.m == 0 or sel.numel() == 0 or layer.spec_alpha is None:
                continue
            earlier = self.relus[:k]
            alpha = [a.reshape(2 * layer.m, 1, -1).double() for a in layer.spec_alpha]  # (2m, 1, m_i)
            width = max([layer.n] + [int(torch.tensor(op.in_shape).prod()) for op in self.ops[: layer.op]])
            chunk = max(1, _CHUNK_ELEMENTS // max(1, 2 * layer.m * width))
            eye = torch.zeros(2 * layer.m, layer.n, dtype=torch.float64)
            eye[torch.arange(layer.m), layer.unstable] = 1.0
            eye[layer.m + torch.arange(layer.m), layer.unstable] = -1.0
            for s in range(0, sel.numel(), chunk):
                dom = sel[s : s + chunk]
                rx = [relax(lower[i][dom], upper[i][dom], split[i][dom], torch.float64) for i in range(k)]
                lam = eye.unsqueeze(1).expand(-1, dom.numel(), -1).reshape(2 * layer.m, dom.numel(), *layer.shape)
                with torch.no_grad():
                    val, _, _ = self.backward(lam, torch.float64, rx, alpha, None, end=layer.op, layers=earlier)
                lo64 = torch.maximum(lower[k][dom].double(), val[: layer.m].t())
                hi64 = torch.minimum(upper[k][dom].double(), -val[layer.m :].t())
                empty[dom] |= (lo64 > hi64).any(1)
                lower[k][dom], upper[k][dom] = outward(lo64, torch.maximum(hi64, lo64))
        return lower, upper, empty

    # ------------------------------------------------------------------ the backward pass
    def backward(self, lam: Tensor, dtype: torch.dtype, rx: list, alpha: list, beta: Optional[list], *,
                 end: Optional[int] = None, layers: Optional[list] = None, record: bool = False,
                 box: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, list, Tensor]:
        """Lower bound (S, N) of ``<lam, h>`` (lam (S, N, *shape of op end-1's output)) over the box
        and the split constraints, for the relaxations ``rx[k]`` (:class:`Relax`, (N, m_k)) of the
        ReLU layers ``layers`` (default: all before ``end``), their slopes ``alpha[k]`` ((S or 1),
        (N or 1), m_k) and multipliers ``beta[k]`` (S, N, m_k). With ``record`` also the coefficients
        (S, N, m_k) of each layer's unstable outputs (for branching scores). ``box`` optionally
        replaces the input box by per-domain boxes (center, radius) (N, D). Also returns the input
        coefficients (S, N, D): the bound's minimiser over the box is ``center - radius * sign(.)``."""
        net = self.nets[dtype]
        end = len(net.ops) if end is None else end
        layers = [layer for layer in self.relus if layer.op < end] if layers is None else layers
        by_op = {layer.op: k for k, layer in enumerate(layers)}
        acts = {a.op: a for a in self.acts if a.op < end}
        s_, n_ = lam.shape[:2]
        bias = lam.new_zeros(s_, n_)
        records: list = [None] * len(layers)
        for i in range(end - 1, -1, -1):
            op = net.ops[i]
            if i in by_op:
                k = by_op[i]
                layer = layers[k]
                flat = lam.reshape(s_, n_, -1)
                if layer.m:
                    r = rx[k]
                    lam_u = flat[..., : layer.m] if layer.leading else flat.index_select(2, layer.unstable)
                    if record:
                        records[k] = lam_u.detach()
                    a_lo = torch.where(r.free, alpha[k].to(dtype), r.a_up)
                    pos, neg = lam_u.clamp(min=0), lam_u.clamp(max=0)
                    new = pos * a_lo + neg * r.a_up
                    if beta is not None:
                        new = new - beta[k].to(dtype) * r.sign
                    bias = bias + (neg * r.b_up).sum(-1)
                    if layer.leading:
                        out = torch.cat([new, flat[..., layer.m :].expand(new.shape[0], -1, -1)], 2)
                    else:
                        out = (flat * layer.slope[dtype]).index_copy(2, layer.unstable, new)
                else:
                    out = flat * layer.slope[dtype]
                lam = out.reshape(s_, n_, *layer.shape)
            elif i in acts:
                a_lo, b_lo, a_up, b_up = acts[i].lines[dtype]
                flat = lam.reshape(s_, n_, -1)
                pos, neg = flat.clamp(min=0), flat.clamp(max=0)
                bias = bias + (pos * b_lo + neg * b_up).sum(-1)
                lam = (pos * a_lo + neg * a_up).reshape(s_, n_, *acts[i].shape)
            elif isinstance(op, ReLUOp):
                raise RuntimeError(f"BetaCrown: ReLU op {i} has no layer (bounds missing)")
            else:
                bias = bias + op.bias_term(lam)
                lam = op.back(lam)
        center, radius = self.box[dtype] if box is None else box
        flat = lam.reshape(s_, n_, -1)
        if center.shape[0] == 1:
            value = flat.matmul(center[0]) - flat.abs().matmul(radius[0])
        else:
            value = (flat * center).sum(-1) - (flat.abs() * radius).sum(-1)
        return value + bias, records, flat

    def spec_lambda(self, rows: Tensor, n: int, dtype: torch.dtype) -> Tensor:
        """The coefficients (S, N, K) of the rows ``rows`` (S,) of C for N domains."""
        return self.c[rows].to(dtype).unsqueeze(1).expand(-1, n, -1)

    # ------------------------------------------------------------------ domains
    def bound(self, rows: Tensor, lower: list, upper: list, split: list, alpha: list, beta: list, *, steps: int,
              lr_alpha: float, lr_beta: float, record: bool = False,
              done: Optional[Callable[[Tensor, Tensor], Tensor]] = None, deadline: Optional[float] = None) -> tuple:
        """Optimise ``(alpha, beta)`` of N domains (bounds ``lower``, ``upper``, decisions ``split``,
        lists of (N, m_k)) for the spec rows ``rows`` (S,) and return their float64 lower bounds of
        ``c.f - d`` (S, N), the best ``alpha``, ``beta`` (float32), the recorded layer coefficients
        and the input coefficients (float64, see :meth:`backward`). ``done(bounds (S, N_active),
        active indices) -> (N_active,) bool``: domains that need no more ascent leave the batch; the
        ascent stops at ``deadline``."""
        n = split[0].shape[0] if split else 1
        offset = self.d[rows].unsqueeze(1)  # (S, 1)
        if steps and self.num_unstable:
            lam32 = self.spec_lambda(rows, n, torch.float32)
            rx32 = [relax(lo, hi, sp, torch.float32) for lo, hi, sp in zip(lower, upper, split)]
            off32 = offset.float()
            fixed = [bool((sp != 0).any()) for sp in split]
            cache: dict = {}

            def value(params: list, idx: Tensor) -> Tensor:
                if cache.get("idx") is not idx:
                    cache["idx"], cache["rx"] = idx, [r.index(idx) for r in rx32]
                k = len(split)
                return self.backward(lam32[:, idx], torch.float32, cache["rx"], params[:k], params[k:])[0] - off32

            lrs = [lr_alpha] * len(alpha) + [lr_beta if f else 0.0 for f in fixed]
            limits = [(0.0, 1.0)] * len(alpha) + [(0.0, None)] * len(beta)
            best, _ = ascend(value, list(alpha) + list(beta), lrs, limits, steps, done=done, deadline=deadline)
            alpha, beta = best[: len(alpha)], best[len(alpha):]
        with torch.no_grad():
            lam64 = self.spec_lambda(rows, n, torch.float64)
            rx64 = [relax(lo, hi, sp, torch.float64) for lo, hi, sp in zip(lower, upper, split)]
            value64, records, coeffs = self.backward(lam64, torch.float64, rx64, alpha, beta, record=record)
        return value64 - offset, alpha, beta, records, coeffs

    def candidate_bounds(self, pick: Tensor, rx: list, alpha: list, beta: list, layer_idx: Tensor,
                         neuron: Tensor) -> Tensor:
        """Bounds (N, C, 2) of each domain's spec row ``pick[n]`` (a position in the batch's rows) after
        splitting candidate ``c`` (ReLU layer ``layer_idx[n, c]``, compact neuron ``neuron[n, c]``) active
        (``[..., 0]``) and inactive (``[..., 1]``), with the domain's relaxations ``rx`` (float32),
        ``alpha`` / ``beta`` of that row (no optimisation): the estimate of filtered smart branching
        (De Palma et al. 2021)."""
        n, cands = layer_idx.shape
        dom = torch.arange(n).repeat_interleave(cands * 2)  # (V,), V = N * C * 2
        sign = torch.tensor([1.0, 0.0]).repeat(n * cands)  # (V,): active -> upper slope 1, inactive -> 0
        li = layer_idx.repeat_interleave(2, dim=1).reshape(-1)
        nj = neuron.repeat_interleave(2, dim=1).reshape(-1)
        row = pick[dom]
        v_rx, v_alpha, v_beta = [], [], []
        for k, layer in enumerate(self.relus):
            r = rx[k].index(dom)
            hit = (li == k).nonzero().squeeze(1)
            if hit.numel():
                r = Relax(r.free.clone(), r.a_up.clone(), r.b_up.clone(), r.sign, r.init)
                r.free[hit, nj[hit]] = False
                r.a_up[hit, nj[hit]] = sign[hit]
                r.b_up[hit, nj[hit]] = 0.0
            v_rx.append(r)
            v_alpha.append(alpha[k][row, dom].unsqueeze(0))  # (1, V, m)
            v_beta.append(beta[k][row, dom].unsqueeze(0))
        lam = self.c[row].float().unsqueeze(0)  # (1, V, K)
        with torch.no_grad():
            value, _, _ = self.backward(lam, torch.float32, v_rx, v_alpha, v_beta)
        value = value[0] - self.d[row].float()
        return value.reshape(n, cands, 2)


def ascend(value: Callable[[list, Tensor], Tensor], params: list, lrs: list, limits: list, steps: int, *,
           done: Optional[Callable[[Tensor, Tensor], Tensor]] = None, check_every: int = 4,
           decay: float = 0.98, deadline: Optional[float] = None) -> tuple[list, Optional[Tensor]]:
    """Projected Adam ascent (Kingma & Ba 2015, arXiv:1412.6980) of ``value(params, idx)`` (S, N_active)
    over parameters (S, N, ...) clamped to ``limits`` after each step, step size ``lr * decay^t``;
    per (row, domain) the best parameters seen are kept. Every ``check_every`` steps the domains that
    ``done`` marks leave the batch (their best so far is final). The ascent stops after the step that
    ends past ``deadline`` (``time.perf_counter()``; any parameters within ``limits`` give sound
    bounds, only less tight ones). Returns the best parameters and values."""
    n = params[0].shape[1]
    if not any(lr > 0 for lr in lrs):
        return [p.detach().clone() for p in params], None
    idx = torch.arange(n)
    out = [p.detach().clone() for p in params]  # the final best of every domain, written when it leaves
    out_v: Optional[Tensor] = None
    cur = [p.detach().clone() for p in params]
    best = [p.detach().clone() for p in params]  # the best of the active domains
    m1 = [torch.zeros_like(p) for p in cur]
    m2 = [torch.zeros_like(p) for p in cur]
    best_v: Optional[Tensor] = None
    b1, b2, eps = 0.9, 0.999, 1e-8

    def retire(keep: Optional[Tensor]) -> None:
        """Write the best of the active domains that leave (all when ``keep`` is None) to ``out``."""
        nonlocal out_v
        gone = idx if keep is None else idx[~keep]
        sel = slice(None) if keep is None else (~keep).nonzero().squeeze(1)
        for o, b in zip(out, best):
            o.index_copy_(1, gone, b[:, sel])
        if out_v is None:
            out_v = torch.full((best_v.shape[0], n), float("-inf"), dtype=best_v.dtype)
        out_v.index_copy_(1, gone, best_v[:, sel])

    for t in range(1, steps + 1):
        with torch.enable_grad():
            live = [c.requires_grad_(True) for c in cur]
            val = value(live, idx)
            need = [c for c, lr in zip(live, lrs) if lr > 0]
            grads = iter(torch.autograd.grad(val.sum(), need, allow_unused=True))
            grad = [next(grads) if lr > 0 else None for lr in lrs]
        with torch.no_grad():
            val = val.detach()
            cur = [c.detach() for c in cur]
            if best_v is None:
                best_v = val.clone()
            else:
                improved = val > best_v
                best_v = torch.where(improved, val, best_v)
                for b, c in zip(best, cur):
                    b.copy_(torch.where(improved.reshape(*improved.shape, *([1] * (c.dim() - 2))), c, b))
            if t == steps or (deadline is not None and time.perf_counter() > deadline):
                break
            if done is not None and t % check_every == 0:
                finished = done(best_v, idx)
                if bool(finished.any()):
                    keep = ~finished
                    retire(keep)
                    idx = idx[keep]
                    if idx.numel() == 0:
                        return out, out_v
                    cur, m1, m2 = [c[:, keep] for c in cur], [x[:, keep] for x in m1], [x[:, keep] for x in m2]
                    best, best_v = [b[:, keep] for b in best], best_v[:, keep]
                    grad = [None if g is None else g[:, keep] for g in grad]
            scale = decay ** t / (1 - b1 ** t)
            for c, g, a, v, lr, (lo, hi) in zip(cur, grad, m1, m2, lrs, limits):
                if g is None or lr == 0:
                    continue
                a.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                c.addcdiv_(a, (v / (1 - b2 ** t)).sqrt_().add_(eps), value=lr * scale)
                c.clamp_(min=lo, max=hi)
    if best_v is not None:
        retire(None)
    return out, out_v
