"""Data augmentation for training, batched and seeded: the standard CIFAR augmentation.

``crop-flip`` (He et al. 2016, arXiv:1512.03385, Sec. 4.2; used by every CIFAR-10 adversarial
training recipe: Madry et al. 2018, Zhang et al. 2019, Rice et al. 2020, Wong et al. 2020): pad
each image with ``pad`` zero pixels on every side, take a random ``H x W`` crop (offsets uniform
in ``0..2 pad``), and flip it left-right with probability 1/2. One gather for the whole batch;
offsets and flips come from the training loop's generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("crop-flip",)


def crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random ``pad``-pixel zero-padded crops and horizontal flips of ``x`` (N, C, H, W)."""
    n, c, h, w = x.shape
    dev = generator.device
    padded = F.pad(x, (pad, pad, pad, pad))  # (N, C, H + 2 pad, W + 2 pad)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns right to left
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C): advanced indices first
    return out.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def augment(x: Tensor, name: str, generator: torch.Generator) -> Tensor:
    """Apply augmentation ``name`` (one of :data:`AUGMENTATIONS`)."""
    if name == "crop-flip":
        return crop_flip(x, generator)
    raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
