"""A ReLU network as a chain of affine maps and (partial) ReLUs: the form every verifier reads.

:func:`trace` walks the modules of a model (``nn.Sequential`` composition, robustlab's
:class:`~robustlab.models.Normalize`, Linear, Conv2d, ReLU, Sigmoid, Tanh, Flatten, BatchNorm in
eval mode, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d with non-overlapping windows, Dropout and
Identity as the identity, robustlab's ResNet-18 and its basic blocks) and
returns a :class:`Network`: a list of ops, each either an affine map ``h -> A h + b`` (with its
transpose for back-substitution), a ReLU applied to the coordinates of a mask (the others pass
through unchanged), or an elementwise sigmoid / tanh (:class:`ActivationOp`, from nn.Sigmoid and
nn.Tanh). Anything else is refused with a :class:`TypeError` naming the module and its
type: a verifier that guessed the semantics of an unknown module would give unsound bounds.

Residual blocks (robustlab's :class:`~robustlab.models.architectures.BasicBlock`, so the whole
``resnet18``) become a chain too: ``x -> [x; x]`` (:class:`SplitOp`), the main path and the
shortcut side by side (:class:`ResidualOp`, with the middle ReLU a partial ReLU on the main half
only), ``[h; s] -> h + s`` (:class:`JoinOp`), ReLU. The chain computes exactly the block's
function, so every bound method (IBP, CROWN, alpha-CROWN, LP) and the MILP read it unchanged; a
block subclass with its own ``forward`` is refused.

ONNX networks converted by :func:`robustlab.models.onnx.convert` (:class:`~robustlab.models.onnx.OnnxGraph`)
are walked node by node in the same form, generalised to any number of branches: the state is the
list of live values side by side (*lanes*); a value read by several nodes is copied into one lane
per reader and ``Add``/``Sub``/``Concat`` of two computed values merge lanes (:class:`RouteOp`),
affine nodes of different lanes run side by side (:class:`ParallelOp`, of which
:class:`ResidualOp` is the two-path case), and a ReLU of one lane is a :class:`ReLUOp` masked to
it. Reshape/Flatten/Squeeze/Unsqueeze (:class:`ReshapeOp`), Transpose (:class:`PermuteOp`),
constant Pad (:class:`PadOp`) and arithmetic with constants (:class:`ScaleOp`) are affine; a node
that mixes the batch axis, multiplies two computed values or is not one of these is refused by
name. The walk is checked against the graph on a batch of two random inputs.

Max-pooling is rewritten exactly with ReLUs, ``max(a, b) = b + relu(a - b)``, a tree of pairwise
maxima over each window; the pass-through ``b`` is a coordinate the partial ReLU leaves alone, so
the relaxation of the pass-through is exact and the bounds stay sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.models import onnx as onnx_ops
from robustlab.models.architectures import BasicBlock, ResNet18
from robustlab.models.normalize import Normalize

Shape = tuple[int, ...]
_RESNET_FORWARD, _BLOCK_FORWARD = ResNet18.forward, BasicBlock.forward


class Affine:
    """``y = A x + b`` for one sample; batched over the leading dimension.

    ``forward(x)`` applies the map to (N, *in_shape); ``abs_forward(r)`` applies ``|A|`` (no bias)
    for interval arithmetic; ``back(lam)`` maps coefficients (S, N, *out_shape) on ``y`` to
    ``lam A`` (S, N, *in_shape); ``bias_term(lam)`` is ``<lam, b>`` (S, N).
    """

    name: str = ""
    in_shape: Shape = ()
    out_shape: Shape = ()

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is abstract")

    def abs_forward(self, r: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is abstract")

    def back(self, lam: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is abstract")

    def bias_term(self, lam: Tensor) -> Tensor:
        return lam.new_zeros(lam.shape[:2])


class LinearOp(Affine):
    def __init__(self, weight: Tensor, bias: Optional[Tensor], name: str) -> None:
        self.weight, self.bias, self.name = weight, bias, name  # (out, in), (out,)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def abs_forward(self, r: Tensor) -> Tensor:
        return F.linear(r, self.weight.abs())

    def back(self, lam: Tensor) -> Tensor:
        return lam.matmul(self.weight)  # (S, N, out) @ (out, in) -> (S, N, in)

    def bias_term(self, lam: Tensor) -> Tensor:
        return lam.new_zeros(lam.shape[:2]) if self.bias is None else lam.matmul(self.bias)


class ConvOp(Affine):
    def __init__(self, weight: Tensor, bias: Optional[Tensor], stride: tuple, padding: tuple, dilation: tuple,
                 groups: int, name: str) -> None:
        self.weight, self.bias, self.name = weight, bias, name
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def abs_forward(self, r: Tensor) -> Tensor:
        return F.conv2d(r, self.weight.abs(), None, self.stride, self.padding, self.dilation, self.groups)

    def back(self, lam: Tensor) -> Tensor:
        s, n = lam.shape[:2]
        h_in, w_in = self.in_shape[1:]
        k_h, k_w = self.weight.shape[2:]
        h_out, w_out = self.out_shape[1:]
        # Output padding so that the transposed convolution recovers the input size exactly.
        op_h = h_in - ((h_out - 1) * self.stride[0] - 2 * self.padding[0] + self.dilation[0] * (k_h - 1) + 1)
        op_w = w_in - ((w_out - 1) * self.stride[1] - 2 * self.padding[1] + self.dilation[1] * (k_w - 1) + 1)
        out = F.conv_transpose2d(lam.reshape(s * n, *self.out_shape), self.weight, None, self.stride, self.padding,
                                 (op_h, op_w), self.groups, self.dilation)  # (S*N, C_in, H_in, W_in)
        return out.reshape(s, n, *self.in_shape)

    def bias_term(self, lam: Tensor) -> Tensor:
        if self.bias is None:
            return lam.new_zeros(lam.shape[:2])
        return lam.sum(dim=(3, 4)).matmul(self.bias)  # (S, N, C) @ (C,) -> (S, N)


class ScaleOp(Affine):
    """Elementwise ``x * scale + shift`` (BatchNorm in eval mode, Normalize); scale/shift broadcast
    against one sample (e.g. (C, 1, 1))."""

    def __init__(self, scale: Tensor, shift: Tensor, name: str) -> None:
        self.scale, self.shift, self.name = scale, shift, name

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def abs_forward(self, r: Tensor) -> Tensor:
        return r * self.scale.abs()

    def back(self, lam: Tensor) -> Tensor:
        return lam * self.scale

    def bias_term(self, lam: Tensor) -> Tensor:
        return (lam * self.shift).flatten(2).sum(-1)


class ReshapeOp(Affine):
    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def back(self, lam: Tensor) -> Tensor:
        return lam.reshape(*lam.shape[:2], *self.in_shape)


class WindowOp(Affine):
    """(C, H, W) -> (C, H/k, W/k, k*k): the non-overlapping k x k windows as a last dimension."""

    def __init__(self, k: int, name: str) -> None:
        self.k, self.name = k, name

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.k
        x = x.reshape(n, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5)  # (N, C, Ho, Wo, k, k)
        return x.reshape(n, c, h // k, w // k, k * k)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def back(self, lam: Tensor) -> Tensor:
        s, n, c, ho, wo, _ = lam.shape
        k = self.k
        lam = lam.reshape(s, n, c, ho, wo, k, k).permute(0, 1, 2, 3, 5, 4, 6)  # (S, N, C, Ho, k, Wo, k)
        return lam.reshape(s, n, c, ho * k, wo * k)


class MixOp(Affine):
    """A linear map ``M`` (m_out, m_in) along the last dimension."""

    def __init__(self, matrix: Tensor, name: str) -> None:
        self.matrix, self.name = matrix, name

    def forward(self, x: Tensor) -> Tensor:
        return x.matmul(self.matrix.t())

    def abs_forward(self, r: Tensor) -> Tensor:
        return r.matmul(self.matrix.abs().t())

    def back(self, lam: Tensor) -> Tensor:
        return lam.matmul(self.matrix)


def _lanes_out(x: Tensor, shapes: list, lead: int) -> list:
    """The lanes of a state with ``lead`` leading axes: one lane is the tensor in its own shape,
    several lie side by side in one flat axis."""
    if len(shapes) == 1:
        return [x.reshape(*x.shape[:lead], *shapes[0])]
    flat = x.reshape(*x.shape[:lead], -1)
    parts = flat.split([int(math.prod(s)) for s in shapes], dim=lead)
    return [p.reshape(*x.shape[:lead], *s) for p, s in zip(parts, shapes)]


def _lanes_in(parts: list, lead: int) -> Tensor:
    """The state holding ``parts`` (inverse of :func:`_lanes_out`)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p.reshape(*p.shape[:lead], -1) for p in parts], dim=lead)


