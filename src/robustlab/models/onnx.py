"""ONNX networks as ``nn.Module``: robustlab's own converter (the ``onnx`` package only; no onnx2torch,
no torchvision).

:func:`convert` reads a ``ModelProto`` (or a file) and returns an :class:`OnnxGraph`: the graph's
nodes in their (topological) file order, each one a small module with the operator's ONNX
semantics, run on a dictionary of named values. Nodes whose inputs are all constant (initializers,
``Constant``) are evaluated once at conversion; nodes not needed for the output are dropped.
Weights become standard torch layers where the operator is one (Gemm/MatMul with a constant matrix
-> ``nn.Linear``, Conv -> ``nn.Conv1d/2d/3d``, BatchNormalization -> ``nn.BatchNorm*`` in eval mode,
pools, ReLU, Flatten), so :func:`robustlab.verify.network.trace` reads the module like any
robustlab network (residual ``Add`` nodes included).

Operators (default domain): Gemm, MatMul, Add, Sub, Mul, Div, Relu, LeakyRelu, Sigmoid, Tanh,
Softmax, LogSoftmax, Conv, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Flatten,
Reshape, Transpose, Concat, Constant, Identity, Dropout (inference: the identity), Squeeze,
Unsqueeze, Pad (constant, reflect, edge, wrap), and the shape arithmetic exporters emit around
them: Shape, Gather, Cast, Slice. Where an operator changed between operator sets (attributes
that became inputs in Squeeze/Unsqueeze/Reshape/Pad/Slice/Dropout, Softmax's axis before opset 13,
the legacy broadcasting of arithmetic before opset 7) both forms are read. Anything else, and
any attribute the converter does not know, is one ``ValueError`` naming the node, its operator
and the attribute.

Input shape. The module takes the batch along axis 0 and one sample in the ONNX input's declared
shape without its first (batch) axis, ``OnnxGraph.input_shape``; any input with that many values
per sample is reshaped to it (C order), so an MNIST image batch (N, 1, 28, 28) feeds a network
declared (1, 784) or (1, 784, 1) exactly like the flattened vector a VNNLIB file's ``X_i``
number (the verifier works in the declared shape). The other axes must be fixed in the file.
The output is flattened per sample to (N, K) logits. Images in [0, 1] stay images: put the
normalisation the network expects in front (``load_onnx(..., mean=, std=)``), as for any model.

Batch. The file describes a computation for its declared batch (often 1); the module runs it on
any batch size N with the batch along axis 0. The one place where exporters hard-code the batch,
a constant ``Reshape`` target whose first entry equals the declared batch size, is read as "the
batch"; an operator that mixes the batch axis (Flatten at axis 0, a Transpose moving axis 0,
...) keeps its ONNX meaning, and the verifier's tracer refuses it.

Dtypes. Floating point casts (``Cast`` to float/double/half) of floating tensors keep the
module's precision, so ``model.double()`` computes in float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OnnxGraph", "SUPPORTED_OPERATORS", "convert"]

_FLOAT_TYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class OnnxGraph(nn.Module):
    """A converted ONNX graph: ``forward(x)`` (N, *input_shape) or any (N, ...) with as many values
    per sample -> (N, K).

    Attributes:
        input_shape: one sample's shape as the file declares it (the batch axis left out).
        declared_batch: the batch size the file declares (None when symbolic).
        steps: per node ``(label, input names, output names)``, parallel to ``nodes``.
        opset: the default-domain operator set version of the file.
    """

    def __init__(self, nodes: Sequence[nn.Module], steps: Sequence[tuple[str, tuple[str, ...], tuple[str, ...]]],
                 constants: dict[str, Tensor], input_name: str, input_shape: tuple[int, ...],
                 declared_batch: Optional[int], output_name: str, opset: int) -> None:
        super().__init__()
        self.nodes = nn.ModuleList(nodes)
        self.steps = tuple(steps)
        self.input_name, self.output_name = input_name, output_name
        self.input_shape, self.declared_batch, self.opset = tuple(input_shape), declared_batch, int(opset)
        self._const_keys: dict[str, str] = {}
        for i, (name, value) in enumerate(constants.items()):
            key = f"const_{i}"
            self.register_buffer(key, value)
            self._const_keys[name] = key
        # The values each step is the last to read: freed after it (memory stays one live set).
        last: dict[str, int] = {}
        for k, (_, ins, _) in enumerate(self.steps):
            for name in ins:
                last[name] = k
        self._release = tuple(tuple(n for n in set(ins) if last.get(n) == k and n != output_name)
                              for k, (_, ins, _) in enumerate(self.steps))

    def constant(self, name: str) -> Optional[Tensor]:
        """The constant value ``name`` reads (None for a value computed from the input)."""
        key = self._const_keys.get(name)
        return None if key is None else getattr(self, key)

    def sample_input(self, x: Tensor) -> Tensor:
        """``x`` reshaped to (N, *input_shape), with a clear error when it does not fit."""
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise TypeError(f"the ONNX network takes a tensor (N, {', '.join(map(str, self.input_shape))}), got "
                            f"{type(x).__name__}")
        per = math.prod(self.input_shape)
        if tuple(x.shape[1:]) == self.input_shape:
            return x
        if math.prod(x.shape[1:]) != per:
            raise ValueError(f"the ONNX network takes inputs of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"({per} values per sample); got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], *self.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Any] = {self.input_name: self.sample_input(x)}
        for name, key in self._const_keys.items():
            env[name] = getattr(self, key)
        for module, (_, ins, outs), free in zip(self.nodes, self.steps, self._release):
            out = module(*[env[n] for n in ins])
            if len(outs) == 1:
                env[outs[0]] = out
            else:
                env.update(zip(outs, out))
            for n in free:
                if n not in self._const_keys:
                    env.pop(n, None)
        y = env[self.output_name]
        return y.reshape(y.shape[0], -1) if y.dim() != 2 else y

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, opset={self.opset}, nodes={len(self.steps)}"


# ---------------------------------------------------------------------------------------------
# Operator modules (each the ONNX semantics of one operator on its runtime inputs)


class Arith(nn.Module):
    """Add, Sub, Mul, Div with numpy broadcasting; integer Div truncates (as ONNX runtimes do)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.op == "Add":
            return a + b
        if self.op == "Sub":
            return a - b
        if self.op == "Mul":
            return a * b
        if not a.is_floating_point() and not b.is_floating_point():
            return torch.div(a, b, rounding_mode="trunc")
        return a / b

    def extra_repr(self) -> str:
        return self.op


