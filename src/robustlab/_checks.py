"""Validation at the public boundary: one place for the errors a user sees.

Every message names the argument, the value it got and what was expected.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor


def check_images(
    x: object,
    name: str = "x",
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    channels: Optional[int] = None,
    allow_empty: bool = False,
) -> Tensor:
    """Check that ``x`` is a float tensor (N, C, H, W) of finite values in [lower, upper]."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (images in [{lower}, {upper}]), got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)} (rank {x.dim()})")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); expected at least one image")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}); the model expects {channels}")
    if x.numel() == 0:
        return x
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf values; expected finite images in [{lower}, {upper}]")
    lo, hi = float(x.min()), float(x.max())
    if lo < lower or hi > upper:
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected images in [{lower}, {upper}]")
    return x


def check_labels(y: object, n: int, name: str = "y", num_classes: Optional[int] = None) -> Tensor:
    """Check that ``y`` is an integer tensor (n,) with values in [0, num_classes)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype in (torch.bool,) or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got shape {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} contains negative class index {int(y.min())}; expected values in [0, num_classes)")
    if num_classes is not None and y.numel() and int(y.max()) >= num_classes:
        raise ValueError(
            f"{name} contains class index {int(y.max())}, but the model has {num_classes} classes "
            f"(expected values in [0, {num_classes - 1}])"
        )
    return y


def check_logits(logits: object, n: int, what: str = "model output") -> Tensor:
    """Check that a model returned (n, K) logits with K >= 2."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{what} must be a tensor of logits (N, K), got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(f"{what} must be logits of shape ({n}, K) with K >= 2 classes, got shape {tuple(logits.shape)}")
    return logits


def check_positive(value: object, name: str, *, allow_zero: bool = False, integer: bool = False) -> float:
    """Check a scalar hyperparameter is a finite positive number (or a positive integer)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value  # type: ignore[return-value]


def check_probability(value: object, name: str) -> float:
    """Check ``value`` lies in the open interval (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a probability in (0, 1), got {value!r}")
    return float(value)


def _first_layer(model: torch.nn.Module) -> "Optional[tuple[str, torch.nn.Module]]":
    """The first convolution or linear layer in registration order (its name and module), if any."""
    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not isinstance(module, torch.nn.modules.lazy.LazyModuleMixin):
            return name or type(module).__name__, module
    return None


def explain_input_mismatch(model: torch.nn.Module, x: Tensor, name: str = "x") -> Optional[str]:
    """Why ``model`` cannot take ``x``, in words, when it is a dtype or channel mismatch with the
    model's parameters / first layer; None when no such mismatch is visible from outside.

    Only used after a forward pass failed, so a model whose first registered layer is not the
    first one applied never gets a false error.
    """
    params = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if params and x.is_floating_point() and x.dtype != params[0].dtype:
        return (f"{name} has dtype {x.dtype} but the model's parameters are {params[0].dtype}; convert the "
                f"images with x.to({params[0].dtype}) or the model with model.to({x.dtype})")
    mean = getattr(model, "mean", None)
    if isinstance(mean, Tensor) and mean.dim() == 4 and mean.shape[1] not in (1, x.shape[1]) and x.dim() == 4:
        return (f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}) but the model's normalisation has "
                f"{mean.shape[1]} channels (mean {tuple(round(v, 4) for v in mean.flatten().tolist())})")
    found = _first_layer(model)
    if found is None or x.dim() < 2:
        return None
    layer_name, layer = found
    if isinstance(layer, torch.nn.Conv2d) and x.dim() == 4 and x.shape[1] != layer.in_channels:
        return (f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}) but the model's first layer "
                f"{layer_name!r} (Conv2d) expects {layer.in_channels} input channels")
    if isinstance(layer, torch.nn.Linear):
        per_image = int(x[0].numel())
        if per_image != layer.in_features and x.shape[-1] != layer.in_features:
            return (f"{name} has {per_image} values per image (shape {tuple(x.shape)}) but the model's first layer "
                    f"{layer_name!r} (Linear) expects {layer.in_features} inputs")
    return None


def forward_checked(fn: "Callable[[torch.nn.Module, Tensor], Tensor]", model: torch.nn.Module, x: Tensor,
                    name: str = "x") -> Tensor:
    """``fn(model, x)``, turning torch's shape/dtype RuntimeError into a ValueError that names the
    mismatch (input channels / dtype vs the model's first layer) when one is visible."""
    try:
        return fn(model, x)
    except RuntimeError as exc:
        if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
            raise  # out of memory is not an input mismatch
        why = explain_input_mismatch(model, x, name)
        if why is None:
            raise
        raise ValueError(why) from exc