class ParallelOp(Affine):
    """Lanes side by side, each through its own chain of affine ops (possibly empty):
    ``[h_1; ...; h_k] -> [A_1 h_1; ...; A_k h_k]``. Together with :class:`RouteOp` (copies, sums,
    concatenations of lanes) and ReLUs masked to some lanes, it writes a graph with branches (a
    residual block, an ONNX DAG) as a chain every verifier reads. The ops of all paths are kept
    in one list ``inner`` (``sizes`` ops per path)."""

    def __init__(self, paths: list, in_shapes: list, out_shapes: list, name: str) -> None:
        self.inner = [op for path in paths for op in path]
        self.sizes = tuple(len(path) for path in paths)
        self.in_shapes, self.out_shapes = [tuple(s) for s in in_shapes], [tuple(s) for s in out_shapes]
        self.name = name

    @property
    def paths(self) -> list:
        out, k = [], 0
        for n in self.sizes:
            out.append(self.inner[k : k + n])
            k += n
        return out

    def _apply(self, x: Tensor, abs_: bool) -> Tensor:
        lanes = _lanes_out(x, self.in_shapes, 1)
        for i, path in enumerate(self.paths):
            for op in path:
                lanes[i] = op.abs_forward(lanes[i]) if abs_ else op.forward(lanes[i])
        return _lanes_in(lanes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x, False)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self._apply(r, True)  # |A_k|...|A_1| r >= |A_k ... A_1| r: sound (exact for conv + BatchNorm)

    def _back(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        lanes = _lanes_out(lam, self.out_shapes, 2)
        bias = lam.new_zeros(lam.shape[:2])
        for i, path in enumerate(self.paths):
            for op in reversed(path):
                bias = bias + op.bias_term(lanes[i])
                lanes[i] = op.back(lanes[i])
        return _lanes_in(lanes, 2), bias

    def back(self, lam: Tensor) -> Tensor:
        return self._back(lam)[0]

    def bias_term(self, lam: Tensor) -> Tensor:
        return self._back(lam)[1]


class ResidualOp(ParallelOp):
    """The two paths of a residual block side by side, as one flat vector ``[main; skip]``:
    ``[h; s] -> [A_k ... A_1 h; B_m ... B_1 s]`` (each path a chain of affine ops, possibly empty).
    With :class:`SplitOp` (``x -> [x; x]``), a partial ReLU on the main half and :class:`JoinOp`
    (``[h; s] -> h + s``), ``relu(F(x) + S(x))`` becomes a chain every verifier reads."""

    def __init__(self, main: list, skip: list, shapes: tuple[Shape, Shape, Shape, Shape], name: str) -> None:
        main_in, skip_in, main_out, skip_out = shapes
        super().__init__([main, skip], [main_in, skip_in], [main_out, skip_out], name)

    @property
    def main(self) -> list:
        return self.paths[0]

    @property
    def skip(self) -> list:
        return self.paths[1]


class RouteOp(Affine):
    """A linear rearrangement of lanes (see :class:`ParallelOp`): output lane k is either a sum
    ``sum_j c_j lane_{s_j}`` of input lanes of equal size (``("sum", ((s, c), ...), shape)``: a copy
    when it has one term) or their concatenation along a sample axis (``("cat", (s, ...), axis,
    shape)``); input lanes no route reads are dropped."""

    def __init__(self, in_shapes: list, routes: list, name: str) -> None:
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.routes = list(routes)
        self.out_shapes = [tuple(r[-1]) for r in self.routes]
        self.name = name

    def _apply(self, x: Tensor, abs_: bool) -> Tensor:
        lanes = _lanes_out(x, self.in_shapes, 1)
        out = []
        for r, shape in zip(self.routes, self.out_shapes):
            if r[0] == "sum":
                terms = [lanes[s].reshape(x.shape[0], *shape) * (abs(c) if abs_ else c) for s, c in r[1]]
                out.append(torch.stack(terms).sum(0) if len(terms) > 1 else terms[0])
            else:
                out.append(torch.cat([lanes[s] for s in r[1]], dim=1 + r[2]))
        return _lanes_in(out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x, False)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self._apply(r, True)  # |sum c_j x_j| <= sum |c_j| |x_j|: exact for copies and concatenations

    def back(self, lam: Tensor) -> Tensor:
        lead = lam.shape[:2]
        outs = _lanes_out(lam, self.out_shapes, 2)
        grads = [lam.new_zeros(*lead, *s) for s in self.in_shapes]
        for r, g in zip(self.routes, outs):
            if r[0] == "sum":
                for s, c in r[1]:
                    grads[s] = grads[s] + c * g.reshape(*lead, *self.in_shapes[s])
            else:
                sizes = [self.in_shapes[s][r[2]] for s in r[1]]
                for s, part in zip(r[1], g.split(sizes, dim=2 + r[2])):
                    grads[s] = grads[s] + part
        return _lanes_in(grads, 2)


class SplitOp(RouteOp):
    """``x -> [x; x]`` (flat): the input of a residual block, once per path."""

    def __init__(self, name: str, shape: Shape) -> None:
        super().__init__([shape], [("sum", ((0, 1.0),), shape), ("sum", ((0, 1.0),), shape)], name)


class JoinOp(RouteOp):
    """``[h; s] -> h + s`` reshaped to the block's output shape."""

    def __init__(self, shape: Shape, name: str) -> None:
        super().__init__([shape, shape], [("sum", ((0, 1.0), (1, 1.0)), shape)], name)


class PermuteOp(Affine):
    """An axis permutation of one sample (ONNX Transpose keeping the batch axis first)."""

    def __init__(self, perm: tuple, name: str) -> None:
        self.perm, self.name = tuple(perm), name
        self.inverse = tuple(sorted(range(len(perm)), key=lambda k: perm[k]))

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *[p + 1 for p in self.perm])

    def abs_forward(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def back(self, lam: Tensor) -> Tensor:
        return lam.permute(0, 1, *[q + 2 for q in self.inverse])


class PadOp(Affine):
    """Constant padding (``F.pad`` order, negative entries crop) of one sample with ``value``:
    affine, its transpose crops (pads back) the coefficients; the padded constant is the bias."""

    def __init__(self, pads: tuple, value: float, name: str) -> None:
        self.pads, self.value, self.name = tuple(pads), float(value), name

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads, value=self.value)

    def abs_forward(self, r: Tensor) -> Tensor:
        return F.pad(r, self.pads, value=0.0)

    def back(self, lam: Tensor) -> Tensor:
        return F.pad(lam, tuple(-p for p in self.pads), value=0.0)

    def bias_term(self, lam: Tensor) -> Tensor:
        if self.value == 0.0:
            return lam.new_zeros(lam.shape[:2])
        fill = F.pad(lam.new_zeros(1, *self.in_shape), self.pads, value=self.value)  # (1, *out_shape)
        return (lam * fill).flatten(2).sum(-1)


