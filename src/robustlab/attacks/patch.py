"""Adversarial patch (Brown, Mane, Roy, Abadi, Gilmer, "Adversarial Patch", 2017, arXiv:1712.09665).

A universal, targeted, image-independent patch ``p`` (C, P, P) trained with Expectation over
Transformation (Athalye et al. 2018): with ``A(p, x, l, t)`` the operator that pastes ``p`` onto
image ``x`` at location ``l`` after the transformation ``t`` (here a scale and a rotation), the
patch maximises (their Eq. 2)::

    p* = argmax_p  E_{x ~ X, t ~ T, l ~ L} [ log Pr(target | A(p, x, l, t)) ]

estimated on mini-batches of training images with fresh random placements every step (Adam,
pixel values kept in the box). On held-out images the patch is pasted at random placements and
the targeted success rate is the fraction classified as the target (images of the target class
excluded). The patch is opaque: pasted pixels replace the image's (a bilinear mask at its edge).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_images, check_positive
from robustlab.attacks.base import eval_mode, model_device, predict
from robustlab.attacks.spelling import spellings


class AdversarialPatch:
    """Train a targeted patch with EOT over placement, scale and rotation; paste it; score it.

    Args:
        patch_size: side ``P`` of the square patch in pixels at scale 1.
        scale: ``(low, high)`` range of the random scale factor (0.8, 1.2); the pasted patch is
            ``scale * P`` pixels wide and must fit in the image at the largest scale.
        max_rotation: rotations drawn in ``[-max_rotation, max_rotation]`` degrees (22.5).
        steps: optimisation steps (300), each on ``batch_size`` random training images (64).
        step_size: Adam step size on pixel values (0.05; formerly ``lr``).
        bounds: the image box (0, 1).
        seed: seeds the initial patch, the batches and the placements.

    ``fit(model, x, target_class)`` returns the patch (C, P, P); ``apply(x)`` pastes it at random
    placements; ``success_rate(model, x, y)`` is the targeted success on held-out images.
    """

    @spellings(renamed={"lr": "step_size"})
    def __init__(
        self,
        patch_size: int,
        *,
        scale: tuple[float, float] = (0.8, 1.2),
        max_rotation: float = 22.5,
        steps: int = 300,
        batch_size: int = 64,
        step_size: float = 0.05,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.patch_size = int(check_positive(patch_size, "patch_size", integer=True))
        lo_s, hi_s = (float(check_positive(s, "scale")) for s in scale)
        if lo_s > hi_s:
            raise ValueError(f"scale must be (low, high) with low <= high, got {scale!r}")
        self.scale = (lo_s, hi_s)
        self.max_rotation = float(check_positive(max_rotation, "max_rotation", allow_zero=True))
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.step_size = float(check_positive(step_size, "step_size"))
        if not float(bounds[0]) < float(bounds[1]):
            raise ValueError(f"bounds must be (lower, upper) with lower < upper, got {bounds!r}")
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.seed = int(seed)
        self.patch_: Optional[Tensor] = None
        self.target_class_: Optional[int] = None

    # -- geometry ---------------------------------------------------------------------------
    def _check_fits(self, x: Tensor) -> None:
        h, w = x.shape[-2:]
        largest = self.scale[1] * self.patch_size
        if largest > min(h, w):
            raise ValueError(
                f"the patch is larger than the image: patch_size={self.patch_size} at scale up to {self.scale[1]} "
                f"is {largest:g} pixels, but the images are {h}x{w}; use patch_size <= {int(min(h, w) / self.scale[1])}"
            )

    def paste(self, x: Tensor, patch: Tensor, scale: Tensor, angle: Tensor, centre: Tensor) -> Tensor:
        """``A(p, x, l, t)``: paste ``patch`` (C, P, P) onto each image of ``x`` (N, C, H, W) scaled
        by ``scale`` (N,), rotated by ``angle`` (N,, degrees) with its centre at ``centre`` (N, 2)
        = (column, row) in pixels. Differentiable in ``patch``."""
        n, c, h, w = x.shape
        p = patch.shape[-1]
        dt, dev = x.dtype, x.device
        th = angle.to(dt) * (math.pi / 180.0)
        cos, sin = th.cos()[:, None, None], th.sin()[:, None, None]  # (N, 1, 1)
        ys = torch.arange(h, device=dev, dtype=dt)
        xs = torch.arange(w, device=dev, dtype=dt)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
        dx = gx - centre[:, 0, None, None]
        dy = gy - centre[:, 1, None, None]  # (N, H, W): image pixel relative to the patch centre
        half = p / 2.0  # the patch spans scale * P pixels (align_corners=False: -1, 1 are its outer edges)
        s = scale.to(dt)[:, None, None]
        u = (cos * dx + sin * dy) / (s * half)  # R(-theta)(pixel - centre) / scale, in [-1, 1] on the patch
        v = (-sin * dx + cos * dy) / (s * half)
        grid = torch.stack([u, v], dim=-1)  # (N, H, W, 2)
        src = patch.to(dt).unsqueeze(0).expand(n, c, p, p)
        warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = F.grid_sample(torch.ones_like(src[:, :1]), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x * (1 - mask) + warped

    def _draw(self, n: int, h: int, w: int, like: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Random ``(scale, angle, centre)`` for ``n`` images: the unrotated patch lies in the frame."""
        dev, dt = like.device, like.dtype
        u = torch.rand(n, 4, generator=generator, device=dev, dtype=dt)
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        angle = self.max_rotation * (2 * u[:, 1] - 1)
        half = scale * self.patch_size / 2  # half the pasted side, pixels
        cx = (half - 0.5) + u[:, 2] * ((w - 0.5 - half) - (half - 0.5)).clamp_min(0)
        cy = (half - 0.5) + u[:, 3] * ((h - 0.5 - half) - (half - 0.5)).clamp_min(0)
        return scale, angle, torch.stack([cx, cy], dim=1)

    # -- public API ---------------------------------------------------------------------------
    def fit(self, model: nn.Module, x: Tensor, target_class: int) -> Tensor:
        """Train the patch on images ``x`` (N, C, H, W) towards ``target_class``; returns (C, P, P)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x, "x", lower=self.bounds[0], upper=self.bounds[1])
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one image, got an empty batch")
        self._check_fits(x)
        if isinstance(target_class, bool) or not isinstance(target_class, int) or target_class < 0:
            raise ValueError(f"target_class must be a class index >= 0, got {target_class!r}")
        if model_device(model, x.device) != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {model_device(model, x.device)}")
        x = x.detach()
        n, c, h, w = x.shape
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        lo, hi = self.bounds
        patch = (lo + (hi - lo) * torch.rand(c, self.patch_size, self.patch_size, generator=g, device=x.device, dtype=x.dtype))
        patch.requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.step_size)
        with eval_mode(model):
            k = predict(model, x[:1]).shape[1]
            if target_class >= k:
                raise ValueError(f"target_class must be < the model's {k} classes, got {target_class}")
            target = torch.full((self.batch_size,), target_class, dtype=torch.long, device=x.device)
            for _ in range(self.steps):
                idx = torch.randint(n, (self.batch_size,), generator=g, device=x.device)
                scale, angle, centre = self._draw(self.batch_size, h, w, x, g)
                with torch.enable_grad():
                    logits = model(self.paste(x[idx], patch, scale, angle, centre))
                    loss = F.cross_entropy(logits, target)  # -E[log Pr(target | A(p, x, l, t))]
                    (grad,) = torch.autograd.grad(loss, patch)
                patch.grad = grad
                opt.step()
                with torch.no_grad():
                    patch.clamp_(lo, hi)
        self.patch_ = patch.detach()
        self.target_class_ = int(target_class)
        return self.patch_

    def apply(self, x: Tensor, patch: Optional[Tensor] = None, *, seed: Optional[int] = None) -> Tensor:
        """Paste the fitted patch (or ``patch``) onto every image of ``x`` at a random placement,
        scale and rotation (seeded by ``seed``, default: this object's seed + 1)."""
        patch = self._fitted(patch)
        check_images(x, "x", lower=self.bounds[0], upper=self.bounds[1])
        self._check_fits(x)
        if patch.shape != (x.shape[1], self.patch_size, self.patch_size):
            raise ValueError(f"patch must have shape {(x.shape[1], self.patch_size, self.patch_size)}, got {tuple(patch.shape)}")
        g = torch.Generator(device=x.device).manual_seed(self.seed + 1 if seed is None else int(seed))
        scale, angle, centre = self._draw(x.shape[0], *x.shape[-2:], x, g)
        return self.paste(x, patch.to(x.device, x.dtype), scale, angle, centre).detach()

    def success_rate(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target_class: Optional[int] = None,
        patch: Optional[Tensor] = None,
        *,
        draws: int = 1,
        seed: Optional[int] = None,
    ) -> float:
        """Targeted success on held-out images: the fraction of (image, placement) pairs classified
        as ``target_class``, over the images whose label is not the target, ``draws`` random
        placements each."""
        patch = self._fitted(patch)
        target_class = self.target_class_ if target_class is None else int(target_class)
        if target_class is None:
            raise ValueError("target_class is not known: call fit(...) first or pass it")
        draws = int(check_positive(draws, "draws", integer=True))
        keep = y != target_class
        xs = x[keep]
        if xs.shape[0] == 0:
            return 0.0
        base = self.seed + 1 if seed is None else int(seed)
        hits = 0.0
        with eval_mode(model):
            for d in range(draws):
                pred = predict(model, self.apply(xs, patch, seed=base + d), 512).argmax(1)
                hits += float((pred == target_class).float().mean())
        return hits / draws

    def _fitted(self, patch: Optional[Tensor]) -> Tensor:
        if patch is None:
            if self.patch_ is None:
                raise ValueError("no patch: call fit(model, x, target_class) first or pass patch")
            return self.patch_
        return patch
