"""Tiny random ReLU networks for the verification tests (4x4 or 8x8 single-channel inputs)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.models.architectures import BasicBlock
from robustlab.models.normalize import Normalize

KINDS = ("mlp", "conv", "maxpool", "avgpool-bn", "residual")
ACTIVATION_KINDS = ("sigmoid-mlp", "tanh-conv")  # S-shaped activations: bounds only (the MILP encodes ReLUs)


def tiny_net(kind: str, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random network of one of ``KINDS`` with Normalize inside, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    elif kind == "conv":
        body = nn.Sequential(nn.Conv2d(1, 3, 3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    elif kind == "maxpool":
        body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    elif kind == "avgpool-bn":
        body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
                             nn.Flatten(), nn.Dropout(0.2), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(),
                             nn.Linear(6, 4))
    elif kind == "sigmoid-mlp":
        body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Sigmoid(), nn.Linear(12, 10), nn.ReLU(),
                             nn.Linear(10, 8), nn.Sigmoid(), nn.Linear(8, 4))
    elif kind == "tanh-conv":
        body = nn.Sequential(nn.Conv2d(1, 3, 3, stride=1, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 2, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    elif kind == "residual":  # robustlab's ResNet basic blocks: identity and projection shortcuts
        body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), BasicBlock(3, 3, 1),
                             BasicBlock(3, 4, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for p in body.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.8 if p.dim() > 1 else 0.3))
        for m in body.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    model = Normalize(body, [0.4], [0.3]).to(dtype)
    return model.eval()


def tiny_inputs(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g).to(dtype)


def onnx_mlp(path, seed: int, sizes: tuple = (9, 12, 8, 3), input_shape: tuple = (1, 3, 3),
             activation: str = "Relu") -> None:
    """Write a random MLP (Flatten, Gemm, ``activation`` (an ONNX op: Relu, Sigmoid, Tanh), ..., Gemm)
    as an ONNX file with batch 1."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Flatten", ["x"], ["h0"])]
    inits = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"b{k}")]
        last = k == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [f"h{k}", f"w{k}", f"b{k}"], ["y" if last else f"z{k}"], transB=1))
        if not last:
            nodes.append(helper.make_node(activation, [f"z{k}"], [f"h{k + 1}"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *input_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))


def robustness_vnnlib(path, centre, eps: float, label: int, num_classes: int) -> None:
    """Write the VNNLIB robustness property of ``label`` on the linf ball of ``eps`` around
    ``centre`` intersected with [0, 1]."""
    flat = centre.flatten().tolist()
    lines = [f"(declare-const X_{i} Real)" for i in range(len(flat))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    for i, v in enumerate(flat):
        lines += [f"(assert (<= X_{i} {min(1.0, v + eps)!r}))", f"(assert (>= X_{i} {max(0.0, v - eps)!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(num_classes)
                                           if j != label) + "))")
    path.write_text("\n".join(lines) + "\n")