@dataclass
class ReLUOp:
    """``relu`` on the coordinates where ``mask`` is True, the identity elsewhere (mask None: all)."""

    name: str
    mask: Optional[Tensor] = None  # bool, one sample's shape
    in_shape: Shape = ()
    out_shape: Shape = ()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) if self.mask is None else torch.where(self.mask, torch.relu(x), x)


ACTIVATIONS = ("sigmoid", "tanh")


@dataclass
class ActivationOp:
    """An elementwise S-shaped activation, ``kind`` one of :data:`ACTIVATIONS` (``sigmoid`` or
    ``tanh``): convex below 0, concave above, monotone; bounded by tangent and chord lines
    (:func:`robustlab.verify.bounds.activation_relaxation`)."""

    name: str
    kind: str
    in_shape: Shape = ()
    out_shape: Shape = ()

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATIONS:
            raise ValueError(f"ActivationOp {self.name!r}: kind must be one of {', '.join(ACTIVATIONS)}, got {self.kind!r}")

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) if self.kind == "sigmoid" else torch.tanh(x)


@dataclass
class Network:
    """A traced network: ``ops`` applied in order map (N, *in_shape) to (N, K) logits."""

    ops: list = field(default_factory=list)
    in_shape: Shape = ()

    def forward(self, x: Tensor) -> Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x

    @property
    def relu_indices(self) -> list[int]:
        return [i for i, op in enumerate(self.ops) if isinstance(op, ReLUOp)]

    @property
    def nonlinear_indices(self) -> list[int]:
        """The ops that are not affine: ReLUs and S-shaped activations."""
        return [i for i, op in enumerate(self.ops) if isinstance(op, (ReLUOp, ActivationOp))]

    @property
    def num_classes(self) -> int:
        return int(self.ops[-1].out_shape[0])