class Reshape(nn.Module):
    """``Reshape(x, shape)``: 0 copies the input's dimension (unless ``allowzero``), -1 is inferred.
    A target whose first entry is the declared batch size stands for the running batch."""

    def __init__(self, allowzero: bool, declared_batch: Optional[int], label: str) -> None:
        super().__init__()
        self.allowzero, self.declared_batch, self.label = bool(allowzero), declared_batch, label

    def forward(self, x: Tensor, shape: Tensor) -> Tensor:
        target = [int(v) for v in shape.tolist()]
        if not self.allowzero:
            target = [x.shape[i] if v == 0 and i < x.dim() else v for i, v in enumerate(target)]
        n = x.shape[0] if x.dim() else 1
        batched = self.declared_batch is not None and n != self.declared_batch
        if batched and target and target[0] == self.declared_batch:
            target[0] = n
        out = x.reshape(target)
        if batched and (out.dim() == 0 or out.shape[0] != n):
            raise ValueError(f"ONNX node {self.label} (Reshape to {target}) mixes the batch axis; this network only "
                             f"runs on batches of its declared size {self.declared_batch}")
        return out


class FlattenAt(nn.Module):
    """``Flatten`` at an axis other than 1: (prod(d[:axis]), prod(d[axis:]))."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(math.prod(x.shape[: self.axis]), -1)


class Transpose(nn.Module):
    def __init__(self, perm: Sequence[int]) -> None:
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(self.perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


class Squeeze(nn.Module):
    def __init__(self, axes: Sequence[int]) -> None:
        super().__init__()
        self.axes = tuple(sorted(int(a) for a in axes))

    def forward(self, x: Tensor) -> Tensor:
        return x.squeeze(self.axes) if self.axes else x


class Unsqueeze(nn.Module):
    def __init__(self, axes: Sequence[int]) -> None:
        super().__init__()
        self.axes = tuple(sorted(int(a) for a in axes))  # of the output, non-negative

    def forward(self, x: Tensor) -> Tensor:
        for a in self.axes:
            x = x.unsqueeze(a)
        return x


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = int(axis)

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.axis)


class Pad(nn.Module):
    """``Pad``: ``pads`` in ``torch.nn.functional.pad`` order (last axis first, begin then end),
    negative entries crop; mode constant (with ``value``), reflect, replicate (ONNX edge) or
    circular (ONNX wrap)."""

    def __init__(self, pads: Sequence[int], mode: str = "constant", value: float = 0.0) -> None:
        super().__init__()
        self.pads, self.mode, self.value = tuple(int(p) for p in pads), mode, float(value)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pads, value=self.value)
        return F.pad(x, self.pads, mode=self.mode)

    def extra_repr(self) -> str:
        return f"pads={self.pads}, mode={self.mode}, value={self.value}"


class GlobalAvgPool(nn.Module):
    """Mean over every axis after the channels, kept with size 1 (rank other than 4)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


