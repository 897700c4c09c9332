"""Worst-case rotation and translation by grid search (Engstrom, Tran, Tsipras, Schmidt, Madry,
"Exploring the Landscape of Spatial Robustness", ICML 2019, arXiv:1712.02779, Sec. 3).

The threat is the set of rigid motions ``T_{theta, t}`` with ``|theta| <= max_angle`` and
``|t_x|, |t_y| <= max_shift`` pixels; the paper's MNIST budget is 30 degrees and 3 pixels, searched
on a grid of 31 angles x 5 x 5 translations (775 transformations). A rigid motion is a deformation
with field ``tau(s) = (R_theta - I)(s - c) + t`` (``c`` the image centre), so the result shares
ADef's conventions (:mod:`robustlab.attacks.adef`): ``norm = "deformation"``,
``distance = ||tau||_T`` (the largest pixel displacement, attained at a corner of the image), the
field in ``info["tau"]`` and the motion in ``info["angle"]`` (degrees), ``info["shift"]`` (N, 2).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.adef import PADDINGS, DeformationAttack, deform
from robustlab.attacks.base import RawResult, predict
from robustlab.losses import margin


def rigid_field(angle_deg: Tensor, shift: Tensor, h: int, w: int) -> Tensor:
    """The displacement field (T, 2, H, W) in pixels of rotations by ``angle_deg`` (T,) about the
    image centre followed by translations ``shift`` (T, 2) = (horizontal, vertical)."""
    dev, dt = shift.device, shift.dtype
    th = angle_deg.to(dt) * (math.pi / 180.0)
    cos, sin = th.cos()[:, None, None], th.sin()[:, None, None]  # (T, 1, 1)
    ys = torch.arange(h, device=dev, dtype=dt) - (h - 1) / 2
    xs = torch.arange(w, device=dev, dtype=dt) - (w - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    dx = (cos - 1) * gx - sin * gy + shift[:, 0, None, None]
    dy = sin * gx + (cos - 1) * gy + shift[:, 1, None, None]
    return torch.stack([dx, dy], dim=1)  # (T, 2, H, W)


class Spatial(DeformationAttack):
    """Grid search over rotations and translations; batched over images and transformations.

    Each image is evaluated under every transformation of the grid, taken in increasing order of
    ``||tau||_T``: the first that fools the model is kept (so the result is the smallest fooling
    motion of the grid) and the image leaves the batch; for images the grid cannot fool, the
    transformation with the highest loss (cross-entropy of the label, or of minus the target) is
    returned. ``iterations`` counts the transformations evaluated per image.

    Args:
        max_angle: rotations in ``[-max_angle, max_angle]`` degrees (30).
        angles: number of grid angles (31).
        max_shift: translations in ``[-max_shift, max_shift]`` pixels per axis (3).
        shifts: grid points per translation axis (5).
        padding: image continuation outside the frame (``"zeros"``, as a rotated photograph).
        batch_size: transformed images per forward pass (4096).
    """

    minimal = True

    def __init__(
        self,
        *,
        max_angle: float = 30.0,
        angles: int = 31,
        max_shift: float = 3.0,
        shifts: int = 5,
        padding: str = "zeros",
        batch_size: int = 4096,
        seed: int = 0,
    ) -> None:
        self.max_angle = float(check_positive(max_angle, "max_angle", allow_zero=True))
        self.angles = int(check_positive(angles, "angles", integer=True))
        self.max_shift = float(check_positive(max_shift, "max_shift", allow_zero=True))
        self.shifts = int(check_positive(shifts, "shifts", integer=True))
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.seed = int(seed)

    def grid(self, h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(angles (T,), shifts (T, 2), fields (T, 2, H, W))`` sorted by increasing ``||tau||_T``."""
        dt, dev = like.dtype, like.device
        a = torch.linspace(-self.max_angle, self.max_angle, self.angles, device=dev, dtype=dt) if self.angles > 1 else torch.zeros(1, device=dev, dtype=dt)
        s = torch.linspace(-self.max_shift, self.max_shift, self.shifts, device=dev, dtype=dt) if self.shifts > 1 else torch.zeros(1, device=dev, dtype=dt)
        ga, gx, gy = torch.meshgrid(a, s, s, indexing="ij")
        angles, shift = ga.reshape(-1), torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
        fields = rigid_field(angles, shift, h, w)
        order = fields.square().sum(1).flatten(1).amax(1).argsort(stable=True)
        return angles[order], shift[order], fields[order]

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, _, h, w = x.shape
        dev = x.device
        angles, shift, fields = self.grid(h, w, x)
        t = angles.numel()
        best_t = torch.zeros(n, dtype=torch.long, device=dev)  # chosen transformation per image
        best_loss = torch.full((n,), float("-inf"), device=dev, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        per = max(1, self.batch_size // n)  # transformations per forward pass
        for start in range(0, t, per):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            stop = min(t, start + per)
            m = idx.numel()
            ti = torch.arange(start, stop, device=dev)  # (t',)
            xs = x[idx].repeat(ti.numel(), 1, 1, 1)  # (t'*m, C, H, W), block j = transformation ti[j]
            taus = fields[ti].repeat_interleave(m, dim=0)  # (t'*m, 2, H, W)
            logits = predict(model, deform(xs, taus, padding=self.padding)).reshape(ti.numel(), m, -1)
            lab = (y[idx] if target is None else target[idx]).expand(ti.numel(), m)  # (t', m)
            flat, lab_f = logits.reshape(-1, logits.shape[-1]), lab.reshape(-1)
            ce = F.cross_entropy(flat, lab_f, reduction="none").reshape(ti.numel(), m)
            loss = ce if target is None else -ce
            gap = -margin(flat, lab_f) if target is None else margin(flat, lab_f)
            fools = (gap > 0).reshape(ti.numel(), m)  # (t', m)
            any_fool = fools.any(dim=0)
            first = fools.float().argmax(dim=0)  # first fooling transformation in this chunk
            top_loss, top = loss.max(dim=0)
            better = ~any_fool & (top_loss > best_loss[idx])
            choice = torch.where(any_fool, first, top)
            update = any_fool | better
            best_t[idx] = torch.where(update, ti[choice], best_t[idx])
            best_loss[idx] = torch.where(better, top_loss, best_loss[idx])
            iterations[idx] += torch.where(any_fool, first + 1, torch.full_like(first, ti.numel()))
            found[idx] = any_fool
        tau = fields[best_t]  # (N, 2, H, W)
        x_adv = deform(x, tau, padding=self.padding)
        info = {"tau": tau, "angle": angles[best_t], "shift": shift[best_t]}
        return RawResult(x_adv=x_adv, iterations=iterations, info=info)