def _pair(v: object) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _refuse(name: str, module: nn.Module, why: str = "") -> TypeError:
    extra = f" ({why})" if why else ""
    return TypeError(
        f"robustlab.verify cannot bound module {name or '<model>'!r} of type {type(module).__name__}{extra}; "
        "supported: nn.Sequential, Normalize, Linear, Conv2d, ReLU, Sigmoid, Tanh, Flatten, BatchNorm1d/2d (eval), AvgPool2d, "
        "MaxPool2d (kernel == stride, no padding), AdaptiveAvgPool2d (output size dividing the input), Dropout, "
        "Identity, robustlab's ResNet18 / BasicBlock, and ONNX graphs converted by robustlab.models.onnx (branches "
        "joined by Add/Sub/Concat, Reshape, Flatten, Squeeze/Unsqueeze, Transpose, constant Pad, arithmetic with "
        "constants)"
    )


def _maxpool_ops(k: int, name: str) -> list:
    """Exact ReLU form of max over each k x k window: rounds of pairwise maxima
    ``max(p, q) = q + relu(p - q)``; each round is a mix (p - q, q), a partial ReLU, and the sum."""
    ops: list = [WindowOp(k, name)]
    m = k * k
    while m > 1:
        pairs, odd = m // 2, m % 2
        rows = []
        for j in range(pairs):
            p, q = 2 * j, 2 * j + 1
            rows.append([1.0 if i == p else -1.0 if i == q else 0.0 for i in range(m)])  # p - q
            rows.append([1.0 if i == q else 0.0 for i in range(m)])  # q (passes through)
        if odd:
            rows.append([1.0 if i == m - 1 else 0.0 for i in range(m)])
        mix = torch.tensor(rows)  # (2*pairs + odd, m)
        mask = torch.tensor([j % 2 == 0 and j < 2 * pairs for j in range(mix.shape[0])])
        ops.append(MixOp(mix, name))
        ops.append(ReLUOp(name, mask))
        out_m = pairs + odd
        s = torch.zeros(out_m, mix.shape[0])
        for j in range(pairs):
            s[j, 2 * j] = s[j, 2 * j + 1] = 1.0
        if odd:
            s[pairs, 2 * pairs] = 1.0
        ops.append(MixOp(s, name))
        m = out_m
    ops.append(ReshapeOp(name))  # (C, Ho, Wo, 1) -> (C, Ho, Wo)
    return ops


def _module_ops(module: nn.Module, name: str, shape: Shape) -> list:
    """The ops of one supported leaf (or composite) module; refuses anything else."""
    kind = type(module)
    if isinstance(module, nn.Sequential):
        if kind.forward is not nn.Sequential.forward:
            raise _refuse(name, module, "a Sequential subclass with its own forward")
        ops: list = []
        for child_name, child in module.named_children():
            ops += _module_ops(child, f"{name}.{child_name}" if name else child_name, shape)
        return ops
    if kind in (nn.Identity, nn.Dropout, nn.Dropout2d):
        return []
    if kind is onnx_ops.Pad:
        if module.mode != "constant" or not math.isfinite(module.value):
            raise _refuse(name, module, f"mode {module.mode!r} with value {module.value} (only constant, finite padding "
                                        "is affine; max-pooling with asymmetric pads is not supported)")
        if len(module.pads) > 2 * len(shape):
            raise _refuse(name, module, f"pads {module.pads} reach the batch axis")
        return [PadOp(module.pads, module.value, name)]
    if kind is nn.Linear:
        return [LinearOp(module.weight, module.bias, name)]
    if kind is nn.Conv2d:
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _refuse(name, module, f"padding {module.padding!r} with mode {module.padding_mode!r}")
        return [ConvOp(module.weight, module.bias, _pair(module.stride), _pair(module.padding),
                       _pair(module.dilation), module.groups, name)]
    if kind is nn.ReLU:
        return [ReLUOp(name)]
    if kind in (nn.Sigmoid, nn.Tanh):
        return [ActivationOp(name, "sigmoid" if kind is nn.Sigmoid else "tanh")]
    if kind is nn.Flatten:
        if module.start_dim != 1 or module.end_dim != -1:
            raise _refuse(name, module, f"start_dim={module.start_dim}, end_dim={module.end_dim}")
        return [ReshapeOp(name)]
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            raise _refuse(name, module, "no running statistics (track_running_stats=False)")
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        shift = -module.running_mean * scale
        if module.bias is not None:
            shift = shift + module.bias
        extra = (1,) * (len(shape) - 1)
        return [ScaleOp(scale.reshape(-1, *extra), shift.reshape(-1, *extra), name)]
    if kind is nn.AvgPool2d:
        k, s, p = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)
        if module.divisor_override is not None or (any(p) and not module.count_include_pad):
            raise _refuse(name, module, "divisor_override or count_include_pad=False with padding")
        if module.ceil_mode and any((d + 2 * pp - kk) % ss for d, pp, kk, ss in zip(shape[1:], p, k, s)):
            raise _refuse(name, module, "ceil_mode with windows that overhang the input")
        c = shape[0]
        return [_avgpool_conv(c, k, s, p, name)]
    if kind is nn.AdaptiveAvgPool2d:
        out = _pair(module.output_size)
        out = tuple(d if o is None else o for o, d in zip(out, shape[1:]))
        if any(d % o for d, o in zip(shape[1:], out)):
            raise _refuse(name, module, f"output size {out} does not divide the input size {shape[1:]}")
        k = tuple(d // o for d, o in zip(shape[1:], out))
        return [_avgpool_conv(shape[0], k, k, (0, 0), name)]
    if kind is nn.MaxPool2d:
        k, s, p, d = (_pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding),
                      _pair(module.dilation))
        if k[0] != k[1] or k != s or any(p) or d != (1, 1) or module.return_indices:
            raise _refuse(name, module, "only square non-overlapping windows (kernel == stride), no padding")
        if any(dim % k[0] for dim in shape[1:]):
            raise _refuse(name, module, f"input size {shape[1:]} is not a multiple of the window {k[0]}")
        return _maxpool_ops(int(k[0]), name)
    raise _refuse(name, module)