class Softmax(nn.Module):
    """Softmax / LogSoftmax along ``axis``; ``coerce`` (opset < 13): over all axes from ``axis`` on,
    the input read as 2-D (prod(d[:axis]), prod(d[axis:]))."""

    def __init__(self, axis: int, log: bool, coerce: bool) -> None:
        super().__init__()
        self.axis, self.log, self.coerce = int(axis), bool(log), bool(coerce)

    def forward(self, x: Tensor) -> Tensor:
        fn = torch.log_softmax if self.log else torch.softmax
        if not self.coerce:
            return fn(x, dim=self.axis)
        return fn(x.flatten(self.axis), dim=-1).reshape(x.shape)


class ShapeOf(nn.Module):
    """``Shape`` (int64), optionally the slice ``[start:end]`` of it (opset 15)."""

    def __init__(self, start: int = 0, end: Optional[int] = None) -> None:
        super().__init__()
        self.start, self.end = int(start), end

    def forward(self, x: Tensor) -> Tensor:
        return torch.tensor(x.shape[self.start : self.end], dtype=torch.int64, device=x.device)


class Gather(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = int(axis)

    def forward(self, data: Tensor, indices: Tensor) -> Tensor:
        axis = self.axis % data.dim()
        idx = indices.to(torch.int64)
        idx = torch.where(idx < 0, idx + data.shape[axis], idx)
        out = data.index_select(axis, idx.reshape(-1))
        return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]))


