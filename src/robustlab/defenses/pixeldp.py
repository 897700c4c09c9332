"""PixelDP (Lecuyer, Atlidakis, Geambasu, Hsu, Jana, IEEE S&P 2019, arXiv:1802.03471).

A noise layer right after the network's first layer turns the network into an (eps, delta)-DP
mechanism with respect to input perturbations of size ``L`` in an Lp norm ("(eps, delta)-PixelDP",
Sec. III-B): for any input change ``alpha`` with ``||alpha||_p <= L`` and every bounded score
``A_k`` in [0, 1],  ``E[A_k(x)] <= e^eps E[A_k(x + alpha)] + delta``.

* Mechanism (Sec. III-C). The first layer ``g`` has sensitivity ``Delta_{p,q} = max ||g(x) -
  g(x')||_q / ||x - x'||_p``, its ``p -> q`` operator norm. Gaussian: noise ``N(0, sigma^2)`` with
  ``sigma = sqrt(2 ln(1.25 / delta)) Delta_{p,2} L / eps`` (valid for ``eps <= 1``, Dwork & Roth
  2014, Thm A.1); Laplace: noise ``Lap(b)`` with ``b = Delta_{p,1} L / eps`` and ``delta = 0``.
* Sensitivity kept bounded (Sec. III-D): the first layer's weights are normalised so that
  ``Delta <= 1`` and the noise is calibrated with ``Delta = 1``. Here the normalisation is a
  reparametrisation applied in every forward pass (the paper projects after each step; ours
  cannot be skipped and is differentiable). With ``x -> (x - mean) / std`` folded in, the
  effective weight is ``W_eff = W / std`` (per input channel) and:

  - ``norm="l2"`` (Gaussian): ``Delta_{2,2}`` = the spectral norm. Linear: ``||W_eff||_2``
    exactly (SVD). Conv2d (stride s, kernel k): ``sqrt(ceil(kh/sh) ceil(kw/sw)) ||W_mat||_2``,
    ``W_mat`` the (out, in*kh*kw) matrix, an upper bound (each pixel lies in at most that many
    patches). ``W <- W / max(1, Delta_{2,2})``.
  - ``norm="l1"``: ``Delta_{1,q}`` = the largest l_q norm of a column (the response to one input
    pixel): l2 columns for the Gaussian, l1 columns for the Laplace mechanism; for a conv a
    "column" is all weights reading input channel c. Every column is scaled to norm <= 1, as the
    paper does.

* Prediction (Sec. III-E): the expected softmax scores over noise draws, estimated with ``n``
  Monte Carlo draws (the first layer runs once per input; only the layers after the noise run
  per draw, many draws per forward pass).
* Certificate (Proposition 1): the prediction ``k`` is robust at size ``L`` when
  ``E_lb[A_k(x)] > e^(2 eps) max_{i != k} E_ub[A_i(x)] + (1 + e^eps) delta``, with Monte Carlo
  bounds that hold for all K classes at once with probability ``1 - alpha`` (Sec. III-E):
  Hoeffding for softmax scores (``+- sqrt(ln(2K/alpha) / (2n))``) or Clopper-Pearson for argmax
  counts (each class two-sided at level ``alpha / K``).
* Largest certified radius. The noise fixes ``sigma``; the same mechanism is (eps', delta')-DP at
  size ``L' = sigma eps' / (Delta sqrt(2 ln(1.25/delta')))`` for every ``eps' <= 1``, so the radius
  is ``max_{eps' <= 1} L'`` with the largest ``delta'`` Proposition 1 allows, ``delta' = (pA_lb -
  e^(2 eps') pB_ub) / (1 + e^eps')`` (:func:`max_radius_gaussian`). With ``pB = 1 - pA`` and
  ``sigma = 1`` this is Cohen et al. 2019's Appendix I re-derivation: pA = 0.9 gives 0.390
  (smoothing: 1.282), pA = 0.99 gives 0.555, and the radius saturates at
  ``1 / sqrt(2 ln(1.25 (1 + e))) = 0.5705`` as pA -> 1. Laplace: ``eps' = ln(pA_lb / pB_ub) / 2``,
  ``L' = b eps' / Delta``.

Training and the saved model. :class:`PixelDPNoise` is the training adversary of the one loop
(``robustlab train --adversary pixeldp --dp-eps 1 --delta 0.05 --L 0.1``): each batch's loss is
the cross-entropy of the network with the rescaled first layer and one noise draw (from the loop's
seeded generator) after it. The saved model holds the raw weights; its metadata records the noise
layer and its calibration under ``"pixeldp"`` (:meth:`PixelDP.record`), and
:func:`check_recorded` refuses to certify with other settings (or a model trained without the
noise): :class:`PixelDP` on any other model is a *different* classifier from the saved one
(rescaled first layer, noise), so its certificate would not be about the saved classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_images, check_positive, check_probability
from robustlab.attacks.base import eval_mode
from robustlab.certificates import Certificate
from robustlab.training.base import Adversary, Param, register_adversary
from robustlab.training.parallel import RouteDDP
from robustlab.stats import clopper_pearson

__all__ = [
    "ExpectedScores",
    "PixelDP",
    "PixelDPNoise",
    "PixelDPParams",
    "check_noise_layer",
    "check_recorded",
    "gaussian_sigma",
    "hoeffding_bounds",
    "laplace_scale",
    "max_radius_gaussian",
    "max_radius_laplace",
    "robust_condition",
    "sensitivity",
]

MECHANISMS = ("gaussian", "laplace")
SCORES = ("softmax", "argmax")
#: The largest eps the Gaussian mechanism's calibration holds for (Dwork & Roth 2014, Thm A.1).
GAUSSIAN_EPS_MAX = 1.0


# ------------------------------------------------------------------------------------------
# Calibration and Proposition 1


def _check_eps(eps: float, mechanism: str) -> float:
    eps = float(check_positive(eps, "eps"))
    if mechanism == "gaussian" and eps > GAUSSIAN_EPS_MAX:
        raise ValueError(f"eps must be in (0, 1] for the Gaussian mechanism (Dwork & Roth Thm A.1), got {eps!r}")
    return eps


def gaussian_sigma(eps: float, delta: float, L: float, sensitivity: float = 1.0) -> float:
    """``sigma = sqrt(2 ln(1.25 / delta)) Delta_{p,2} L / eps`` (PixelDP Sec. III-C), eps in (0, 1]."""
    eps = _check_eps(eps, "gaussian")
    delta = check_probability(delta, "delta")
    L = float(check_positive(L, "L"))
    sensitivity = float(check_positive(sensitivity, "sensitivity"))
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity * L / eps


def laplace_scale(eps: float, L: float, sensitivity: float = 1.0) -> float:
    """``b = Delta_{p,1} L / eps`` (PixelDP Sec. III-C; delta = 0)."""
    eps = _check_eps(eps, "laplace")
    return float(check_positive(sensitivity, "sensitivity")) * float(check_positive(L, "L")) / eps


def robust_condition(p_lower: Tensor, p_upper: Tensor, eps: float, delta: float) -> Tensor:
    """Proposition 1: ``p_lower > e^(2 eps) p_upper + (1 + e^eps) delta`` (bool, elementwise)."""
    p_lower, p_upper = torch.as_tensor(p_lower, dtype=torch.float64), torch.as_tensor(p_upper, dtype=torch.float64)
    return p_lower > math.exp(2 * eps) * p_upper + (1 + math.exp(eps)) * delta


def _radius_at(eps: Tensor, p_lower: Tensor, p_upper: Tensor, sigma: float, sens: float) -> Tensor:
    """``L'(eps)`` with the largest admissible delta'; 0 where no delta' > 0 exists."""
    delta = (p_lower - torch.exp(2 * eps) * p_upper) / (1 + torch.exp(eps))
    ok = delta > 0
    safe = torch.where(ok, delta, torch.ones_like(delta))
    return torch.where(ok, sigma * eps / (sens * torch.sqrt(2 * torch.log(1.25 / safe))), torch.zeros_like(delta))


