"""Clean accuracy of a model on a dataset, in batches, without gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustlab.attacks.base import eval_mode, model_device


def as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a :class:`~robustlab.data.Dataset` or a pair of tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, data.labels
    raise TypeError(f"data must be a robustlab Dataset or an (images, labels) pair, got {type(data).__name__}")


def predictions(model: nn.Module, data: Any, batch_size: int = 512) -> torch.Tensor:
    """Predicted class per sample (eval mode, restored afterwards)."""
    images, _ = as_tensors(data)
    dev = model_device(model, images.device)
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out.append(model(images[i : i + batch_size].to(dev)).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, data: Any, batch_size: int = 512) -> float:
    """Fraction of samples whose predicted class equals the label."""
    _, labels = as_tensors(data)
    if labels.numel() == 0:
        raise ValueError("data is empty; accuracy needs at least one sample")
    return float((predictions(model, data, batch_size) == labels.cpu()).float().mean())