class Cast(nn.Module):
    """``Cast``; floating tensors cast to a floating type keep their precision (see the module doc)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        if x.is_floating_point() and self.dtype.is_floating_point:
            return x
        return x.to(self.dtype)


class Slice(nn.Module):
    """``Slice`` with ONNX's clamping; ``starts``/``ends``/``axes``/``steps`` fixed (attributes or
    constants) or read from runtime inputs (in that order after the data)."""

    def __init__(self, fixed: Optional[tuple[list, list, Optional[list], Optional[list]]] = None) -> None:
        super().__init__()
        self.fixed = fixed

    def forward(self, data: Tensor, *args: Optional[Tensor]) -> Tensor:
        if self.fixed is not None:
            starts, ends, axes, steps = self.fixed
        else:
            vals = [None if a is None else [int(v) for v in a.tolist()] for a in args]
            starts, ends = vals[0], vals[1]
            axes = vals[2] if len(vals) > 2 else None
            steps = vals[3] if len(vals) > 3 else None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = a % data.dim()
            dim = data.shape[a]
            s = s + dim if s < 0 else s
            e = e + dim if e < 0 else e
            if st > 0:
                s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            else:
                s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            idx = torch.arange(s, e, st, device=data.device)
            data = data.index_select(a, idx)
        return data


class MatMul(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a, b)


class Gemm(nn.Module):
    """``alpha * A' B' + beta * C`` with runtime operands (a constant B becomes ``nn.Linear``)."""

    def __init__(self, alpha: float, beta: float, trans_a: bool, trans_b: bool) -> None:
        super().__init__()
        self.alpha, self.beta, self.trans_a, self.trans_b = float(alpha), float(beta), bool(trans_a), bool(trans_b)

    def forward(self, a: Tensor, b: Tensor, c: Optional[Tensor] = None) -> Tensor:
        a = a.t() if self.trans_a else a
        b = b.t() if self.trans_b else b
        y = self.alpha * (a @ b)
        return y if c is None else y + self.beta * c


# ---------------------------------------------------------------------------------------------
# The converter


@dataclass
class _Node:
    """One ONNX node as the builders see it."""

    label: str
    op: str
    inputs: list[str]  # "" for an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any]
    index: int

    def fail(self, why: str) -> ValueError:
        return ValueError(f"ONNX node {self.label} (#{self.index}, {self.op}): {why}")

    def known(self, *names: str) -> None:
        extra = sorted(set(self.attrs) - set(names))
        if extra:
            raise self.fail(f"attribute {extra[0]!r} is not supported by robustlab's converter "
                            f"(known: {', '.join(names) or 'none'})")


@dataclass
class _Built:
    """What a builder returns: a module reading ``inputs`` (names), or an alias of one input."""

    module: Optional[nn.Module] = None
    inputs: list[str] = field(default_factory=list)
    alias: Optional[str] = None


class _Context:
    """Values during conversion: constants (folded) and probe values of runtime tensors."""

    def __init__(self, opset: int, declared_batch: Optional[int]) -> None:
        self.opset, self.declared_batch = opset, declared_batch
        self.consts: dict[str, Tensor] = {}
        self.probe: dict[str, Tensor] = {}

    def const(self, name: str) -> Optional[Tensor]:
        return self.consts.get(name) if name else None

    def value(self, name: str) -> Tensor:
        return self.consts[name] if name in self.consts else self.probe[name]

    def rank(self, name: str) -> int:
        return self.value(name).dim()

    def need_const(self, node: _Node, name: str, what: str) -> Tensor:
        v = self.const(name)
        if v is None:
            raise node.fail(f"{what} ({name!r}) must be a constant (an initializer or Constant), not computed at run time")
        return v


def _ints(v: Optional[Tensor]) -> Optional[list[int]]:
    return None if v is None else [int(a) for a in v.reshape(-1).tolist()]


def _input(node: _Node, i: int) -> str:
    return node.inputs[i] if i < len(node.inputs) else ""


def _spatial_pads(node: _Node, ctx: _Context, x_name: str, kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX ``pads`` [b_1..b_k, e_1..e_k] from the ``pads`` / ``auto_pad`` attributes."""
    k = len(kernel)
    auto = node.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        pads = list(node.attrs.get("pads", [0] * (2 * k)))
        if len(pads) != 2 * k:
            raise node.fail(f"pads {pads} must have {2 * k} entries")
        return pads
    if auto == "VALID":
        return [0] * (2 * k)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.fail(f"auto_pad {auto!r} is not an ONNX value")
    sizes = ctx.value(x_name).shape[2:]
    begin, end = [], []
    for d, kk, s, dl in zip(sizes, kernel, strides, dilations):
        out = -(-d // s)
        total = max(0, (out - 1) * s + (kk - 1) * dl + 1 - d)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _torch_pads(onnx_pads: Sequence[int]) -> tuple[int, ...]:
    """ONNX [b_1..b_k, e_1..e_k] (axes in order) -> F.pad's (b_k, e_k, ..., b_1, e_1)."""
    k = len(onnx_pads) // 2
    out: list[int] = []
    for a in reversed(range(k)):
        out += [int(onnx_pads[a]), int(onnx_pads[a + k])]
    return tuple(out)


def _padded(layer: nn.Module, pads: list[int], value: float) -> nn.Module:
    """``layer`` preceded by an explicit pad when ``pads`` are not symmetric (torch layers pad both
    sides alike)."""
    return nn.Sequential(Pad(_torch_pads(pads), "constant", value), layer)


def _pool_common(node: _Node, ctx: _Context, extra: tuple[str, ...]) -> tuple[list, list, list, list, bool]:
    node.known("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", *extra)
    kernel = list(node.attrs["kernel_shape"])
    k = len(kernel)
    strides = list(node.attrs.get("strides", [1] * k))
    dilations = list(node.attrs.get("dilations", [1] * k))
    pads = _spatial_pads(node, ctx, node.inputs[0], kernel, strides, dilations)
    if k not in (1, 2, 3):
        raise node.fail(f"{k}-D pooling is not supported (1-D, 2-D, 3-D)")
    return kernel, strides, dilations, pads, bool(node.attrs.get("ceil_mode", 0))


def _b_maxpool(node: _Node, ctx: _Context) -> _Built:
    kernel, strides, dilations, pads, ceil = _pool_common(node, ctx, ("dilations", "storage_order"))
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.fail("the Indices output is not supported")
    k = len(kernel)
    cls = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[k - 1]
    sym = pads[:k] == pads[k:] and all(2 * p <= kk for p, kk in zip(pads[:k], kernel))
    layer = cls(kernel, strides, pads[:k] if sym else 0, dilations, ceil_mode=ceil)
    return _Built(layer if sym else _padded(layer, pads, float("-inf")), [node.inputs[0]])


def _b_avgpool(node: _Node, ctx: _Context) -> _Built:
    kernel, strides, dilations, pads, ceil = _pool_common(node, ctx, ("count_include_pad", "dilations"))
    if any(d != 1 for d in dilations):
        raise node.fail(f"dilations {dilations} are not supported for AveragePool")
    k = len(kernel)
    include = bool(node.attrs.get("count_include_pad", 0))
    cls = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[k - 1]
    sym = pads[:k] == pads[k:] and all(2 * p <= kk for p, kk in zip(pads[:k], kernel))
    if sym:
        return _Built(cls(kernel, strides, pads[:k], ceil_mode=ceil, count_include_pad=include), [node.inputs[0]])
    if not include:
        raise node.fail(f"asymmetric pads {pads} with count_include_pad=0 are not supported")
    return _Built(_padded(cls(kernel, strides, 0, ceil_mode=ceil), pads, 0.0), [node.inputs[0]])


def _b_global_avgpool(node: _Node, ctx: _Context) -> _Built:
    node.known()
    return _Built(nn.AdaptiveAvgPool2d(1) if ctx.rank(node.inputs[0]) == 4 else GlobalAvgPool(), [node.inputs[0]])


def _b_conv(node: _Node, ctx: _Context) -> _Built:
    node.known("kernel_shape", "strides", "pads", "auto_pad", "dilations", "group")
    w = ctx.need_const(node, node.inputs[1], "the weight W")
    b = ctx.const(_input(node, 2))
    if _input(node, 2) and b is None:
        raise node.fail("the bias B must be a constant")
    k = w.dim() - 2
    if k not in (1, 2, 3):
        raise node.fail(f"{k}-D convolution is not supported (1-D, 2-D, 3-D)")
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
    if kernel != list(w.shape[2:]):
        raise node.fail(f"kernel_shape {kernel} does not match the weight's {list(w.shape[2:])}")
    strides = list(node.attrs.get("strides", [1] * k))
    dilations = list(node.attrs.get("dilations", [1] * k))
    group = int(node.attrs.get("group", 1))
    pads = _spatial_pads(node, ctx, node.inputs[0], kernel, strides, dilations)
    sym = pads[:k] == pads[k:]
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[k - 1]
    conv = cls(w.shape[1] * group, w.shape[0], kernel, strides, pads[:k] if sym else 0, dilations, group, b is not None)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b.reshape(-1))
    return _Built(conv if sym else _padded(conv, pads, 0.0), [node.inputs[0]])


