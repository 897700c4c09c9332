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

Max-pooling is rewritten exactly with ReLUs, ``max(a, b) = b + relu(a - b)``, a tree of pairwise
maxima over each window; the pass-through ``b`` is a coordinate the partial ReLU leaves alone, so
the relaxation of the pass-through is exact and the bounds stay sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def _flat(x: Tensor, lead: int) -> Tensor:
    return x.reshape(*x.shape[:lead], -1)


class ResidualOp(Affine):
    """The two paths of a residual block side by side, as one flat vector ``[main; skip]``:
    ``[h; s] -> [A_k ... A_1 h; B_m ... B_1 s]`` (each path a chain of affine ops, possibly empty).
    With :class:`SplitOp` (``x -> [x; x]``), a partial ReLU on the main half and :class:`JoinOp`
    (``[h; s] -> h + s``), ``relu(F(x) + S(x))`` becomes a chain every verifier reads."""

    def __init__(self, main: list, skip: list, shapes: tuple[Shape, Shape, Shape, Shape], name: str) -> None:
        self.main, self.skip, self.name = main, skip, name
        self.main_in, self.skip_in, self.main_out, self.skip_out = shapes
        self.d_in = int(math.prod(self.main_in)), int(math.prod(self.skip_in))
        self.d_out = int(math.prod(self.main_out)), int(math.prod(self.skip_out))

    def _apply(self, x: Tensor, abs_: bool) -> Tensor:
        n = x.shape[0]
        h, s = x.split(self.d_in, dim=1)
        h, s = h.reshape(n, *self.main_in), s.reshape(n, *self.skip_in)
        for op in self.main:
            h = op.abs_forward(h) if abs_ else op.forward(h)
        for op in self.skip:
            s = op.abs_forward(s) if abs_ else op.forward(s)
        return torch.cat([h.reshape(n, -1), s.reshape(n, -1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x, False)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self._apply(r, True)  # |A_k|...|A_1| r >= |A_k ... A_1| r: sound (exact for conv + BatchNorm)

    def _back(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s_, n = lam.shape[:2]
        lh, ls = lam.split(self.d_out, dim=2)
        lh, ls = lh.reshape(s_, n, *self.main_out), ls.reshape(s_, n, *self.skip_out)
        bias = lam.new_zeros(s_, n)
        for op in reversed(self.main):
            bias = bias + op.bias_term(lh)
            lh = op.back(lh)
        for op in reversed(self.skip):
            bias = bias + op.bias_term(ls)
            ls = op.back(ls)
        return torch.cat([_flat(lh, 2), _flat(ls, 2)], dim=2), bias, lam

    def back(self, lam: Tensor) -> Tensor:
        return self._back(lam)[0]

    def bias_term(self, lam: Tensor) -> Tensor:
        return self._back(lam)[1]


class SplitOp(Affine):
    """``x -> [x; x]`` (flat): the input of a residual block, once per path."""

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        f = x.reshape(x.shape[0], -1)
        return torch.cat([f, f], dim=1)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def back(self, lam: Tensor) -> Tensor:
        a, b = lam.chunk(2, dim=2)
        return (a + b).reshape(*lam.shape[:2], *self.in_shape)


class JoinOp(Affine):
    """``[h; s] -> h + s`` reshaped to the block's output shape."""

    def __init__(self, shape: Shape, name: str) -> None:
        self.shape, self.name = shape, name

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return (a + b).reshape(x.shape[0], *self.shape)

    def abs_forward(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def back(self, lam: Tensor) -> Tensor:
        f = lam.reshape(*lam.shape[:2], -1)
        return torch.cat([f, f], dim=2)


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
        "Identity, and robustlab's ResNet18 / BasicBlock"
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
    split = SplitOp(name)
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
