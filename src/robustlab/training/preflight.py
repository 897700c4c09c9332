"""Checks before the first epoch: data, model, device and adversary must fit together.

Each raises a ValueError / TypeError naming what does not fit, so a bad setup fails in
seconds rather than after an epoch (or at the end of training).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels, check_logits
from robustlab.attacks.base import eval_mode
from robustlab.training.base import Adversary
from robustlab.models.metrics import as_tensors


def expected_channels(model: nn.Module) -> Optional[int]:
    """The input channels the model declares (``arch_config``) or its first Conv2d takes; None if unknown."""
    arch = getattr(model, "arch_config", None)
    if isinstance(arch, Mapping) and arch.get("in_channels"):
        return int(arch["in_channels"])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def check_data(data: Any, what: str, channels: Optional[int], image_shape: Optional[tuple]) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of a Dataset or pair, validated: images in [0, 1] with the model's
    channels (and ``image_shape`` when given), integer labels of matching length."""
    images, labels = as_tensors(data)
    check_images(images, f"{what} images")
    check_labels(labels, images.shape[0], f"{what} labels")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what} has {images.shape[1]} channels (images {tuple(images.shape[1:])}) but the model "
                         f"expects {channels}: the dataset and the architecture do not match")
    if image_shape is not None and tuple(images.shape[1:]) != image_shape:
        raise ValueError(f"{what} images have shape {tuple(images.shape[1:])}, the training images {image_shape}")
    return images, labels


def probe(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device, classes: Any = None) -> int:
    """One eval-mode forward pass on two images: the output must be (N, K) logits covering the
    labels, with K the dataset's number of classes when it names them."""
    probe = images[:2].to(device)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(probe)
    except RuntimeError as exc:
        raise ValueError(f"the model cannot process training images of shape {tuple(probe.shape[1:])}: {exc}") from exc
    check_logits(out, probe.shape[0], "the model's output")
    k = int(out.shape[1])
    if int(labels.max()) >= k:
        raise ValueError(f"the labels go up to {int(labels.max())} but the model has {k} outputs (classes 0..{k - 1})")
    if classes is not None and len(classes) != k:
        raise ValueError(f"the dataset has {len(classes)} classes but the model has {k} outputs: the model was "
                         "built for another dataset")
    return k


def check_amp(device: torch.device, amp: Optional[str]) -> None:
    """bfloat16 autocast must exist for the device (and the GPU must support bfloat16)."""
    if amp is None:
        return
    available = getattr(torch.amp.autocast_mode, "is_autocast_available", lambda t: t in ("cpu", "cuda"))
    if not available(device.type):
        raise ValueError(f"amp={amp!r}: this PyTorch has no autocast for device type {device.type!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp={amp!r}: the GPU {torch.cuda.get_device_name(device)} does not support bfloat16")


def check_adversary(adversary: Adversary, images: Tensor) -> None:
    """A threat model must fit the data: its box holds the images, its radius is not larger
    than the box itself (for l2 / l1 the box's diameter depends on the image size)."""
    tm = getattr(adversary, "threat", None)
    if tm is None or not hasattr(tm, "norm"):
        return
    lo, hi = float(images.min()), float(images.max())
    if lo < tm.lower or hi > tm.upper:
        raise ValueError(f"the training images lie in [{lo:.4g}, {hi:.4g}], outside the threat model's box "
                         f"[{tm.lower}, {tm.upper}]")
    d = images[0].numel()
    width = tm.upper - tm.lower
    diameter = {"linf": width, "l2": width * math.sqrt(d), "l1": width * d}.get(tm.norm)
    if diameter is not None and tm.eps > diameter:
        raise ValueError(f"eps={tm.eps} for norm {tm.norm} exceeds the diameter {diameter:.4g} of the image box "
                         f"({d} values in [{tm.lower}, {tm.upper}]): every image could become any other")