def _b_batchnorm(node: _Node, ctx: _Context) -> _Built:
    node.known("epsilon", "momentum", "spatial", "is_test", "consumed_inputs", "training_mode")
    if int(node.attrs.get("training_mode", 0)) or any(node.outputs[1:]):
        raise node.fail("training mode (running statistics updated, extra outputs) is not supported")
    if int(node.attrs.get("spatial", 1)) != 1:
        raise node.fail("spatial=0 (per-element statistics) is not supported")
    scale, bias, mean, var = (ctx.need_const(node, n, what) for n, what in
                              zip(node.inputs[1:5], ("scale", "B", "input_mean", "input_var")))
    rank = ctx.rank(node.inputs[0])
    if rank not in (2, 3, 4, 5):
        raise node.fail(f"input of rank {rank} (expected 2 to 5)")
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = cls(scale.numel(), eps=float(node.attrs.get("epsilon", 1e-5)))
    with torch.no_grad():
        bn.weight.copy_(scale.reshape(-1))
        bn.bias.copy_(bias.reshape(-1))
        bn.running_mean.copy_(mean.reshape(-1))
        bn.running_var.copy_(var.reshape(-1))
    return _Built(bn.eval(), [node.inputs[0]])


def _b_gemm(node: _Node, ctx: _Context) -> _Built:
    node.known("alpha", "beta", "transA", "transB", "broadcast")
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    ta, tb = bool(node.attrs.get("transA", 0)), bool(node.attrs.get("transB", 0))
    b, c_name = ctx.const(node.inputs[1]), _input(node, 2)
    c = ctx.const(c_name)
    if b is not None and not ta and b.dim() == 2 and (not c_name or c is not None):
        weight = (b if tb else b.t()) * alpha  # (out, in)
        out = weight.shape[0]
        bias = None
        if c is not None:
            if not (c.numel() == 1 or (c.numel() == out and c.shape[-1] == out)):  # C not a per-sample bias
                return _Built(Gemm(alpha, beta, ta, tb), [n for n in node.inputs if n])
            bias = (beta * c.reshape(-1)).expand(out)
        lin = nn.Linear(weight.shape[1], out, bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)
        return _Built(lin, [node.inputs[0]])
    return _Built(Gemm(alpha, beta, ta, tb), [n for n in node.inputs if n])


def _b_matmul(node: _Node, ctx: _Context) -> _Built:
    node.known()
    b = ctx.const(node.inputs[1])
    if b is not None and b.dim() == 2 and ctx.rank(node.inputs[0]) >= 2 and b.is_floating_point():
        lin = nn.Linear(b.shape[0], b.shape[1], bias=False)
        with torch.no_grad():
            lin.weight.copy_(b.t())
        return _Built(lin, [node.inputs[0]])
    return _Built(MatMul(), list(node.inputs))


def _b_arith(node: _Node, ctx: _Context) -> _Built:
    node.known("broadcast", "axis", "consumed_inputs")
    a, b = node.inputs[0], node.inputs[1]
    if "axis" in node.attrs and int(node.attrs.get("broadcast", 0)):
        # Legacy (opset < 7) broadcasting: B's axes line up with A's from ``axis`` on.
        cb = ctx.need_const(node, b, "a legacy broadcast operand B")
        rank = ctx.rank(a)
        axis = int(node.attrs["axis"]) % rank
        name = f"{node.outputs[0]}::B"
        ctx.consts[name] = cb.reshape(*([1] * axis), *cb.shape, *([1] * (rank - axis - cb.dim())))
        b = name
    return _Built(Arith(node.op), [a, b])


