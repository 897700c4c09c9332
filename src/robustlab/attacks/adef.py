"""Adversarial deformations: the deformation threat model and ADef.

A deformation moves pixels instead of changing their values. For a vector field
``tau : {pixels} -> R^2`` (in pixel units) the deformed image is ``x_tau(s) = x(s + tau(s))``,
evaluated between pixels by bilinear interpolation (``torch.nn.functional.grid_sample``). Its size
is not a norm of ``x_tau - x`` but the largest displacement (Alaifari, Alberti, Gauksson 2019,
arXiv:1804.07729, Sec. 2)::

    ||tau||_T = max_s ||tau(s)||_2          (pixels)

:class:`DeformationThreat` is the set ``{x_tau : ||tau||_T <= max_norm}`` beside the Lp
:class:`robustlab.ThreatModel`. Deformation attacks (:class:`ADef`, :class:`robustlab.attacks.Spatial`)
return ``AttackResult.norm == "deformation"``, ``distance = ||tau||_T`` and the field itself in
``AttackResult.info["tau"]`` (N, 2, H, W): channel 0 the horizontal displacement (along a row,
towards larger column index), channel 1 the vertical one (towards larger row index), so that
``deform(x, info["tau"])`` reproduces ``x_adv`` exactly. ``info["l2"]`` keeps ``||x_adv - x||_2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, AttackResult, RawResult, predict
from robustlab.losses import margin

PADDINGS = ("border", "zeros", "reflection")


def _pixel_scale(h: int, w: int, like: Tensor) -> Tensor:
    """Pixels -> grid_sample's normalised coordinates (align_corners=True): (2,) = (2/(W-1), 2/(H-1))."""
    return torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=like.device, dtype=like.dtype)


def identity_grid(n: int, h: int, w: int, like: Tensor) -> Tensor:
    """The sampling grid of the identity map, (N, H, W, 2) in normalised (x, y) coordinates."""
    ys = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)  # (N, H, W, 2)


def deform(x: Tensor, tau: Tensor, *, padding: str = "border") -> Tensor:
    """``x_tau(s) = x(s + tau(s))`` by bilinear interpolation, for x (N, C, H, W) and tau (N, 2, H, W)
    in pixels (channel 0 horizontal, 1 vertical). Outside the image ``padding`` applies
    (``"border"`` repeats the edge, as the ADef authors; ``"zeros"`` fills with 0). Differentiable
    in both arguments; a zero field returns ``x`` up to round-off."""
    n, _, h, w = x.shape
    if tau.shape != (n, 2, h, w):
        raise ValueError(f"tau must have shape {(n, 2, h, w)} for x of shape {tuple(x.shape)}, got {tuple(tau.shape)}")
    grid = identity_grid(n, h, w, x) + tau.permute(0, 2, 3, 1) * _pixel_scale(h, w, x)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def field_norm(tau: Tensor) -> Tensor:
    """``||tau||_T = max_s ||tau(s)||_2`` per sample: (N, 2, H, W) -> (N,)."""
    return tau.square().sum(dim=1).flatten(1).amax(dim=1).sqrt()


