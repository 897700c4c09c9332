"""Validation at the public boundary: one place for the errors a user sees.

Every message names the argument, the value it got and what was expected.
"""

from __future__ import annotations

import math
from typing import Optional

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