def max_radius_gaussian(p_lower: "Tensor | float", p_upper: "Tensor | float", sigma: float, *,
                        sensitivity: float = 1.0, eps_max: float = GAUSSIAN_EPS_MAX, grid: int = 512,
                        refine: int = 60) -> Tensor:
    """Largest ``L`` certified by Proposition 1 for Gaussian noise ``sigma`` (float64, elementwise).

    ``max_{0 < eps <= eps_max} sigma eps / (Delta sqrt(2 ln(1.25 / delta(eps))))`` with
    ``delta(eps) = (pA - e^(2 eps) pB) / (1 + e^eps)``: a grid over eps, then a ternary search
    around the best grid point. Every evaluated ``(eps, delta)`` is a valid certificate, so the
    result is sound even where the search misses the exact maximum. 0 where nothing is certified.
    """
    check_positive(sigma, "sigma")
    if not 0 < eps_max <= GAUSSIAN_EPS_MAX:
        raise ValueError(f"eps_max must be in (0, 1], got {eps_max!r}")
    pa = torch.as_tensor(p_lower, dtype=torch.float64)
    pb = torch.as_tensor(p_upper, dtype=torch.float64)
    pa, pb = torch.broadcast_tensors(pa, pb)
    shape = pa.shape
    pa, pb = pa.reshape(-1, 1), pb.reshape(-1, 1)  # (N, 1)
    eps = eps_max * torch.arange(1, grid + 1, dtype=torch.float64, device=pa.device) / grid  # (G,)
    r = _radius_at(eps.unsqueeze(0), pa, pb, sigma, sensitivity)  # (N, G)
    best, idx = r.max(dim=1, keepdim=True)  # (N, 1)
    step = eps_max / grid
    lo = (idx.double() * step).clamp_min(1e-12)  # grid point idx has eps (idx + 1) step: bracket its neighbours
    hi = ((idx.double() + 2) * step).clamp_max(eps_max)
    for _ in range(refine):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        f1, f2 = _radius_at(m1, pa, pb, sigma, sensitivity), _radius_at(m2, pa, pb, sigma, sensitivity)
        left = f1 < f2
        lo, hi = torch.where(left, m1, lo), torch.where(left, hi, m2)
    best = torch.maximum(best, _radius_at((lo + hi) / 2, pa, pb, sigma, sensitivity))
    return best.reshape(shape)


