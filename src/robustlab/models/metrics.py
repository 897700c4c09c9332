"""Clean accuracy of a model on a dataset, in batches, without gradients.

Shared by the training loop (validation after every epoch) and the evaluate module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.model_ops import eval_mode, model_device


def as_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` from a :class:`~robustlab.data.Dataset` (or any object with
    ``.images`` / ``.labels``) or an ``(images, labels)`` pair of tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    elif hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    else:
        raise TypeError(f"data must be a robustlab Dataset or an (images, labels) pair, got {type(data).__name__}")
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"data must hold tensors, got images {type(images).__name__} and labels {type(labels).__name__}")
    if images.dim() < 2 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"data must hold images (N, C, H, W) and labels (N,), got shapes {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    return images, labels


def predictions(model: nn.Module, data: Any, batch_size: int = 512) -> Tensor:
    """Predicted class per sample, ``argmax_k f(x)_k`` (N,) on the CPU; eval mode, restored afterwards."""
    check_positive(batch_size, "batch_size", integer=True)
    images, _ = as_tensors(data)
    dev = model_device(model, images.device)
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out.append(model(images[i : i + batch_size].to(dev)).argmax(1))
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, data: Any, batch_size: int = 512) -> float:
    """Fraction of samples whose predicted class equals the label (eval mode, no gradients;
    the model's mode is restored afterwards)."""
    _, labels = as_tensors(data)
    if labels.numel() == 0:
        raise ValueError("data is empty; accuracy needs at least one sample")
    return float((predictions(model, data, batch_size) == labels.cpu()).float().mean())