def _b_activation(node: _Node, ctx: _Context) -> _Built:
    if node.op == "LeakyRelu":
        node.known("alpha")
        return _Built(nn.LeakyReLU(float(node.attrs.get("alpha", 0.01))), [node.inputs[0]])
    node.known("consumed_inputs")
    return _Built({"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}[node.op](), [node.inputs[0]])


def _b_softmax(node: _Node, ctx: _Context) -> _Built:
    node.known("axis")
    rank = ctx.rank(node.inputs[0])
    legacy = ctx.opset < 13
    axis = int(node.attrs.get("axis", 1 if legacy else -1)) % rank
    coerce = legacy and axis != rank - 1
    return _Built(Softmax(axis, node.op == "LogSoftmax", coerce), [node.inputs[0]])


def _b_flatten(node: _Node, ctx: _Context) -> _Built:
    node.known("axis")
    rank = ctx.rank(node.inputs[0])
    axis = int(node.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    return _Built(nn.Flatten() if axis == 1 else FlattenAt(axis), [node.inputs[0]])


def _b_reshape(node: _Node, ctx: _Context) -> _Built:
    node.known("allowzero", "shape")
    mod = Reshape(bool(node.attrs.get("allowzero", 0)), ctx.declared_batch, node.label)
    if "shape" in node.attrs:  # opset 1
        name = f"{node.outputs[0]}::shape"
        ctx.consts[name] = torch.tensor(list(node.attrs["shape"]), dtype=torch.int64)
        return _Built(mod, [node.inputs[0], name])
    return _Built(mod, [node.inputs[0], node.inputs[1]])


def _b_transpose(node: _Node, ctx: _Context) -> _Built:
    node.known("perm")
    rank = ctx.rank(node.inputs[0])
    perm = list(node.attrs.get("perm", list(reversed(range(rank)))))
    if sorted(perm) != list(range(rank)):
        raise node.fail(f"perm {perm} is not a permutation of the {rank} axes")
    return _Built(Transpose(perm), [node.inputs[0]])


def _axes(node: _Node, ctx: _Context) -> Optional[list[int]]:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if _input(node, 1):
        return _ints(ctx.need_const(node, node.inputs[1], "axes"))
    return None


def _b_squeeze(node: _Node, ctx: _Context) -> _Built:
    node.known("axes")
    shape = ctx.value(node.inputs[0]).shape
    axes = _axes(node, ctx)
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else [a % len(shape) for a in axes]
    if any(shape[a] != 1 for a in axes if a > 0):
        raise node.fail(f"cannot squeeze axes {axes} of shape {list(shape)} (size other than 1)")
    return _Built(Squeeze(axes), [node.inputs[0]])


def _b_unsqueeze(node: _Node, ctx: _Context) -> _Built:
    node.known("axes")
    axes = _axes(node, ctx)
    if axes is None:
        raise node.fail("axes are missing")
    out_rank = ctx.rank(node.inputs[0]) + len(axes)
    return _Built(Unsqueeze([a % out_rank for a in axes]), [node.inputs[0]])


def _b_concat(node: _Node, ctx: _Context) -> _Built:
    node.known("axis")
    rank = ctx.rank(node.inputs[0])
    return _Built(Concat(int(node.attrs.get("axis", 1)) % rank), [n for n in node.inputs if n])


def _b_pad(node: _Node, ctx: _Context) -> _Built:
    node.known("mode", "pads", "value")
    mode = node.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise node.fail(f"mode {mode!r} is not supported (constant, reflect, edge, wrap)")
    rank = ctx.rank(node.inputs[0])
    if "pads" in node.attrs:
        pads, value = list(node.attrs["pads"]), float(node.attrs.get("value", 0.0))
    else:
        pads = _ints(ctx.need_const(node, node.inputs[1], "pads"))
        cv = ctx.const(_input(node, 2))
        if _input(node, 2) and cv is None:
            raise node.fail("constant_value must be a constant")
        value = 0.0 if cv is None or cv.numel() == 0 else float(cv.reshape(-1)[0])
        axes = _ints(ctx.const(_input(node, 3)))
        if _input(node, 3) and axes is None:
            raise node.fail("axes must be a constant")
        if axes is not None:
            full = [0] * (2 * rank)
            for j, a in enumerate(axes):
                full[a % rank], full[a % rank + rank] = pads[j], pads[j + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise node.fail(f"pads {pads} must have {2 * rank} entries for a rank-{rank} input")
    if pads[0] or pads[rank]:
        raise node.fail(f"pads {pads} pad the batch axis")
    tp = list(_torch_pads(pads))
    while len(tp) > 2 and tp[-2:] == [0, 0]:
        tp = tp[:-2]  # F.pad's non-constant modes pad only the trailing axes
    return _Built(Pad(tp, modes[mode], value), [node.inputs[0]])


def _b_identity(node: _Node, ctx: _Context) -> _Built:
    if node.op == "Dropout":
        node.known("ratio", "is_test", "seed", "consumed_inputs")
        if len(node.outputs) > 1 and node.outputs[1]:
            raise node.fail("the mask output is not supported")
        mode = ctx.const(_input(node, 2))
        if mode is not None and bool(mode.reshape(-1)[0]):
            raise node.fail("training_mode=True is not supported (inference only)")
    else:
        node.known()
    return _Built(alias=node.inputs[0])


def _b_constant(node: _Node, ctx: _Context) -> _Built:
    from onnx import numpy_helper

    if len(node.attrs) != 1:
        raise node.fail(f"expected one value attribute, got {sorted(node.attrs)}")
    key, v = next(iter(node.attrs.items()))
    if key == "value":
        t = _tensor(numpy_helper.to_array(v))
    elif key in ("value_float", "value_floats"):
        t = torch.tensor(v, dtype=torch.float32)
    elif key in ("value_int", "value_ints"):
        t = torch.tensor(v, dtype=torch.int64)
    else:
        raise node.fail(f"attribute {key!r} is not supported (value, value_float(s), value_int(s))")
    ctx.consts[node.outputs[0]] = t
    return _Built()


def _b_shape(node: _Node, ctx: _Context) -> _Built:
    node.known("start", "end")
    return _Built(ShapeOf(int(node.attrs.get("start", 0)), node.attrs.get("end")), [node.inputs[0]])


def _b_gather(node: _Node, ctx: _Context) -> _Built:
    node.known("axis")
    return _Built(Gather(int(node.attrs.get("axis", 0))), [node.inputs[0], node.inputs[1]])


def _b_cast(node: _Node, ctx: _Context) -> _Built:
    node.known("to", "saturate")
    import numpy as np
    import onnx

    to = int(node.attrs["to"])
    if to in _FLOAT_TYPES:
        return _Built(Cast(_FLOAT_TYPES[to]), [node.inputs[0]])
    try:
        np_type = onnx.helper.tensor_dtype_to_np_dtype(to)
        dtype = torch.from_numpy(np.zeros(0, dtype=np_type)).dtype
    except (KeyError, TypeError, ValueError):
        raise node.fail(f"cast to ONNX type {to} is not supported") from None
    return _Built(Cast(dtype), [node.inputs[0]])


def _b_slice(node: _Node, ctx: _Context) -> _Built:
    node.known("starts", "ends", "axes")
    if "starts" in node.attrs:  # opset < 10
        axes = list(node.attrs["axes"]) if "axes" in node.attrs else None
        return _Built(Slice((list(node.attrs["starts"]), list(node.attrs["ends"]), axes, None)), [node.inputs[0]])
    rest = node.inputs[1:5]
    consts = [ctx.const(n) if n else None for n in rest]
    if all(n == "" or c is not None for n, c in zip(rest, consts)):
        vals = [_ints(c) for c in consts] + [None] * (4 - len(consts))
        return _Built(Slice((vals[0], vals[1], vals[2], vals[3])), [node.inputs[0]])
    if any(n == "" for n in rest):
        raise node.fail("omitted optional inputs with run-time starts/ends are not supported")
    return _Built(Slice(), [node.inputs[0], *rest])


_BUILDERS: dict[str, Callable[[_Node, _Context], _Built]] = {
    "Gemm": _b_gemm, "MatMul": _b_matmul,
    "Add": _b_arith, "Sub": _b_arith, "Mul": _b_arith, "Div": _b_arith,
    "Relu": _b_activation, "LeakyRelu": _b_activation, "Sigmoid": _b_activation, "Tanh": _b_activation,
    "Softmax": _b_softmax, "LogSoftmax": _b_softmax,
    "Conv": _b_conv, "BatchNormalization": _b_batchnorm,
    "MaxPool": _b_maxpool, "AveragePool": _b_avgpool, "GlobalAveragePool": _b_global_avgpool,
    "Flatten": _b_flatten, "Reshape": _b_reshape, "Transpose": _b_transpose, "Concat": _b_concat,
    "Squeeze": _b_squeeze, "Unsqueeze": _b_unsqueeze, "Pad": _b_pad,
    "Constant": _b_constant, "Identity": _b_identity, "Dropout": _b_identity,
    "Shape": _b_shape, "Gather": _b_gather, "Cast": _b_cast, "Slice": _b_slice,
}
SUPPORTED_OPERATORS = tuple(sorted(_BUILDERS))


def _tensor(arr: Any) -> Tensor:
    import numpy as np

    arr = np.array(arr, copy=True)
    if arr.dtype == np.float16 or arr.dtype.kind in "fiub":
        return torch.from_numpy(arr)
    raise ValueError(f"tensor of numpy dtype {arr.dtype} is not supported")


def _read(model: "Any") -> "Any":
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    p = Path(model)
    if not p.is_file():
        raise FileNotFoundError(f"no ONNX model at {p}")
    try:
        return onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError and friends for a file that is not ONNX
        raise ValueError(f"{p} is not a readable ONNX model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'cannot parse'})") from None


def _declared_input(graph: Any, init_names: set) -> tuple[str, Optional[int], tuple[int, ...], int]:
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ValueError(f"the ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); robustlab "
                         "needs exactly one (the network's input)")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type not in _FLOAT_TYPES:
        raise ValueError(f"the ONNX input {inp.name!r} has element type {tt.elem_type}; expected a floating type")
    dims = [(d.dim_value if d.HasField("dim_value") else None) for d in tt.shape.dim]
    if len(dims) < 2:
        raise ValueError(f"the ONNX input {inp.name!r} has shape {dims}; robustlab needs a batch axis first and at "
                         "least one more axis")
    if any(d is None or d <= 0 for d in dims[1:]):
        raise ValueError(f"the ONNX input {inp.name!r} has shape {dims}: every axis but the first (the batch) must "
                         "be a fixed size")
    batch = dims[0] if dims[0] else None
    return inp.name, batch, tuple(int(d) for d in dims[1:]), tt.elem_type


def convert(model: "Any") -> OnnxGraph:
    """An :class:`OnnxGraph` computing what the ONNX ``model`` (a ``ModelProto`` or a file path)
    computes; see the module docstring for the operators, the input shape and the batch."""
    import onnx
    from onnx import numpy_helper

    proto = _read(model)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ValueError("the ONNX model imports no default-domain operator set")
    inits = {t.name: t for t in graph.initializer}
    input_name, batch, input_shape, elem = _declared_input(graph, set(inits))
    if len(graph.output) != 1:
        raise ValueError(f"the ONNX graph has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)});"
                         " robustlab needs exactly one (the logits)")
    output_name = graph.output[0].name
    ctx = _Context(int(opset), batch)
    for name, t in inits.items():
        try:
            ctx.consts[name] = _tensor(numpy_helper.to_array(t))
        except ValueError as exc:
            raise ValueError(f"ONNX initializer {name!r}: {exc}") from None
    ctx.probe[input_name] = torch.zeros(batch or 1, *input_shape, dtype=_FLOAT_TYPES[elem]).float()

    nodes = _needed(graph, output_name)
    modules: list[nn.Module] = []
    steps: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    alias: dict[str, str] = {}
    for index, proto_node in nodes:
        label = repr(proto_node.name) if proto_node.name else f"<unnamed #{index}>"
        node = _Node(label, proto_node.op_type, [alias.get(n, n) for n in proto_node.input], list(proto_node.output),
                     {a.name: onnx.helper.get_attribute_value(a) for a in proto_node.attribute}, index)
        if proto_node.domain not in ("", "ai.onnx") or node.op not in _BUILDERS:
            where = f" of domain {proto_node.domain!r}" if proto_node.domain not in ("", "ai.onnx") else ""
            raise ValueError(f"ONNX node {label} (#{index}) uses the operator {node.op!r}{where}, which robustlab "
                             f"cannot convert; supported: {', '.join(SUPPORTED_OPERATORS)}")
        missing = [n for n in node.inputs if n and n not in ctx.consts and n not in ctx.probe]
        if missing:
            raise ValueError(f"ONNX node {label} (#{index}, {node.op}) reads {missing[0]!r}, which no earlier node "
                             "produces (the graph is not in topological order or is incomplete)")
        built = _BUILDERS[node.op](node, ctx)
        if built.alias is not None:
            alias[node.outputs[0]] = built.alias
            continue
        if built.module is None:  # Constant: folded by the builder
            continue
        module = built.module.eval()
        args = [ctx.value(n) if n else None for n in built.inputs]
        runtime = any(n in ctx.probe for n in built.inputs if n)
        try:
            with torch.no_grad():
                out = module(*args)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise node.fail(f"cannot be computed on inputs of shapes "
                            f"{[None if a is None else list(a.shape) for a in args]}: {str(exc).splitlines()[0]}") from None
        outs = [out] if isinstance(out, Tensor) else list(out)
        store = ctx.probe if runtime else ctx.consts
        for name, value in zip(node.outputs, outs):
            if name:
                store[name] = value
        if runtime:
            modules.append(module)
            steps.append((node.label, tuple(built.inputs), tuple(node.outputs[: len(outs)])))
    output_name = alias.get(output_name, output_name)
    if output_name not in ctx.probe:
        raise ValueError(f"the ONNX output {output_name!r} does not depend on the input (a constant network)")
    if ctx.probe[output_name].dim() < 2:
        raise ValueError(f"the ONNX output {output_name!r} has shape {list(ctx.probe[output_name].shape)}; robustlab "
                         "needs the batch axis first and the logits after it")
    used = {n for _, ins, _ in steps for n in ins}
    constants = {n: v for n, v in ctx.consts.items() if n in used}
    return OnnxGraph(modules, steps, constants, input_name, input_shape, batch, output_name, int(opset)).eval()


def _needed(graph: Any, output: str) -> list[tuple[int, Any]]:
    """The nodes the output depends on, in file order (with their index in the file)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    keep: set[int] = set()
    todo = [output]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        i = producer[name]
        if i not in keep:
            keep.add(i)
            todo.extend(n for n in graph.node[i].input if n)
    return [(i, graph.node[i]) for i in sorted(keep)]