def _avgpool_conv(c: int, k: tuple, s: tuple, p: tuple, name: str) -> ConvOp:
    weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]))
    return ConvOp(weight, None, s, p, (1, 1), c, name)


def trace(model: nn.Module, x: Tensor) -> Network:
    """Trace ``model`` for inputs shaped like ``x`` (N, *shape) into a :class:`Network`.

    The ops read the model's parameters without copying (gradients flow to them, which certified
    training needs) and BatchNorm's running statistics (eval-mode semantics). Refuses (TypeError)
    any module it cannot bound exactly, naming it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape: Shape = tuple(x.shape[1:])
    probe = torch.zeros(1, *shape, dtype=x.dtype, device=x.device)
    ops, probe = _walk(model, "", probe)
    if not ops or probe.dim() != 2:
        raise TypeError(f"robustlab.verify needs a model ending in logits (N, K); the traced output has shape "
                        f"{tuple(probe.shape)}")
    for op in ops:
        if isinstance(op, ReLUOp) and op.mask is not None:
            op.mask = op.mask.to(x.device).expand(op.out_shape)
    return Network(ops, shape)


def _walk(module: nn.Module, name: str, probe: Tensor) -> tuple[list, Tensor]:
    kind = type(module)
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
        ops: list = []
        for child_name, child in module.named_children():
            child_ops, probe = _walk(child, f"{name}.{child_name}" if name else child_name, probe)
            ops += child_ops
        return ops, probe
    if kind is ResNet18 and kind.forward is _RESNET_FORWARD:
        ops = []
        for child_name in ("stem", "layers", "head"):  # ResNet18.forward: head(layers(stem(x)))
            child_ops, probe = _walk(getattr(module, child_name), f"{name}.{child_name}" if name else child_name, probe)
            ops += child_ops
        return ops, probe
    if kind is BasicBlock and kind.forward is _BLOCK_FORWARD:
        return _block_ops(module, name, probe)
    if kind is onnx_ops.OnnxGraph:
        return _graph_ops(module, name, probe)
    if kind is Normalize:
        head = [ScaleOp(1.0 / module.std[0], -module.mean[0] / module.std[0], f"{name or '<model>'}(normalize)")]
        head[0].in_shape = tuple(probe.shape[1:])
        with torch.no_grad():
            probe = (probe - module.mean) / module.std
        head[0].out_shape = tuple(probe.shape[1:])
        tail, probe = _walk(module.net, f"{name}.net" if name else "net", probe)
        return head + tail, probe
    ops = _module_ops(module, name, tuple(probe.shape[1:]))
    with torch.no_grad():
        for op in ops:
            op.in_shape = tuple(probe.shape[1:])
            if isinstance(op, (ConvOp, ScaleOp, MixOp)):
                _to_like(op, probe)
            probe = _apply_probe(op, probe)
            op.out_shape = tuple(probe.shape[1:])
    return ops, probe


def _block_ops(block: nn.Module, name: str, probe: Tensor) -> tuple[list, Tensor]:
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` as split, the two paths side by side
    (the middle ReLU acts on the main path only), join, ReLU."""
    main1, h = _walk(nn.Sequential(block.conv1, block.bn1), f"{name}.main", probe)
    main2, h2 = _walk(nn.Sequential(block.conv2, block.bn2), f"{name}.main", torch.relu(h))
    skip, s = _walk(block.shortcut, f"{name}.shortcut", probe)
    x_shape, h_shape, out_shape = tuple(probe.shape[1:]), tuple(h.shape[1:]), tuple(h2.shape[1:])
    if tuple(s.shape[1:]) != out_shape:
        raise _refuse(name, block, f"the shortcut's output {tuple(s.shape[1:])} does not match the main path's "
                                   f"{out_shape}")
    d_h, d_x = int(math.prod(h_shape)), int(math.prod(x_shape))
    split = SplitOp(name, x_shape)
    first = ResidualOp(main1, [], (x_shape, x_shape, h_shape, x_shape), f"{name}.conv1")
    middle = ReLUOp(f"{name}.relu1", torch.cat([torch.ones(d_h, dtype=torch.bool), torch.zeros(d_x, dtype=torch.bool)]))
    second = ResidualOp(main2, skip, (h_shape, x_shape, out_shape, out_shape), f"{name}.conv2")
    join = JoinOp(out_shape, f"{name}.add")
    ops = [split, first, middle, second, join, ReLUOp(f"{name}.relu2")]
    with torch.no_grad():
        for op in ops:
            op.in_shape = tuple(probe.shape[1:])
            probe = op.forward(probe)
            op.out_shape = tuple(probe.shape[1:])
    return ops, probe