def image_gradient(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(d/dcol x, d/drow x)`` per channel, each (N, C, H, W): central differences inside, one-sided
    differences on the border (the discretisation of ``nabla x`` in ADef's step)."""
    d_row, d_col = torch.gradient(x, dim=(2, 3))
    return d_col, d_row


def gaussian_smooth(field: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian filter of standard deviation ``sigma`` pixels (truncated at 4 sigma) on
    every channel of (N, C, H, W), with zero padding. A symmetric kernel with zero padding is a
    self-adjoint operator, which ADef's least-squares step relies on. ``sigma = 0``: identity."""
    if sigma <= 0:
        return field
    radius = max(1, int(4.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=field.device, dtype=field.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = field.shape[1]
    kx = k.reshape(1, 1, 1, -1).expand(c, 1, 1, k.numel())  # (C, 1, 1, K)
    ky = k.reshape(1, 1, -1, 1).expand(c, 1, k.numel(), 1)  # (C, 1, K, 1)
    out = F.conv2d(field, kx, padding=(0, radius), groups=c)
    return F.conv2d(out, ky, padding=(radius, 0), groups=c)


@dataclass(frozen=True)
class DeformationThreat:
    """Deformations of size at most ``max_norm`` pixels: ``{x_tau : ||tau||_T <= max_norm}``.

    Args:
        max_norm: the largest displacement of any pixel, in pixels (> 0).
        padding: how the image continues outside its frame when a pixel is sampled there
            (``"border"``, ``"zeros"`` or ``"reflection"``).
    """

    max_norm: float
    padding: str = "border"

    norm = "deformation"

    def __post_init__(self) -> None:
        if isinstance(self.max_norm, bool) or not isinstance(self.max_norm, (int, float)) or not math.isfinite(self.max_norm):
            raise ValueError(f"max_norm must be a finite number of pixels > 0, got {self.max_norm!r}")
        if self.max_norm <= 0:
            raise ValueError(f"max_norm must be > 0 pixels (a deformation radius), got {self.max_norm!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        object.__setattr__(self, "max_norm", float(self.max_norm))

    def distance(self, tau: Tensor) -> Tensor:
        """``||tau||_T`` per sample (N,)."""
        return field_norm(tau)

    def contains(self, tau: Tensor, *, atol: float = 1e-5) -> Tensor:
        """Per-sample bool: ``||tau||_T <= max_norm`` (+ atol)."""
        return field_norm(tau) <= self.max_norm + atol

    def project(self, tau: Tensor) -> Tensor:
        """Scale every field with ``||tau||_T > max_norm`` down to ``max_norm``: ``tau * min(1, r / ||tau||_T)``.
        Scaling keeps the field's shape (and its smoothness), unlike clipping each vector."""
        norms = field_norm(tau)
        scale = torch.where(norms > self.max_norm, self.max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
        return tau * scale.reshape(-1, 1, 1, 1)

    def deform(self, x: Tensor, tau: Tensor) -> Tensor:
        """``x_tau`` with this threat's padding; see :func:`deform`."""
        return deform(x, tau, padding=self.padding)

    def to_dict(self) -> dict:
        return {"norm": self.norm, "max_norm": self.max_norm, "padding": self.padding}


def _as_threat(threat: "DeformationThreat | float | None", padding: str) -> Optional[DeformationThreat]:
    if threat is None or isinstance(threat, DeformationThreat):
        return threat
    if isinstance(threat, bool) or not isinstance(threat, (int, float)):
        raise TypeError(f"threat must be a DeformationThreat, a max_norm in pixels or None, got {type(threat).__name__}")
    return DeformationThreat(float(threat), padding)


class DeformationAttack(Attack):
    """Shared result handling of deformation attacks: ``_run`` returns ``info["tau"]`` (pixels) and
    :meth:`attack` reports ``distance = ||tau||_T`` with ``norm = "deformation"``.

    ``threat`` (the Lp attribute of :class:`Attack`) stays None: there is no Lp ball; the
    deformation budget is ``self.deformation``."""

    deformation: Optional[DeformationThreat] = None
    padding: str = "border"

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Optional[Tensor] = None) -> AttackResult:
        """Attack as :meth:`Attack.attack`; ``distance`` is ``||tau||_T`` in pixels, ``info["tau"]``
        the field (zero for inputs already misclassified) and ``info["l2"]`` ``||x_adv - x||_2``."""
        if not isinstance(x, Tensor) or x.dim() != 4 or min(x.shape[2:]) < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be images (N, C, H, W) with H, W >= 2 for a deformation attack, got {shape}")
        res = super().attack(model, x, y, target=target)
        tau = res.info.get("tau")
        if not isinstance(tau, Tensor):
            tau = torch.zeros(x.shape[0], 2, *x.shape[2:], device=x.device, dtype=x.dtype)
        tau = torch.nan_to_num(tau, nan=0.0)  # samples skipped as already adversarial: no deformation
        res.info["tau"] = tau
        res.info["l2"] = res.distance
        res.distance = field_norm(tau)
        res.norm = "deformation"
        return res

    def config(self) -> dict:
        out = super().config()
        if isinstance(out.get("deformation"), DeformationThreat):
            out["deformation"] = out["deformation"].to_dict()
        return out


class ADef(DeformationAttack):
    """ADef (Alaifari, Alberti, Gauksson, ICLR 2019, arXiv:1804.07729, Algorithm 1).

    For the current deformed image ``y_n = x_{tau_n}`` with label ``l`` and each candidate class
    ``k``, ``g_k(tau) = F_k(x_tau) - F_l(x_tau)`` is linearised in the field (their Sec. 2.1)::

        g_k(tau_n + v) ~ g_k(tau_n) + sum_s alpha_k(s) . v(s),
        alpha_k(s) = sum_c d(F_k - F_l)/dy_n(c, s) * nabla y_n(c, s)      (input gradient x image gradient)

    where ``nabla y_n(s)`` is the gradient of the bilinear interpolant of ``x`` at ``s + tau_n(s)``
    (``gradient="interpolant"``, the default: autograd through ``grid_sample``, the exact derivative
    of the discrete map) or central differences of ``y_n`` (``gradient="central"``, the authors'
    discretisation, which undershoots more on MNIST), and ``sum_s alpha_k . v = -g_k`` is solved in
    the least-squares sense within the range of the Gaussian smoothing operator ``S``
    (self-adjoint): ``v_k = -g_k S^2 alpha_k / ||S alpha_k||^2``.
    Each step is lengthened by the overshoot, ``tau_{n+1} = tau_n + (1 + overshoot) v_k`` for the
    candidate with the smallest ``||tau_{n+1}||_T`` (the original image is deformed by the
    accumulated field, never resampled twice), until the label changes or ``steps`` iterations are
    spent. The overshoot carries the linearised step past the boundary instead of onto it, where an
    exact step (overshoot 0) stalls; the authors' code instead scales the final field by it. Fields
    are kept within ``threat`` by scaling (:meth:`DeformationThreat.project`).
    Candidates: the ``candidates`` most likely classes other than ``y`` at ``x`` (the target alone
    when targeted). All candidate gradients of the batch come from one forward and one backward pass;
    samples leave the batch when they succeed.

    Args:
        threat: a :class:`DeformationThreat` (or its ``max_norm`` in pixels) bounding ``||tau||_T``;
            None searches without a bound (``distance`` is then the size of the field found).
        steps: maximum iterations (50).
        candidates: candidate classes other than the label (9: every other MNIST class).
        sigma: standard deviation of the Gaussian smoothing of the field, pixels (1.0; 0 = none).
        overshoot: every step is ``(1 + overshoot)`` times the least-squares step (0.1).
        padding: image continuation outside the frame when ``threat`` is not given (``"border"``).
        tol: a sample is done once adversarial with a logit gap above ``tol`` (1e-4), so that a
            point on the decision boundary within round-off keeps iterating.
        gradient: ``"interpolant"`` or ``"central"``: how ``nabla x`` is discretised (see above).
    """

    minimal = True

    def __init__(
        self,
        threat: "DeformationThreat | float | None" = None,
        *,
        steps: int = 50,
        candidates: int = 9,
        sigma: float = 1.0,
        overshoot: float = 0.1,
        padding: str = "border",
        tol: float = 1e-4,
        gradient: str = "interpolant",
        seed: int = 0,
    ) -> None:
        if gradient not in ("central", "interpolant"):
            raise ValueError(f"gradient must be 'central' or 'interpolant', got {gradient!r}")
        self.gradient = gradient
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.deformation = _as_threat(threat, padding)
        self.padding = self.deformation.padding if self.deformation is not None else padding
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.candidates = int(check_positive(candidates, "candidates", integer=True))
        self.sigma = float(check_positive(sigma, "sigma", allow_zero=True))
        self.overshoot = float(check_positive(overshoot, "overshoot", allow_zero=True))
        self.tol = float(check_positive(tol, "tol", allow_zero=True))
        self.seed = int(seed)

    def _linearise(self, model: nn.Module, x: Tensor, tau: Tensor, cand: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """``(g (n, M), alpha (M, n, 2, H, W))``: ``g_k = F_k - F_l`` at ``x_tau`` and its derivative
        with respect to the field, for the M candidate columns of ``cand`` (n, M)."""
        m = cand.shape[1]

        def gaps(logits: Tensor) -> Tensor:
            return logits.gather(1, cand) - logits.gather(1, label[:, None])  # (n, M): F_k - F_l

        if self.gradient == "central":
            y_n = deform(x, tau, padding=self.padding)
            g, _, jac = self._jacobian(model, y_n, gaps, m)  # jac (M, n, C, H, W)
            d_col, d_row = image_gradient(y_n)  # (n, C, H, W) each
            alpha = torch.stack([(jac * d_col).sum(dim=2), (jac * d_row).sum(dim=2)], dim=2)
            return g, alpha
        # "interpolant": the exact derivative of F(x_tau) in tau through the bilinear resampling,
        # i.e. grad F(x_tau)(s) . (nabla of the interpolant of x)(s + tau(s)); one backward pass
        # for all candidates (the batch repeated M times), averaged over EOT draws.
        n = x.shape[0]
        g_sum = a_sum = None
        with torch.enable_grad():
            for _ in range(self._eot_draws):
                tr = tau.detach().repeat(m, 1, 1, 1).requires_grad_(True)  # (M*n, 2, H, W)
                logits = model(deform(x.repeat(m, 1, 1, 1), tr, padding=self.padding)).reshape(m, n, -1)
                sel = torch.stack([gaps(logits[j])[:, j] for j in range(m)])  # (M, n)
                (grad,) = torch.autograd.grad(sel.sum(), tr)
                g_j, a_j = sel.detach().t(), grad.reshape(m, n, *tau.shape[1:])
                g_sum = g_j if g_sum is None else g_sum + g_j
                a_sum = a_j if a_sum is None else a_sum + a_j
        return g_sum / self._eot_draws, a_sum / self._eot_draws  # type: ignore[operator]

    def _step_field(self, alpha: Tensor, g: Tensor) -> Tensor:
        """Least-squares field steps ``-g_k S^2 alpha_k / ||S alpha_k||^2`` for every candidate:
        alpha (M, N, 2, H, W), g (N, M) -> (M, N, 2, H, W)."""
        m, n, _, h, w = alpha.shape
        s_alpha = gaussian_smooth(alpha.reshape(m * n, 2, h, w), self.sigma)  # (M*N, 2, H, W)
        sq = s_alpha.square().flatten(1).sum(dim=1).clamp_min(1e-20)  # ||S alpha||^2, (M*N,)
        s2_alpha = gaussian_smooth(s_alpha, self.sigma).reshape(m, n, 2, h, w)
        coef = (-g.t() / sq.reshape(m, n)).reshape(m, n, 1, 1, 1)  # -g_k / ||S alpha_k||^2
        return coef * s2_alpha

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, _, h, w = x.shape
        dev = x.device
        logits0 = predict(model, x)
        k = logits0.shape[1]
        if target is None:
            others = logits0.masked_fill(F.one_hot(y, k).bool(), float("-inf"))
            cand = others.topk(min(self.candidates, k - 1), dim=1).indices  # (N, M)
        else:
            cand = target[:, None]  # (N, 1)
        scale = 1.0 + self.overshoot
        tau = torch.zeros(n, 2, h, w, device=dev, dtype=x.dtype)  # the field of the current iterate
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        active = torch.ones(n, dtype=torch.bool, device=dev)
        current = logits0.argmax(1)  # the label l of the current iterate
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, ca, ta = x[idx], cand[idx], tau[idx]
            g, alpha = self._linearise(model, xa, ta, ca, current[idx])  # label l: y until success
            fields = ta.unsqueeze(0) + scale * self._step_field(alpha, g)  # (M, n, 2, H, W)
            best = field_norm(fields.flatten(0, 1)).reshape(fields.shape[0], -1).argmin(dim=0)  # (n,)
            ta = fields[best, torch.arange(idx.numel(), device=dev)]  # (n, 2, H, W)
            if self.deformation is not None:
                ta = self.deformation.project(ta)
            tau[idx] = ta
            iterations[idx] += 1
            logits = predict(model, deform(xa, ta, padding=self.padding))
            current[idx] = logits.argmax(1)
            # Done once adversarial by a logit gap above tol: a point on the boundary within
            # round-off could flip back when the batch is evaluated again.
            gap = -margin(logits, y[idx]) if target is None else margin(logits, target[idx])
            active[idx] = ~(gap > self.tol)
        x_adv = deform(x, tau, padding=self.padding)
        return RawResult(x_adv=x_adv, iterations=iterations, info={"tau": tau})