def max_radius_laplace(p_lower: "Tensor | float", p_upper: "Tensor | float", scale: float, *,
                       sensitivity: float = 1.0) -> Tensor:
    """Largest ``L`` for Laplace noise of scale ``b`` (delta = 0): ``eps = ln(pA / pB) / 2``,
    ``L = b eps / Delta`` (``inf`` when ``pB = 0``; 0 where ``pA <= pB``)."""
    check_positive(scale, "scale")
    pa = torch.as_tensor(p_lower, dtype=torch.float64)
    pb = torch.as_tensor(p_upper, dtype=torch.float64)
    with torch.no_grad():
        eps = 0.5 * (torch.log(pa) - torch.log(pb))
    eps = torch.where(pa > pb, eps, torch.zeros_like(eps))
    return scale * eps / float(sensitivity)


def hoeffding_bounds(mean: Tensor, n: int, alpha: float) -> tuple[Tensor, Tensor]:
    """Simultaneous bounds for the K expected scores in [0, 1] from ``n`` draws (Hoeffding 1963,
    union bound over K classes and two sides): ``mean +- sqrt(ln(2K / alpha) / (2n))``, clipped."""
    k = mean.shape[-1]
    t = math.sqrt(math.log(2 * k / alpha) / (2 * n))
    return (mean - t).clamp(0, 1), (mean + t).clamp(0, 1)


# ------------------------------------------------------------------------------------------
# The construction: (eps, delta) at size L in a norm, with a noise mechanism


@dataclass(frozen=True)
class PixelDPParams:
    """A PixelDP noise layer's construction (validated): ``(eps, delta)``-DP for input changes of
    size ``L`` in ``norm`` (pixel units), with ``mechanism`` noise of scale :attr:`noise_scale`
    after a first layer of sensitivity at most 1. ``delta`` None means 0.05 (Gaussian) / 0 (Laplace)."""

    eps: float = 1.0
    delta: Optional[float] = None
    L: float = 0.1
    norm: str = "l2"
    mechanism: str = "gaussian"

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {self.norm!r}")
        if self.norm == "l2" and self.mechanism == "laplace":
            raise ValueError("norm='l2' needs mechanism='gaussian' (Delta_{2,1} is not bounded here)")
        object.__setattr__(self, "eps", _check_eps(self.eps, self.mechanism))
        if self.mechanism == "laplace":
            if self.delta not in (None, 0, 0.0):
                raise ValueError(f"delta must be 0 (or None) for the Laplace mechanism, got {self.delta!r}")
            delta = 0.0
        else:
            delta = check_probability(0.05 if self.delta is None else self.delta, "delta")
        object.__setattr__(self, "delta", float(delta))
        object.__setattr__(self, "L", float(check_positive(self.L, "L")))

    @property
    def out_norm(self) -> str:
        """The norm the noise is calibrated in after the first layer: l2 (Gaussian), l1 (Laplace)."""
        return "l2" if self.mechanism == "gaussian" else "l1"

    @property
    def noise_scale(self) -> float:
        """Gaussian ``sigma`` or Laplace ``b`` for sensitivity 1 (Sec. III-C)."""
        if self.mechanism == "gaussian":
            return gaussian_sigma(self.eps, float(self.delta or 0.0), self.L)
        return laplace_scale(self.eps, self.L)

    def to_dict(self) -> dict:
        return {"eps": self.eps, "delta": self.delta, "L": self.L, "norm": self.norm, "mechanism": self.mechanism}


# ------------------------------------------------------------------------------------------
# Sensitivity of the first layer


def _conv_overlap(layer: nn.Conv2d) -> int:
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    return math.ceil(kh / sh) * math.ceil(kw / sw)


def _columns(weight: Tensor, layer: nn.Module) -> Tensor:
    """Weights grouped by the input unit they read: (in_units, -1). Linear: columns; Conv2d: all
    weights of input channel c (the response to one pixel of channel c, over every output)."""
    if isinstance(layer, nn.Conv2d):
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)  # (C_in, C_out*kh*kw)
    return weight.t()  # (in, out)