def _probe_through(ops: list, lane: Any) -> None:
    """Run ``lane``'s probe value through ``ops``, recording each op's input and output shapes."""
    with torch.no_grad():
        for op in ops:
            op.in_shape = tuple(lane.value.shape[1:])
            _to_like(op, lane.value)
            lane.value = _apply_probe(op, lane.value)
            op.out_shape = tuple(lane.value.shape[1:])


def _apply_probe(op: object, probe: Tensor) -> Tensor:
    if isinstance(op, ReshapeOp) and not op.out_shape:
        # Flatten or the end of a max-pool tree: the output shape follows from the input.
        if probe.dim() == 5 and probe.shape[-1] == 1:
            op.out_shape = tuple(probe.shape[1:-1])
        else:
            op.out_shape = (int(math.prod(probe.shape[1:])),)
    return op.forward(probe)  # type: ignore[attr-defined]


def _to_like(op: object, probe: Tensor) -> None:
    """Constant tensors built by the tracer (pooling weights, mixes) follow the input's device/dtype."""
    if isinstance(op, ConvOp) and not isinstance(op.weight, nn.Parameter):
        op.weight = op.weight.to(probe)
    if isinstance(op, MixOp):
        op.matrix = op.matrix.to(probe)


# ---------------------------------------------------------------------------------------------
# ONNX graphs (robustlab.models.onnx.OnnxGraph): a DAG walked into the chain form


_LANE_AFFINE = (onnx_ops.Reshape, onnx_ops.FlattenAt, onnx_ops.Squeeze, onnx_ops.Unsqueeze, nn.Flatten)


@dataclass(eq=False)
class _Lane:
    """A live value of the walk: its probe (1, *shape) now, and where the state holds it (``base``,
    the probe before the ``pending`` affine ops not yet emitted)."""

    value: Tensor
    base: Tensor
    pending: list = field(default_factory=list)


