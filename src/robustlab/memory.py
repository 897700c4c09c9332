"""Batch sizes from a memory budget, so 224x224 and 512x512 images run where 28x28 ones do.

The cost of one image is measured, not guessed: a forward pass of a probe batch of two images
(with the input gradient's backward pass when the work needs gradients). On CUDA the allocator's
peak above the starting point is read (``torch.cuda.max_memory_allocated``); on the CPU, where
no such counter exists, the bytes autograd saves for the backward pass are summed
(``torch.autograd.graph.saved_tensors_hooks``) and the largest module output is added twice (the
live activation and its gradient), or, without gradients, the two largest outputs of a pass.
An attack keeps a few copies of its batch besides (the input, the adversarial point, the best so
far, the gradient, a momentum or a step): :data:`COPIES` image-sized tensors per image are added.

:func:`fit_batch_size` caps a requested batch size to ``budget / per_image``; the default
budget (:func:`default_budget`) is half of the machine's physical memory, or 80% of the GPU's,
fixed per machine, so a resumed run picks the same batch size.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

import torch
from torch import Tensor, nn

#: Image-sized tensors an attack keeps per image besides the network's activations.
COPIES = 8
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: "str | int") -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"2e9"`` or an int -> bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if m is None:
            raise ValueError(f"memory size {text!r} is not a size; expected e.g. 4G, 512M, 1.5GiB or a number of bytes")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value)


def total_bytes(device: "str | torch.device" = "cpu") -> int:
    """Physical memory of the machine (CPU) or of the GPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 8 << 30


def default_budget(device: "str | torch.device" = "cpu") -> int:
    """Half the machine's memory on the CPU, 80% of the GPU's on CUDA."""
    dev = torch.device(device)
    return int(total_bytes(dev) * (0.8 if dev.type == "cuda" else 0.5))


def _nbytes(t: object) -> int:
    return t.numel() * t.element_size() if isinstance(t, Tensor) else 0


def _probe_cpu(model: nn.Module, x: Tensor, grad: bool) -> int:
    saved: dict[int, int] = {}  # storage address -> bytes: a tensor saved by several nodes counts once
    outputs: list[int] = []
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:  # the weights are the model's memory, not the batch's
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(_nbytes(out)))
             for m in model.modules() if not list(m.children())]
    try:
        if grad:
            xg = x.clone().requires_grad_(True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model(xg)
            torch.autograd.grad(out.float().sum(), xg)
            top = max(outputs, default=0)
            return sum(saved.values()) + 2 * top
        with torch.no_grad():
            model(x)
        top2 = sorted(outputs, reverse=True)[:2]
        return sum(top2)
    finally:
        for h in hooks:
            h.remove()


def _probe_cuda(model: nn.Module, x: Tensor, grad: bool) -> int:
    dev = x.device
    torch.cuda.synchronize(dev)
    start = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    if grad:
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).float().sum(), xg)
    else:
        with torch.no_grad():
            model(x)
    torch.cuda.synchronize(dev)
    return int(torch.cuda.max_memory_allocated(dev) - start)


def per_image_bytes(model: nn.Module, shape: "tuple[int, ...]", *, grad: bool = True,
                    device: "str | torch.device | None" = None, dtype: torch.dtype = torch.float32) -> int:
    """Bytes one image of ``shape`` (C, H, W) costs in a pass of ``model`` (with the input
    gradient when ``grad``), measured on a probe batch of two, plus :data:`COPIES` image copies.
    The model's mode, parameters' ``.grad`` and the global RNG are left as they were."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if len(shape) != 3 or min(int(s) for s in shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    x = torch.full((2, *(int(s) for s in shape)), 0.5, device=device, dtype=dtype)
    was_training = model.training
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            probe = _probe_cuda if x.device.type == "cuda" else _probe_cpu
            cost = probe(model, x, grad)
    finally:
        model.train(was_training)
        for p, g in grads:
            p.grad = g
    return int(math.ceil(cost / 2)) + COPIES * _nbytes(x[0])


def fit_batch_size(model: nn.Module, shape: "tuple[int, ...]", requested: int, budget: "str | int | None" = None, *,
                   grad: bool = True, device: "str | torch.device | None" = None) -> int:
    """``min(requested, budget // per_image)``, at least 1. ``budget``: bytes or a size string
    (default :func:`default_budget` of the model's device)."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"requested batch size must be a positive integer, got {requested!r}")
    per = per_image_bytes(model, shape, grad=grad, device=device)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    limit = parse_size(budget) if budget is not None else default_budget(device)
    return max(1, min(int(requested), limit // max(per, 1)))


def describe(nbytes: int) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1 (``"1.5 GiB"``)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


def optional_fit(model: nn.Module, shape: "tuple[int, ...]", requested: int, budget: Optional[str], *,
                 grad: bool = True, device: "str | torch.device | None" = None) -> tuple[int, str]:
    """:func:`fit_batch_size` and a sentence for the log when it lowered the batch size ('' otherwise)."""
    got = fit_batch_size(model, shape, requested, budget, grad=grad, device=device)
    if got >= requested:
        return requested, ""
    per = per_image_bytes(model, shape, grad=grad, device=device)
    limit = parse_size(budget) if budget is not None else default_budget(device or "cpu")
    return got, (f"batch size {requested} -> {got}: one {'x'.join(str(s) for s in shape)} image costs about "
                 f"{describe(per)} {'with gradients ' if grad else ''}and the memory budget is {describe(limit)} "
                 "(--max-memory)")