def sensitivity(weight: Tensor, layer: nn.Module, norm: str, out_norm: str) -> Tensor:
    """An upper bound on ``Delta_{p,q}`` (the ``norm -> out_norm`` operator norm) of ``layer`` with
    weight ``weight`` (see the module docstring); exact for Linear layers. A 0-dim tensor."""
    if norm == "l2":
        if out_norm != "l2":
            raise ValueError("Delta_{2,1} has no tractable bound here; use the Gaussian mechanism for norm='l2'")
        mat = weight.reshape(weight.shape[0], -1)  # (out, in*kh*kw)
        s = torch.linalg.matrix_norm(mat, ord=2)
        if isinstance(layer, nn.Conv2d):
            s = s * math.sqrt(_conv_overlap(layer))
        return s
    q = 2 if out_norm == "l2" else 1
    return torch.linalg.vector_norm(_columns(weight, layer), ord=q, dim=1).max()


# ------------------------------------------------------------------------------------------
# The network with a noise layer


def _leaves(module: nn.Module) -> list[nn.Module]:
    """``module`` as a flat list of layers when it is a (nested) ``nn.Sequential``."""
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out += _leaves(child)
        return out
    return [module]


class PixelDP(nn.Module):
    """``model`` with a PixelDP noise layer after its first layer (see the module docstring).

    Args:
        model: a robustlab :class:`~robustlab.models.Normalize` around an ``nn.Sequential`` (every
            robustlab architecture but resnet18) or a bare ``nn.Sequential``, whose first weighted
            layer is an ``nn.Linear`` or ``nn.Conv2d`` (zero padding, no dilation or groups), with
            only shape layers (Flatten) before it. Its parameters are shared, not copied: training
            the PixelDP module trains ``model`` (the raw weights; the normalised ones are what the
            PixelDP network uses).
        eps, delta, L: the construction-time guarantee (eps in (0, 1] for Gaussian noise; delta
            in (0, 1), default 0.05, and must be 0 or None for Laplace noise; L > 0 in pixel units
            of ``norm``).
        norm: the attack norm ``"l2"`` (Gaussian only) or ``"l1"``.
        mechanism: ``"gaussian"`` or ``"laplace"``.
        n_forward: draws averaged by :meth:`forward` in eval mode.
        batch_size: (input, draw) rows per forward pass of the layers after the noise.
        seed: seeds the module's noise streams (eval forward, predict, certify).

    ``forward`` in training mode adds one noise draw per input (drawn like dropout from the global
    RNG) and returns its logits. To train a model to save and certify, use the training adversary
    :class:`PixelDPNoise` (``train(model, data, adversary=PixelDPNoise(...), out=...)``): it draws
    from the loop's seeded generator and records :meth:`record` in the model's metadata. In eval mode it returns
    ``log E[softmax]`` over ``n_forward`` fresh draws (a differentiable surrogate for attacks, as
    :class:`~robustlab.defenses.Smoothed`). :meth:`predict` and :meth:`certify` are the paper's.
    """

    def __init__(self, model: nn.Module, *, eps: float = 1.0, delta: Optional[float] = None, L: float = 0.1,
                 norm: str = "l2", mechanism: str = "gaussian", n_forward: int = 32, batch_size: int = 1000,
                 seed: int = 0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.params = PixelDPParams(eps=eps, delta=delta, L=L, norm=norm, mechanism=mechanism)
        self.mechanism, self.norm = self.params.mechanism, self.params.norm
        self.eps, self.delta, self.L = self.params.eps, float(self.params.delta or 0.0), self.params.L
        self.out_norm = self.params.out_norm
        self.noise_scale = self.params.noise_scale
        self.n_forward = int(check_positive(n_forward, "n_forward", integer=True))
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.base = model
        from robustlab.models.normalize import Normalize

        net = model.net if type(model) is Normalize else model
        # Plain attributes, not submodules: they are parts of ``base`` (registered once, above).
        self.__dict__["_std_module"] = model if type(model) is Normalize else None
        layers = _leaves(net)
        first = next((i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if first is None or not isinstance(net, nn.Sequential):
            raise TypeError("PixelDP needs an nn.Sequential network (optionally inside robustlab's Normalize) whose "
                            f"first weighted layer is Linear or Conv2d; got {type(net).__name__}")
        if any(not isinstance(m, (nn.Flatten, nn.Identity)) for m in layers[:first]):
            raise TypeError(f"only Flatten/Identity may precede the first layer, got {layers[:first]}")
        layer = layers[first]
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.dilation != (1, 1)
                                             or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
            raise TypeError("PixelDP's first Conv2d must have groups=1, dilation=1 and numeric zero padding")
        self.__dict__.update(_prefix=layers[:first], _layer=layer, _rest=layers[first + 1 :])
        self.noise_layer = next(name for name, m in model.named_modules() if m is layer)
        self._streams: dict[tuple[str, int], torch.Generator] = {}

    def extra_repr(self) -> str:
        return (f"mechanism={self.mechanism}, norm={self.norm}, eps={self.eps}, delta={self.delta}, L={self.L}, "
                f"noise_scale={self.noise_scale:.4g}")

    # -- the normalised first layer -----------------------------------------------------------
    def _input_std(self, weight: Tensor) -> Optional[Tensor]:
        """Per-input-unit std of the Normalize in front, shaped to broadcast against ``weight``."""
        if self._std_module is None:
            return None
        std = self._std_module.std.reshape(-1).to(weight.dtype)  # (C,)
        if isinstance(self._layer, nn.Conv2d):
            return std.reshape(1, -1, 1, 1)
        per = weight.shape[1] // std.numel()  # flattened (C, H, W): channel-major
        return std.repeat_interleave(per).reshape(1, -1)

    def effective_weight(self) -> Tensor:
        """The first layer's weight in pixel units, ``W / std``, before normalisation."""
        w = self._layer.weight
        std = self._input_std(w)
        return w if std is None else w / std

    def normalized_weight(self) -> Tensor:
        """The weight the network uses (in standardised units): ``W`` scaled so that the layer's
        sensitivity in pixel units is at most 1 (see the module docstring)."""
        w = self._layer.weight
        w_eff = self.effective_weight()
        if self.norm == "l2":
            return w / sensitivity(w_eff, self._layer, "l2", "l2").clamp_min(1.0)
        q = 2 if self.out_norm == "l2" else 1
        col = torch.linalg.vector_norm(_columns(w_eff, self._layer), ord=q, dim=1).clamp_min(1.0)  # (in,)
        if isinstance(self._layer, nn.Conv2d):
            return w / col.reshape(1, -1, 1, 1)
        return w / col.reshape(1, -1)

    def layer_sensitivity(self) -> Tensor:
        """``Delta_{p,q}`` bound of the normalised first layer in pixel units (<= 1 by construction)."""
        w = self.normalized_weight()
        std = self._input_std(w)
        return sensitivity(w if std is None else w / std, self._layer, self.norm, self.out_norm)

    def saved_sensitivity(self) -> Tensor:
        """``Delta_{p,q}`` bound of the model's first layer as saved, before PixelDP rescales it, in
        input-pixel units: of ``W / std`` when a Normalize is in front (``x -> (x - mean) / std``
        scales a pixel change by ``1 / std``). Above 1 the certified network's first layer is this
        one divided by it (see :meth:`normalized_weight`)."""
        return sensitivity(self.effective_weight(), self._layer, self.norm, self.out_norm)

    def record(self) -> dict:
        """The noise layer and its calibration, as the trained model's metadata records them
        (``metadata["pixeldp"]``; :func:`check_recorded` compares against it)."""
        with torch.no_grad():
            saved = float(self.saved_sensitivity())
            used = float(self.layer_sensitivity())
        return {**self.params.to_dict(), "noise_layer": self.noise_layer, "noise_layer_type": type(self._layer).__name__,
                "noise_scale": self.noise_scale, "out_norm": self.out_norm, "sensitivity_bound": 1.0,
                "sensitivity_saved_weights": saved, "sensitivity": used, "units": "input pixels in [0, 1]"}

    def first_layer(self, h: Tensor) -> Tensor:
        """The rescaled first layer on its own input ``h`` (the standardised, flattened image)."""
        w = self.normalized_weight()
        if isinstance(self._layer, nn.Conv2d):
            c = self._layer
            return F.conv2d(h, w, c.bias, c.stride, c.padding)
        return F.linear(h, w, self._layer.bias)

    def pre_noise(self, x: Tensor) -> Tensor:
        """The first layer's output (the noise is added to it)."""
        if self._std_module is not None:
            x = (x - self._std_module.mean) / self._std_module.std
        for m in self._prefix:
            x = m(x)
        return self.first_layer(x)

    def post_noise(self, h: Tensor) -> Tensor:
        for m in self._rest:
            h = m(h)
        return h

    # -- noise --------------------------------------------------------------------------------
    def _stream(self, device: torch.device, stream: int, seed: Optional[int]) -> torch.Generator:
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an integer, got {seed!r}")
            return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + stream) % (2**63 - 1))
        key = (str(device), stream)
        if key not in self._streams:
            self._streams[key] = torch.Generator(device=device).manual_seed((self.seed * 1_000_003 + stream) % (2**63 - 1))
        return self._streams[key]

    def _noise(self, shape: torch.Size, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        if self.mechanism == "gaussian":
            return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype).mul_(self.noise_scale)
        # Laplace(b) = b * (E1 - E2), E ~ Exp(1): two uniforms through -log.
        u = torch.rand((2, *shape), generator=generator, device=like.device, dtype=like.dtype).clamp_min_(1e-12)
        return u.log_().mul_(-1).diff(dim=0).squeeze(0).mul_(self.noise_scale)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pre_noise(x)
        if self.training:
            return self.post_noise(h + self._noise(h.shape, h, None))
        k = self.n_forward
        reps = h.repeat_interleave(k, dim=0)  # (N*k, ...) input-major
        logits = self.post_noise(reps + self._noise(reps.shape, reps, self._stream(x.device, 1, None)))
        probs = torch.softmax(logits.float(), dim=1).reshape(x.shape[0], k, -1).mean(dim=1)  # (N, K)
        return probs.clamp_min(1e-12).log().to(x.dtype)

    # -- Monte Carlo ----------------------------------------------------------------------------
    def expected_scores(self, x: Tensor, n: int, *, seed: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """``(mean softmax (N, K) float64, argmax counts (N, K) int64)`` over ``n`` noise draws per
        input. The first layer runs once per input; each pass of the rest holds up to
        ``batch_size`` (input, draw) rows."""
        check_images(x, "x")
        n = int(check_positive(n, "n", integer=True))
        gen = self._stream(x.device, 0, seed)
        per = min(n, self.batch_size)  # draws per pass
        group = max(1, self.batch_size // per)  # inputs per pass
        sums, counts = [], []
        with eval_mode(self), torch.no_grad():
            for start in range(0, x.shape[0], group):
                h = self.pre_noise(x[start : start + group])  # (b, ...)
                b = h.shape[0]
                acc: Optional[Tensor] = None
                cnt: Optional[Tensor] = None
                for done in range(0, n, per):
                    m = min(per, n - done)
                    reps = h.repeat_interleave(m, dim=0)  # (b*m, ...)
                    logits = self.post_noise(reps + self._noise(reps.shape, reps, gen)).reshape(b, m, -1)
                    probs = torch.softmax(logits.double(), dim=2).sum(dim=1)  # (b, K)
                    hits = F.one_hot(logits.argmax(dim=2), logits.shape[2]).sum(dim=1)  # (b, K)
                    acc = probs if acc is None else acc + probs
                    cnt = hits if cnt is None else cnt + hits
                sums.append(acc / n)
                counts.append(cnt)
        return torch.cat(sums), torch.cat(counts)

    def predict(self, x: Tensor, n: int = 300, *, seed: Optional[int] = None) -> Tensor:
        """``argmax_k E[softmax_k]`` over ``n`` draws (Sec. III-E), int64 (N,)."""
        return self.expected_scores(x, n, seed=seed)[0].argmax(dim=1)

    def certify(self, x: Tensor, n: int = 1000, alpha: float = 0.05, *, scores: str = "softmax",
                seed: Optional[int] = None) -> Certificate:
        """Proposition 1 with Monte Carlo bounds over ``n`` draws, holding for all classes at once
        with probability ``1 - alpha`` (``scores="softmax"``: Hoeffding; ``"argmax"``:
        Clopper-Pearson). ``radius`` is the largest certified size in ``self.norm`` for the fixed
        noise (:func:`max_radius_gaussian` / :func:`max_radius_laplace`); the construction size
        ``L`` is certified exactly where ``radius >= L``. Abstains where no size is certified."""
        alpha = check_probability(alpha, "alpha")
        if scores not in SCORES:
            raise ValueError(f"scores must be one of {', '.join(SCORES)}, got {scores!r}")
        n = int(check_positive(n, "n", integer=True))
        mean, counts = self.expected_scores(x, n, seed=seed)
        k = mean.shape[1]
        if scores == "softmax":
            lower, upper = hoeffding_bounds(mean, n, alpha)
            top = mean.argmax(dim=1)
        else:
            lo, hi = clopper_pearson(counts.cpu(), n, alpha / k, side="two-sided")
            lower = torch.as_tensor(lo, device=mean.device)
            upper = torch.as_tensor(hi, device=mean.device)
            top = counts.argmax(dim=1)
        p_low = lower.gather(1, top[:, None]).squeeze(1)  # (N,)
        p_up = upper.scatter(1, top[:, None], -1.0).max(dim=1).values  # runner-up's upper bound
        sens = 1.0  # the normalisation guarantees Delta <= 1
        if self.mechanism == "gaussian":
            radius = max_radius_gaussian(p_low, p_up, self.noise_scale, sensitivity=sens)
        else:
            radius = max_radius_laplace(p_low, p_up, self.noise_scale, sensitivity=sens)
        abstain = ~(radius > 0)
        prediction = torch.where(abstain, torch.full_like(top, -1), top)
        radius = torch.where(abstain, torch.zeros_like(radius), radius)
        info = {"method": "pixeldp", "mechanism": self.mechanism, "eps": self.eps, "delta": self.delta, "L": self.L,
                "noise_scale": self.noise_scale, "n": n, "scores": scores,
                "bound": "hoeffding" if scores == "softmax" else "clopper-pearson",
                "noise_layer": self.noise_layer, "sensitivity": float(self.layer_sensitivity().detach()),
                "sensitivity_saved_weights": float(self.saved_sensitivity().detach())}
        return Certificate(prediction, radius, abstain, self.norm, alpha,
                           samples=torch.full_like(top, n), count=counts.gather(1, top[:, None]).squeeze(1),
                           p_lower=p_low, p_upper=p_up, info=info)

    def robust_at_L(self, cert: Certificate) -> Tensor:
        """Bool (N,): the construction size ``L`` is certified (Proposition 1 at ``(eps, delta)``
        or at another admissible pair of the same noise)."""
        return ~cert.abstain & (cert.radius >= self.L)



# ------------------------------------------------------------------------------------------
# Training with the noise layer, and what the saved model records


def _unwrap_route(model: nn.Module) -> nn.Module:
    """The bare model behind the distributed loop's :class:`RouteDDP` (the model itself otherwise)."""
    if isinstance(model, RouteDDP):
        ddp = model._modules.get("ddp")
        return ddp.module if ddp is not None else model
    return model


class ExpectedScores(nn.Module):
    """``log E[softmax]`` of a :class:`PixelDP` network over ``n`` seeded noise draws per input
    (:meth:`PixelDP.expected_scores`, memory bounded by its ``batch_size``; no gradient): its
    prediction is the PixelDP prediction (Sec. III-E). What training validates and tests."""

    def __init__(self, pdp: PixelDP, n: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.pdp = pdp
        self.n = int(check_positive(n, "n", integer=True))
        self.seed = seed

    def forward(self, x: Tensor) -> Tensor:
        mean, _ = self.pdp.expected_scores(x, self.n, seed=self.seed)
        return mean.clamp_min(1e-12).log().to(x.dtype)


class PixelDPNoise(Adversary):
    """Training adversary of PixelDP (Lecuyer et al. 2019, arXiv:1802.03471, Sec. III-D): the loss
    is ``CE(g(W~ x + b + z), y)`` with ``W~`` the first layer rescaled to sensitivity <= 1 in pixel
    units (:meth:`PixelDP.normalized_weight`) and ``z`` one draw of the calibrated noise per input
    (:class:`PixelDPParams`), from the loop's seeded generator.

    The noise goes in through a forward hook on the model's first weighted layer for the duration
    of the forward pass, so the pass runs through the model itself (and through DDP in a
    distributed run: the rescaling is differentiable and the gradients reach the raw weights). The
    saved model holds the raw weights; :meth:`model_metadata` adds ``"pixeldp"``
    (:meth:`PixelDP.record`), which ``robustlab certify --method pixeldp`` checks. Validation and
    test accuracy are those of the PixelDP prediction (``eval_draws`` noise draws per image, an
    :class:`ExpectedScores`), not of the bare network."""

    name = "pixeldp"

    def __init__(self, eps: float = 1.0, delta: Optional[float] = None, L: float = 0.1, norm: str = "l2",
                 mechanism: str = "gaussian", *, eval_draws: int = 8) -> None:
        self.params = PixelDPParams(eps=eps, delta=delta, L=L, norm=norm, mechanism=mechanism)
        self.eval_draws = int(check_positive(eval_draws, "eval_draws", integer=True))

    def view(self, model: nn.Module) -> PixelDP:
        """The PixelDP network over ``model``'s parameters (shared, not copied)."""
        return PixelDP(_unwrap_route(model), **self.params.to_dict())

    def loss_and_logits(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator,
                        eps_scale: float = 1.0) -> tuple[Tensor, Optional[Tensor]]:
        view = self.view(model)

        def noisy(_layer: nn.Module, args: tuple, _out: Tensor) -> Tensor:
            h = view.first_layer(args[0])
            return h + view._noise(h.shape, h, generator)

        handle = view._layer.register_forward_hook(noisy)
        try:
            logits = model(x)
        finally:
            handle.remove()
        return F.cross_entropy(logits, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, **self.params.to_dict(), "noise_scale": self.params.noise_scale,
                "eval_draws": self.eval_draws}

    def model_metadata(self, model: nn.Module) -> dict:
        return {"pixeldp": self.view(model).record()}

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return ExpectedScores(self.view(model), self.eval_draws)


#: What :func:`check_recorded` compares: the construction and where the noise goes.
CHECKED = ("eps", "delta", "L", "norm", "mechanism")


def check_recorded(metadata: Optional[Mapping[str, Any]], given: Mapping[str, Any], *, model: str = "the model",
                   force: bool = False, flags: Optional[Mapping[str, str]] = None,
                   override: str = "pass force=True") -> tuple[PixelDPParams, list[str]]:
    """The PixelDP construction to certify ``model`` with, checked against its training record.

    ``given`` maps ``eps``, ``delta``, ``L``, ``norm``, ``mechanism`` to the caller's values (None:
    not given, take the recorded one). Raises ValueError when the model's metadata has no
    ``"pixeldp"`` entry (it was not trained with the noise layer) or a given value differs from the
    recorded one (naming the field), unless ``force``; then the given values (or the defaults) are
    used and the reasons come back as warnings. A malformed record is always an error naming the
    field. ``flags`` names the caller's options in the messages (``{"eps": "--dp-eps"}``), ``override``
    how to force (``"pass --force-pixeldp"``).
    Returns ``(params, warnings)``."""
    flags = dict(flags or {})
    chosen = {k: v for k, v in given.items() if k in CHECKED and v is not None}
    record = (metadata or {}).get("pixeldp")
    if record is None:
        why = (f"{model} was not trained with PixelDP noise (its metadata has no 'pixeldp' entry): PixelDP would "
               "rescale its first layer and add noise after it, and certify that classifier, not the saved one")
        if not force:
            raise ValueError(f"{why}; train one with `robustlab train --adversary pixeldp ...`, or {override} to "
                             "certify that classifier anyway")
        return PixelDPParams(**chosen), [why]
    if not isinstance(record, Mapping):
        raise ValueError(f"{model}: metadata field 'pixeldp' must be an object, got {type(record).__name__}")
    recorded: dict = {}
    for key in CHECKED:
        value = record.get(key)
        want = str if key in ("norm", "mechanism") else float
        ok = isinstance(value, str) if want is str else (isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{model}: metadata field 'pixeldp.{key}' must be a "
                             f"{'string' if want is str else 'number'}, got {value!r}")
        recorded[key] = want(value)
    try:
        PixelDPParams(**recorded)
    except ValueError as exc:
        raise ValueError(f"{model}: metadata field 'pixeldp' holds an invalid construction: {exc}") from None
    warnings: list[str] = []
    for key, value in chosen.items():
        same = value == recorded[key] if isinstance(value, str) else math.isclose(float(value), recorded[key],
                                                                                   rel_tol=1e-9, abs_tol=1e-12)
        if not same:
            msg = (f"{flags.get(key, key)} {value!r} differs from the PixelDP training of {model}, whose metadata "
                   f"records pixeldp.{key} = {recorded[key]!r}: the certificate would be for another classifier")
            if not force:
                raise ValueError(f"{msg}; drop {flags.get(key, key)} to use the recorded value, or {override} to "
                                 "certify anyway")
            warnings.append(msg)
    return PixelDPParams(**{**recorded, **chosen}), warnings


def check_noise_layer(pdp: PixelDP, metadata: Optional[Mapping[str, Any]], *, model: str = "the model",
                      force: bool = False, override: str = "pass force=True") -> list[str]:
    """The recorded noise layer and noise scale against the network :class:`PixelDP` builds
    (ValueError naming the field on a mismatch unless ``force``; then warnings)."""
    record = (metadata or {}).get("pixeldp")
    if not isinstance(record, Mapping):
        return []
    problems = []
    if record.get("noise_layer") != pdp.noise_layer:
        problems.append(f"metadata field 'pixeldp.noise_layer' of {model} is {record.get('noise_layer')!r}, but the "
                        f"noise would go after {pdp.noise_layer!r}")
    scale = record.get("noise_scale")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isclose(float(scale), pdp.noise_scale,
                                                                                            rel_tol=1e-6):
        problems.append(f"metadata field 'pixeldp.noise_scale' of {model} is {scale!r}, but the construction gives "
                        f"{pdp.noise_scale!r}")
    if problems and not force:
        raise ValueError("; ".join(problems) + f"; {override} to certify anyway")
    return problems


register_adversary(
    "pixeldp", lambda dp_eps, delta, L, norm, mechanism: PixelDPNoise(dp_eps, delta, L, norm, mechanism),
    (Param("dp_eps", float, "PixelDP epsilon, in (0, 1] for Gaussian noise", 1.0),
     Param("delta", float, "PixelDP delta (default 0.05; 0 for Laplace)"),
     Param("L", float, "PixelDP construction attack size L in pixel units", 0.1),
     Param("norm", str, "threat model norm for adversarial training (linf, l2, l1)", "l2"),
     Param("mechanism", str, "PixelDP noise: gaussian or laplace", "gaussian")),
    "PixelDP noise layer after the rescaled first layer (Lecuyer et al. 2019), for certify --method pixeldp",
)