class _GraphWalk:
    """Walks an :class:`~robustlab.models.onnx.OnnxGraph` node by node (file order is topological)
    into ops. The state is the list of live values (lanes); a value read by several nodes is copied
    into one lane per reader (:class:`RouteOp`), affine nodes queue on their lane and run side by
    side (:class:`ParallelOp`) when the next ReLU or route needs the state, a ReLU on one lane of
    several is a masked :class:`ReLUOp`, and Add/Sub/Concat of two computed values merge lanes."""

    def __init__(self, graph: "onnx_ops.OnnxGraph", label: str, x: Tensor) -> None:
        self.graph, self.label = graph, label
        self.ops: list = []
        self.lanes: list[_Lane] = []
        self.copies: dict[str, list[_Lane]] = {}  # computed value -> one lane per reader still to come
        self.values: dict[str, Tensor] = {}  # every value's probe (computed and static)
        self.static: set[str] = set()
        for name in graph._const_keys:
            self.values[name] = graph.constant(name)
            self.static.add(name)
        self.readers: dict[str, int] = {}
        for module, (_, ins, _) in zip(graph.nodes, graph.steps):
            if not isinstance(module, onnx_ops.ShapeOf):  # reads the shape only
                for n in ins:
                    self.readers[n] = self.readers.get(n, 0) + 1
        self.readers[graph.output_name] = self.readers.get(graph.output_name, 0) + 1
        lane = _Lane(x, x)
        self.lanes.append(lane)
        self._produced(graph.input_name, lane)

    # -- the state ------------------------------------------------------------------------------
    def _state_shape(self) -> Shape:
        if len(self.lanes) == 1:
            return tuple(self.lanes[0].base.shape[1:])
        return (sum(int(math.prod(lane.base.shape[1:])) for lane in self.lanes),)

    def _emit(self, op: object, in_shape: Shape, out_shape: Shape) -> None:
        op.in_shape, op.out_shape = tuple(in_shape), tuple(out_shape)  # type: ignore[attr-defined]
        self.ops.append(op)

    def _flush(self, why: str) -> None:
        """Emit the queued affine ops (alone, or side by side when several lanes are live)."""
        if not any(lane.pending for lane in self.lanes):
            return
        if len(self.lanes) == 1:
            self.ops += self.lanes[0].pending
        else:
            shapes_in = [tuple(lane.base.shape[1:]) for lane in self.lanes]
            shapes_out = [tuple(lane.value.shape[1:]) for lane in self.lanes]
            par = ParallelOp([lane.pending for lane in self.lanes], shapes_in, shapes_out, f"{self.label}:{why}")
            d_in, d_out = sum(int(math.prod(s)) for s in shapes_in), sum(int(math.prod(s)) for s in shapes_out)
            self._emit(par, (d_in,), (d_out,))
        for lane in self.lanes:
            lane.pending, lane.base = [], lane.value

    def _route(self, routes: list, new_lanes: list[_Lane], why: str) -> None:
        self._flush(why)
        in_shape = self._state_shape()
        op = RouteOp([tuple(lane.base.shape[1:]) for lane in self.lanes], routes, f"{self.label}:{why}")
        self.lanes = new_lanes
        self._emit(op, in_shape, self._state_shape())

    def _produced(self, name: str, lane: _Lane) -> None:
        """Record value ``name`` held by ``lane``: one copy per reader (none read it: dropped)."""
        self.values[name] = lane.value
        k = self.readers.get(name, 0)
        if k == 1:
            self.copies[name] = [lane]
            return
        i = self.lanes.index(lane)
        self._flush(name)
        keep = [("sum", ((j, 1.0),), tuple(other.base.shape[1:])) for j, other in enumerate(self.lanes) if j != i]
        shape = tuple(lane.base.shape[1:])
        fresh = [_Lane(lane.value, lane.value) for _ in range(k)]
        others = [other for other in self.lanes if other is not lane]
        routes = keep[:i] + [("sum", ((i, 1.0),), shape)] * k + keep[i:]
        self._route(routes, others[:i] + fresh + others[i:], f"copy {name}" if k else f"drop {name}")
        self.copies[name] = fresh

    def _take(self, name: str) -> _Lane:
        return self.copies[name].pop()

    # -- nodes ----------------------------------------------------------------------------------
    def node(self, module: nn.Module, label: str, ins: tuple, outs: tuple) -> None:
        computed = [n for n in ins if n and n not in self.static]
        args = [self.values[n] if n else None for n in ins]
        if not computed or isinstance(module, onnx_ops.ShapeOf):
            with torch.no_grad():
                out = module(*args)
            for n, v in zip(outs, [out] if isinstance(out, Tensor) else out):
                self.values[n] = v
                self.static.add(n)
            return
        where = f"{self.label} node {label}"
        if len(outs) != 1:
            raise TypeError(f"robustlab.verify cannot bound {where}: several outputs")
        with torch.no_grad():
            expected = module(*args)
        if isinstance(module, onnx_ops.Arith) and len(computed) == 2:
            lane = self._merge(module, where, ins, expected)
        elif isinstance(module, onnx_ops.Concat):
            lane = self._concat(module, where, ins, computed, expected)
        elif isinstance(module, nn.ReLU):
            lane = self._relu(self._take(ins[0]), where)
        else:
            if len(computed) != 1:
                raise _refuse(where, module, "it reads two computed values")
            lane = self._take(computed[0])
            self._affine(lane, module, where, ins, args, computed[0])
        if not torch.allclose(lane.value, expected, rtol=1e-4, atol=1e-5 * (1 + (float(expected.abs().max()) if expected.numel() else 0.0))):
            raise TypeError(f"robustlab.verify traced {where} ({type(module).__name__}) but the ops do not reproduce it")
        lane.value = expected
        self._produced(outs[0], lane)

    def _relu(self, lane: _Lane, where: str) -> _Lane:
        self._flush(where)
        if len(self.lanes) == 1:
            self._emit(ReLUOp(where), lane.base.shape[1:], lane.base.shape[1:])
        else:
            mask = torch.cat([torch.full((int(math.prod(other.base.shape[1:])),), other is lane, dtype=torch.bool)
                              for other in self.lanes]).to(lane.value.device)
            last = self.ops[-1] if self.ops else None
            if isinstance(last, ReLUOp) and last.mask is not None and last.mask.shape == mask.shape:
                last.mask = last.mask | mask  # ReLUs of other lanes at the same point: one op
            else:
                shape = self._state_shape()
                self._emit(ReLUOp(where, mask), shape, shape)
        lane.value = torch.relu(lane.value)
        lane.base = lane.value
        return lane

    def _merge(self, module: nn.Module, where: str, ins: tuple, expected: Tensor) -> _Lane:
        if module.op not in ("Add", "Sub"):
            raise _refuse(where, module, f"{module.op} of two computed values is not affine")
        a, b = self._take(ins[0]), self._take(ins[1])
        if a.value.shape != b.value.shape or expected.shape != a.value.shape:
            raise _refuse(where, module, f"operands of shapes {tuple(a.value.shape)} and {tuple(b.value.shape)} "
                                         "(broadcasting between computed values)")
        self._flush(where)
        ia, ib = self.lanes.index(a), self.lanes.index(b)
        shape = tuple(a.value.shape[1:])
        joined = _Lane(expected, expected)
        routes, lanes = [], []
        for j, other in enumerate(self.lanes):
            if other is a:
                routes.append(("sum", ((ia, 1.0), (ib, 1.0 if module.op == "Add" else -1.0)), shape))
                lanes.append(joined)
            elif other is not b:
                routes.append(("sum", ((j, 1.0),), tuple(other.base.shape[1:])))
                lanes.append(other)
        self._route(routes, lanes, where)
        return joined

    def _concat(self, module: nn.Module, where: str, ins: tuple, computed: list, expected: Tensor) -> _Lane:
        if len(computed) != len([n for n in ins if n]) or module.axis == 0:
            raise _refuse(where, module, "a concatenation with constants or along the batch axis")
        parts = [self._take(n) for n in ins]
        self._flush(where)
        idx = [self.lanes.index(p) for p in parts]
        joined = _Lane(expected, expected)
        routes, lanes = [], []
        for j, other in enumerate(self.lanes):
            if j == idx[0]:
                routes.append(("cat", tuple(idx), module.axis - 1, tuple(expected.shape[1:])))
                lanes.append(joined)
            elif j not in idx:
                routes.append(("sum", ((j, 1.0),), tuple(other.base.shape[1:])))
                lanes.append(other)
        self._route(routes, lanes, where)
        return joined

    def _affine(self, lane: _Lane, module: nn.Module, where: str, ins: tuple, args: list, computed: str) -> None:
        x = lane.value
        if isinstance(module, (onnx_ops.FlattenAt, onnx_ops.Squeeze, onnx_ops.Unsqueeze, onnx_ops.Transpose)):
            _check_per_sample(module, where, x)
        if isinstance(module, _LANE_AFFINE):
            with torch.no_grad():
                y = module(*([x] + args[1:]))
            if y.dim() == 0 or y.shape[0] != x.shape[0]:
                raise _refuse(where, module, f"it maps the batch axis of {tuple(x.shape)} into {tuple(y.shape)}")
            ops = [ReshapeOp(where)]
            ops[0].out_shape = tuple(y.shape[1:])
        elif isinstance(module, onnx_ops.Transpose):
            ops = [PermuteOp(tuple(p - 1 for p in module.perm[1:]), where)]
        elif isinstance(module, onnx_ops.Cast):
            if not module.dtype.is_floating_point:
                raise _refuse(where, module, f"a cast to {module.dtype}")
            ops = []
        elif isinstance(module, onnx_ops.Arith):
            ops = [_constant_arith(module, where, ins, args, computed, x)]
        elif isinstance(module, (onnx_ops.Gemm, onnx_ops.MatMul, onnx_ops.Gather, onnx_ops.Slice, onnx_ops.Softmax,
                                 onnx_ops.GlobalAvgPool, nn.LeakyReLU)):
            raise _refuse(where, module)
        else:
            ops = _module_ops(module, where, tuple(x.shape[1:]))
        if all(isinstance(op, Affine) for op in ops):
            _probe_through(ops, lane)
            lane.pending += ops
            return
        if len(self.lanes) != 1:
            raise _refuse(where, module, "a non-affine layer other than ReLU inside a branch")
        self._flush(where)
        _probe_through(ops, lane)
        self.ops += ops
        lane.base = lane.value

    def finish(self) -> tuple[list, Tensor]:
        out = self._take(self.graph.output_name)
        if len(self.lanes) != 1:
            self._route([("sum", ((self.lanes.index(out), 1.0),), tuple(out.base.shape[1:]))], [out], "output")
        self._flush("output")
        if out.value.dim() != 2:
            op = ReshapeOp(f"{self.label}:output")
            op.in_shape, op.out_shape = tuple(out.value.shape[1:]), (int(math.prod(out.value.shape[1:])),)
            self.ops.append(op)
            out.value = out.value.reshape(out.value.shape[0], -1)
        return self.ops, out.value


def _check_per_sample(module: nn.Module, where: str, x: Tensor) -> None:
    """Refuse a shape node that mixes the batch axis: on two samples, each output row must be what
    the sample alone gives."""
    other = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(x)
    with torch.no_grad():
        a, b = module(x), module(other)
        both = module(torch.cat([x, other]))
    if both.dim() == 0 or both.shape[0] != 2 or not (torch.equal(both[:1], a) and torch.equal(both[1:], b)):
        raise _refuse(where, module, "it mixes the batch axis with the others")


def _constant_arith(module: nn.Module, where: str, ins: tuple, args: list, computed: str, x: Tensor) -> ScaleOp:
    """``x op c`` / ``c op x`` with a constant ``c`` (broadcast within one sample) as ``x * s + t``."""
    first = ins[0] == computed
    c = args[1] if first else args[0]
    c = c.to(x)
    if c.dim() > x.dim() or (c.dim() == x.dim() and c.shape[0] != 1):
        raise _refuse(where, module, f"a constant of shape {tuple(c.shape)} that broadcasts over the batch")
    if c.dim() == x.dim():
        c = c[0]
    if torch.broadcast_shapes(c.shape, x.shape[1:]) != tuple(x.shape[1:]):
        raise _refuse(where, module, f"a constant of shape {tuple(c.shape)} that enlarges the sample {tuple(x.shape[1:])}")
    one, zero = torch.ones((), dtype=x.dtype, device=x.device), torch.zeros((), dtype=x.dtype, device=x.device)
    if module.op == "Add":
        return ScaleOp(one, c, where)
    if module.op == "Sub":
        return ScaleOp(one, -c, where) if first else ScaleOp(-one, c, where)
    if module.op == "Mul":
        return ScaleOp(c, zero, where)
    if not first:
        raise _refuse(where, module, "division by a computed value is not affine")
    return ScaleOp(1.0 / c, zero, where)


def _graph_ops(graph: "onnx_ops.OnnxGraph", name: str, probe: Tensor) -> tuple[list, Tensor]:
    """The ops of a converted ONNX graph (its input reshaped to the declared shape first)."""
    label = name or "<onnx>"
    in_shape = tuple(probe.shape[1:])
    head: list = []
    if tuple(probe.shape[1:]) != graph.input_shape:
        if int(math.prod(probe.shape[1:])) != int(math.prod(graph.input_shape)):
            raise TypeError(f"robustlab.verify: the ONNX graph {label} takes samples of shape {graph.input_shape}, "
                            f"got {tuple(probe.shape[1:])}")
        op = ReshapeOp(f"{label}:input")
        op.in_shape, op.out_shape = tuple(probe.shape[1:]), graph.input_shape
        head.append(op)
        probe = op.forward(probe)
    walk = _GraphWalk(graph, label, probe)
    for module, (step, ins, outs) in zip(graph.nodes, graph.steps):
        walk.node(module, step, ins, outs)
    ops, out = walk.finish()
    _check_batch(graph, head + ops, label, in_shape)
    return head + ops, out


def _check_batch(graph: nn.Module, ops: list, label: str, shape: Shape) -> None:
    """The chain and the graph agree on a batch of two random samples (a graph whose computation
    depends on the batch size is refused rather than bounded as if it did not)."""
    ref = next((t for t in list(graph.parameters()) + list(graph.buffers()) if t.is_floating_point()), None)
    like = ref if ref is not None else torch.zeros(())
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)).to(like)
    with torch.no_grad():
        try:
            want = graph(x)
        except (RuntimeError, ValueError):
            return  # the graph only runs at its declared batch size; the tracer is checked at batch 1
        got = Network(ops, shape).forward(x)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max()))):
        raise TypeError(f"robustlab.verify traced the ONNX graph {label}, but on a batch of two samples the ops "
                        "do not reproduce it (a computation that depends on the batch size?); refusing to bound it")
